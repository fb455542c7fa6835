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
    let digest = Sha256::digest(format!("{seed}\u{0}{index}").as_bytes());
    let c1 = [digest[0], digest[1], digest[2]];
    let c2 = [digest[3], digest[4], digest[5]];
    let c3 = [digest[6], digest[7], digest[8]];
    let stripe = 8 + u32::from(digest[9] % 56);
    let (cx, cy) = (
        width * (32 + u32::from(digest[10] % 64)) / 128,
        height * (32 + u32::from(digest[11] % 64)) / 128,
    );
    let radius = (width.min(height) / 4).max(1);
    let r2 = u64::from(radius) * u64::from(radius);

    let mut data = Vec::with_capacity((width as usize) * (height as usize) * 3);
    for y in 0..height {
        let t = y * 255 / height.max(1);
        let base = [
            lerp(c1[0], c2[0], t),
            lerp(c1[1], c2[1], t),
            lerp(c1[2], c2[2], t),
        ];
        for x in 0..width {
            let dx = i64::from(x) - i64::from(cx);
            let dy = i64::from(y) - i64::from(cy);
            let px = if (dx * dx + dy * dy) as u64 <= r2 {
                c3
            } else if ((x + y) / stripe) % 2 == 0 {
                base
            } else {
                [base[0] / 2 + 64, base[1] / 2 + 64, base[2] / 2 + 64]
            };
            data.extend_from_slice(&px);
        }
    }
    data
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
