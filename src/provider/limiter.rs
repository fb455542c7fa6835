//! Provider rate limiting per model: images per minute (paced, shared by every worker process
//! through Redis in distributed mode) and calls in flight (per process). Adaptive: when the
//! provider still answers 429, the pace drops by 30 % and then recovers by 2 % per success.
//!
//! Pacing is GCRA's virtual scheduling: each call reserves `images × interval` on the model's
//! theoretical arrival time (TAT) and waits until its slot. The reservation is one atomic step
//! (a mutex here, a Lua script in Redis), so processes never overbook. `governor` implements the
//! same algorithm in-process but with a fixed quota; adaptivity needs the interval per call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ProviderIpm;
use crate::domain::Catalog;

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

/// Where the theoretical arrival times live.
#[async_trait]
pub trait Pacer: Send + Sync + 'static {
    /// Reserves `cost` of the key's schedule and says how long to wait for the reserved slot.
    async fn reserve(&self, key: &str, cost: Duration) -> Result<Duration, LimiterError>;

    /// A token bucket in GCRA form, for admission rather than pacing: lets one request through
    /// when fewer than `burst` are ahead of the key's schedule (one every `interval`), and
    /// otherwise refuses without reserving anything, saying how long until one would pass.
    async fn admit(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterError>;

    /// Takes a place among the work of `key` in progress in every process sharing this pacer,
    /// kept for `ttl` at most (the place of a process that died holding it is free again then),
    /// and says how many places others held. `None` when nothing is shared beyond this process
    /// (the embedded default): its caller counts its own.
    async fn hold(&self, _key: &str, _ttl: Duration) -> Result<Option<Hold>, LimiterError> {
        Ok(None)
    }

    /// Gives back a place `hold` took.
    async fn release(&self, _key: &str, _id: &str) -> Result<(), LimiterError> {
        Ok(())
    }
}

/// A place `Pacer::hold` took.
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    /// Places of the same key others held when this one was taken.
    pub others: u64,
}

/// GCRA admission on one schedule: the new theoretical arrival time, or the wait when refused.
fn gcra_admit(tat: f64, now: f64, interval: f64, burst: u32) -> Result<f64, f64> {
    let next = tat.max(now) + interval;
    let ahead = next - now;
    let limit = interval * f64::from(burst.max(1));
    if ahead > limit {
        Err(ahead - limit)
    } else {
        Ok(next)
    }
}

/// One process's schedule (the embedded default).
pub struct MemoryPacer {
    epoch: Instant,
    tat_ms: Mutex<HashMap<String, f64>>,
}

impl Default for MemoryPacer {
    fn default() -> Self {
        MemoryPacer {
            epoch: Instant::now(),
            tat_ms: Mutex::default(),
        }
    }
}

#[async_trait]
impl Pacer for MemoryPacer {
    async fn reserve(&self, key: &str, cost: Duration) -> Result<Duration, LimiterError> {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        let mut map = self
            .tat_ms
            .lock()
            .map_err(|_| LimiterError("mutex poisoned".into()))?;
        let tat = map.entry(key.to_string()).or_insert(now);
        let start = tat.max(now);
        *tat = start + cost.as_secs_f64() * 1000.0;
        Ok(Duration::from_secs_f64((start - now).max(0.0) / 1000.0))
    }

    async fn admit(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterError> {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        let mut map = self
            .tat_ms
            .lock()
            .map_err(|_| LimiterError("mutex poisoned".into()))?;
        let tat = map.get(key).copied().unwrap_or(now);
        match gcra_admit(tat, now, interval.as_secs_f64() * 1000.0, burst) {
            Ok(next) => {
                map.insert(key.to_string(), next);
                Ok(None)
            }
            Err(wait) => Ok(Some(Duration::from_secs_f64(wait / 1000.0))),
        }
    }
}

/// The schedule in Redis, shared by all worker processes; Redis's clock is the only clock.
pub struct RedisPacer {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    admit: redis::Script,
    hold: redis::Script,
}

const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], tostring(next), 'PX', math.ceil(next - now) + 60000)
return tostring(tat - now)
";

/// The same rule as `gcra_admit`, in one atomic step on Redis's clock. Returns the wait in ms,
/// or -1 when admitted.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next = tat + interval
local limit = interval * tonumber(ARGV[2])
if next - now > limit then
  return tostring(next - now - limit)
end
redis.call('SET', KEYS[1], tostring(next), 'PX', math.ceil(next - now) + 1000)
return '-1'
";

/// Places held, as a sorted set of hold ids scored by their expiry on Redis's clock: expired
/// places are dropped, the others counted and the new one added in one atomic step, so of two
/// concurrent holds the later always counts the earlier. Returns the count before this one.
const HOLD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return n
";

impl RedisPacer {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> RedisPacer {
        RedisPacer {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(RESERVE),
            admit: redis::Script::new(ADMIT),
            hold: redis::Script::new(HOLD),
        }
    }

    fn holds_key(&self, key: &str) -> String {
        format!("{}:holds:{key}", self.prefix)
    }
}

#[async_trait]
impl Pacer for RedisPacer {
    async fn reserve(&self, key: &str, cost: Duration) -> Result<Duration, LimiterError> {
        let mut c = self.conn.clone();
        let wait: String = self
            .script
            .key(format!("{}:ratelimit:{key}", self.prefix))
            .arg(cost.as_secs_f64() * 1000.0)
            .invoke_async(&mut c)
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        let ms: f64 = wait
            .parse()
            .map_err(|_| LimiterError(format!("bad reply {wait}")))?;
        Ok(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }

    async fn admit(
        &self,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Option<Duration>, LimiterError> {
        let mut c = self.conn.clone();
        let wait: String = self
            .admit
            .key(format!("{}:ratelimit:{key}", self.prefix))
            .arg(interval.as_secs_f64() * 1000.0)
            .arg(burst.max(1))
            .invoke_async(&mut c)
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        let ms: f64 = wait
            .parse()
            .map_err(|_| LimiterError(format!("bad reply {wait}")))?;
        Ok((ms >= 0.0).then(|| Duration::from_secs_f64(ms / 1000.0)))
    }

    async fn hold(&self, key: &str, ttl: Duration) -> Result<Option<Hold>, LimiterError> {
        let mut c = self.conn.clone();
        let id = uuid::Uuid::new_v4().to_string();
        let others: u64 = self
            .hold
            .key(self.holds_key(key))
            .arg(&id)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        Ok(Some(Hold { id, others }))
    }

    async fn release(&self, key: &str, id: &str) -> Result<(), LimiterError> {
        let mut c = self.conn.clone();
        redis::cmd("ZREM")
            .arg(self.holds_key(key))
            .arg(id)
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| LimiterError(e.to_string()))
    }
}

struct ModelLimit {
    images_per_minute: u32,
    in_flight: Arc<Semaphore>,
    adaptive: Mutex<Adaptive>,
}

struct Adaptive {
    /// Share of the configured rate in use, in `[MIN_FACTOR, 1]`.
    factor: f64,
    last_cut: Option<Instant>,
}

const MIN_FACTOR: f64 = 0.1;
/// Pace a hair under the configured rate: a sliding one-minute window on the provider's side,
/// seen through network jitter, otherwise catches the 601st image of a minute now and then.
const HEADROOM: f64 = 0.995;
const CUT: f64 = 0.7;
const RECOVER: f64 = 0.02;
/// 429s arriving together are one signal, not several.
const CUT_SPACING: Duration = Duration::from_secs(2);

pub struct ProviderLimiter {
    pacer: Arc<dyn Pacer>,
    models: HashMap<String, ModelLimit>,
}

/// Held for the duration of one provider call.
pub struct CallPermit {
    _in_flight: OwnedSemaphorePermit,
    pub waited: Duration,
}

impl ProviderLimiter {
    /// `images_per_minute` overrides the model table's values; `concurrency` bounds the calls
    /// in flight per model in this process.
    pub fn new(
        catalog: &Catalog,
        images_per_minute: &ProviderIpm,
        concurrency: usize,
        pacer: Arc<dyn Pacer>,
    ) -> ProviderLimiter {
        let models = catalog
            .all()
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    ModelLimit {
                        images_per_minute: images_per_minute
                            .for_model(&m.id, m.images_per_minute)
                            .max(1),
                        in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
                        adaptive: Mutex::new(Adaptive {
                            factor: 1.0,
                            last_cut: None,
                        }),
                    },
                )
            })
            .collect();
        ProviderLimiter { pacer, models }
    }

    /// Waits for a call slot of `model` and for `images` images' worth of its per-minute budget.
    pub async fn acquire(&self, model: &str, images: u32) -> Option<CallPermit> {
        let limit = self.models.get(model)?;
        let in_flight = limit.in_flight.clone().acquire_owned().await.ok()?;
        let factor = limit.adaptive.lock().map(|a| a.factor).unwrap_or(1.0);
        let per_image = 60.0 / (f64::from(limit.images_per_minute) * factor * HEADROOM);
        let cost = Duration::from_secs_f64(per_image * f64::from(images.max(1)));
        let waited = match self.pacer.reserve(model, cost).await {
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                wait
            }
            Err(e) => {
                // Without the shared schedule we still call; the provider's 429s then slow us.
                tracing::warn!(error = %e, "rate limiter unavailable; calling unpaced");
                Duration::ZERO
            }
        };
        Some(CallPermit {
            _in_flight: in_flight,
            waited,
        })
    }

    /// The provider answered 429 although we paced: lower this model's pace.
    pub fn throttled(&self, model: &str) {
        if let Some(l) = self.models.get(model) {
            if let Ok(mut a) = l.adaptive.lock() {
                if a.last_cut.is_none_or(|t| t.elapsed() >= CUT_SPACING) {
                    a.factor = (a.factor * CUT).max(MIN_FACTOR);
                    a.last_cut = Some(Instant::now());
                    tracing::warn!(
                        model,
                        factor = a.factor,
                        "provider still rate-limits; slowing down"
                    );
                }
            }
        }
    }

    pub fn succeeded(&self, model: &str) {
        if let Some(l) = self.models.get(model) {
            if let Ok(mut a) = l.adaptive.lock() {
                a.factor = (a.factor + RECOVER).min(1.0);
            }
        }
    }

    pub fn factor(&self, model: &str) -> Option<f64> {
        self.models
            .get(model)
            .and_then(|l| l.adaptive.lock().ok().map(|a| a.factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::ModelIds;

    #[tokio::test]
    async fn reservations_are_spaced_by_the_per_image_interval() {
        let p = MemoryPacer::default();
        let step = Duration::from_millis(100);
        let waits = [
            p.reserve("m", step).await.expect("r"),
            p.reserve("m", step).await.expect("r"),
            p.reserve("m", step * 2).await.expect("r"),
            p.reserve("m", step).await.expect("r"),
        ];
        let ms: Vec<u128> = waits
            .iter()
            .map(|w| (w.as_millis() + 5) / 10 * 10)
            .collect();
        assert_eq!(ms, vec![0, 100, 200, 400]);
        assert_eq!(p.reserve("other", step).await.expect("r"), Duration::ZERO);
    }

    #[test]
    fn admission_lets_a_burst_through_then_refuses_with_the_wait() {
        let (interval, burst) = (100.0, 3);
        let mut tat = 0.0;
        for _ in 0..3 {
            tat = gcra_admit(tat, 0.0, interval, burst).expect("within the burst");
        }
        let wait = gcra_admit(tat, 0.0, interval, burst).expect_err("over the burst");
        assert!((wait - 100.0).abs() < 1e-9, "wait {wait}");
        // A refusal reserves nothing: once the wait has passed, one more goes through.
        assert!(gcra_admit(tat, 100.0, interval, burst).is_ok());
        assert!(gcra_admit(tat, 99.0, interval, burst).is_err());
    }

    #[test]
    fn throttling_cuts_the_pace_once_per_burst_and_success_recovers_it() {
        let catalog = Catalog::new(&ModelIds::default());
        let id = catalog.default_model().id.clone();
        let ipm = ProviderIpm {
            all: Some(600),
            ..ProviderIpm::default()
        };
        let l = ProviderLimiter::new(&catalog, &ipm, 4, Arc::new(MemoryPacer::default()));
        l.throttled(&id);
        l.throttled(&id);
        assert!(
            (l.factor(&id).expect("f") - 0.7).abs() < 1e-9,
            "one cut per burst"
        );
        for _ in 0..100 {
            l.succeeded(&id);
        }
        assert_eq!(l.factor(&id), Some(1.0));
    }
}
