//! Real, playable MP4 files for the emulator's videos, written without an encoder: an H.264
//! Constrained Baseline stream whose first frame is an IDR picture of `I_PCM` macroblocks (raw
//! YUV 4:2:0 samples, so the picture drawn from the prompt needs no transform or entropy coding)
//! followed by P frames of skipped macroblocks (each repeats the reference: a still picture for
//! the whole duration), in an ISO BMFF file with the `moov` box before `mdat` ("fast start").
//! Sizes come out realistic too: the IDR frame weighs `w·h·1.5` bytes (1.3 MB at 720p), every
//! other frame a few bytes.

use super::image::Scene;

/// Frames per second of every video (Seedance: 24).
pub const FPS: u32 = 24;
/// Media timescale: ticks per second (ffmpeg's choice for 24 fps), one frame is 512 ticks.
const TIMESCALE: u32 = 12288;
const FRAME_TICKS: u32 = TIMESCALE / FPS;
/// Constrained Baseline: profile 66 with constraint_set0 and constraint_set1.
const PROFILE: u8 = 66;
const CONSTRAINTS: u8 = 0xC0;
/// log2(MaxFrameNum) − 4: frame_num counts modulo 256.
const LOG2_MAX_FRAME_NUM_MINUS4: u32 = 4;

/// An MP4 of `frames` frames at 24 fps showing a picture drawn from `seed`, `width`×`height`
/// (each rounded up to an even number).
pub fn render_mp4(seed: &str, width: u32, height: u32, frames: u32) -> Vec<u8> {
    let (width, height) = (
        width.max(16).next_multiple_of(2),
        height.max(16).next_multiple_of(2),
    );
    let frames = frames.max(1);
    let sps = sps(width, height);
    let pps = pps();
    let mut samples = Vec::with_capacity(frames as usize);
    samples.push(nal(3, 5, &idr_slice(seed, width, height)));
    let mbs = width.div_ceil(16) * height.div_ceil(16);
    for n in 1..frames {
        samples.push(nal(2, 1, &skip_slice(n % 256, mbs)));
    }
    let sizes: Vec<u32> = samples.iter().map(|s| 4 + s.len() as u32).collect();
    let ftyp = ftyp();
    // The chunk offset does not change the moov's size, so build it once to learn where the
    // samples will start and once more with that offset.
    let probe = moov(width, height, &sps, &pps, &sizes, 0);
    let data_start = (ftyp.len() + probe.len() + 8) as u32;
    let moov = moov(width, height, &sps, &pps, &sizes, data_start);
    let mdat_len: usize = 8 + sizes.iter().map(|s| *s as usize).sum::<usize>();
    let mut out = Vec::with_capacity(ftyp.len() + moov.len() + mdat_len);
    out.extend_from_slice(&ftyp);
    out.extend_from_slice(&moov);
    out.extend_from_slice(&(mdat_len as u32).to_be_bytes());
    out.extend_from_slice(b"mdat");
    for s in &samples {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }
    out
}

/// Bits written most significant first, with Exp-Golomb codes.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u8,
    used: u8,
}

impl Bits {
    fn bit(&mut self, b: bool) {
        self.acc = (self.acc << 1) | u8::from(b);
        self.used += 1;
        if self.used == 8 {
            self.out.push(self.acc);
            self.acc = 0;
            self.used = 0;
        }
    }

    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.bit((value >> i) & 1 == 1);
        }
    }

    /// Signed Exp-Golomb, se(v).
    fn se(&mut self, v: i32) {
        let mapped = if v > 0 {
            2 * v.unsigned_abs() - 1
        } else {
            2 * v.unsigned_abs()
        };
        self.ue(mapped);
    }

    /// Unsigned Exp-Golomb, ue(v).
    fn ue(&mut self, v: u32) {
        let x = u64::from(v) + 1;
        let len = 64 - x.leading_zeros();
        for _ in 1..len {
            self.bit(false);
        }
        for i in (0..len).rev() {
            self.bit((x >> i) & 1 == 1);
        }
    }

    fn aligned(&self) -> bool {
        self.used == 0
    }

    fn align_zero(&mut self) {
        while !self.aligned() {
            self.bit(false);
        }
    }

    /// rbsp_trailing_bits: a stop bit, then zeros to the byte boundary.
    fn finish(mut self) -> Vec<u8> {
        self.bit(true);
        self.align_zero();
        self.out
    }
}

/// A NAL unit (no start code: MP4 samples are length-prefixed) with emulation prevention.
fn nal(ref_idc: u8, kind: u8, rbsp: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rbsp.len() + rbsp.len() / 64 + 1);
    out.push((ref_idc << 5) | kind);
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

fn level(width: u32, height: u32) -> u8 {
    match width.div_ceil(16) * height.div_ceil(16) {
        0..=1620 => 30,
        1621..=3600 => 31,
        3601..=5120 => 32,
        5121..=8192 => 40,
        8193..=22080 => 50,
        _ => 51,
    }
}

/// The sequence parameter set (without its NAL header byte).
fn sps(width: u32, height: u32) -> Vec<u8> {
    let (mbw, mbh) = (width.div_ceil(16), height.div_ceil(16));
    let mut b = Bits::default();
    b.put(u32::from(PROFILE), 8);
    b.put(u32::from(CONSTRAINTS), 8);
    b.put(u32::from(level(width, height)), 8);
    b.ue(0); // seq_parameter_set_id
    b.ue(LOG2_MAX_FRAME_NUM_MINUS4);
    b.ue(2); // pic_order_cnt_type 2: output order is decoding order
    b.ue(1); // max_num_ref_frames
    b.bit(false); // gaps_in_frame_num_value_allowed_flag
    b.ue(mbw - 1);
    b.ue(mbh - 1);
    b.bit(true); // frame_mbs_only_flag
    b.bit(true); // direct_8x8_inference_flag
    let (crop_x, crop_y) = ((mbw * 16 - width) / 2, (mbh * 16 - height) / 2);
    b.bit(crop_x > 0 || crop_y > 0);
    if crop_x > 0 || crop_y > 0 {
        b.ue(0);
        b.ue(crop_x);
        b.ue(0);
        b.ue(crop_y);
    }
    b.bit(false); // vui_parameters_present_flag
    nal(3, 7, &b.finish())
}

/// The picture parameter set, as a whole NAL unit.
fn pps() -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // pic_parameter_set_id
    b.ue(0); // seq_parameter_set_id
    b.bit(false); // entropy_coding_mode_flag: CAVLC
    b.bit(false); // bottom_field_pic_order_in_frame_present_flag
    b.ue(0); // num_slice_groups_minus1
    b.ue(0); // num_ref_idx_l0_default_active_minus1
    b.ue(0); // num_ref_idx_l1_default_active_minus1
    b.bit(false); // weighted_pred_flag
    b.put(0, 2); // weighted_bipred_idc
    b.se(0); // pic_init_qp_minus26
    b.se(0); // pic_init_qs_minus26
    b.se(0); // chroma_qp_index_offset
    b.bit(true); // deblocking_filter_control_present_flag
    b.bit(false); // constrained_intra_pred_flag
    b.bit(false); // redundant_pic_cnt_present_flag
    nal(3, 8, &b.finish())
}

/// The IDR slice: every macroblock `I_PCM`, samples from the picture drawn for `seed`.
fn idr_slice(seed: &str, width: u32, height: u32) -> Vec<u8> {
    let (mbw, mbh) = (width.div_ceil(16), height.div_ceil(16));
    let (fw, fh) = (mbw * 16, mbh * 16);
    let (y, cb, cr) = yuv420(&Scene::new(seed, 0, width, height), width, height, fw, fh);
    let mut b = Bits::default();
    b.ue(0); // first_mb_in_slice
    b.ue(7); // slice_type: I, every slice of the picture
    b.ue(0); // pic_parameter_set_id
    b.put(0, LOG2_MAX_FRAME_NUM_MINUS4 + 4); // frame_num
    b.ue(0); // idr_pic_id
    b.bit(false); // no_output_of_prior_pics_flag
    b.bit(false); // long_term_reference_flag
    b.se(0); // slice_qp_delta
    b.ue(1); // disable_deblocking_filter_idc: off
    b.out.reserve((fw * fh * 3 / 2 + mbw * mbh * 2) as usize);
    let (fw, cw) = (fw as usize, fw as usize / 2);
    for my in 0..mbh as usize {
        for mx in 0..mbw as usize {
            b.ue(25); // mb_type I_PCM
            b.align_zero();
            for row in 0..16 {
                let at = (my * 16 + row) * fw + mx * 16;
                b.out.extend_from_slice(&y[at..at + 16]);
            }
            for plane in [&cb, &cr] {
                for row in 0..8 {
                    let at = (my * 8 + row) * cw + mx * 8;
                    b.out.extend_from_slice(&plane[at..at + 8]);
                }
            }
        }
    }
    b.finish()
}

/// A P slice whose every macroblock is skipped: the reference picture again.
fn skip_slice(frame_num: u32, mbs: u32) -> Vec<u8> {
    let mut b = Bits::default();
    b.ue(0); // first_mb_in_slice
    b.ue(5); // slice_type: P, every slice of the picture
    b.ue(0); // pic_parameter_set_id
    b.put(frame_num, LOG2_MAX_FRAME_NUM_MINUS4 + 4);
    b.bit(false); // num_ref_idx_active_override_flag
    b.bit(false); // ref_pic_list_modification_flag_l0
    b.bit(false); // adaptive_ref_pic_marking_mode_flag
    b.se(0); // slice_qp_delta
    b.ue(1); // disable_deblocking_filter_idc
    b.ue(mbs); // mb_skip_run: the whole picture
    b.finish()
}

/// BT.601 limited-range Y, Cb, Cr of an RGB colour, in [16, 240]: never 0, which `I_PCM`
/// forbids in older decoders.
fn to_yuv([r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (i32::from(r), i32::from(g), i32::from(b));
    [
        16 + ((66 * r + 129 * g + 25 * b + 128) >> 8),
        128 + ((-38 * r - 74 * g + 112 * b + 128) >> 8),
        128 + ((112 * r - 94 * g - 18 * b + 128) >> 8),
    ]
    .map(|v| v.clamp(16, 240) as u8)
}

/// The scene's Y, Cb, Cr planes of `fw`×`fh` (the `w`×`h` picture padded by repeating its last
/// column and row), chroma taken at the top-left pixel of each 2×2 block. Colours are converted
/// once per row: each row has three.
fn yuv420(scene: &Scene, w: u32, h: u32, fw: u32, fh: u32) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (fw, fh) = (fw as usize, fh as usize);
    let mut y = Vec::with_capacity(fw * fh);
    let mut cb = Vec::with_capacity(fw * fh / 4);
    let mut cr = Vec::with_capacity(fw * fh / 4);
    for row in 0..fh as u32 {
        let sy = row.min(h - 1);
        let palette = scene.palette(sy).map(to_yuv);
        let chroma_row = row % 2 == 0;
        for col in 0..fw as u32 {
            let px = palette[scene.kind(col.min(w - 1), sy)];
            y.push(px[0]);
            if chroma_row && col % 2 == 0 {
                cb.push(px[1]);
                cr.push(px[2]);
            }
        }
    }
    (y, cb, cr)
}

fn mp4_box(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn full_box(kind: &[u8; 4], flags: u32, body: &[u8]) -> Vec<u8> {
    mp4_box(kind, &[&flags.to_be_bytes(), body])
}

fn be32(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn ftyp() -> Vec<u8> {
    mp4_box(
        b"ftyp",
        &[b"isom", &512u32.to_be_bytes(), b"isomiso2avc1mp41"],
    )
}

fn moov(width: u32, height: u32, sps: &[u8], pps: &[u8], sizes: &[u32], offset: u32) -> Vec<u8> {
    let frames = sizes.len() as u32;
    let movie_ms = (u64::from(frames) * 1000 / u64::from(FPS)) as u32;
    let mut mvhd = be32(&[0, 0, 1000, movie_ms, 0x0001_0000]);
    mvhd.extend_from_slice(&[0x01, 0x00, 0, 0]); // volume 1.0, reserved
    mvhd.extend_from_slice(&[0; 8]);
    mvhd.extend(be32(&MATRIX));
    mvhd.extend(be32(&[0, 0, 0, 0, 0, 0, 2])); // pre_defined, next_track_ID
    let mut tkhd = be32(&[0, 0, 1, 0, movie_ms, 0, 0]);
    tkhd.extend_from_slice(&[0; 8]); // layer, alternate_group, volume, reserved
    tkhd.extend(be32(&MATRIX));
    tkhd.extend(be32(&[width << 16, height << 16]));
    let mut mdhd = be32(&[0, 0, TIMESCALE, frames * FRAME_TICKS]);
    mdhd.extend_from_slice(&[0x55, 0xC4, 0, 0]); // language "und"
    let mut hdlr = be32(&[0]);
    hdlr.extend_from_slice(b"vide");
    hdlr.extend_from_slice(&[0; 12]);
    hdlr.extend_from_slice(b"VideoHandler\0");
    let dinf = mp4_box(
        b"dinf",
        &[&full_box(
            b"dref",
            0,
            &[&be32(&[1])[..], &full_box(b"url ", 1, &[])].concat(),
        )],
    );
    let stbl = mp4_box(
        b"stbl",
        &[
            &full_box(
                b"stsd",
                0,
                &[be32(&[1]), avc1(width, height, sps, pps)].concat(),
            ),
            &full_box(b"stts", 0, &be32(&[1, frames, FRAME_TICKS])),
            &full_box(b"stss", 0, &be32(&[1, 1])),
            &full_box(b"stsc", 0, &be32(&[1, 1, frames, 1])),
            &full_box(b"stsz", 0, &[be32(&[0, frames]), be32(sizes)].concat()),
            &full_box(b"stco", 0, &be32(&[1, offset])),
        ],
    );
    let minf = mp4_box(b"minf", &[&full_box(b"vmhd", 1, &[0; 8]), &dinf, &stbl]);
    let mdia = mp4_box(
        b"mdia",
        &[
            &full_box(b"mdhd", 0, &mdhd),
            &full_box(b"hdlr", 0, &hdlr),
            &minf,
        ],
    );
    let trak = mp4_box(b"trak", &[&full_box(b"tkhd", 3, &tkhd), &mdia]);
    mp4_box(b"moov", &[&full_box(b"mvhd", 0, &mvhd), &trak])
}

/// The sample entry: picture size and the decoder configuration (`avcC`) with SPS and PPS.
fn avc1(width: u32, height: u32, sps: &[u8], pps: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 6];
    e.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
    e.extend_from_slice(&[0; 16]); // pre_defined, reserved
    e.extend_from_slice(&(width as u16).to_be_bytes());
    e.extend_from_slice(&(height as u16).to_be_bytes());
    e.extend(be32(&[0x0048_0000, 0x0048_0000, 0])); // 72 dpi, reserved
    e.extend_from_slice(&1u16.to_be_bytes()); // frame_count
    e.extend_from_slice(&[0; 32]); // compressorname
    e.extend_from_slice(&[0x00, 0x18, 0xFF, 0xFF]); // depth 24, pre_defined −1
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    avcc.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(sps);
    avcc.push(1);
    avcc.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    avcc.extend_from_slice(pps);
    mp4_box(b"avc1", &[&e, &mp4_box(b"avcC", &[&avcc])])
}

/// Top-level boxes of an MP4 file: `(type, offset, size)`. For tests and checks.
pub fn top_level_boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
    let mut boxes = Vec::new();
    let mut at = 0;
    while at + 8 <= data.len() {
        let size =
            u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let kind = [data[at + 4], data[at + 5], data[at + 6], data[at + 7]];
        if size < 8 || at + size > data.len() {
            break;
        }
        boxes.push((kind, at, size));
        at += size;
    }
    boxes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mp4_is_ftyp_moov_mdat_with_the_size_and_frames_asked() {
        let mp4 = render_mp4("a cat", 64, 48, 25);
        let boxes = top_level_boxes(&mp4);
        let kinds: Vec<&[u8]> = boxes.iter().map(|(k, ..)| &k[..]).collect();
        assert_eq!(kinds, [&b"ftyp"[..], b"moov", b"mdat"]);
        assert_eq!(boxes.iter().map(|b| b.2).sum::<usize>(), mp4.len());
        assert_eq!(&mp4[8..12], b"isom");
        // One I_PCM picture: 64×48 luma + chroma, plus the skipped frames' few bytes each.
        assert!(mp4.len() > 64 * 48 * 3 / 2 && mp4.len() < 64 * 48 * 3 / 2 + 2_000);
        // (The first "avc1" is a compatible brand in ftyp.)
        let stsd = mp4.windows(4).position(|w| w == b"stsd").expect("stsd");
        let avc1 = stsd + 12 + 4;
        assert_eq!(&mp4[avc1..avc1 + 4], b"avc1");
        let dims = &mp4[avc1 + 4 + 24..avc1 + 4 + 28];
        assert_eq!(dims, [0, 64, 0, 48]);
        let stsz = mp4.windows(4).position(|w| w == b"stsz").expect("stsz");
        assert_eq!(&mp4[stsz + 12..stsz + 16], 25u32.to_be_bytes());
    }

    #[test]
    fn emulation_prevention_breaks_start_codes() {
        assert_eq!(nal(0, 1, &[0, 0, 1, 0, 0, 0]), [1, 0, 0, 3, 1, 0, 0, 3, 0]);
    }

    #[test]
    fn exp_golomb_codes() {
        let mut b = Bits::default();
        b.ue(0);
        b.ue(1);
        b.ue(2);
        b.ue(25);
        // 1 010 011 000011010 → 1010 0110 0001 1010 + stop bit
        assert_eq!(b.finish(), [0b1010_0110, 0b0001_1010, 0b1000_0000]);
    }
}
