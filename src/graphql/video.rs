//! GraphQL's video vocabulary: `TaskKind`, a task's video parameters and the input of
//! `createVideoTask`.

use async_graphql::{Enum, InputObject, SimpleObject, ID};

use crate::domain;

/// What a task makes.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TaskKind {
    /// Images (`createImageTask`); `result.images`.
    Image,
    /// A video (`createVideoTask`); `result.videoUrl`.
    Video,
}

impl From<domain::TaskKind> for TaskKind {
    fn from(k: domain::TaskKind) -> Self {
        match k {
            domain::TaskKind::Image => TaskKind::Image,
            domain::TaskKind::Video => TaskKind::Video,
        }
    }
}

/// What a video task asked for.
#[derive(SimpleObject)]
pub struct VideoSpec {
    /// Seconds of video.
    pub duration: u32,
    /// `16:9`, `4:3`, `1:1`, `3:4`, `9:16`, `21:9` or `adaptive`.
    pub ratio: String,
    /// `480p`, `720p` or `1080p`.
    pub resolution: String,
    /// Whether the camera stays still.
    pub camera_fixed: bool,
    /// Images given: 0 (text to video), 1 (first frame) or 2 (first and last frame).
    pub frames: u32,
    /// The provider's own task id, once submitted.
    pub provider_task_id: Option<String>,
}

impl VideoSpec {
    pub fn of(t: &domain::Task) -> Option<VideoSpec> {
        t.video.as_ref().map(|v| VideoSpec {
            duration: v.duration,
            ratio: v.ratio.clone(),
            resolution: v.resolution.clone(),
            camera_fixed: v.camera_fixed,
            frames: v.frame_count,
            provider_task_id: t.provider_task_id.clone(),
        })
    }
}

/// A video model (`createVideoTask`): what it accepts, checked before the provider is called.
#[derive(SimpleObject)]
pub struct VideoModel {
    /// Provider model id.
    pub id: String,
    /// Friendly name (accepted wherever a model is asked for, like the id).
    pub name: String,
    /// Human-readable name, e.g. `Seedance 1.0 Pro`.
    pub display_name: String,
    /// Takes a prompt alone (no image).
    pub text_to_video: bool,
    /// Takes one image, the first frame.
    pub first_frame: bool,
    /// Takes two images, the first and the last frame.
    pub first_last_frame: bool,
    /// Fewest seconds of video (see `durations`).
    pub min_duration: u32,
    /// Most seconds of video (see `durations`).
    pub max_duration: u32,
    /// The only durations taken, when the model has a list (Jimeng: 5 or 10); null: any from
    /// `minDuration` to `maxDuration`.
    pub durations: Option<Vec<u32>>,
    /// Resolutions it renders.
    pub resolutions: Vec<String>,
    /// The resolution of a task that gives none.
    pub default_resolution: String,
    /// Ratios of a text-to-video task (with images, `adaptive` too: the images' own).
    pub ratios: Vec<String>,
    /// Takes `cameraFixed`.
    pub camera_fixed: bool,
}

impl VideoModel {
    pub fn of(m: &domain::video::VideoModelSpec) -> VideoModel {
        VideoModel {
            id: m.id.clone(),
            name: m.name.clone(),
            display_name: m.display_name.clone(),
            text_to_video: m.text_to_video,
            first_frame: m.first_frame,
            first_last_frame: m.first_last_frame,
            min_duration: m.min_duration,
            max_duration: m.max_duration,
            durations: m.durations.map(<[u32]>::to_vec),
            resolutions: m.resolutions.iter().map(|r| r.to_string()).collect(),
            default_resolution: m.default_resolution.to_string(),
            ratios: domain::video::RATIOS
                .iter()
                .map(|r| r.to_string())
                .collect(),
            camera_fixed: m.takes_camera_fixed,
        }
    }
}

/// A new Seedance video task. Every field is checked against the model before the provider is
/// called.
#[derive(InputObject)]
pub struct CreateVideoTaskInput {
    /// What happens in the video; not blank.
    pub prompt: String,
    /// Owner of the task.
    pub user_id: Option<ID>,
    /// `seedance-1.0-pro` (default for text), `seedance-1.0-pro-fast`, `seedance-1.0-lite-t2v`,
    /// `seedance-1.0-lite-i2v`, or the provider model id.
    pub model: Option<String>,
    /// None (text to video), one (the first frame) or two (first and last frame): http(s) or
    /// data URLs.
    pub images: Option<Vec<String>>,
    /// Seconds, 2 to 12 (default 5).
    pub duration: Option<i64>,
    /// `16:9` (default for text), `4:3`, `1:1`, `3:4`, `9:16`, `21:9`, or `adaptive` (with
    /// images; their default).
    pub ratio: Option<String>,
    /// `480p`, `720p` or `1080p` (default: the model's).
    pub resolution: Option<String>,
    /// -1 (random) or 0 to 4294967295.
    pub seed: Option<i64>,
    /// Keep the camera still.
    pub camera_fixed: Option<bool>,
    /// Add the provider's watermark (default false).
    pub watermark: Option<bool>,
    /// The same key with the same input returns the same task.
    pub idempotency_key: Option<String>,
    /// Seconds the task may take to a final state; default the server's `TASK_DEADLINE`.
    pub deadline_seconds: Option<i64>,
    /// An http(s) URL the task's events are posted to, signed per Standard Webhooks, as for
    /// `createImageTask` (see `Task.webhookDeliveries`). Refused when it leads to a loopback,
    /// private, link-local or metadata address.
    pub webhook: Option<String>,
    /// Which events the webhook hears of; default both.
    pub webhook_events_filter: Option<Vec<super::webhooks::WebhookEvent>>,
}

impl From<CreateVideoTaskInput> for domain::video::CreateVideoTask {
    fn from(i: CreateVideoTaskInput) -> Self {
        domain::video::CreateVideoTask {
            user_id: i.user_id.map(|u| u.0),
            prompt: i.prompt,
            model: i.model,
            images: i.images.unwrap_or_default(),
            duration: i.duration,
            ratio: i.ratio,
            resolution: i.resolution,
            seed: i.seed,
            camera_fixed: i.camera_fixed,
            watermark: i.watermark,
            deadline_seconds: i.deadline_seconds,
            webhook: i.webhook,
            webhook_events_filter: i
                .webhook_events_filter
                .map(|f| f.into_iter().map(|e| e.filter_name()).collect()),
            idempotency_key: i.idempotency_key,
            opaque_owner: false,
            provider: None,
        }
    }
}
