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
            idempotency_key: i.idempotency_key,
            opaque_owner: false,
        }
    }
}
