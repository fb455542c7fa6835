//! Transitions that time makes: a scheduled task that is due becomes pending and is queued; an
//! unfinished task past its deadline fails with `DEADLINE_EXCEEDED`. Each pass is one indexed
//! store query per kind (ranges of `(status, due time)` and `(status, deadline)`), so it costs
//! the same however many tasks are stored, and every change is a compare-and-set, so any number
//! of processes may run it: only the one whose write wins queues (or announces) the task, and a
//! worker still holding an expired task loses its own write.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::domain::Task;

const BATCH: usize = 500;

/// Promotes due scheduled tasks and fails overdue ones every `sweep_interval` until `shutdown`.
pub async fn run(worker: Arc<Worker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(worker.cfg.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Deadlines first: a scheduled task already past its deadline fails rather than runs.
        drain(|| expire_overdue(&worker), "failing overdue tasks").await;
        drain(|| promote_due(&worker), "promoting scheduled tasks").await;
    }
}

/// Runs `pass` again while it finds a full batch (more may be waiting), until an error.
async fn drain<F, Fut>(pass: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, crate::error::AppError>>,
{
    loop {
        match pass().await {
            Ok(n) if n >= BATCH => continue,
            Ok(_) => return,
            Err(e) => {
                e.log_internal();
                tracing::warn!(error = %e, "{what} failed");
                return;
            }
        }
    }
}

/// Fails every unfinished task whose deadline has passed. Returns how many were found.
pub async fn expire_overdue(worker: &Worker) -> Result<usize, crate::error::AppError> {
    let now = Utc::now();
    let overdue = worker.backends.store.past_deadline(now, BATCH).await?;
    let found = overdue.len();
    for task in overdue {
        expire(worker, &task, now).await?;
    }
    Ok(found)
}

/// Fails `task` with `DEADLINE_EXCEEDED` unless it changed meanwhile (finished, or expired by
/// another process). The change is published, so subscribers and the worker holding the task
/// (which abandons its provider call) hear of it.
pub async fn expire(
    worker: &Worker,
    task: &Task,
    now: DateTime<Utc>,
) -> Result<bool, crate::error::AppError> {
    let Ok(next) = task.expire(now) else {
        return Ok(false);
    };
    let expired = worker.commit(task, next).await?.is_some();
    if expired {
        metrics::counter!("tasks_deadline_exceeded_total").increment(1);
        tracing::warn!(task_id = %task.id, was = %task.status, deadline = ?task.deadline_at, "task passed its deadline; failed");
    }
    Ok(expired)
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
