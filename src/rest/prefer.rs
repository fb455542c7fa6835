//! `Prefer: wait=N` on create (RFC 7240): the answer waits up to N seconds for the task to
//! finish and carries its newest state. The wait follows the task's event stream, as
//! subscriptions do (`Service::wait_terminal`): no thread and no polling while it lasts.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};

use crate::auth::Principal;
use crate::domain::Task;
use crate::state::AppState;

/// The longest wait honoured: longer requests are answered after this.
pub const MAX_WAIT_SECS: u64 = 60;

/// Room left between the end of a wait and the request timeout (`REQUEST_TIMEOUT`), for reading
/// the body before and writing the answer after.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The `wait` preference of a request's `Prefer` headers, in seconds, capped at `MAX_WAIT_SECS`.
/// Preferences this server does not know, and a `wait` that is not a number of seconds, are
/// ignored as RFC 7240 asks; of several `wait`s the first counts.
pub fn wait_preference(h: &HeaderMap) -> Option<u64> {
    h.get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|pref| {
            // `token [= value] *( ";" parameter )`; the parameters say nothing about `wait`.
            let head = pref.split(';').next().unwrap_or_default();
            let (name, value) = head.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // All digits: only overflow fails, and that is more than the cap.
            Some(value.parse::<u64>().unwrap_or(u64::MAX).min(MAX_WAIT_SECS))
        })
}

/// How long a request asking for `secs` really waits: within the request timeout.
pub fn applied_wait(s: &AppState, secs: u64) -> u64 {
    let room = s.config.request_timeout.saturating_sub(TIMEOUT_MARGIN);
    secs.min(room.as_secs())
}

/// The header telling which wait was honoured.
pub fn preference_applied(secs: u64) -> HeaderValue {
    // Digits only, so always a valid value.
    HeaderValue::try_from(format!("wait={secs}")).unwrap_or(HeaderValue::from_static("wait"))
}

/// The task's newest state once it is terminal, or when `secs` have passed
/// (`Service::wait_terminal`). `created` is its state as the create left it; a failure to follow
/// answers with it (the task itself stands).
pub async fn wait_for_outcome(s: &AppState, who: &Principal, created: Task, secs: u64) -> Task {
    if created.status.is_terminal() || secs == 0 {
        return created;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    match s
        .service
        .wait_terminal(who, &created.id, deadline, s.config.subscription_resync)
        .await
    {
        Ok(t) if t.version >= created.version => t,
        Ok(_) => created,
        Err(e) => {
            tracing::warn!(task_id = %created.id, error = %e.chain(), "Prefer: wait could not follow the task");
            created
        }
    }
}
