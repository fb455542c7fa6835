//! The pool of Ark API keys (`VOLCENGINE_API_KEYS=k1,k2:3`, issue #18.4): calls spread over the
//! keys by weight, a key the provider refuses (401/403) is taken out at once and re-probed with
//! a doubling backoff until it works again. Each key is its own account, so each has its own
//! learned pace (the limiter is keyed by the key's fingerprint). Keys are named by fingerprint
//! everywhere outside this file: logs, metrics, `/ready` and the task that a key's images made.
//!
//! The pool's health is this process's view: every worker process learns a refused key from its
//! own first call with it (at most one call per process and key in flight at the refusal).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::key_fingerprint;

/// The longest wait between probes of a refused key.
const MAX_REPROBE: Duration = Duration::from_secs(30 * 60);
/// A probe whose answer never came (its task was cancelled mid-call) stops blocking the next
/// one after this.
const PROBE_STALE: Duration = Duration::from_secs(300);

/// One key of the pool. Its `Debug` shows the fingerprint only.
pub struct PoolKey {
    secret: String,
    pub fingerprint: String,
    pub weight: u32,
}

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolKey({}, weight {})", self.fingerprint, self.weight)
    }
}

impl PoolKey {
    /// The secret, for the `Authorization` header only.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

#[derive(Debug, Default, Clone)]
struct Health {
    /// Smooth weighted round robin's running weight.
    current: i64,
    /// Refused (401/403) and not yet probed successfully.
    disabled: bool,
    probe_at: Option<Instant>,
    probing_since: Option<Instant>,
    backoff: Duration,
    calls: u64,
    refusals: u64,
    probes: u64,
}

/// What a call with a key showed about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// The provider took the key (any answer but 401/403).
    Accepted,
    /// 401 or 403: revoked, wrong, or its account suspended.
    Refused,
}

/// A key's state for `/ready` and metrics.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeyState {
    pub key: String,
    pub weight: u32,
    /// `enabled`, `disabled` (refused; re-probed) or `probing`.
    pub state: &'static str,
    pub calls: u64,
    pub refusals: u64,
    pub probes: u64,
    /// Seconds until the next probe of a disabled key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_in_seconds: Option<u64>,
}

pub struct KeyPool {
    keys: Vec<PoolKey>,
    health: Mutex<Vec<Health>>,
    reprobe: Duration,
}

/// A key taken for one call.
#[derive(Debug, Clone, Copy)]
pub struct Picked<'a> {
    pub key: &'a PoolKey,
    index: usize,
}

impl KeyPool {
    /// `keys` with their weights (each at least 1); `reprobe` is the first wait before a
    /// refused key is tried again (`PROVIDER_KEY_REPROBE`), doubling per refusal.
    pub fn new(keys: &[(String, u32)], reprobe: Duration) -> KeyPool {
        let keys: Vec<PoolKey> = keys
            .iter()
            .map(|(secret, weight)| PoolKey {
                fingerprint: key_fingerprint(secret),
                secret: secret.clone(),
                weight: (*weight).max(1),
            })
            .collect();
        let health = Mutex::new(vec![Health::default(); keys.len()]);
        KeyPool {
            keys,
            health,
            reprobe: reprobe.max(Duration::from_millis(10)),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for the next call: a refused key whose probe is due (one probe at a time per
    /// key), otherwise the enabled keys by smooth weighted round robin (nginx's: over any
    /// stretch of calls each key gets its share within one call, interleaved rather than in
    /// runs). `None` when every key is refused and none is due for a probe.
    pub fn pick(&self) -> Option<Picked<'_>> {
        self.pick_at(Instant::now())
    }

    /// `pick` at `now` (tests pass a clock of their own: sleeps of a few milliseconds flake on a
    /// loaded machine).
    fn pick_at(&self, now: Instant) -> Option<Picked<'_>> {
        let mut health = self.health.lock().ok()?;
        let due = health.iter().position(|h| {
            h.disabled
                && h.probe_at.is_some_and(|at| at <= now)
                && h.probing_since
                    .is_none_or(|since| now.duration_since(since) >= PROBE_STALE)
        });
        if let Some(i) = due {
            let h = &mut health[i];
            h.probing_since = Some(now);
            h.probes += 1;
            h.calls += 1;
            return Some(Picked {
                key: &self.keys[i],
                index: i,
            });
        }
        let total: i64 = self
            .keys
            .iter()
            .zip(health.iter())
            .filter(|(_, h)| !h.disabled)
            .map(|(k, _)| i64::from(k.weight))
            .sum();
        let mut best: Option<usize> = None;
        for (i, key) in self.keys.iter().enumerate() {
            if health[i].disabled {
                continue;
            }
            health[i].current += i64::from(key.weight);
            if best.is_none_or(|b| health[i].current > health[b].current) {
                best = Some(i);
            }
        }
        let i = best?;
        health[i].current -= total;
        health[i].calls += 1;
        Some(Picked {
            key: &self.keys[i],
            index: i,
        })
    }

    /// What the call with `picked` showed. A refusal takes the key out at once and schedules
    /// its next probe (doubling the wait after a failed probe); an accepted probe puts it back.
    pub fn report(&self, picked: Picked<'_>, outcome: KeyOutcome) {
        self.report_at(picked, outcome, Instant::now());
    }

    fn report_at(&self, picked: Picked<'_>, outcome: KeyOutcome, now: Instant) {
        let Ok(mut health) = self.health.lock() else {
            return;
        };
        let h = &mut health[picked.index];
        let was_probe = h.probing_since.take().is_some();
        match outcome {
            KeyOutcome::Accepted => {
                if h.disabled {
                    tracing::info!(key = %picked.key.fingerprint, "provider API key works again; enabled");
                }
                h.disabled = false;
                h.probe_at = None;
                h.backoff = Duration::ZERO;
            }
            KeyOutcome::Refused => {
                h.refusals += 1;
                if h.disabled && !was_probe {
                    // A call already in flight when the key was taken out: nothing new.
                    return;
                }
                h.backoff = if h.backoff.is_zero() {
                    self.reprobe
                } else {
                    (h.backoff * 2).min(MAX_REPROBE)
                };
                h.disabled = true;
                h.current = 0;
                h.probe_at = Some(now + h.backoff);
                tracing::warn!(
                    key = %picked.key.fingerprint,
                    reprobe_in_s = h.backoff.as_secs_f64(),
                    "the provider refused an API key (401/403); disabled until a probe succeeds"
                );
            }
        }
        metrics::gauge!("provider_key_enabled", "key" => picked.key.fingerprint.clone())
            .set(if h.disabled { 0.0 } else { 1.0 });
    }

    /// Whether a call could be made with some key now (enabled, or due for a probe).
    pub fn any_usable(&self) -> bool {
        let now = Instant::now();
        self.health.lock().is_ok_and(|health| {
            health
                .iter()
                .any(|h| !h.disabled || h.probe_at.is_some_and(|at| at <= now))
        })
    }

    /// Every key's state, by fingerprint.
    pub fn states(&self) -> Vec<KeyState> {
        let now = Instant::now();
        let Ok(health) = self.health.lock() else {
            return Vec::new();
        };
        self.keys
            .iter()
            .zip(health.iter())
            .map(|(k, h)| KeyState {
                key: k.fingerprint.clone(),
                weight: k.weight,
                state: match (h.disabled, h.probing_since.is_some()) {
                    (false, _) => "enabled",
                    (true, true) => "probing",
                    (true, false) => "disabled",
                },
                calls: h.calls,
                refusals: h.refusals,
                probes: h.probes,
                probe_in_seconds: h
                    .probe_at
                    .filter(|_| h.disabled)
                    .map(|at| at.saturating_duration_since(now).as_secs()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(keys: &[(&str, u32)], reprobe: Duration) -> KeyPool {
        let keys: Vec<(String, u32)> = keys.iter().map(|(k, w)| (k.to_string(), *w)).collect();
        KeyPool::new(&keys, reprobe)
    }

    #[test]
    fn calls_spread_by_weight_interleaved() {
        let p = pool(&[("a", 1), ("b", 3)], Duration::from_secs(30));
        let order: String = (0..8)
            .map(|_| {
                let k = p.pick().expect("key");
                if k.key.secret() == "a" {
                    'a'
                } else {
                    'b'
                }
            })
            .collect();
        assert_eq!(order.matches('a').count(), 2);
        assert!(!order.contains("bbbb"), "interleaved: {order}");
    }

    #[test]
    fn a_refused_key_is_taken_out_and_probed_again_with_backoff() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let p = pool(&[("good", 1), ("bad", 1)], Duration::from_millis(20));
        let bad = (0..2)
            .map(|_| p.pick_at(at(0)).expect("key"))
            .find(|k| k.key.secret() == "bad")
            .expect("bad picked");
        p.report_at(bad, KeyOutcome::Refused, at(0));
        for _ in 0..10 {
            assert_eq!(p.pick_at(at(19)).expect("key").key.secret(), "good");
        }
        let probe = p.pick_at(at(20)).expect("probe");
        assert_eq!(probe.key.secret(), "bad");
        assert_eq!(p.states()[1].state, "probing");
        // One probe at a time.
        assert_eq!(p.pick_at(at(21)).expect("key").key.secret(), "good");
        p.report_at(probe, KeyOutcome::Refused, at(25));
        assert_eq!(p.states()[1].state, "disabled");
        assert_eq!(
            p.pick_at(at(64)).expect("key").key.secret(),
            "good",
            "backoff doubled: the next probe 40 ms after the failed one"
        );
        let probe = p.pick_at(at(65)).expect("probe");
        assert_eq!(probe.key.secret(), "bad");
        p.report_at(probe, KeyOutcome::Accepted, at(66));
        assert_eq!(p.states()[1].state, "enabled");
        assert_eq!(p.states()[1].refusals, 2);
    }

    #[test]
    fn no_key_when_all_are_refused_and_none_is_due() {
        let p = pool(&[("only", 1)], Duration::from_secs(60));
        let k = p.pick().expect("key");
        p.report(k, KeyOutcome::Refused);
        assert!(p.pick().is_none());
        assert!(!p.any_usable());
        assert!(!format!("{k:?}").contains("only"), "Debug shows no secret");
    }
}
