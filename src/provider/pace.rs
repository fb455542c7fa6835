//! The learned pace of one (API key, model): how many images a minute the provider actually
//! lets through, found from its answers rather than trusted to configuration (issue #18.1).
//!
//! Accounts have different limits per model and tier and operators rarely know them, so the
//! configured rate is only a ceiling. On a burst of 429s the pace drops to `CUT_TO` of the rate
//! the provider *accepted* over the last window (measured, so one cut lands near the real
//! limit instead of creeping down by a fixed share per burst), at most halving per burst; a
//! `Retry-After` holds every call until it has passed. After each quiet window (no 429) the pace
//! climbs by a step that doubles per quiet window, so it finds a lifted limit in a few windows
//! and probes a known one only now and then.
//!
//! `PaceState` is the rule over one process's memory (`MemoryPacer`); `RedisPacer` runs the same
//! rule as a Lua script over a hash and a sorted set of accepted images, so every worker
//! process shares one learned limit.

use std::collections::VecDeque;
use std::time::Duration;

/// Share of the measured accepted rate a burst of 429s drops the pace to.
pub const CUT_TO: f64 = 0.9;
/// The most one burst may cut: the pace never falls below this share of what it was.
pub const MAX_CUT: f64 = 0.5;
/// 429s arriving within this share of the window after a cut (2 s of Ark's 60) belong to the
/// same burst: the calls already in flight when the provider started refusing answer together
/// and are one signal, not several.
pub const BURST_SHARE: f64 = 1.0 / 30.0;
/// The slowest pace, in images per minute: some call must get through to learn anything.
pub const FLOOR_IPM: f64 = 1.0;
/// The first climbing step after a cut, as a share of the pace then (at least one image).
pub const STEP_SHARE: f64 = 0.05;

/// How a pace moves: its ceiling and its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceRule {
    /// Images per minute the pace never passes (`PROVIDER_IPM` or the model table's).
    pub ceiling: f64,
    /// Accepted images are counted over this, and a climb waits this long without a 429
    /// (`PROVIDER_RATE_WINDOW`; Ark counts images per minute over a sliding 60 s).
    pub window: Duration,
}

impl PaceRule {
    pub fn window_ms(&self) -> f64 {
        self.window.as_secs_f64().max(0.001) * 1000.0
    }
}

/// What a call's answer tells the pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PaceSignal {
    /// The provider accepted a call generating this many images.
    Accepted(u32),
    /// The provider refused for rate (429), asking to wait this long when it said.
    Throttled(Option<Duration>),
}

/// One pace in memory; times are milliseconds on the owner's clock.
#[derive(Debug, Clone, Default)]
pub struct PaceState {
    /// `None`: at the ceiling (nothing learned, or climbed back).
    rate: Option<f64>,
    step: f64,
    cut_at: Option<f64>,
    climbed_at: f64,
    hold_until: f64,
    /// Theoretical arrival time of the next call (GCRA's virtual schedule).
    tat: f64,
    /// When each image accepted within the window was.
    accepted: VecDeque<f64>,
}

impl PaceState {
    /// Images per minute the calls are paced at now.
    pub fn rate(&self, rule: &PaceRule) -> f64 {
        self.rate.map_or(rule.ceiling, |r| r.min(rule.ceiling))
    }

    /// A quiet window since the last cut or climb: one step up, and the next step twice as big.
    fn climb(&mut self, now: f64, rule: &PaceRule) {
        let Some(rate) = self.rate else { return };
        let quiet_since = self.climbed_at.max(self.cut_at.unwrap_or(f64::MIN));
        if now - quiet_since < rule.window_ms() {
            return;
        }
        let next = rate + self.step;
        self.rate = (next < rule.ceiling).then_some(next);
        self.step *= 2.0;
        self.climbed_at = now;
    }

    /// Reserves the slot of a call generating `images`; the milliseconds to wait for it.
    pub fn reserve(&mut self, now: f64, images: u32, rule: &PaceRule) -> f64 {
        self.climb(now, rule);
        let per_image = 60_000.0 / self.rate(rule).max(FLOOR_IPM);
        let start = self.tat.max(now).max(self.hold_until);
        self.tat = start + per_image * f64::from(images.max(1));
        start - now
    }

    pub fn signal(&mut self, now: f64, signal: PaceSignal, rule: &PaceRule) {
        let window = rule.window_ms();
        while self.accepted.front().is_some_and(|t| now - t >= window) {
            self.accepted.pop_front();
        }
        match signal {
            PaceSignal::Accepted(images) => {
                self.accepted
                    .extend(std::iter::repeat_n(now, images.max(1) as usize));
            }
            PaceSignal::Throttled(after) => {
                if let Some(after) = after {
                    self.hold_until = self.hold_until.max(now + after.as_secs_f64() * 1000.0);
                }
                if self.cut_at.is_some_and(|c| now - c < window * BURST_SHARE) {
                    return;
                }
                let measured = self.accepted.len() as f64 * 60_000.0 / window;
                let next = cut(self.rate(rule), measured);
                self.rate = Some(next);
                self.step = (next * STEP_SHARE).max(1.0);
                self.cut_at = Some(now);
            }
        }
    }
}

/// The pace after a burst of 429s at `rate`, having seen `measured` images a minute accepted.
pub fn cut(rate: f64, measured: f64) -> f64 {
    (CUT_TO * measured)
        .max(rate * MAX_CUT)
        .min(rate)
        .max(FLOOR_IPM)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: PaceRule = PaceRule {
        ceiling: 500.0,
        window: Duration::from_secs(60),
    };

    /// The provider of the benchmark: 30 images in any 60 s, the service told nothing.
    fn provider_allows(log: &mut VecDeque<f64>, now: f64) -> bool {
        while log.front().is_some_and(|t| now - t >= 60_000.0) {
            log.pop_front();
        }
        if log.len() >= 30 {
            return false;
        }
        log.push_back(now);
        true
    }

    #[test]
    fn an_undisclosed_limit_is_learned_within_a_few_bursts() {
        let mut pace = PaceState::default();
        let mut provider = VecDeque::new();
        let mut now = 0.0;
        let mut accepted = Vec::new();
        let mut cuts = 0;
        while now < 300_000.0 {
            now += pace.reserve(now, 1, &RULE);
            let before = pace.rate(&RULE);
            if provider_allows(&mut provider, now) {
                pace.signal(now, PaceSignal::Accepted(1), &RULE);
                accepted.push(now);
            } else {
                pace.signal(now, PaceSignal::Throttled(None), &RULE);
                cuts += usize::from(pace.rate(&RULE) < before);
            }
        }
        let rate = pace.rate(&RULE);
        assert!((27.0..=40.0).contains(&rate), "pace {rate}");
        // Halving from 500 reaches the measured 30 in five cuts; later bursts only probe.
        assert!(cuts <= 12, "{cuts} cuts");
        // After the first window, the provider's capacity is used at 0.9 or more.
        let late = accepted.iter().filter(|t| **t >= 120_000.0).count() as f64;
        let used = late / (180_000.0 / 60_000.0 * 30.0);
        assert!(used >= 0.9, "utilisation {used}");
    }

    #[test]
    fn a_cut_halves_at_most_and_never_raises() {
        assert_eq!(cut(500.0, 30.0), 250.0);
        assert_eq!(cut(40.0, 30.0), 27.0);
        assert_eq!(cut(20.0, 30.0), 20.0);
        assert_eq!(cut(1.5, 0.0), FLOOR_IPM);
    }

    #[test]
    fn a_burst_cuts_once_and_retry_after_holds_every_call() {
        let mut pace = PaceState::default();
        pace.signal(
            0.0,
            PaceSignal::Throttled(Some(Duration::from_secs(3))),
            &RULE,
        );
        pace.signal(500.0, PaceSignal::Throttled(None), &RULE);
        assert_eq!(pace.rate(&RULE), 250.0, "one cut per burst");
        assert_eq!(pace.reserve(1_000.0, 1, &RULE), 2_000.0, "held until 3 s");
    }

    #[test]
    fn quiet_windows_climb_back_to_the_ceiling() {
        let mut pace = PaceState::default();
        pace.signal(0.0, PaceSignal::Throttled(None), &RULE);
        let mut now = 0.0;
        let mut windows = 0;
        while pace.rate(&RULE) < RULE.ceiling {
            now += 60_000.0;
            pace.reserve(now, 1, &RULE);
            windows += 1;
        }
        // 250 → 262.5 → 287.5 → 337.5 → 437.5 → ceiling: the step doubles each window.
        assert_eq!(windows, 5);
    }
}
