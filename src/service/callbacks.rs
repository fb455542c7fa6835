//! The provider's callbacks about video tasks (Ark's `callback_url`). Ark does not sign them, so
//! one is believed only as far as it names a task by that task's secret token, and even then
//! only as a hint: it makes the worker tracking the task fetch the task's state from the
//! provider now; the body's own state is never taken. Repeats are harmless (a terminal task is
//! left alone, a look at a task already being looked at is dropped by the tracker).

use crate::domain::video::callback_token_matches;
use crate::error::AppError;

use super::Service;

/// What a verified callback led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The tracker was asked to look at the task now.
    Looked,
    /// Nothing to do: the task has ended here.
    Ended,
    /// The body says the provider is still working: no look (the body is not trusted to say
    /// more; if it lies, the fallback poll finds out).
    Working,
}

impl Service {
    /// A callback for task `task_id` carrying `token`, its body saying `reported` (the
    /// provider's status, if readable). A wrong token or unknown task is refused and changes
    /// nothing.
    pub async fn video_callback(
        &self,
        task_id: &str,
        token: &str,
        reported: Option<&str>,
    ) -> Result<CallbackOutcome, AppError> {
        let outcome = self.video_callback_inner(task_id, token, reported).await;
        let label = match &outcome {
            Ok(CallbackOutcome::Looked) => "looked",
            Ok(CallbackOutcome::Ended) => "ended",
            Ok(CallbackOutcome::Working) => "working",
            Err(AppError::Forbidden(_)) => "refused",
            Err(_) => "error",
        };
        metrics::counter!("video_callbacks_total", "outcome" => label).increment(1);
        outcome
    }

    async fn video_callback_inner(
        &self,
        task_id: &str,
        token: &str,
        reported: Option<&str>,
    ) -> Result<CallbackOutcome, AppError> {
        let refused = || AppError::Forbidden("unknown task or wrong callback token".into());
        if !crate::domain::is_valid_id(task_id) {
            return Err(refused());
        }
        let task = self.store.get_task(task_id).await?;
        // Unknown task and wrong token answer alike: a caller learns nothing about ids.
        let Some(task) = task.filter(|t| callback_token_matches(t.video.as_ref(), token)) else {
            tracing::warn!(
                task_id,
                "video callback refused: unknown task or wrong token"
            );
            return Err(refused());
        };
        if task.status.is_terminal() {
            return Ok(CallbackOutcome::Ended);
        }
        if matches!(reported, Some("queued" | "running")) {
            return Ok(CallbackOutcome::Working);
        }
        self.events.look(&task.id).await?;
        Ok(CallbackOutcome::Looked)
    }
}
