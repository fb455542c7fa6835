//! The service's vocabulary: users, tasks and the state machine that moves a task along, the
//! catalogue of image models, and the parsers that turn a request's raw fields into these types
//! (`NewImageTask::parse`), reporting every `FieldError` at once. Nothing here does I/O; the
//! service layer persists what these functions compute.

pub mod api_key;
pub mod field;
pub mod image_input;
pub mod jimeng;
pub mod models;
pub mod new_task;
pub mod task;
pub mod user;
pub mod video;
pub mod webhook;

pub use api_key::ApiKey;
pub use field::FieldError;
pub use image_input::ModelParams;
pub use jimeng::ProviderFamily;
pub use models::{Catalog, ModelFamily, ModelSpec, SizeRule};
pub use new_task::{CreateImageTask, NewImageTask};
pub use task::{
    ImageParams, ProviderImage, StoredImage, StoredVideo, Task, TaskError, TaskKind, TaskResult,
    TaskStatus, TransitionError, UnkeptImages, TASK_KIND_IMAGE, TASK_KIND_VIDEO,
};
pub use user::User;
pub use webhook::{
    DeliveryAttempt, DeliveryState, RetrySchedule, WebhookDelivery, WebhookEvent, WebhookTarget,
};

/// New ids are UUIDv7: unique without coordination and ordered by creation time, so "newest
/// first" paging can sort on the id alone, in SQLite and MongoDB alike.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Ids arrive from clients in paths and bodies; anything that is not a UUID can never name a
/// record, and rejecting it early keeps junk out of store queries and logs.
pub fn is_valid_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::parse_str(id).is_ok()
}

/// An id the older Go server's clients may hold for a user (`user_123`, a 24-hex ObjectId):
/// 1 to 64 characters of `[A-Za-z0-9_-]`. Ids issued here are UUIDs, which are of this form too.
pub fn is_opaque_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A time as every surface and store writes it: RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => "png",
        "image/jpeg" => "jpeg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => "bin",
    }
}

/// The stable URL of a stored video on this server.
pub fn video_url(base: &str, v: &StoredVideo) -> String {
    format!("{base}/videos/{}.mp4", v.id)
}

/// The stable URL of a stored image on this server (`base` is the public base URL).
pub fn image_url(base: &str, img: &StoredImage) -> String {
    format!("{base}/images/{}.{}", img.id, extension(&img.content_type))
}
