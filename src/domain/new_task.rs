//! A request to create an image task as it arrives (`CreateImageTask`, filled in by REST, GraphQL
//! and whatever surface comes next) and what it parses into (`NewImageTask`): every field a type
//! that only holds valid values, every problem of the request reported at once, nothing left to
//! check afterwards.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::field::FieldError;
use super::image_input::{ModelParams, RawModelParams};
use super::models::{Catalog, ModelSpec, MAX_PROMPT_CHARS};
use super::task::{ImageParams, Task};
use super::webhook::WebhookTarget;

pub const MAX_SHORT_TEXT: usize = 64;
pub const MAX_OPTIONS_BYTES: usize = 4096;
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// An image request as a surface received it. Its JSON form is also the request's fingerprint
/// for idempotent replays (stored with the task), so its fields keep their order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateImageTask {
    pub user_id: Option<String>,
    pub prompt: String,
    pub model: Option<String>,
    pub size: Option<String>,
    pub seed: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub watermark: Option<bool>,
    pub images: Vec<String>,
    pub n: Option<i64>,
    pub quality: Option<String>,
    pub style: Option<String>,
    pub options: Option<serde_json::Value>,
    /// Seconds from now before the task starts (the older server's `delay`). Left out of the
    /// fingerprint when absent, so fingerprints stored before it existed still match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<i64>,
    /// When the task starts (RFC 3339), instead of `delay`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_at: Option<String>,
    /// Seconds the task may take from its start to a terminal state (`TASK_DEADLINE` if none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<i64>,
    #[serde(skip)]
    pub idempotency_key: Option<String>,
    /// Left out of the fingerprint when absent, so requests without them hash as before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_events_filter: Option<Vec<String>>,
    /// Set by the legacy REST routes: `user_id` may be any opaque id (`is_opaque_id`), not only
    /// a UUID issued here.
    #[serde(skip)]
    pub opaque_owner: bool,
}

impl CreateImageTask {
    /// What the request asks for, to tell an idempotent replay from a reuse of its key for
    /// something else.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// A prompt that is not blank, within the model's length and free of control characters other
/// than line breaks and tabs; trimmed.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt(String);

impl Prompt {
    pub fn parse(raw: &str, max_chars: usize) -> Result<Prompt, FieldError> {
        let t = raw.trim();
        let chars = t.chars().count();
        if t.is_empty() {
            Err(FieldError::new("prompt", "prompt must not be blank"))
        } else if chars > max_chars {
            Err(FieldError::new(
                "prompt",
                format!("prompt must be at most {max_chars} characters (got {chars})"),
            ))
        } else if t
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
        {
            Err(FieldError::new(
                "prompt",
                "prompt must not contain control characters",
            ))
        } else {
            Ok(Prompt(t.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of the user a task is for (whether that user exists is the service's question).
#[derive(Debug, Clone, PartialEq)]
pub struct Owner(String);

impl Owner {
    pub fn parse(raw: Option<&str>, opaque: bool) -> Result<Owner, FieldError> {
        match raw.map(str::trim) {
            None | Some("") => Err(FieldError::new("user_id", "user_id is required")),
            Some(id) if opaque && super::is_opaque_id(id) => Ok(Owner(id.to_string())),
            Some(id) if !super::is_valid_id(id) => {
                Err(FieldError::new("user_id", "is not a valid id"))
            }
            Some(id) => Ok(Owner(id.to_string())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A short free-text setting kept and echoed back (`quality`, `style`): at most 64 printable
/// characters, trimmed; blank counts as left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Label(String);

impl Label {
    pub fn parse(field: &str, raw: Option<String>) -> Result<Option<Label>, FieldError> {
        let Some(s) = raw.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if s.chars().count() > MAX_SHORT_TEXT || s.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_SHORT_TEXT} printable characters"),
            ));
        }
        Ok(Some(Label(s)))
    }
}

/// The older server's free-form `options`, kept and echoed back: at most 4 KB of JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtraOptions(serde_json::Value);

impl ExtraOptions {
    pub fn parse(raw: Option<serde_json::Value>) -> Result<Option<ExtraOptions>, FieldError> {
        let Some(o) = raw else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&o).map_or(usize::MAX, |v| v.len());
        if bytes > MAX_OPTIONS_BYTES {
            return Err(FieldError::new(
                "options",
                format!("must be at most {MAX_OPTIONS_BYTES} bytes"),
            ));
        }
        Ok(Some(ExtraOptions(o)))
    }
}

/// A client's idempotency key: at most 200 bytes, printable, trimmed; blank counts as none.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: Option<&str>) -> Result<Option<IdempotencyKey>, FieldError> {
        let Some(k) = raw.map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        if k.len() > MAX_IDEMPOTENCY_KEY || k.chars().any(char::is_control) {
            return Err(FieldError::new(
                "idempotency_key",
                format!("must be at most {MAX_IDEMPOTENCY_KEY} printable characters"),
            ));
        }
        Ok(Some(IdempotencyKey(k.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Furthest ahead a task may be scheduled: 30 days.
pub const MAX_SCHEDULE_AHEAD_SECS: i64 = 30 * 24 * 3600;
/// How far in the past a `run_at` may lie and still mean "now": clocks of clients differ, and a
/// request takes time to arrive. Further back it is refused as a mistake.
pub const RUN_AT_PAST_TOLERANCE_SECS: i64 = 60;

/// When a new task may start: `None` is now, `Some(at)` a later time (the task is scheduled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartAt(Option<DateTime<Utc>>);

impl StartAt {
    /// `delay` (seconds, 0 = now) or `run_at` (RFC 3339), not both; at most 30 days ahead. A
    /// `run_at` up to a minute in the past starts now; earlier is refused.
    pub fn parse(
        delay: Option<i64>,
        run_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StartAt, FieldError> {
        let run_at = run_at.map(str::trim).filter(|s| !s.is_empty());
        let max = MAX_SCHEDULE_AHEAD_SECS;
        let at = match (delay, run_at) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new("run_at", "give delay or run_at, not both"))
            }
            (None, None) => return Ok(StartAt(None)),
            (Some(d), None) => {
                if !(0..=max).contains(&d) {
                    return Err(FieldError::new(
                        "delay",
                        format!("must be between 0 and {max} seconds (30 days)"),
                    )
                    .with_value(d));
                }
                now + chrono::Duration::seconds(d)
            }
            (None, Some(raw)) => {
                let at = DateTime::parse_from_rfc3339(raw)
                    .map_err(|_| {
                        FieldError::new(
                            "run_at",
                            "must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z",
                        )
                        .with_value(raw)
                    })?
                    .with_timezone(&Utc);
                if at < now - chrono::Duration::seconds(RUN_AT_PAST_TOLERANCE_SECS) {
                    return Err(
                        FieldError::new("run_at", "must not be in the past").with_value(raw)
                    );
                }
                if at > now + chrono::Duration::seconds(max) {
                    return Err(
                        FieldError::new("run_at", "must be at most 30 days ahead").with_value(raw)
                    );
                }
                at
            }
        };
        Ok(StartAt((at > now).then_some(at)))
    }

    pub fn get(self) -> Option<DateTime<Utc>> {
        self.0
    }
}

/// Longest deadline a task may have, and `TASK_DEADLINE`'s bound: 7 days.
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// A task's own deadline: 1 second to 7 days.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeadlineSecs(u64);

impl DeadlineSecs {
    pub fn parse(raw: Option<i64>) -> Result<Option<DeadlineSecs>, FieldError> {
        let Some(n) = raw else {
            return Ok(None);
        };
        match u64::try_from(n) {
            Ok(s) if (1..=MAX_DEADLINE_SECS).contains(&s) => Ok(Some(DeadlineSecs(s))),
            _ => Err(FieldError::new(
                "deadline_seconds",
                format!("must be between 1 and {MAX_DEADLINE_SECS} seconds (7 days)"),
            )
            .with_value(n)),
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// An image task request with every field parsed; what remains to check needs the store (the
/// user exists) or the caller (may submit for this user).
#[derive(Debug, Clone)]
pub struct NewImageTask<'c> {
    pub user_id: Owner,
    pub model: &'c ModelSpec,
    pub prompt: Prompt,
    pub params: ModelParams,
    pub watermark: bool,
    pub quality: Option<Label>,
    pub style: Option<Label>,
    pub options: Option<ExtraOptions>,
    /// The key, with the request's fingerprint.
    pub idempotency: Option<(IdempotencyKey, String)>,
    pub start_at: StartAt,
    pub webhook: Option<WebhookTarget>,
    /// `None`: the server's `TASK_DEADLINE`.
    pub deadline: Option<DeadlineSecs>,
}

impl NewImageTask<'_> {
    /// Every problem of the request, in the order model, prompt, user_id, quality, style,
    /// options, idempotency_key, then the model's fields (size, seed, guidance_scale, image, n;
    /// not checked when the model is unknown, as they are the model's rules).
    pub fn parse(
        raw: CreateImageTask,
        catalog: &Catalog,
    ) -> Result<NewImageTask<'_>, Vec<FieldError>> {
        let idempotency_key = IdempotencyKey::parse(raw.idempotency_key.as_deref());
        let fingerprint = matches!(idempotency_key, Ok(Some(_))).then(|| raw.fingerprint());
        let webhook =
            WebhookTarget::parse(raw.webhook.as_deref(), raw.webhook_events_filter.as_deref());
        let model = catalog.parse_model(raw.model.as_deref());
        let max_prompt = model
            .as_ref()
            .map_or(MAX_PROMPT_CHARS, |m| m.max_prompt_chars);
        let prompt = Prompt::parse(&raw.prompt, max_prompt);
        let user_id = Owner::parse(raw.user_id.as_deref(), raw.opaque_owner);
        let quality = Label::parse("quality", raw.quality);
        let style = Label::parse("style", raw.style);
        let options = ExtraOptions::parse(raw.options);
        let start_at = StartAt::parse(raw.delay, raw.run_at.as_deref(), Utc::now());
        let deadline = DeadlineSecs::parse(raw.deadline_seconds);
        let model_params = RawModelParams {
            size: raw.size,
            seed: raw.seed,
            guidance_scale: raw.guidance_scale,
            images: raw.images,
            n: raw.n,
        };
        let params = model
            .as_ref()
            .ok()
            .map(|m| ModelParams::parse(model_params, m));
        let parsed = match (
            model,
            prompt,
            user_id,
            quality,
            style,
            options,
            idempotency_key,
            start_at,
            deadline,
            params,
        ) {
            (
                Ok(model),
                Ok(prompt),
                Ok(user_id),
                Ok(quality),
                Ok(style),
                Ok(options),
                Ok(key),
                Ok(start_at),
                Ok(deadline),
                Some(Ok(params)),
            ) => Ok(NewImageTask {
                user_id,
                model,
                prompt,
                params,
                watermark: raw.watermark.unwrap_or(false),
                quality,
                style,
                options,
                idempotency: key.zip(fingerprint),
                start_at,
                webhook: None,
                deadline,
            }),
            (model, prompt, user_id, quality, style, options, key, start_at, deadline, params) => {
                let mut errors: Vec<FieldError> = [
                    model.err(),
                    prompt.err(),
                    user_id.err(),
                    quality.err(),
                    style.err(),
                    options.err(),
                    key.err(),
                    start_at.err(),
                    deadline.err(),
                ]
                .into_iter()
                .flatten()
                .collect();
                if let Some(Err(e)) = params {
                    errors.extend(e);
                }
                Err(errors)
            }
        };
        match (parsed, webhook) {
            (Ok(mut t), Ok(w)) => {
                t.webhook = w;
                Ok(t)
            }
            (Ok(_), Err(e)) => Err(e),
            (Err(mut errors), Err(e)) => {
                errors.extend(e);
                Err(errors)
            }
            (Err(errors), Ok(_)) => Err(errors),
        }
    }

    /// The task this request makes: pending, or scheduled when it starts later; with its own
    /// deadline or `default_deadline_secs` (`TASK_DEADLINE`), from when it may start.
    pub fn into_task(self, now: DateTime<Utc>, default_deadline_secs: u64) -> Task {
        let deadline = self
            .deadline
            .map_or(default_deadline_secs, DeadlineSecs::get);
        let p = self.params;
        let start_at = self.start_at.get().filter(|at| *at > now);
        let webhook = self.webhook;
        let mut task = Task::new_pending(
            self.user_id.0,
            self.model.id.clone(),
            self.prompt.0,
            ImageParams {
                size: p.size.into_inner(),
                seed: p.seed.map(|s| s.get()),
                guidance_scale: p.guidance_scale.map(|g| g.get()),
                watermark: self.watermark,
                images: p.images.into_urls(),
                n: p.n.get(),
                quality: self.quality.map(|l| l.0),
                style: self.style.map(|l| l.0),
                options: self.options.map(|o| o.0),
            },
            self.idempotency.map(|(k, hash)| (k.0, hash)),
            now,
        );
        task.webhook = webhook;
        match start_at {
            Some(at) => task.scheduled_for(at),
            None => task,
        }
        .with_deadline(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::ModelIds;

    const USER: &str = "0192e4a0-0000-7000-8000-000000000001";

    fn catalog() -> Catalog {
        Catalog::new(&ModelIds::default())
    }

    fn request(prompt: &str) -> CreateImageTask {
        CreateImageTask {
            user_id: Some(USER.into()),
            prompt: prompt.into(),
            ..CreateImageTask::default()
        }
    }

    fn fields(e: &[FieldError]) -> Vec<&str> {
        e.iter().map(|f| f.field.as_str()).collect()
    }

    #[test]
    fn prompt_is_trimmed_bounded_and_printable() {
        assert_eq!(
            Prompt::parse("  a cat\n\tin a hat\r\n ", 100).map(|p| p.as_str().to_string()),
            Ok("a cat\n\tin a hat".into())
        );
        for blank in ["", "   ", "\n\t"] {
            let e = Prompt::parse(blank, 100).expect_err("blank");
            assert_eq!(e.message, "prompt must not be blank");
        }
        // Characters, not bytes: ten CJK characters are 30 bytes.
        assert!(Prompt::parse(&"猫".repeat(10), 10).is_ok());
        let e = Prompt::parse(&"猫".repeat(11), 10).expect_err("too long");
        assert_eq!(e.message, "prompt must be at most 10 characters (got 11)");
        let e = Prompt::parse("a\u{0}b", 10).expect_err("NUL");
        assert_eq!(e.message, "prompt must not contain control characters");
        assert!(Prompt::parse("a\u{7f}b", 10).is_err());
    }

    #[test]
    fn owner_is_a_uuid() {
        assert_eq!(
            Owner::parse(Some(&format!(" {USER} ")), false).map(|o| o.as_str().to_string()),
            Ok(USER.into())
        );
        assert_eq!(
            Owner::parse(None, false).map_err(|e| e.message),
            Err("user_id is required".into())
        );
        assert!(Owner::parse(Some(" "), false).is_err());
        assert_eq!(
            Owner::parse(Some("user_123"), true).map(|o| o.as_str().to_string()),
            Ok("user_123".into()),
            "the legacy routes' opaque ids"
        );
        assert!(Owner::parse(Some("a b"), true).is_err());
        assert!(Owner::parse(Some(&"a".repeat(65)), true).is_err());
        let e = Owner::parse(Some("user-1"), false).expect_err("not a uuid");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("user_id", "is not a valid id")
        );
    }

    #[test]
    fn labels_options_and_keys_are_bounded() {
        assert_eq!(Label::parse("style", None), Ok(None));
        assert_eq!(Label::parse("style", Some("  ".into())), Ok(None));
        assert_eq!(
            Label::parse("style", Some(" vivid ".into())),
            Ok(Some(Label("vivid".into())))
        );
        assert!(Label::parse("quality", Some("q".repeat(64))).is_ok());
        let e = Label::parse("quality", Some("q".repeat(65))).expect_err("long");
        assert_eq!(e.field, "quality");
        assert!(Label::parse("style", Some("a\u{1b}b".into())).is_err());

        assert_eq!(ExtraOptions::parse(None), Ok(None));
        assert!(ExtraOptions::parse(Some(serde_json::json!({"a": 1}))).is_ok());
        let big = serde_json::json!({ "a": "x".repeat(MAX_OPTIONS_BYTES) });
        let e = ExtraOptions::parse(Some(big)).expect_err("too big");
        assert_eq!(e.message, "must be at most 4096 bytes");

        assert_eq!(IdempotencyKey::parse(None), Ok(None));
        assert_eq!(IdempotencyKey::parse(Some(" ")), Ok(None));
        assert_eq!(
            IdempotencyKey::parse(Some(" k-1 ")).map(|k| k.map(|k| k.as_str().to_string())),
            Ok(Some("k-1".into()))
        );
        assert!(IdempotencyKey::parse(Some(&"k".repeat(200))).is_ok());
        // Bytes, not characters: the stores index the key.
        assert!(IdempotencyKey::parse(Some(&"é".repeat(101))).is_err());
        let e = IdempotencyKey::parse(Some("a\nb")).expect_err("control");
        assert_eq!(e.field, "idempotency_key");
    }

    #[test]
    fn a_valid_request_becomes_a_pending_task() {
        let c = catalog();
        let raw = CreateImageTask {
            model: Some("seedream-4.0".into()),
            size: Some("2k".into()),
            images: vec!["https://a.example/x.png".into()],
            n: Some(3),
            watermark: Some(true),
            style: Some(" film ".into()),
            options: Some(serde_json::json!({"k": "v"})),
            idempotency_key: Some(" key ".into()),
            ..request("  a lighthouse ")
        };
        let fingerprint = raw.fingerprint();
        let new = NewImageTask::parse(raw, &c).expect("valid");
        assert_eq!(new.model.name, "doubao-seedream-4.0");
        let now = Utc::now();
        let t = new.into_task(now, 1800);
        assert_eq!(t.user_id, USER);
        assert_eq!(t.model, "doubao-seedream-4-0-250828");
        assert_eq!(t.prompt, "a lighthouse");
        assert_eq!(t.params.size, "2K");
        assert_eq!(t.params.n, 3);
        assert!(t.params.watermark);
        assert_eq!(t.params.images, ["https://a.example/x.png"]);
        assert_eq!(t.params.style.as_deref(), Some("film"));
        assert_eq!(t.params.quality, None);
        assert_eq!(t.params.options, Some(serde_json::json!({"k": "v"})));
        assert_eq!(t.idempotency_key.as_deref(), Some("key"));
        assert_eq!(t.request_hash, Some(fingerprint));
        assert_eq!(t.created_at, now);

        let plain = NewImageTask::parse(request("p"), &c).expect("defaults");
        assert_eq!(plain.model.id, c.default_model().id);
        let t = plain.into_task(now, 1800);
        assert_eq!((t.params.size.as_str(), t.params.n), ("1024x1024", 1));
        assert!(!t.params.watermark);
        assert_eq!((t.idempotency_key, t.request_hash), (None, None));
    }

    #[test]
    fn every_field_error_comes_back_at_once_in_order() {
        let raw = CreateImageTask {
            user_id: Some("nope".into()),
            prompt: " ".into(),
            size: Some("9x9".into()),
            seed: Some(-2),
            guidance_scale: Some(0.0),
            images: vec!["ftp://x".into()],
            n: Some(2),
            quality: Some("q".repeat(65)),
            style: Some("\u{7}".into()),
            options: Some(serde_json::json!("x".repeat(5000))),
            idempotency_key: Some("k".repeat(201)),
            ..CreateImageTask::default()
        };
        let e = NewImageTask::parse(raw, &catalog()).expect_err("all wrong");
        assert_eq!(
            fields(&e),
            [
                "prompt",
                "user_id",
                "quality",
                "style",
                "options",
                "idempotency_key",
                "size",
                "seed",
                "guidance_scale",
                "image",
                "image[0]",
                "n"
            ]
        );
    }

    #[test]
    fn an_unknown_model_skips_only_the_models_rules() {
        let raw = CreateImageTask {
            user_id: None,
            model: Some("dall-e-3".into()),
            size: Some("9x9".into()),
            n: Some(99),
            ..request(&"p".repeat(MAX_PROMPT_CHARS + 1))
        };
        let e = NewImageTask::parse(raw, &catalog()).expect_err("unknown model");
        assert_eq!(fields(&e), ["model", "prompt", "user_id"]);
        assert_eq!(e[0].value, Some(serde_json::json!("dall-e-3")));
    }

    #[test]
    fn the_fingerprint_tells_requests_apart_but_not_their_keys() {
        let a = request("a cat");
        let mut same = a.clone();
        same.idempotency_key = Some("another key".into());
        assert_eq!(a.fingerprint(), same.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        let mut other = a.clone();
        other.seed = Some(1);
        assert_ne!(a.fingerprint(), other.fingerprint());
        // Fingerprints are stored with tasks: the JSON they hash must not change shape.
        assert_eq!(
            serde_json::to_string(&request("p")).ok().as_deref(),
            Some(
                r#"{"user_id":"0192e4a0-0000-7000-8000-000000000001","prompt":"p","model":null,"size":null,"seed":null,"guidance_scale":null,"watermark":null,"images":[],"n":null,"quality":null,"style":null,"options":null}"#
            )
        );
    }

    #[test]
    fn a_start_is_now_a_delay_or_a_time_within_30_days() {
        let now: DateTime<Utc> = "2026-12-03T10:00:00Z".parse().expect("time");
        let secs = |n| now + chrono::Duration::seconds(n);
        let parse = |d, r| StartAt::parse(d, r, now).map(StartAt::get);
        assert_eq!(parse(None, None), Ok(None));
        assert_eq!(parse(Some(0), None), Ok(None), "delay 0 starts now");
        assert_eq!(parse(Some(90), None), Ok(Some(secs(90))));
        assert_eq!(
            parse(Some(MAX_SCHEDULE_AHEAD_SECS), None),
            Ok(Some(secs(MAX_SCHEDULE_AHEAD_SECS)))
        );
        for bad in [-1, MAX_SCHEDULE_AHEAD_SECS + 1, i64::MAX, i64::MIN] {
            let e = parse(Some(bad), None).expect_err("out of bounds");
            assert_eq!(e.field, "delay");
        }
        assert_eq!(
            parse(None, Some("2026-12-03T11:00:00+01:00")),
            Ok(None),
            "an offset is honoured: that is now"
        );
        assert_eq!(
            parse(None, Some(" 2026-12-03T10:05:00Z ")),
            Ok(Some(secs(300)))
        );
        assert_eq!(parse(None, Some("")), Ok(None), "blank is left out");
        assert_eq!(
            parse(None, Some("2026-12-03T09:59:30Z")),
            Ok(None),
            "half a minute late: now"
        );
        for (bad, why) in [
            ("2026-12-03T09:58:00Z", "must not be in the past"),
            ("2027-01-03T10:00:01Z", "must be at most 30 days ahead"),
            (
                "tomorrow",
                "must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z",
            ),
            (
                "2026-12-03 10:05",
                "must be an RFC 3339 time, e.g. 2026-12-03T10:00:00Z",
            ),
        ] {
            let e = parse(None, Some(bad)).expect_err(bad);
            assert_eq!((e.field.as_str(), e.message.as_str()), ("run_at", why));
        }
        let e = parse(Some(5), Some("2026-12-03T10:05:00Z")).expect_err("both");
        assert_eq!(e.field, "run_at");
    }

    #[test]
    fn a_delayed_request_becomes_a_scheduled_task_with_the_same_fingerprint_shape() {
        let mut raw = request("a cat");
        raw.delay = Some(120);
        let before = Utc::now();
        let t = NewImageTask::parse(raw.clone(), &catalog())
            .expect("valid")
            .into_task(Utc::now(), 1800);
        assert_eq!(t.status, crate::domain::TaskStatus::Scheduled);
        let at = t.not_before.expect("due time");
        assert!(at >= before + chrono::Duration::seconds(120));
        assert_eq!(t.run_at, Some(at));
        assert!(serde_json::to_string(&raw)
            .expect("json")
            .ends_with(r#""options":null,"delay":120}"#));
        raw.delay = Some(-3);
        raw.size = Some("13x7".into());
        let e = NewImageTask::parse(raw, &catalog()).expect_err("invalid");
        assert_eq!(fields(&e), ["delay", "size"]);
    }

    #[test]
    fn a_deadline_is_one_second_to_seven_days_and_defaults_to_the_servers() {
        assert_eq!(DeadlineSecs::parse(None), Ok(None));
        assert_eq!(
            DeadlineSecs::parse(Some(1)).map(|d| d.map(DeadlineSecs::get)),
            Ok(Some(1))
        );
        assert!(DeadlineSecs::parse(Some(604_800)).is_ok());
        for bad in [0, -1, 604_801, i64::MIN, i64::MAX] {
            let e = DeadlineSecs::parse(Some(bad)).expect_err("out of bounds");
            assert_eq!(e.field, "deadline_seconds");
        }
        let now = Utc::now();
        let models = catalog();
        let t = NewImageTask::parse(request("p"), &models)
            .expect("valid")
            .into_task(now, 1800);
        assert_eq!(
            (t.deadline_secs, t.deadline_at),
            (Some(1800), Some(now + chrono::Duration::seconds(1800)))
        );
        let mut raw = request("p");
        raw.deadline_seconds = Some(30);
        raw.delay = Some(100);
        let t = NewImageTask::parse(raw, &catalog())
            .expect("valid")
            .into_task(now, 1800);
        let due = t.run_at.expect("scheduled");
        assert_eq!(t.deadline_at, Some(due + chrono::Duration::seconds(30)));
    }
}
