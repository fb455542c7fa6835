//! The submit of a provider-side task (a Seedance or Jimeng video, Jimeng's images) and what a
//! 429 to it does, the same for both families: the rule lives here, above the provider seam, and
//! the clients only report what the provider said (its `Retry-After`, if any).
//!
//! Submits are paced like image calls (`provider::limiter`): each takes one slot of the learned
//! pace of its family and model, whose ceiling is the model's submits a minute (Ark's RPM), and
//! the pace hears every answer. A 429 costs the task no attempt: it is requeued after the
//! provider's `Retry-After`, or `THROTTLED_WAIT` without one (Ark does not document sending it;
//! without a wait the task came straight back for another 429), and the pace holds every submit
//! of that model as long and is cut, so a burst of 429s slows the model's submits rather than
//! each task retrying on its own.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::video::VideoWorker;
use super::Worker;
use crate::domain::{ProviderFamily, Task, UnkeptImages};
use crate::provider::pace::PaceSignal;
use crate::provider::{ProviderError, RemoteSubmit};

/// How long a 429 without `Retry-After` holds the submits of its model. Jimeng's per-second
/// limit clears within it; Ark's per-minute one and Jimeng's tasks-at-once one take longer, and
/// the pace's cut on each burst of 429s spaces the submits further.
pub const THROTTLED_WAIT: Duration = Duration::from_secs(1);

/// The wait after a refusal for rate: the provider's `Retry-After`, else `THROTTLED_WAIT`.
pub fn throttled_wait(e: &ProviderError) -> Duration {
    e.retry_after.unwrap_or(THROTTLED_WAIT)
}

/// The pace of provider-side submits is kept per family (each uses one account: Ark's first
/// key, Jimeng's key pair) and model.
fn pace_key(model: &str) -> &'static str {
    match ProviderFamily::of_model(model) {
        ProviderFamily::Ark => "ark-tasks",
        ProviderFamily::Jimeng => "jimeng",
    }
}

impl Worker {
    /// One submit, in its slot of the model's pace; the pace hears the answer.
    pub(super) async fn submit_paced(
        &self,
        video: &VideoWorker,
        req: &RemoteSubmit,
    ) -> Result<String, ProviderError> {
        let (key, model) = (pace_key(req.model()), req.model());
        let permit = self.limiter.acquire(key, model, 1).await;
        if let Some(p) = &permit {
            metrics::histogram!("rate_limiter_wait_seconds", "model" => model.to_string())
                .record(p.waited.as_secs_f64());
        }
        let result = video.provider.submit(req).await;
        drop(permit);
        let signal = match &result {
            Ok(_) => Some(PaceSignal::Accepted(1)),
            Err(e) if e.is_pace_signal() => Some(PaceSignal::Throttled(Some(throttled_wait(e)))),
            Err(_) => None,
        };
        if let Some(signal) = signal {
            self.limiter.signal(key, model, signal).await;
        }
        result
    }

    /// processing → pending after a refusal that costs no attempt (a 429, or a refused key of a
    /// pool with others), due again `wait` from now.
    pub(super) async fn requeue_paced(
        &self,
        running: &Task,
        e: &ProviderError,
        unkept: Option<UnkeptImages>,
        wait: Duration,
        now: DateTime<Utc>,
    ) -> Result<(), crate::error::AppError> {
        let error = e.task_error();
        let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
        let Ok(mut next) = running.requeue_paced(error, at, now) else {
            return Ok(());
        };
        next.unkept = unkept;
        if self.commit(running, next).await?.is_some() {
            tracing::info!(code = %e.code, retry_at = %at, "rate-limited or key refused; tried again, no attempt spent");
            self.backends.queue.enqueue(&running.id, Some(at)).await?;
        }
        Ok(())
    }
}
