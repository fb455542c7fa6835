//! Admission of a user's submits: the submit rate (a token bucket, shared through Redis in
//! distributed mode), the in-flight quota counted with the submits not stored yet, and the users
//! recently seen to exist.

use std::collections::HashMap;
use std::sync::Arc;

use super::Service;
use crate::cache::TtlCache;
use crate::error::{AppError, FieldError};
use crate::provider::limiter::Pacer;
use crate::store::UsageQuery;

/// Users' submits that passed the in-flight quota check and are not stored yet. The store's
/// count cannot see them, so without this, concurrent submits of one user each saw the same count
/// and together overshot `USER_MAX_IN_FLIGHT`. A submit takes its place before it reads the
/// count and counts the places taken before its own: of any two concurrent submits the later
/// one sees the earlier, either still here or already stored, so the last one admitted has seen
/// all the others. These are this process's places; where the pacer is shared (Redis), every
/// process's are held there too (`Pacer::hold`) and counted instead, by the same rule.
#[derive(Default)]
pub struct Submitting(std::sync::Mutex<HashMap<String, usize>>);

/// One submit's place in [`Submitting`] (and in the pacer's shared holds), given back once the
/// task is stored or refused: by `release`, or when dropped (a request cancelled midway, an
/// error), where the shared place is given back by a task of its own.
pub struct SubmitSlot<'a> {
    of: &'a Submitting,
    user_id: String,
    shared: Option<SharedHold>,
}

/// A place held in the shared pacer.
struct SharedHold {
    pacer: Arc<dyn Pacer>,
    key: String,
    id: String,
}

impl SharedHold {
    async fn release(self) {
        if let Err(e) = self.pacer.release(&self.key, &self.id).await {
            // It expires after `SUBMIT_HOLD_TTL`; until then the user's quota is one short.
            tracing::warn!(error = %e, "could not give back an in-flight place");
        }
    }
}

/// How long a shared place outlives a process that died holding it. Longer than any store
/// insert takes (those give up after `MONGO_TIMEOUT`), so a live submit never loses its place.
const SUBMIT_HOLD_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl SubmitSlot<'_> {
    /// Gives the place back now (the task is in the store, or refused).
    pub(super) async fn release(mut self) {
        if let Some(h) = self.shared.take() {
            h.release().await;
        }
    }
}

impl Submitting {
    /// Takes a place for `user_id`; with the number of places other submits of the user held.
    fn take(&self, user_id: &str) -> (SubmitSlot<'_>, u64) {
        let before = match self.0.lock() {
            Ok(mut m) => {
                let n = m.entry(user_id.to_string()).or_insert(0);
                *n += 1;
                *n - 1
            }
            Err(_) => 0,
        };
        (
            SubmitSlot {
                of: self,
                user_id: user_id.to_string(),
                shared: None,
            },
            before as u64,
        )
    }
}

impl Drop for SubmitSlot<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.shared.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(h.release());
            }
        }
        if let Ok(mut m) = self.of.0.lock() {
            if let Some(n) = m.get_mut(&self.user_id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.user_id);
                }
            }
        }
    }
}

/// Users recently seen to exist. Every submit checks its user, and on MongoDB that read was a
/// round trip as dear as the insert itself. A deletion in this process is seen at once; one in
/// another `api` process after at most `KNOWN_USER_TTL`, during which a submit for that user
/// can still be accepted (its task is then stored under a user that no longer exists, as one
/// accepted just before the deletion would be).
pub struct KnownUsers(pub(super) TtlCache<()>);

const KNOWN_USER_TTL: std::time::Duration = std::time::Duration::from_secs(5);
const KNOWN_USERS_MAX: usize = 100_000;

impl Default for KnownUsers {
    fn default() -> Self {
        KnownUsers(TtlCache::new(KNOWN_USER_TTL, KNOWN_USERS_MAX))
    }
}

/// What one user may ask of the service; the admin is not limited.
#[derive(Debug, Clone)]
pub struct Limits {
    pub submit_per_minute: u32,
    pub submit_burst: u32,
    pub max_in_flight: u64,
    /// Images per UTC day (`USER_IMAGES_PER_DAY`); 0: none.
    pub images_per_day: u64,
    pub idempotency_ttl: std::time::Duration,
    /// A new task's deadline unless it asks for its own (`TASK_DEADLINE`).
    pub task_deadline: std::time::Duration,
}

impl Limits {
    pub fn from_config(c: &crate::config::Config) -> Limits {
        Limits {
            submit_per_minute: c.user_submit_per_minute,
            submit_burst: c.user_submit_burst,
            max_in_flight: c.user_max_in_flight,
            images_per_day: c.user_images_per_day,
            idempotency_ttl: c.idempotency_ttl,
            task_deadline: c.task_deadline,
        }
    }
}

impl Service {
    /// The per-user submit rate (a token bucket), in-flight quota and daily image quota, for a
    /// task asking for `images`; the submit's place among the user's submits not stored yet.
    pub(super) async fn admit_submit(
        &self,
        user_id: &str,
        images: u64,
    ) -> Result<SubmitSlot<'_>, AppError> {
        let l = &self.limits;
        let interval =
            std::time::Duration::from_secs_f64(60.0 / f64::from(l.submit_per_minute.max(1)));
        match self
            .pacer
            .admit(&format!("submit:{user_id}"), interval, l.submit_burst)
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => {
                metrics::counter!("rate_limited_total", "limit" => "submit_rate").increment(1);
                return Err(AppError::RateLimited {
                    retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
                    reason: format!(
                        "submit rate limit reached ({} per minute, bursts of {})",
                        l.submit_per_minute, l.submit_burst
                    ),
                });
            }
            // Admission is a guard against abuse, not a correctness rule: with the limiter's
            // backend down the request goes on (the in-flight quota below still holds).
            Err(e) => tracing::warn!(error = %e, "submit rate limiter unavailable; admitting"),
        }
        // The place first, then the count (see `Submitting`).
        let (mut slot, here) = self.submitting.take(user_id);
        let key = format!("submit:{user_id}");
        let others = match self.pacer.hold(&key, SUBMIT_HOLD_TTL).await {
            Ok(Some(h)) => {
                slot.shared = Some(SharedHold {
                    pacer: self.pacer.clone(),
                    key,
                    id: h.id,
                });
                h.others
            }
            Ok(None) => here,
            // As with the rate above: the quota then holds within each process.
            Err(e) => {
                tracing::warn!(error = %e, "shared in-flight places unavailable; counting this process's submits only");
                here
            }
        };
        let active = self.store.count_active_tasks(user_id).await? + others;
        if active >= l.max_in_flight {
            slot.release().await;
            metrics::counter!("rate_limited_total", "limit" => "in_flight").increment(1);
            return Err(AppError::RateLimited {
                retry_after_secs: 5,
                reason: format!(
                    "{active} tasks are scheduled, pending, processing or being submitted, the most a user may have is {}",
                    l.max_in_flight
                ),
            });
        }
        if l.images_per_day > 0 {
            // Other submits not stored yet count one image each: their `n` is not known here.
            let held = self.images_today(user_id).await? + others;
            if held + images > l.images_per_day {
                slot.release().await;
                metrics::counter!("rate_limited_total", "limit" => "images_per_day").increment(1);
                return Err(AppError::RateLimited {
                    retry_after_secs: seconds_to_next_utc_day(chrono::Utc::now()),
                    reason: format!(
                        "{held} images today (generated, or asked for by unfinished tasks) and {images} more would pass the daily quota of {}",
                        l.images_per_day
                    ),
                });
            }
        }
        Ok(slot)
    }

    /// The user's images of the current UTC day: billed to its tasks finished today (the usage
    /// record) and asked for by its unfinished tasks, which are settled when they finish.
    async fn images_today(&self, user_id: &str) -> Result<u64, AppError> {
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let rows = self
            .store
            .usage(&UsageQuery {
                user_id: Some(user_id.to_string()),
                api_key_id: None,
                from_day: Some(today.clone()),
                to_day: Some(today),
            })
            .await?;
        let billed: u64 = rows.iter().map(|r| r.images).sum();
        Ok(billed + self.store.active_task_images(user_id).await?)
    }

    /// A task's user must exist; one seen to exist is remembered for a while (`known_users`).
    pub(super) async fn require_known_user(&self, user_id: &str) -> Result<(), AppError> {
        if self.known_users.0.get(user_id).is_none() {
            if self.store.get_user(user_id).await?.is_none() {
                return Err(AppError::Validation(vec![FieldError::new(
                    "user_id",
                    "user not found",
                )
                .with_value(user_id)]));
            }
            self.known_users.0.insert(user_id, ());
        }
        Ok(())
    }
}

/// Seconds from `now` to the next UTC midnight, when the daily image quota starts afresh (at
/// least 1).
fn seconds_to_next_utc_day(now: chrono::DateTime<chrono::Utc>) -> u64 {
    let next = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    next.map(|t| (t - now).num_seconds())
        .and_then(|s| u64::try_from(s).ok())
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::seconds_to_next_utc_day;

    #[test]
    fn the_daily_quota_starts_afresh_at_the_next_utc_midnight() {
        let at = |h, m, s| {
            chrono::Utc
                .with_ymd_and_hms(2026, 12, 31, h, m, s)
                .single()
                .expect("time")
        };
        assert_eq!(seconds_to_next_utc_day(at(0, 0, 0)), 86_400);
        assert_eq!(seconds_to_next_utc_day(at(23, 59, 59)), 1);
        assert_eq!(seconds_to_next_utc_day(at(12, 0, 0)), 43_200);
    }
}
