//! Real image bytes for the emulator: a picture of the requested size whose colours and pattern
//! derive from the prompt, so different prompts give visibly different pictures; PNG (what the
//! emulator's Ark images have always been), JPEG (Jimeng's images) or raw RGB (video frames).

use sha2::{Digest, Sha256};

/// Renders `width`×`height` RGB pixels seeded by `seed` (e.g. a prompt) and `index` (position in
/// a group), PNG-encoded.
pub fn render_png(seed: &str, index: u32, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let data = render_rgb(seed, index, width, height);
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().map_err(|e| e.to_string())?;
        w.write_image_data(&data).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The same picture as [`render_png`], JPEG-encoded (baseline, quality 85).
pub fn render_jpeg(seed: &str, index: u32, width: u32, height: u32) -> Result<Vec<u8>, String> {
    let (w, h) = (
        u16::try_from(width).map_err(|_| "width over 65535".to_string())?,
        u16::try_from(height).map_err(|_| "height over 65535".to_string())?,
    );
    let data = render_rgb(seed, index, width, height);
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&data, w, h, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The picture as packed 8-bit RGB rows.
pub fn render_rgb(seed: &str, index: u32, width: u32, height: u32) -> Vec<u8> {
    let scene = Scene::new(seed, index, width, height);
    let mut data = Vec::with_capacity((width as usize) * (height as usize) * 3);
    for y in 0..height {
        let palette = scene.palette(y);
        for x in 0..width {
            data.extend_from_slice(&palette[scene.kind(x, y)]);
        }
    }
    data
}

/// What the picture is made of: a vertical gradient between two colours, diagonal stripes of
/// a darker shade, and a disc of a third colour, all drawn from the seed. Each row has three
/// colours only, so a renderer may convert them once per row (the video's YUV samples).
pub struct Scene {
    c1: [u8; 3],
    c2: [u8; 3],
    c3: [u8; 3],
    stripe: u32,
    cx: u32,
    cy: u32,
    r2: u64,
    height: u32,
}

impl Scene {
    pub fn new(seed: &str, index: u32, width: u32, height: u32) -> Scene {
        let digest = Sha256::digest(format!("{seed}\u{0}{index}").as_bytes());
        let radius = (width.min(height) / 4).max(1);
        Scene {
            c1: [digest[0], digest[1], digest[2]],
            c2: [digest[3], digest[4], digest[5]],
            c3: [digest[6], digest[7], digest[8]],
            stripe: 8 + u32::from(digest[9] % 56),
            cx: width * (32 + u32::from(digest[10] % 64)) / 128,
            cy: height * (32 + u32::from(digest[11] % 64)) / 128,
            r2: u64::from(radius) * u64::from(radius),
            height,
        }
    }

    /// Row `y`'s colours: background, stripe, disc.
    pub fn palette(&self, y: u32) -> [[u8; 3]; 3] {
        let t = y * 255 / self.height.max(1);
        let (c1, c2) = (self.c1, self.c2);
        let base = [
            lerp(c1[0], c2[0], t),
            lerp(c1[1], c2[1], t),
            lerp(c1[2], c2[2], t),
        ];
        let stripe = [base[0] / 2 + 64, base[1] / 2 + 64, base[2] / 2 + 64];
        [base, stripe, self.c3]
    }

    /// Which of the row's colours pixel (`x`, `y`) has.
    pub fn kind(&self, x: u32, y: u32) -> usize {
        let dx = i64::from(x) - i64::from(self.cx);
        let dy = i64::from(y) - i64::from(self.cy);
        if (dx * dx + dy * dy) as u64 <= self.r2 {
            2
        } else {
            (((x + y) / self.stripe) % 2) as usize
        }
    }
}

fn lerp(a: u8, b: u8, t: u32) -> u8 {
    ((u32::from(a) * (255 - t) + u32::from(b) * t) / 255) as u8
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_a_decodable_png_of_the_size_asked() {
        let png = super::render_png("a cat", 0, 320, 200).expect("png");
        let size = imagesize::blob_size(&png).expect("size");
        assert_eq!((size.width, size.height), (320, 200));
        assert_ne!(png, super::render_png("a dog", 0, 320, 200).expect("png"));
    }

    #[test]
    fn renders_a_jpeg_of_the_size_asked() {
        let jpg = super::render_jpeg("a cat", 0, 320, 200).expect("jpeg");
        assert_eq!(&jpg[..3], &[0xFF, 0xD8, 0xFF]);
        let size = imagesize::blob_size(&jpg).expect("size");
        assert_eq!((size.width, size.height), (320, 200));
    }
}
