//! Makes the store the truth: re-enqueues pending tasks that are due and takes back processing
//! tasks whose lease ran out (their worker died). Whatever the queue lost, this finds.

use std::sync::Arc;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::domain::{Task, TaskStatus};

const BATCH: usize = 500;

/// Recovers orphans first (when configured), then tells the loops they may take work through
/// `recovered`, then reconciles on its interval.
pub async fn run(
    worker: Arc<Worker>,
    shutdown: CancellationToken,
    recovered: tokio::sync::watch::Sender<bool>,
) {
    if worker.cfg.recover_orphans_at_start {
        match recover_orphans(&worker).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                tasks = n,
                "requeued tasks left processing by a previous run"
            ),
            Err(e) => tracing::error!(error = %e.chain(), "orphan recovery failed"),
        }
    }
    recovered.send_replace(true);
    let mut tick = tokio::time::interval(worker.cfg.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = reconcile_once(&worker).await {
            e.log_internal();
            tracing::warn!(error = %e, "reconcile pass failed");
        }
    }
}

async fn recover_orphans(worker: &Worker) -> Result<usize, crate::error::AppError> {
    let svc = &worker.backends;
    let mut n = 0;
    loop {
        let batch = svc.store.processing_tasks(BATCH).await?;
        if batch.is_empty() {
            return Ok(n);
        }
        let mut progressed = false;
        for task in batch {
            let now = Utc::now();
            if let Ok(next) = task.requeue(None, now, now) {
                if worker.commit(&task, next).await?.is_some() {
                    n += 1;
                    progressed = true;
                }
            }
        }
        if !progressed {
            return Ok(n);
        }
    }
}

pub async fn reconcile_once(worker: &Worker) -> Result<usize, crate::error::AppError> {
    let svc = &worker.backends;
    let now = Utc::now();
    let mut due = svc.store.due_tasks(now, BATCH).await?;
    // In queue-number order, so that a queue refilled after a restart (or a Redis flush) serves
    // tasks in the order their positions count them. A stable sort: unnumbered tasks (stored
    // before numbering) keep the store's oldest-first order, ahead of the rest.
    due.sort_by_key(|t| t.queue_seq.unwrap_or(0));
    let mut n = 0;
    let mut failed = None;
    for task in due {
        // One task that cannot be written now (its write lock left by a killed process, until
        // that goes stale) must not hold back the others' recovery.
        match take_back(worker, &task).await {
            Ok(true) => n += 1,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "could not reconcile a task");
                failed = Some(e);
            }
        }
    }
    match failed {
        Some(e) if n == 0 => Err(e),
        _ => Ok(n),
    }
}

/// Enqueues a due pending task, or requeues a processing one whose lease ran out.
async fn take_back(worker: &Worker, task: &Task) -> Result<bool, crate::error::AppError> {
    let svc = &worker.backends;
    match task.status {
        TaskStatus::Pending => {
            svc.queue.enqueue(&task.id, None).await?;
            Ok(true)
        }
        // This process's own worker holds it, so its call is alive and it must not be made
        // twice; the heartbeat extends the lease when it gets through.
        TaskStatus::Processing if worker.holds(&task.id) => Ok(false),
        TaskStatus::Processing => {
            // The lease was read expired a moment ago (a whole batch may have been written
            // since): it is taken only if it still is, so a heartbeat in between wins.
            let now = Utc::now();
            let Ok(next) = task.requeue(None, now, now) else {
                return Ok(false);
            };
            if worker.commit_expired(task, next, now).await?.is_none() {
                return Ok(false);
            }
            tracing::warn!(task_id = %task.id, owner = ?task.lease_owner, "lease expired; task requeued");
            svc.queue.enqueue(&task.id, None).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
