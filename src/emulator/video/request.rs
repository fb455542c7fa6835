//! The create request's validation (volcengine-api.md B.3): body-level fields strictly (400
//! `InvalidParameter` naming the field), inline `--flags` in the prompt leniently (a bad value
//! falls back to the default), input modes against the model's table.

use base64::Engine;
use serde_json::Value;

use super::models::{find, nearest_ratio, Mode, Spec, VideoModel, RATIOS, RESOLUTIONS};
use crate::emulator::ark::ArkError;
use crate::emulator::images::model_not_found;

/// Validates a create body into a [`Spec`].
pub fn parse(req: &Value) -> Result<Spec, ArkError> {
    let model_id = req["model"]
        .as_str()
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ArkError::missing("model"))?;
    let model = find(model_id).ok_or_else(|| model_not_found(model_id))?;
    let content = parse_content(req, model)?;
    let flags = Flags::parse(&content.text, model);
    let mut spec = Spec {
        model: model.id,
        prompt: flags.prompt.clone(),
        mode: content.mode.clone(),
        resolution: String::new(),
        ratio: String::new(),
        duration: None,
        frames: None,
        seed: -1,
        camera_fixed: false,
        watermark: false,
        service_tier: "default".into(),
        execution_expires_after: 172_800,
        callback_url: None,
        return_last_frame: false,
        generate_audio: None,
        draft: false,
    };
    options(req, model, &mut spec)?;
    settings(req, model, &content, &flags, &mut spec)?;
    Ok(spec)
}

struct Content {
    text: String,
    mode: Mode,
    /// Size of the first image, when it is a data URL.
    first_dims: Option<(u32, u32)>,
}

fn parse_content(req: &Value, model: &VideoModel) -> Result<Content, ArkError> {
    let items = match &req["content"] {
        Value::Null => return Err(ArkError::missing("content")),
        Value::Array(a) if !a.is_empty() => a,
        _ => return Err(ArkError::invalid("content", "must be a non-empty array")),
    };
    let (mut text, mut roles, mut first_dims, mut draft) = (None, Vec::new(), None, false);
    for item in items {
        match item["type"].as_str() {
            Some("text") => {
                let t = item["text"]
                    .as_str()
                    .ok_or_else(|| ArkError::invalid("content", "a text item needs `text`"))?;
                if text.replace(t.to_string()).is_some() {
                    return Err(ArkError::invalid(
                        "content",
                        "only one text item is allowed",
                    ));
                }
            }
            Some("image_url") => {
                let url = item["image_url"]["url"].as_str().ok_or_else(|| {
                    ArkError::invalid("content", "an image_url item needs `image_url.url`")
                })?;
                let dims =
                    check_image(url, model.v15).map_err(|why| ArkError::invalid("content", why))?;
                if roles.is_empty() {
                    first_dims = dims;
                }
                roles.push(item["role"].as_str().unwrap_or("").to_string());
            }
            Some("draft_task") if model.v15 => {
                item["draft_task"]["id"]
                    .as_str()
                    .filter(|id| !id.is_empty())
                    .ok_or_else(|| ArkError::invalid("content", "draft_task needs an `id`"))?;
                draft = true;
            }
            _ => {
                return Err(ArkError::invalid(
                    "content",
                    "each item's type must be text, image_url or draft_task",
                ))
            }
        }
    }
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    let mode = match roles.as_slice() {
        _ if draft && roles.is_empty() => Mode::Draft,
        [] => Mode::Text,
        ["" | "first_frame"] => Mode::FirstFrame,
        ["first_frame", "last_frame"] | ["last_frame", "first_frame"] => Mode::FirstLast,
        r if r.len() <= 4 && r.iter().all(|x| *x == "reference_image") => {
            Mode::Reference(r.len())
        }
        _ => {
            return Err(ArkError::invalid(
                "content",
                "images must be one first_frame, a first_frame and a last_frame, or 1-4 reference_image",
            ))
        }
    };
    let supported = match mode {
        Mode::Text => model.t2v,
        Mode::FirstFrame => model.first_frame,
        Mode::FirstLast => model.first_last,
        Mode::Reference(_) => model.reference,
        Mode::Draft => model.v15,
    };
    if !supported {
        return Err(ArkError::invalid(
            "content",
            format!("model {} does not support this input mode", model.id),
        ));
    }
    let text = text.unwrap_or_default();
    if text.trim().is_empty() && mode == Mode::Text {
        return Err(ArkError::missing("content.text"));
    }
    Ok(Content {
        text,
        mode,
        first_dims,
    })
}

/// An image reference: a public URL, or a data URL (lowercase format, readable, with the aspect
/// and sides B.3 allows); the size when it can be read.
fn check_image(url: &str, heic: bool) -> Result<Option<(u32, u32)>, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(None);
    }
    let Some(rest) = url.strip_prefix("data:image/") else {
        return Err("an image must be an http(s) URL or a data:image/<format>;base64 URL".into());
    };
    let (format, b64) = rest
        .split_once(";base64,")
        .ok_or("an image data URL must be base64")?;
    let mut formats = vec!["jpeg", "jpg", "png", "webp", "bmp", "tiff", "gif"];
    if heic {
        formats.extend(["heic", "heif"]);
    }
    if !formats.contains(&format) {
        return Err(format!(
            "image format `{format}` is not supported (lowercase)"
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "the image data URL is not valid base64".to_string())?;
    let Ok(size) = imagesize::blob_size(&bytes) else {
        return Err("the image cannot be decoded".into());
    };
    let (w, h) = (size.width as u32, size.height as u32);
    let aspect = f64::from(w) / f64::from(h.max(1));
    if !(300..6000).contains(&w) || !(300..6000).contains(&h) || !(0.4..2.5).contains(&aspect) {
        return Err(format!(
            "image of {w}x{h}: sides must be in (300, 6000) px and the aspect in (0.4, 2.5)"
        ));
    }
    Ok(Some((w, h)))
}

/// The inline flags' names, long and short.
const FLAGS: &[&str] = &[
    "resolution",
    "rs",
    "ratio",
    "rt",
    "duration",
    "dur",
    "frames",
    "framespersecond",
    "fps",
    "seed",
    "camerafixed",
    "cf",
    "watermark",
    "wm",
];

/// Legacy inline flags (`--rs 720p --dur 5 …`), read leniently: unknown or bad values are
/// ignored. The prompt is the text without them.
#[derive(Default)]
struct Flags {
    prompt: String,
    resolution: Option<String>,
    ratio: Option<String>,
    duration: Option<i64>,
    frames: Option<u32>,
    seed: Option<i64>,
    camera_fixed: Option<bool>,
    watermark: Option<bool>,
}

impl Flags {
    fn parse(text: &str, model: &VideoModel) -> Flags {
        let mut f = Flags::default();
        let mut words = Vec::new();
        let mut tokens = text.split_whitespace().peekable();
        while let Some(t) = tokens.next() {
            let name = t.strip_prefix("--").unwrap_or("");
            if !FLAGS.contains(&name) {
                words.push(t);
                continue;
            }
            let v = tokens.next().unwrap_or("");
            let boolean = |v: &str| match v {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            };
            match name {
                "resolution" | "rs" => f.resolution = valid_resolution(v).map(str::to_string),
                "ratio" | "rt" => f.ratio = valid_ratio(v, true).map(str::to_string),
                "duration" | "dur" => {
                    f.duration = v.parse().ok().filter(|d| duration_ok(*d, model))
                }
                "frames" => f.frames = v.parse().ok().filter(|n| frames_ok(*n)),
                "seed" => f.seed = v.parse().ok().filter(|s| seed_ok(*s)),
                "camerafixed" | "cf" => f.camera_fixed = boolean(v),
                "watermark" | "wm" => f.watermark = boolean(v),
                _ => {} // fps: 24 is the only value
            }
        }
        f.prompt = words.join(" ");
        f
    }
}

fn valid_resolution(v: &str) -> Option<&str> {
    RESOLUTIONS.iter().copied().find(|r| *r == v)
}

fn valid_ratio(v: &str, adaptive: bool) -> Option<&str> {
    RATIOS
        .iter()
        .copied()
        .find(|r| *r == v)
        .or((adaptive && v == "adaptive").then_some("adaptive"))
}

fn duration_ok(d: i64, model: &VideoModel) -> bool {
    (model.min_duration..=model.max_duration).contains(&d) || (model.v15 && d == -1)
}

fn frames_ok(n: u32) -> bool {
    (29..=289).contains(&n) && (n - 25).is_multiple_of(4)
}

fn seed_ok(s: i64) -> bool {
    (-1..=i64::from(u32::MAX)).contains(&s)
}

/// Body-level options that are not picture settings.
fn options(req: &Value, model: &VideoModel, spec: &mut Spec) -> Result<(), ArkError> {
    let boolean = |f: &str| -> Result<Option<bool>, ArkError> {
        match &req[f] {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            _ => Err(ArkError::invalid(f, "must be a boolean")),
        }
    };
    if let Some(url) = req.get("callback_url").filter(|v| !v.is_null()) {
        let url = url
            .as_str()
            .filter(|u| reqwest::Url::parse(u).is_ok_and(|u| u.scheme().starts_with("http")))
            .ok_or_else(|| ArkError::invalid("callback_url", "must be an http(s) URL"))?;
        spec.callback_url = Some(url.to_string());
    }
    spec.return_last_frame = boolean("return_last_frame")?.unwrap_or(false);
    if let Some(t) = req.get("service_tier").filter(|v| !v.is_null()) {
        spec.service_tier = t
            .as_str()
            .filter(|t| *t == "default" || *t == "flex")
            .ok_or_else(|| ArkError::invalid("service_tier", "must be default or flex"))?
            .to_string();
    }
    if let Some(e) = req.get("execution_expires_after").filter(|v| !v.is_null()) {
        spec.execution_expires_after = e
            .as_u64()
            .filter(|e| (3600..=259_200).contains(e))
            .ok_or_else(|| {
                ArkError::invalid("execution_expires_after", "must be in [3600, 259200]")
            })?;
    }
    for (field, value) in [
        ("generate_audio", boolean("generate_audio")?),
        ("draft", boolean("draft")?),
    ] {
        if value.is_some() && !model.v15 {
            return Err(ArkError::invalid(
                field,
                format!("not supported by model {}", model.id),
            ));
        }
    }
    spec.generate_audio = boolean("generate_audio")?.or(model.v15.then_some(true));
    spec.draft = boolean("draft")?.unwrap_or(false);
    Ok(())
}

/// Resolution, ratio, duration or frames, seed, camera and watermark: body fields (strict)
/// over inline flags (lenient) over the defaults.
fn settings(
    req: &Value,
    model: &VideoModel,
    content: &Content,
    flags: &Flags,
    spec: &mut Spec,
) -> Result<(), ArkError> {
    picture(req, model, content, flags, spec)?;
    length_and_seed(req, model, content, flags, spec)
}

/// A body-level field, absent when null.
fn field<'a>(req: &'a Value, f: &str) -> Option<&'a Value> {
    req.get(f).filter(|v| !v.is_null())
}

/// Resolution and ratio.
fn picture(
    req: &Value,
    model: &VideoModel,
    content: &Content,
    flags: &Flags,
    spec: &mut Spec,
) -> Result<(), ArkError> {
    let image_mode = matches!(content.mode, Mode::FirstFrame | Mode::FirstLast);
    let reference = matches!(content.mode, Mode::Reference(_));
    let field = |f: &str| field(req, f);
    let body_res = field("resolution")
        .map(|v| {
            v.as_str()
                .and_then(valid_resolution)
                .ok_or_else(|| ArkError::invalid("resolution", "must be 480p, 720p or 1080p"))
        })
        .transpose()?;
    if reference && body_res == Some("1080p") {
        return Err(ArkError::invalid(
            "resolution",
            "1080p is not supported with reference images",
        ));
    }
    let draft_default = (spec.draft || content.mode == Mode::Draft).then_some("480p");
    let mut resolution = body_res
        .or(flags.resolution.as_deref())
        .or(draft_default)
        .unwrap_or(model.default_resolution);
    if reference && resolution == "1080p" {
        resolution = "720p";
    }
    spec.resolution = resolution.to_string();

    let adaptive_ok = image_mode || model.v15;
    let body_ratio = field("ratio")
        .map(|v| {
            v.as_str()
                .and_then(|r| valid_ratio(r, adaptive_ok))
                .ok_or_else(|| ArkError::invalid("ratio", "not a ratio this request accepts"))
        })
        .transpose()?;
    let flag_ratio = flags
        .ratio
        .as_deref()
        .filter(|r| *r != "adaptive" || adaptive_ok);
    let default_ratio = if adaptive_ok { "adaptive" } else { "16:9" };
    let ratio = body_ratio.or(flag_ratio).unwrap_or(default_ratio);
    // `adaptive` follows the first image when it can be read, else the common 16:9.
    spec.ratio = match (ratio, content.first_dims) {
        ("adaptive", Some((w, h))) if image_mode => nearest_ratio(w, h).to_string(),
        ("adaptive", _) => "16:9".to_string(),
        (r, _) => r.to_string(),
    };
    Ok(())
}

/// Duration or frames, seed, camera and watermark.
fn length_and_seed(
    req: &Value,
    model: &VideoModel,
    content: &Content,
    flags: &Flags,
    spec: &mut Spec,
) -> Result<(), ArkError> {
    let reference = matches!(content.mode, Mode::Reference(_));
    let field = |f: &str| field(req, f);
    let bool_field = |f: &str| -> Result<Option<bool>, ArkError> {
        field(f)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| ArkError::invalid(f, "must be a boolean"))
            })
            .transpose()
    };

    let body_frames = field("frames")
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| frames_ok(*n))
                .ok_or_else(|| ArkError::invalid("frames", "must be 25 + 4n in [29, 289]"))
        })
        .transpose()?;
    let body_duration = field("duration")
        .map(|v| {
            v.as_i64()
                .filter(|d| duration_ok(*d, model))
                .ok_or_else(|| {
                    ArkError::invalid(
                        "duration",
                        format!(
                            "must be an integer in [{}, {}] for model {}",
                            model.min_duration, model.max_duration, model.id
                        ),
                    )
                })
        })
        .transpose()?;
    spec.frames = body_frames.or(flags.frames);
    if spec.frames.is_none() {
        // The model picks the length of a `-1` video: five seconds here.
        let d = body_duration.or(flags.duration).unwrap_or(5);
        spec.duration = Some(if d == -1 { 5 } else { d });
    }

    let body_seed = field("seed")
        .map(|v| {
            v.as_i64()
                .filter(|s| seed_ok(*s))
                .ok_or_else(|| ArkError::invalid("seed", "must be an integer in [-1, 4294967295]"))
        })
        .transpose()?;
    spec.seed = match body_seed.or(flags.seed).unwrap_or(-1) {
        -1 => i64::from(rand::random::<u32>() >> 1),
        s => s,
    };
    let camera_fixed = bool_field("camera_fixed")?;
    if reference && camera_fixed.is_some() {
        return Err(ArkError::invalid(
            "camera_fixed",
            "not supported with reference images",
        ));
    }
    spec.camera_fixed = camera_fixed
        .or(flags.camera_fixed.filter(|_| !reference))
        .unwrap_or(false);
    spec.watermark = bool_field("watermark")?
        .or(flags.watermark)
        .unwrap_or(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(model: &str, t: &str) -> Value {
        json!({"model": model, "content": [{"type": "text", "text": t}]})
    }

    #[test]
    fn inline_flags_are_lenient_and_body_fields_strict() {
        let pro = "doubao-seedance-1-0-pro-250528";
        let s = parse(&text(
            pro,
            "a fox --rs 720p --rt 4:3 --dur 7 --seed 11 --cf true",
        ))
        .expect("ok");
        assert_eq!((s.resolution.as_str(), s.ratio.as_str()), ("720p", "4:3"));
        assert_eq!((s.duration, s.seed, s.camera_fixed), (Some(7), 11, true));
        assert_eq!(s.prompt, "a fox");
        // Bad inline values fall back to the defaults.
        let s = parse(&text(pro, "a fox --rs 9000p --dur 99 --rt 7:5")).expect("ok");
        assert_eq!((s.resolution.as_str(), s.ratio.as_str()), ("1080p", "16:9"));
        assert_eq!(s.duration, Some(5));
        assert_eq!(s.dims(), (1920, 1088));
        // The same values at body level are refused, naming the field.
        let mut req = text(pro, "a fox");
        req["duration"] = json!(99);
        assert_eq!(parse(&req).err().map(|e| e.param), Some("duration".into()));
        let mut req = text(pro, "a fox");
        req["resolution"] = json!("9000p");
        assert_eq!(
            parse(&req).err().map(|e| e.param),
            Some("resolution".into())
        );
        let mut req = text(pro, "a fox");
        req["ratio"] = json!("adaptive");
        assert_eq!(parse(&req).err().map(|e| e.param), Some("ratio".into()));
    }

    #[test]
    fn modes_must_fit_the_model() {
        let img = |role: &str| json!({"type": "image_url", "image_url": {"url": "https://x/a.png"}, "role": role});
        let lite_t2v = "doubao-seedance-1-0-lite-t2v-250428";
        let req = json!({"model": lite_t2v, "content": [{"type": "text", "text": "x"}, img("first_frame")]});
        assert_eq!(parse(&req).err().map(|e| e.param), Some("content".into()));
        let lite_i2v = "doubao-seedance-1-0-lite-i2v-250428";
        let req = json!({"model": lite_i2v, "content": [{"type": "text", "text": "x"}, img("reference_image"), img("reference_image")]});
        let s = parse(&req).expect("references");
        assert_eq!(
            (s.mode, s.resolution.as_str()),
            (Mode::Reference(2), "720p")
        );
        let req = json!({"model": lite_i2v, "content": [{"type": "text", "text": "x"}, img("last_frame")]});
        assert!(parse(&req).is_err());
        let req = json!({"model": "nope", "content": []});
        assert_eq!(
            parse(&req).err().map(|e| e.code),
            Some("InvalidEndpointOrModel.NotFound")
        );
        let req = json!({"model": lite_t2v});
        assert_eq!(parse(&req).err().map(|e| e.code), Some("MissingParameter"));
    }

    #[test]
    fn tokens_follow_the_formula() {
        let s = parse(&text(
            "doubao-seedance-1-0-pro-250528",
            "x --rs 720p --dur 5",
        ))
        .expect("ok");
        assert_eq!(s.frame_count(), 121);
        assert_eq!(s.tokens(), 1248 * 704 * 121 / 1024);
        assert_eq!(nearest_ratio(1000, 1000), "1:1");
        assert_eq!(nearest_ratio(1920, 1080), "16:9");
    }
}
