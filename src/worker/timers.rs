//! Transitions that time makes: a scheduled task that is due becomes pending and is queued. Each
//! pass is one indexed store query (a range of `(status, due time)`), so it costs the same
//! however many tasks are stored, and every change is a compare-and-set, so any number of
//! processes may run it: only the one whose write wins queues the task.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Worker;

const BATCH: usize = 500;

/// Promotes due scheduled tasks every `sweep_interval` until `shutdown`.
pub async fn run(worker: Arc<Worker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(worker.cfg.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A full batch means more may be due: go on at once rather than a tick later.
        loop {
            match promote_due(&worker).await {
                Ok(n) if n >= BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    e.log_internal();
                    tracing::warn!(error = %e, "promoting scheduled tasks failed");
                    break;
                }
            }
        }
    }
}

/// Makes the scheduled tasks due now pending and queues those this call changed. Returns how
/// many were due (changed here or by another process meanwhile).
pub async fn promote_due(worker: &Worker) -> Result<usize, crate::error::AppError> {
    let now = Utc::now();
    let due = worker.backends.store.due_scheduled(now, BATCH).await?;
    let found = due.len();
    for task in due {
        let Ok(next) = task.promote(now) else {
            continue;
        };
        if worker.commit(&task, next).await?.is_none() {
            // Cancelled, or promoted by another process first.
            continue;
        }
        tracing::info!(task_id = %task.id, "scheduled task is due; queued");
        if let Err(e) = worker.backends.queue.enqueue(&task.id, None).await {
            // Pending in the store: the reconciler queues it on its next pass.
            tracing::warn!(task_id = %task.id, error = %e, "enqueue failed; the reconciler will pick the task up");
        }
    }
    Ok(found)
}
