//! Seedance video: the table of what each video model accepts (volcengine-api.md B.2, B.3) and
//! the parser of a video request (`CreateVideoTask` → `NewVideoTask`), which checks every field
//! against that table before any provider call, reporting every problem at once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::field::FieldError;
use super::image_input::ReferenceImage;
use super::new_task::{DeadlineSecs, IdempotencyKey, Owner, Prompt};
use super::task::{ImageParams, Task, TaskKind};
use super::webhook::WebhookTarget;

/// The provider name the latest Go server's clients send (its dispatcher of Volcengine's APIs).
pub const PROVIDER: &str = "volcengine";

/// Longest video prompt: Ark advises ≤ 500 Chinese characters or 1,000 English words.
pub const MAX_VIDEO_PROMPT_CHARS: usize = 4000;

/// The ratios Seedance renders (B.3); `adaptive` follows the first frame (image-to-video only).
pub const RATIOS: [&str; 6] = ["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"];
pub const RESOLUTIONS: [&str; 3] = ["480p", "720p", "1080p"];

/// One Seedance model as the provider has it.
#[derive(Debug, Clone, Serialize)]
pub struct VideoModelSpec {
    pub id: String,
    pub name: String,
    pub display_name: String,
    /// Text only.
    pub text_to_video: bool,
    /// One image, the first frame.
    pub first_frame: bool,
    /// Two images, the first and the last frame.
    pub first_last_frame: bool,
    pub default_resolution: &'static str,
    pub min_duration: u32,
    pub max_duration: u32,
    /// Only these durations (Jimeng renders 5 or 10 s); `None`: any in the range.
    pub durations: Option<&'static [u32]>,
    /// The resolutions it renders.
    pub resolutions: &'static [&'static str],
    /// Takes `camera_fixed` (Seedance does, Jimeng does not).
    pub takes_camera_fixed: bool,
    /// Seconds the provider typically needs per second of 720p video (the tracker polls by
    /// it; 1080p takes about twice, 480p half).
    pub secs_per_video_sec: u32,
    /// Submits a minute the provider takes for the model (Ark's RPM, B.2): the ceiling of the
    /// learned submit pace.
    pub submits_per_minute: u32,
}

impl VideoModelSpec {
    /// What a task of this model is expected to take at the provider, to poll by.
    pub fn expected_secs(&self, duration: u32, resolution: &str) -> u64 {
        let base = u64::from(self.secs_per_video_sec) * u64::from(duration);
        match resolution {
            "1080p" => base * 2,
            "480p" => base / 2,
            _ => base,
        }
        .max(10)
    }
}

#[derive(Debug, Clone)]
pub struct VideoCatalog {
    models: Vec<VideoModelSpec>,
}

impl Default for VideoCatalog {
    fn default() -> Self {
        VideoCatalog::new()
    }
}

impl VideoCatalog {
    pub fn new() -> VideoCatalog {
        let m = |id: &str, name: &str, display: &str, modes: (bool, bool, bool), res, speed| {
            // B.2: Pro 600 a minute, Lite 300.
            let rpm = if id.contains("-lite-") { 300 } else { 600 };
            VideoModelSpec {
                submits_per_minute: rpm,
                id: id.into(),
                name: name.into(),
                display_name: display.into(),
                text_to_video: modes.0,
                first_frame: modes.1,
                first_last_frame: modes.2,
                default_resolution: res,
                min_duration: 2,
                max_duration: 12,
                durations: None,
                resolutions: &RESOLUTIONS,
                takes_camera_fixed: true,
                secs_per_video_sec: speed,
            }
        };
        let mut models = vec![
            m(
                "doubao-seedance-1-0-pro-250528",
                "seedance-1.0-pro",
                "Seedance 1.0 Pro",
                (true, true, true),
                "1080p",
                8,
            ),
            m(
                "doubao-seedance-1-0-pro-fast-251015",
                "seedance-1.0-pro-fast",
                "Seedance 1.0 Pro Fast",
                (true, true, false),
                "1080p",
                4,
            ),
            m(
                "doubao-seedance-1-0-lite-t2v-250428",
                "seedance-1.0-lite-t2v",
                "Seedance 1.0 Lite (text to video)",
                (true, false, false),
                "720p",
                6,
            ),
            m(
                "doubao-seedance-1-0-lite-i2v-250428",
                "seedance-1.0-lite-i2v",
                "Seedance 1.0 Lite (image to video)",
                (false, true, true),
                "720p",
                6,
            ),
        ];
        models.extend(super::jimeng::video_models());
        VideoCatalog { models }
    }

    pub fn all(&self) -> &[VideoModelSpec] {
        &self.models
    }

    pub fn find(&self, name: &str) -> Option<&VideoModelSpec> {
        let name = name.trim();
        self.models
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(name) || m.name.eq_ignore_ascii_case(name))
    }

    /// The named model; left out, the first that does the request's mode (text or frames).
    fn parse_model(&self, raw: Option<&str>, images: usize) -> Result<&VideoModelSpec, FieldError> {
        match raw.map(str::trim).filter(|m| !m.is_empty()) {
            None => self
                .models
                .iter()
                .find(|m| match images {
                    0 => m.text_to_video,
                    1 => m.first_frame,
                    _ => m.first_last_frame,
                })
                .ok_or_else(|| FieldError::new("model", "no video model takes this request")),
            Some(name) => self.find(name).ok_or_else(|| {
                let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                FieldError::new(
                    "model",
                    format!("unknown video model; known: {}", known.join(", ")),
                )
                .with_value(name)
            }),
        }
    }
}

/// What a video task asks the model for, stored with the task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoParams {
    /// Seconds of video.
    pub duration: u32,
    pub ratio: String,
    pub resolution: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default)]
    pub camera_fixed: bool,
    #[serde(default)]
    pub watermark: bool,
    /// No frame (text to video), the first frame, or the first and the last frame.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// How many `frames` were given: kept when the frames themselves are left out (events).
    #[serde(default)]
    pub frame_count: u32,
    /// What the provider is expected to take, seconds (the tracker polls by it).
    pub expected_secs: u64,
    /// The secret in this task's callback URL: the provider's callbacks are not signed, so only
    /// a caller that knows it (the provider, told at submit) can make the tracker look at the
    /// task. Never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_token: Option<String>,
}

/// A new callback token: 32 characters of `[A-Za-z0-9]` from the thread's CSPRNG (190 bits).
pub fn callback_token() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Whether `given` is the task's callback token, compared in constant time.
pub fn callback_token_matches(params: Option<&VideoParams>, given: &str) -> bool {
    let Some(token) = params.and_then(|p| p.callback_token.as_deref()) else {
        return false;
    };
    let (a, b) = (token.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A video request as a surface received it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateVideoTask {
    pub user_id: Option<String>,
    pub prompt: String,
    pub model: Option<String>,
    /// First frame, or first and last frame.
    pub images: Vec<String>,
    pub duration: Option<i64>,
    pub ratio: Option<String>,
    pub resolution: Option<String>,
    pub seed: Option<i64>,
    pub camera_fixed: Option<bool>,
    pub watermark: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<i64>,
    /// As on an image request (`WebhookTarget::parse`); left out of the fingerprint when
    /// absent, so requests without them hash as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_events_filter: Option<Vec<String>>,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    /// Legacy REST routes: `user_id` may be any opaque id.
    #[serde(skip)]
    pub opaque_owner: bool,
    /// The latest Go server's `provider` (REST only): it dispatched tasks by this name, so a
    /// name other than Volcengine's asked for a provider this service does not have.
    #[serde(skip)]
    pub provider: Option<String>,
}

impl CreateVideoTask {
    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A video request with every field checked against its model.
#[derive(Debug, Clone)]
pub struct NewVideoTask<'c> {
    pub user_id: Owner,
    pub model: &'c VideoModelSpec,
    pub prompt: Prompt,
    pub params: VideoParams,
    pub idempotency: Option<(IdempotencyKey, String)>,
    pub deadline: Option<DeadlineSecs>,
    pub webhook: Option<WebhookTarget>,
}

fn one_of(field: &str, raw: Option<&str>, allowed: &[&str]) -> Result<Option<String>, FieldError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(v) => allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(v))
            .map(|a| Some(a.to_string()))
            .ok_or_else(|| {
                FieldError::new(field, format!("must be one of {}", allowed.join(", ")))
                    .with_value(v)
            }),
    }
}

/// The model's own rules: mode by the number of frames, duration range, ratio, resolution, seed.
fn check_params(
    raw: &CreateVideoTask,
    m: &VideoModelSpec,
    frames: Vec<String>,
) -> Result<VideoParams, Vec<FieldError>> {
    let mut errors = Vec::new();
    // By the images asked for, valid or not (an invalid one is reported by itself).
    let given = raw.images.len();
    let mode_ok = match given {
        0 => m.text_to_video,
        1 => m.first_frame,
        2 => m.first_last_frame,
        _ => false,
    };
    if !mode_ok {
        let what = match given {
            0 => "text to video (no image)".to_string(),
            1 => "a first frame (one image)".to_string(),
            2 => "a first and a last frame (two images)".to_string(),
            n => format!("{n} images (at most 2: first and last frame)"),
        };
        errors.push(
            FieldError::new("images", format!("model {} does not take {what}", m.name))
                .with_value(given),
        );
    }
    let in_range = |d: i64| (i64::from(m.min_duration)..=i64::from(m.max_duration)).contains(&d);
    let duration = match (raw.duration, m.durations) {
        (None, _) => 5,
        (Some(d), None) if in_range(d) => d as u32,
        (Some(d), Some(only)) if only.iter().any(|o| i64::from(*o) == d) => d as u32,
        (Some(d), only) => {
            let allowed = match only {
                Some(only) => {
                    let only: Vec<String> = only.iter().map(u32::to_string).collect();
                    only.join(" or ")
                }
                None => format!("{} to {}", m.min_duration, m.max_duration),
            };
            errors.push(
                FieldError::new(
                    "duration",
                    format!("must be {allowed} seconds for model {}", m.name),
                )
                .with_value(d),
            );
            5
        }
    };
    let mut ratios: Vec<&str> = RATIOS.to_vec();
    if given > 0 {
        ratios.push("adaptive");
    }
    let ratio = one_of("ratio", raw.ratio.as_deref(), &ratios).unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let ratio = ratio.unwrap_or_else(|| if given == 0 { "16:9" } else { "adaptive" }.into());
    let resolution = one_of("resolution", raw.resolution.as_deref(), m.resolutions)
        .unwrap_or_else(|e| {
            errors.push(e);
            None
        })
        .unwrap_or_else(|| m.default_resolution.to_string());
    let seed = raw.seed.filter(|s| *s != -1);
    if let Some(s) = seed.filter(|s| !(0..=i64::from(u32::MAX)).contains(s)) {
        errors.push(FieldError::new("seed", "must be -1 or 0 to 4294967295").with_value(s));
    }
    if raw.camera_fixed == Some(true) && !m.takes_camera_fixed {
        errors.push(
            FieldError::new(
                "camera_fixed",
                format!("model {} does not take camera_fixed", m.name),
            )
            .with_value(true),
        );
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(VideoParams {
        duration,
        expected_secs: m.expected_secs(duration, &resolution),
        ratio,
        resolution,
        seed,
        camera_fixed: raw.camera_fixed.unwrap_or(false),
        watermark: raw.watermark.unwrap_or(false),
        frame_count: frames.len() as u32,
        frames,
        callback_token: Some(callback_token()),
    })
}

impl NewVideoTask<'_> {
    pub fn parse(
        raw: CreateVideoTask,
        catalog: &VideoCatalog,
    ) -> Result<NewVideoTask<'_>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let key = IdempotencyKey::parse(raw.idempotency_key.as_deref());
        let fingerprint = matches!(key, Ok(Some(_))).then(|| raw.fingerprint());
        let prompt = Prompt::parse(&raw.prompt, MAX_VIDEO_PROMPT_CHARS);
        let user_id = Owner::parse(raw.user_id.as_deref(), raw.opaque_owner);
        let deadline = DeadlineSecs::parse(raw.deadline_seconds);
        let webhook =
            WebhookTarget::parse(raw.webhook.as_deref(), raw.webhook_events_filter.as_deref());
        let mut frames = Vec::new();
        for (i, url) in raw.images.iter().enumerate() {
            match ReferenceImage::parse(i, url.clone()) {
                Ok(f) => frames.push(f.into_inner()),
                Err(mut e) => {
                    e.field = format!("images[{i}]");
                    errors.push(e);
                }
            }
        }
        if let Some(p) = raw.provider.as_deref() {
            if !p.trim().eq_ignore_ascii_case(PROVIDER) {
                errors.push(
                    FieldError::new("provider", format!("must be {PROVIDER} (or left out)"))
                        .with_value(p),
                );
            }
        }
        let model = catalog.parse_model(raw.model.as_deref(), raw.images.len());
        let params = model.as_ref().ok().map(|m| check_params(&raw, m, frames));
        match (model, prompt, user_id, key, deadline, params, webhook) {
            (
                Ok(model),
                Ok(prompt),
                Ok(user_id),
                Ok(key),
                Ok(deadline),
                Some(Ok(params)),
                Ok(webhook),
            ) if errors.is_empty() => Ok(NewVideoTask {
                user_id,
                model,
                prompt,
                params,
                idempotency: key.zip(fingerprint),
                deadline,
                webhook,
            }),
            (model, prompt, user_id, key, deadline, params, webhook) => {
                let mut all: Vec<FieldError> = [
                    model.err(),
                    prompt.err(),
                    user_id.err(),
                    key.err(),
                    deadline.err(),
                ]
                .into_iter()
                .flatten()
                .collect();
                all.append(&mut errors);
                if let Some(Err(e)) = params {
                    all.extend(e);
                }
                // Last, as on an image request.
                if let Err(e) = webhook {
                    all.extend(e);
                }
                Err(all)
            }
        }
    }

    /// The pending task this request makes, with its own deadline or `default_deadline_secs`.
    pub fn into_task(self, now: DateTime<Utc>, default_deadline_secs: u64) -> Task {
        let deadline = self
            .deadline
            .map_or(default_deadline_secs, DeadlineSecs::get);
        let params = ImageParams {
            seed: self.params.seed,
            watermark: self.params.watermark,
            ..ImageParams::default()
        };
        let mut task = Task::new_pending(
            self.user_id.as_str().to_string(),
            self.model.id.clone(),
            self.prompt.as_str().to_string(),
            params,
            self.idempotency.map(|(k, h)| (k.as_str().to_string(), h)),
            now,
        );
        task.kind = TaskKind::Video;
        task.video = Some(self.params);
        task.webhook = self.webhook;
        task.with_deadline(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "0192e4a0-0000-7000-8000-000000000001";

    fn req(prompt: &str) -> CreateVideoTask {
        CreateVideoTask {
            user_id: Some(USER.into()),
            prompt: prompt.into(),
            ..CreateVideoTask::default()
        }
    }

    #[test]
    fn text_to_video_gets_the_models_defaults() {
        let c = VideoCatalog::new();
        let t = NewVideoTask::parse(req("a fox"), &c).expect("valid");
        assert_eq!(t.model.id, "doubao-seedance-1-0-pro-250528");
        assert_eq!(
            (
                t.params.duration,
                t.params.ratio.as_str(),
                t.params.resolution.as_str()
            ),
            (5, "16:9", "1080p")
        );
        let task = t.into_task(Utc::now(), 600);
        assert_eq!(task.kind, TaskKind::Video);
    }

    #[test]
    fn every_problem_is_reported_before_any_call() {
        let c = VideoCatalog::new();
        let mut r = req(" ");
        r.model = Some("seedance-1.0-lite-t2v".into());
        r.images = vec!["https://example.com/a.png".into()];
        r.duration = Some(30);
        r.ratio = Some("5:4".into());
        r.resolution = Some("4k".into());
        r.seed = Some(-5);
        let e = NewVideoTask::parse(r, &c).expect_err("invalid");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "prompt",
                "images",
                "duration",
                "ratio",
                "resolution",
                "seed"
            ]
        );
        let mut r = req("x");
        r.images = vec![
            "ftp://x".into(),
            "https://e.com/b.png".into(),
            "https://e.com/c.png".into(),
        ];
        let e = NewVideoTask::parse(r, &c).expect_err("invalid");
        assert_eq!(e[0].field, "images[0]");
        assert!(e.iter().any(|e| e.field == "images"), "{e:?}");
    }

    #[test]
    fn a_webhook_is_parsed_as_on_an_image_request() {
        let c = VideoCatalog::new();
        let mut r = req("x");
        r.webhook = Some("https://hooks.example.com/v".into());
        r.webhook_events_filter = Some(vec!["completed".into()]);
        let task = NewVideoTask::parse(r, &c)
            .expect("valid")
            .into_task(Utc::now(), 600);
        let w = task.webhook.expect("kept on the task");
        assert_eq!(w.url, "https://hooks.example.com/v");
        assert_eq!(w.events, [super::super::webhook::WebhookEvent::Completed]);
        let mut r = req(" ");
        r.webhook = Some("ftp://hooks.example.com".into());
        let e = NewVideoTask::parse(r, &c).expect_err("invalid");
        let fields: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["prompt", "webhook"]);
    }

    #[test]
    fn the_go_servers_provider_name_is_volcengine_or_nothing() {
        let c = VideoCatalog::new();
        for ok in [None, Some("volcengine"), Some(" VolcEngine ")] {
            let mut r = req("x");
            r.provider = ok.map(str::to_string);
            assert!(NewVideoTask::parse(r, &c).is_ok(), "{ok:?}");
        }
        for bad in ["openai", "", "volcengine_jimeng"] {
            let mut r = req("x");
            r.provider = Some(bad.into());
            let e = NewVideoTask::parse(r, &c).expect_err(bad);
            assert_eq!(e[0].field, "provider", "{e:?}");
        }
    }

    #[test]
    fn frames_choose_the_mode() {
        let c = VideoCatalog::new();
        let mut r = req("x");
        r.model = Some("doubao-seedance-1-0-pro-fast-251015".into());
        r.images = vec!["https://e.com/a.png".into(), "https://e.com/b.png".into()];
        assert!(
            NewVideoTask::parse(r.clone(), &c).is_err(),
            "pro-fast: no last frame"
        );
        r.model = None;
        let t = NewVideoTask::parse(r, &c).expect("first+last");
        assert_eq!(t.params.frames.len(), 2);
        assert_eq!(t.params.ratio, "adaptive");
    }
}
