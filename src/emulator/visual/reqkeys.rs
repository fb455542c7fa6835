//! Jimeng's `req_key`s (volcengine-api.md C.3) and the submit body each accepts (C.4). A body
//! that breaks a rule gets 400 with business code 50215 "Input invalid for this service." (the
//! answer seen live); an unknown `req_key` 50400, as one the account has not enabled.

use serde_json::Value;

use super::VisualError;
use crate::emulator::video::models::{dims as video_dims, RATIOS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// 文生图 3.0 / 3.1: width × height in [512², 2048²], aspect 1:3–3:1, default 1328².
    T2i,
    /// 图片生成 4.0 (up to 10 images) and 4.6 (up to 14): `size` area or width × height in
    /// [1024², 4096²].
    Seedream { max_images: usize },
    /// 图生图 3.0: exactly one image, each side in [512, 2016].
    I2i,
    /// 视频 3.0: text, one first frame, or first and last frames; 720p or 1080p.
    Video {
        images: usize,
        text_optional: bool,
        hd: bool,
    },
    /// 视频 3.0 Pro: text or one image, 1080p.
    VideoPro,
}

pub struct ReqKey {
    pub name: &'static str,
    pub kind: Kind,
    rules: Rules,
}

const fn video(name: &'static str, images: usize, hd: bool) -> ReqKey {
    ReqKey {
        name,
        kind: Kind::Video,
        rules: Rules::Video {
            images,
            text_optional: images > 0,
            hd,
        },
    }
}

pub const REQ_KEYS: &[ReqKey] = &[
    ReqKey {
        name: "jimeng_t2i_v30",
        kind: Kind::Image,
        rules: Rules::T2i,
    },
    ReqKey {
        name: "jimeng_t2i_v31",
        kind: Kind::Image,
        rules: Rules::T2i,
    },
    ReqKey {
        name: "jimeng_t2i_v40",
        kind: Kind::Image,
        rules: Rules::Seedream { max_images: 10 },
    },
    ReqKey {
        name: "jimeng_seedream46_cvtob",
        kind: Kind::Image,
        rules: Rules::Seedream { max_images: 14 },
    },
    ReqKey {
        name: "jimeng_i2i_v30",
        kind: Kind::Image,
        rules: Rules::I2i,
    },
    video("jimeng_t2v_v30", 0, false),
    video("jimeng_t2v_v30_1080p", 0, true),
    video("jimeng_i2v_first_v30", 1, false),
    video("jimeng_i2v_first_v30_1080", 1, true),
    video("jimeng_i2v_first_tail_v30", 2, false),
    video("jimeng_i2v_first_tail_v30_1080", 2, true),
    ReqKey {
        name: "jimeng_ti2v_v30_pro",
        kind: Kind::Video,
        rules: Rules::VideoPro,
    },
    video("jimeng_vgfm_t2v_l20", 0, false),
    video("jimeng_vgfm_i2v_l20", 1, false),
];

pub fn find(name: &str) -> Option<&'static ReqKey> {
    REQ_KEYS.iter().find(|k| k.name == name)
}

/// What a valid submit asks for.
#[derive(Debug, Clone)]
pub struct Job {
    pub prompt: String,
    /// Output picture or video size.
    pub dims: (u32, u32),
    /// Video frames (24 fps); 0 for images.
    pub frames: u32,
}

fn invalid() -> VisualError {
    VisualError::bad_request(50215, "Input invalid for this service.")
}

fn int(body: &Value, f: &str) -> Result<Option<i64>, VisualError> {
    match &body[f] {
        Value::Null => Ok(None),
        v => v.as_i64().map(Some).ok_or_else(invalid),
    }
}

fn number(body: &Value, f: &str) -> Result<Option<f64>, VisualError> {
    match &body[f] {
        Value::Null => Ok(None),
        v => v.as_f64().map(Some).ok_or_else(invalid),
    }
}

/// Width and height given together (or neither).
fn width_height(body: &Value) -> Result<Option<(u32, u32)>, VisualError> {
    match (int(body, "width")?, int(body, "height")?) {
        (None, None) => Ok(None),
        (Some(w), Some(h)) if w > 0 && h > 0 && w <= 8192 && h <= 8192 => {
            Ok(Some((w as u32, h as u32)))
        }
        _ => Err(invalid()),
    }
}

/// Images given as `image_urls` or `binary_data_base64` (not both).
fn image_count(body: &Value) -> Result<usize, VisualError> {
    let list = |f: &str| match &body[f] {
        Value::Null => Ok(None),
        Value::Array(a) if a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => {
            Ok(Some(a.len()))
        }
        _ => Err(invalid()),
    };
    match (list("image_urls")?, list("binary_data_base64")?) {
        (Some(_), Some(_)) => Err(invalid()),
        (a, b) => Ok(a.or(b).unwrap_or(0)),
    }
}

fn area_ok((w, h): (u32, u32), min: u64, max: u64, max_ratio: f64) -> bool {
    let area = u64::from(w) * u64::from(h);
    let ratio = f64::from(w) / f64::from(h);
    (min..=max).contains(&area) && ratio <= max_ratio && ratio >= 1.0 / max_ratio
}

/// Validates a submit body: its `req_key` and what it asks for.
pub fn parse(body: &Value) -> Result<(&'static ReqKey, Job), VisualError> {
    let name = body["req_key"].as_str().ok_or_else(invalid)?;
    let key = find(name)
        .ok_or_else(|| VisualError::bad_request(50400, "Access Denied: Internal Error"))?;
    let prompt = match &body["prompt"] {
        Value::Null => String::new(),
        Value::String(p) if p.chars().count() <= 800 => p.clone(),
        _ => return Err(invalid()),
    };
    int(body, "seed")?;
    let images = image_count(body)?;
    let needs_prompt = |p: &str| {
        if p.trim().is_empty() {
            Err(invalid())
        } else {
            Ok(())
        }
    };
    let job = |dims, frames| Job {
        prompt: prompt.clone(),
        dims,
        frames,
    };
    match key.rules {
        Rules::T2i => {
            needs_prompt(&prompt)?;
            let dims = width_height(body)?.unwrap_or((1328, 1328));
            if images > 0 || !area_ok(dims, 512 * 512, 2048 * 2048, 3.0) {
                return Err(invalid());
            }
            Ok((key, job(dims, 0)))
        }
        Rules::Seedream { max_images } => {
            needs_prompt(&prompt)?;
            seedream(body, images, max_images).map(|dims| (key, job(dims, 0)))
        }
        Rules::I2i => {
            needs_prompt(&prompt)?;
            let (w, h) = width_height(body)?.unwrap_or((1328, 1328));
            let side_ok = |s: u32| (512..=2016).contains(&s);
            let scale_ok = number(body, "scale")?.is_none_or(|s| (0.0..=1.0).contains(&s));
            if images != 1 || !side_ok(w) || !side_ok(h) || !scale_ok {
                return Err(invalid());
            }
            let out = |s: u32| (s.div_ceil(16) * 16).clamp(512, 1536);
            Ok((key, job((out(w), out(h)), 0)))
        }
        Rules::Video {
            images: n,
            text_optional,
            hd,
        } => {
            if !text_optional {
                needs_prompt(&prompt)?;
            }
            let ratio = if n == 0 { aspect_ratio(body)? } else { "16:9" };
            if images != n {
                return Err(invalid());
            }
            let dims = video_dims(if hd { "1080p" } else { "720p" }, ratio);
            Ok((key, job(dims, frames(body)?)))
        }
        Rules::VideoPro => {
            if images == 0 {
                needs_prompt(&prompt)?;
            }
            let ratio = if images == 0 {
                aspect_ratio(body)?
            } else {
                "16:9"
            };
            if images > 1 {
                return Err(invalid());
            }
            Ok((key, job(video_dims("1080p", ratio), frames(body)?)))
        }
    }
}

fn seedream(body: &Value, images: usize, max_images: usize) -> Result<(u32, u32), VisualError> {
    const MIN: u64 = 1024 * 1024;
    const MAX: u64 = 4096 * 4096;
    let min_ratio = number(body, "min_ratio")?.unwrap_or(1.0 / 3.0);
    let max_ratio = number(body, "max_ratio")?.unwrap_or(3.0);
    let ratio_ok = |r: f64| (1.0 / 16.0..16.0).contains(&r);
    if images > max_images
        || !ratio_ok(min_ratio)
        || !ratio_ok(max_ratio)
        || min_ratio > max_ratio
        || number(body, "scale")?.is_some_and(|s| !(0.0..=1.0).contains(&s))
        || !matches!(body["force_single"], Value::Null | Value::Bool(_))
    {
        return Err(invalid());
    }
    if let Some((w, h)) = width_height(body)? {
        let r = f64::from(w) / f64::from(h);
        if !area_ok((w, h), MIN, MAX, 16.0) || r < min_ratio || r > max_ratio {
            return Err(invalid());
        }
        return Ok((w, h));
    }
    let size = int(body, "size")?.unwrap_or(2048 * 2048);
    if !(MIN as i64..=MAX as i64).contains(&size) {
        return Err(invalid());
    }
    // The model chooses the aspect for an area alone: square here.
    let side = (size as f64).sqrt() as u32;
    Ok((side, side))
}

fn aspect_ratio(body: &Value) -> Result<&'static str, VisualError> {
    match &body["aspect_ratio"] {
        Value::Null => Ok("16:9"),
        Value::String(r) => RATIOS.iter().copied().find(|x| x == r).ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// `frames`: 121 (5 s, the default) or 241 (10 s).
fn frames(body: &Value) -> Result<u32, VisualError> {
    match int(body, "frames")? {
        None | Some(121) => Ok(121),
        Some(241) => Ok(241),
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(body: Value) -> Option<i64> {
        parse(&body).err().map(|e| e.code)
    }

    #[test]
    fn bodies_are_checked_per_req_key() {
        let (k, job) = parse(&json!({"req_key": "jimeng_t2i_v31", "prompt": "a cat"})).expect("ok");
        assert_eq!((k.kind, job.dims), (Kind::Image, (1328, 1328)));
        assert_eq!(code(json!({"req_key": "jimeng_t2i_v31"})), Some(50215));
        assert_eq!(
            code(json!({"req_key": "jimeng_t2i_v31", "prompt": "x", "width": 512})),
            Some(50215)
        );
        assert_eq!(
            code(
                json!({"req_key": "jimeng_t2i_v31", "prompt": "x", "width": 4000, "height": 4000})
            ),
            Some(50215)
        );
        assert_eq!(code(json!({"req_key": "nope", "prompt": "x"})), Some(50400));
        let (_, job) = parse(&json!({"req_key": "jimeng_t2i_v40", "prompt": "x", "size": 1048576}))
            .expect("ok");
        assert_eq!(job.dims, (1024, 1024));
        assert_eq!(
            code(json!({"req_key": "jimeng_i2i_v30", "prompt": "x"})),
            Some(50215)
        );
        let (_, job) = parse(&json!({"req_key": "jimeng_i2i_v30", "prompt": "x", "image_urls": ["https://a/b.png"], "width": 2000, "height": 600})).expect("ok");
        assert_eq!(job.dims, (1536, 608));
        let (k, job) = parse(&json!({"req_key": "jimeng_t2v_v30_1080p", "prompt": "x", "frames": 241, "aspect_ratio": "9:16"})).expect("ok");
        assert_eq!(
            (k.kind, job.dims, job.frames),
            (Kind::Video, (1088, 1920), 241)
        );
        assert_eq!(
            code(json!({"req_key": "jimeng_t2v_v30", "prompt": "x", "frames": 100})),
            Some(50215)
        );
        assert_eq!(
            code(json!({"req_key": "jimeng_i2v_first_tail_v30", "image_urls": ["https://a"]})),
            Some(50215)
        );
        assert!(
            parse(&json!({"req_key": "jimeng_ti2v_v30_pro", "image_urls": ["https://a"]})).is_ok()
        );
    }
}
