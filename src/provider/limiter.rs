//! Provider rate limiting per API key and model: images per minute, paced at the rate learned
//! from the provider's answers (`pace`; shared by every worker process through Redis in
//! distributed mode), and calls in flight per model (per process).
//!
//! Pacing is GCRA's virtual scheduling: each call reserves `images × 60 / pace` seconds on the
//! schedule and waits until its slot. The reservation and the pace's changes are one atomic step
//! (a mutex here, a Lua script in Redis), so processes never overbook. `governor` implements the
//! same algorithm in-process but with a fixed quota; a learned pace needs the interval per call
//! and a schedule shared between processes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pace::{PaceRule, PaceSignal, PaceState};
use crate::config::ProviderIpm;
use crate::domain::Catalog;

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

/// Where the theoretical arrival times live.
#[async_trait]
pub trait Pacer: Send + Sync + 'static {
    /// Reserves the slot of a call generating `images` on the learned pace of `key` and says
    /// how long to wait for it.
    async fn pace_reserve(
        &self,
        key: &str,
        images: u32,
        rule: &PaceRule,
    ) -> Result<Duration, LimiterError>;

    /// Tells the pace of `key` what the provider answered.
    async fn pace_signal(
        &self,
        key: &str,
        signal: PaceSignal,
        rule: &PaceRule,
    ) -> Result<(), LimiterError>;

    /// The pace of `key` now, in images per minute.
    async fn pace_rate(&self, key: &str, rule: &PaceRule) -> Result<f64, LimiterError>;

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
    paces: Mutex<HashMap<String, PaceState>>,
}

impl Default for MemoryPacer {
    fn default() -> Self {
        MemoryPacer {
            epoch: Instant::now(),
            tat_ms: Mutex::default(),
            paces: Mutex::default(),
        }
    }
}

impl MemoryPacer {
    fn with_pace<T>(
        &self,
        key: &str,
        f: impl FnOnce(&mut PaceState, f64) -> T,
    ) -> Result<T, LimiterError> {
        let now = self.epoch.elapsed().as_secs_f64() * 1000.0;
        let mut map = self
            .paces
            .lock()
            .map_err(|_| LimiterError("mutex poisoned".into()))?;
        Ok(f(map.entry(key.to_string()).or_default(), now))
    }
}

#[async_trait]
impl Pacer for MemoryPacer {
    async fn pace_reserve(
        &self,
        key: &str,
        images: u32,
        rule: &PaceRule,
    ) -> Result<Duration, LimiterError> {
        let wait = self.with_pace(key, |p, now| p.reserve(now, images, rule))?;
        Ok(Duration::from_secs_f64(wait.max(0.0) / 1000.0))
    }

    async fn pace_signal(
        &self,
        key: &str,
        signal: PaceSignal,
        rule: &PaceRule,
    ) -> Result<(), LimiterError> {
        self.with_pace(key, |p, now| p.signal(now, signal, rule))
    }

    async fn pace_rate(&self, key: &str, rule: &PaceRule) -> Result<f64, LimiterError> {
        self.with_pace(key, |p, _| p.rate(rule))
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
    pace: redis::Script,
    admit: redis::Script,
    hold: redis::Script,
}

/// `PaceState` (pace.rs) over a hash (the pace, its step, the last cut and climb, the hold and
/// the schedule) and a sorted set of the images accepted within the window, one atomic step on
/// Redis's clock. ARGV: operation (`reserve`, `accepted`, `throttled`, `rate`), ceiling (images
/// a minute), window (ms), images or Retry-After (ms), a unique id, then the rule's constants:
/// burst spacing (ms), cut-to share, most cut, floor, step share. Returns the wait in ms
/// (`reserve`) or the pace (`rate`).
const PACE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local op, ceiling, window, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local spacing, cut_to, max_cut = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local floor, step_share = tonumber(ARGV[9]), tonumber(ARGV[10])
local s = redis.call('HMGET', KEYS[1], 'rate', 'step', 'cut', 'climbed', 'hold', 'tat')
local rate, step, cut = tonumber(s[1]), tonumber(s[2]) or 1, tonumber(s[3])
local climbed, hold, tat = tonumber(s[4]) or 0, tonumber(s[5]) or 0, tonumber(s[6]) or 0
local function current()
  if rate and rate < ceiling then return rate end
  return ceiling
end
local reply = '0'
if op == 'reserve' then
  if rate then
    local quiet = climbed
    if cut and cut > quiet then quiet = cut end
    if now - quiet >= window then
      if rate + step < ceiling then rate = rate + step else rate = nil end
      step = step * 2
      climbed = now
    end
  end
  local start = math.max(tat, now, hold)
  tat = start + 60000 / math.max(current(), floor) * math.max(n, 1)
  reply = tostring(start - now)
elseif op == 'accepted' then
  for i = 1, math.max(n, 1) do
    redis.call('ZADD', KEYS[2], now, ARGV[5] .. ':' .. i)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
  redis.call('PEXPIRE', KEYS[2], math.ceil(window))
elseif op == 'throttled' then
  if now + n > hold then hold = now + n end
  if not cut or now - cut >= spacing then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
    local measured = redis.call('ZCARD', KEYS[2]) * 60000 / window
    local r = current()
    local next = math.max(math.min(math.max(cut_to * measured, r * max_cut), r), floor)
    rate, step, cut = next, math.max(next * step_share, 1), now
  end
else
  reply = tostring(current())
end
if rate then redis.call('HSET', KEYS[1], 'rate', tostring(rate)) else redis.call('HDEL', KEYS[1], 'rate') end
if cut then redis.call('HSET', KEYS[1], 'cut', tostring(cut)) end
redis.call('HSET', KEYS[1], 'step', tostring(step), 'climbed', tostring(climbed), 'hold', tostring(hold), 'tat', tostring(tat))
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tat - now, 0) + window * 60))
return reply
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
            pace: redis::Script::new(PACE),
            admit: redis::Script::new(ADMIT),
            hold: redis::Script::new(HOLD),
        }
    }

    async fn run_pace(
        &self,
        key: &str,
        op: &str,
        rule: &PaceRule,
        n: f64,
    ) -> Result<f64, LimiterError> {
        use super::pace::{BURST_SHARE, CUT_TO, FLOOR_IPM, MAX_CUT, STEP_SHARE};
        let mut c = self.conn.clone();
        let reply: String = self
            .pace
            .key(format!("{}:pace:{key}", self.prefix))
            .key(format!("{}:pace:{key}:accepted", self.prefix))
            .arg(op)
            .arg(rule.ceiling)
            .arg(rule.window_ms())
            .arg(n)
            .arg(uuid::Uuid::new_v4().to_string())
            .arg(rule.window_ms() * BURST_SHARE)
            .arg(CUT_TO)
            .arg(MAX_CUT)
            .arg(FLOOR_IPM)
            .arg(STEP_SHARE)
            .invoke_async(&mut c)
            .await
            .map_err(|e| LimiterError(e.to_string()))?;
        reply
            .parse()
            .map_err(|_| LimiterError(format!("bad reply {reply}")))
    }

    fn holds_key(&self, key: &str) -> String {
        format!("{}:holds:{key}", self.prefix)
    }
}

#[async_trait]
impl Pacer for RedisPacer {
    async fn pace_reserve(
        &self,
        key: &str,
        images: u32,
        rule: &PaceRule,
    ) -> Result<Duration, LimiterError> {
        let ms = self
            .run_pace(key, "reserve", rule, f64::from(images))
            .await?;
        Ok(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
    }

    async fn pace_signal(
        &self,
        key: &str,
        signal: PaceSignal,
        rule: &PaceRule,
    ) -> Result<(), LimiterError> {
        let (op, n) = match signal {
            PaceSignal::Accepted(images) => ("accepted", f64::from(images)),
            PaceSignal::Throttled(after) => {
                ("throttled", after.map_or(0.0, |a| a.as_secs_f64() * 1000.0))
            }
        };
        self.run_pace(key, op, rule, n).await.map(|_| ())
    }

    async fn pace_rate(&self, key: &str, rule: &PaceRule) -> Result<f64, LimiterError> {
        self.run_pace(key, "rate", rule, 0.0).await
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

/// The pace's ceiling runs a hair under the configured rate: a sliding one-minute window on the
/// provider's side, seen through network jitter, otherwise catches the 601st image of a minute
/// now and then, and each such 429 would cut a pace that was right.
const HEADROOM: f64 = 0.995;

struct ModelLimit {
    /// The configured images per minute: the learned pace's ceiling.
    ceiling: f64,
    in_flight: Arc<Semaphore>,
}

pub struct ProviderLimiter {
    pacer: Arc<dyn Pacer>,
    models: HashMap<String, ModelLimit>,
    window: Duration,
    /// Calls in flight per model in this process.
    concurrency: usize,
}

/// Held for the duration of one provider call.
pub struct CallPermit {
    _in_flight: OwnedSemaphorePermit,
    pub waited: Duration,
}

/// The pacer's key of one API key (by its fingerprint) on one model.
fn pace_key(key: &str, model: &str) -> String {
    format!("{key}:{model}")
}

impl ProviderLimiter {
    /// `images_per_minute` overrides the model table's values as the ceiling of every key's
    /// pace; `concurrency` bounds the calls in flight per model in this process; `window` is
    /// `PROVIDER_RATE_WINDOW`.
    pub fn new(
        catalog: &Catalog,
        images_per_minute: &ProviderIpm,
        concurrency: usize,
        pacer: Arc<dyn Pacer>,
        window: Duration,
    ) -> ProviderLimiter {
        let models = catalog
            .all()
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    ModelLimit {
                        ceiling: f64::from(
                            images_per_minute
                                .for_model(&m.id, m.images_per_minute)
                                .max(1),
                        ) * HEADROOM,
                        in_flight: Arc::new(Semaphore::new(concurrency.max(1))),
                    },
                )
            })
            .collect();
        ProviderLimiter {
            pacer,
            models,
            window,
            concurrency: concurrency.max(1),
        }
    }

    /// Adds models whose calls are task submits (videos), `(id, submits a minute)`: each submit
    /// takes one slot of the pace, learned from the provider's answers like images'.
    pub fn with_submits(mut self, models: impl IntoIterator<Item = (String, u32)>) -> Self {
        for (id, per_minute) in models {
            self.models.entry(id).or_insert_with(|| ModelLimit {
                ceiling: f64::from(per_minute.max(1)) * HEADROOM,
                in_flight: Arc::new(Semaphore::new(self.concurrency)),
            });
        }
        self
    }

    fn rule(&self, model: &str) -> Option<(&ModelLimit, PaceRule)> {
        let limit = self.models.get(model)?;
        Some((
            limit,
            PaceRule {
                ceiling: limit.ceiling,
                window: self.window,
            },
        ))
    }

    /// Waits for a call slot of `model` and for `images` images' worth of the pace learned for
    /// `key` (an API key's fingerprint) on it.
    pub async fn acquire(&self, key: &str, model: &str, images: u32) -> Option<CallPermit> {
        let (limit, rule) = self.rule(model)?;
        let in_flight = limit.in_flight.clone().acquire_owned().await.ok()?;
        let waited = match self
            .pacer
            .pace_reserve(&pace_key(key, model), images, &rule)
            .await
        {
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

    /// Tells the pace of `key` on `model` what the provider answered.
    pub async fn signal(&self, key: &str, model: &str, signal: PaceSignal) {
        let Some((_, rule)) = self.rule(model) else {
            return;
        };
        let pace = pace_key(key, model);
        if let Err(e) = self.pacer.pace_signal(&pace, signal, &rule).await {
            tracing::warn!(error = %e, "rate limiter unavailable; the pace learns nothing");
            return;
        }
        if let PaceSignal::Throttled(after) = signal {
            let rate = self.rate(key, model).await.unwrap_or(rule.ceiling);
            metrics::gauge!("provider_pace_images_per_minute", "key" => key.to_string(), "model" => model.to_string())
                .set(rate);
            tracing::info!(
                model,
                key,
                pace = rate,
                retry_after_ms = after.map(|a| a.as_millis() as u64),
                "provider rate-limits; pacing at the rate it accepts"
            );
        }
    }

    /// The pace of `key` on `model` now, in images per minute.
    pub async fn rate(&self, key: &str, model: &str) -> Option<f64> {
        let (_, rule) = self.rule(model)?;
        self.pacer
            .pace_rate(&pace_key(key, model), &rule)
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::ModelIds;

    #[tokio::test]
    async fn reservations_are_spaced_by_the_per_image_interval() {
        let p = MemoryPacer::default();
        let rule = PaceRule {
            ceiling: 600.0,
            window: Duration::from_secs(60),
        };
        let waits = [
            p.pace_reserve("m", 1, &rule).await.expect("r"),
            p.pace_reserve("m", 1, &rule).await.expect("r"),
            p.pace_reserve("m", 2, &rule).await.expect("r"),
            p.pace_reserve("m", 1, &rule).await.expect("r"),
        ];
        let ms: Vec<u128> = waits
            .iter()
            .map(|w| (w.as_millis() + 5) / 10 * 10)
            .collect();
        assert_eq!(ms, vec![0, 100, 200, 400]);
        assert_eq!(
            p.pace_reserve("other", 1, &rule).await.expect("r"),
            Duration::ZERO
        );
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

    #[tokio::test]
    async fn each_key_learns_its_own_pace_per_model() {
        let catalog = Catalog::new(&ModelIds::default());
        let id = catalog.default_model().id.clone();
        let ipm = ProviderIpm {
            all: Some(600),
            ..ProviderIpm::default()
        };
        let l = ProviderLimiter::new(
            &catalog,
            &ipm,
            4,
            Arc::new(MemoryPacer::default()),
            Duration::from_secs(60),
        );
        l.signal("k1", &id, PaceSignal::Throttled(None)).await;
        l.signal("k1", &id, PaceSignal::Throttled(None)).await;
        assert_eq!(
            l.rate("k1", &id).await,
            Some(300.0 * HEADROOM),
            "one cut per burst"
        );
        assert_eq!(
            l.rate("k2", &id).await,
            Some(600.0 * HEADROOM),
            "another key keeps its pace"
        );
        assert_eq!(l.rate("k1", "no-such-model").await, None);
    }
}
