//! Webhooks: where a task's owner wants to hear of it (`WebhookTarget`, parsed from the create
//! request), the events a state change makes (`events_for`, written to the store's outbox in the
//! same write as the change), a delivery's record and its retry schedule, and which addresses a
//! webhook may never reach (`forbidden_ip`). Nothing here does I/O.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{FieldError, Task, TaskStatus};

/// URLs longer than this are refused (browsers and proxies stop near 2 KB too).
pub const MAX_URL_LEN: usize = 2048;

/// What a client may ask to hear of (`webhook_events_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    /// The task started running (`task.started`).
    Start,
    /// The task reached a terminal state, whichever (`task.completed`).
    Completed,
}

impl WebhookEvent {
    /// The body's `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            WebhookEvent::Start => "task.started",
            WebhookEvent::Completed => "task.completed",
        }
    }

    /// The name `webhook_events_filter` takes.
    pub fn filter_name(self) -> &'static str {
        match self {
            WebhookEvent::Start => "start",
            WebhookEvent::Completed => "completed",
        }
    }

    fn parse(s: &str) -> Option<WebhookEvent> {
        match s.trim().to_ascii_lowercase().as_str() {
            "start" => Some(WebhookEvent::Start),
            "completed" => Some(WebhookEvent::Completed),
            _ => None,
        }
    }
}

/// Where a task's events go, and which.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

impl WebhookTarget {
    /// The create request's `webhook` and `webhook_events_filter` (default: both events). Only
    /// http and https URLs with a host; where the host leads (`forbidden_ip`) is the service's
    /// check, which knows `WEBHOOK_ALLOW_PRIVATE` and resolves names.
    pub fn parse(
        url: Option<&str>,
        filter: Option<&[String]>,
    ) -> Result<Option<WebhookTarget>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let events = match filter {
            None => vec![WebhookEvent::Start, WebhookEvent::Completed],
            Some(list) => {
                let mut events = Vec::new();
                for raw in list {
                    match WebhookEvent::parse(raw) {
                        Some(e) if !events.contains(&e) => events.push(e),
                        Some(_) => {}
                        None => errors.push(
                            FieldError::new(
                                "webhook_events_filter",
                                "each event must be start or completed",
                            )
                            .with_value(raw.as_str()),
                        ),
                    }
                }
                if list.is_empty() {
                    errors.push(FieldError::new(
                        "webhook_events_filter",
                        "must name at least one event (start, completed)",
                    ));
                }
                events
            }
        };
        let url = match url.map(str::trim) {
            None | Some("") => {
                if filter.is_some() && errors.is_empty() {
                    errors.push(FieldError::new(
                        "webhook",
                        "webhook_events_filter needs a webhook URL",
                    ));
                }
                None
            }
            Some(u) => match check_url(u) {
                Ok(()) => Some(u.to_string()),
                Err(reason) => {
                    errors.push(FieldError::new("webhook", reason).with_value(u));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(url.map(|url| WebhookTarget { url, events }))
    }

    pub fn wants(&self, e: WebhookEvent) -> bool {
        self.events.contains(&e)
    }
}

/// Syntax only: http(s), a host, no credentials, within the length limit.
fn check_url(u: &str) -> Result<(), &'static str> {
    if u.len() > MAX_URL_LEN {
        return Err("must be at most 2048 characters");
    }
    let parsed = url::Url::parse(u).map_err(|_| "must be an absolute http:// or https:// URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password");
    }
    match parsed.host() {
        None => Err("must name a host"),
        Some(_) => Ok(()),
    }
}

/// The field error's words for a target in a forbidden range.
pub const FORBIDDEN_TARGET: &str =
    "must not point to a loopback, private, link-local, metadata or unspecified address";

/// Addresses a webhook never reaches unless `WEBHOOK_ALLOW_PRIVATE=true`: loopback, private
/// (RFC 1918, unique-local), link-local (cloud metadata at 169.254.169.254 among them),
/// carrier-grade NAT, unspecified, broadcast, multicast, documentation and benchmarking ranges,
/// and IPv4 mapped or translated into IPv6.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return forbidden_ip(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || s[0..6] == [0, 0, 0, 0, 0, 0]
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    Delivered,
    /// Every attempt failed; only a redelivery sends it again.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

/// One attempt of a delivery, for the delivery log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// 1 for the first attempt; counts on across redeliveries.
    pub attempt: u32,
    pub at: DateTime<Utc>,
    /// The receiver's answer, when there was one.
    pub status_code: Option<u16>,
    /// Why there was no 2xx answer (timeout, connection, refused target, status).
    pub error: Option<String>,
    pub duration_ms: u64,
    /// When the next attempt is due; none once delivered or dead.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// One event on its way to one URL: written to the outbox with the change that made it, then
/// attempted until a 2xx answer or the attempts run out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub task_id: String,
    pub user_id: String,
    pub url: String,
    pub event: WebhookEvent,
    /// When the change happened (the body's `timestamp`).
    pub created_at: DateTime<Utc>,
    /// The task as the change left it (the body's `data`), without its reference images.
    pub task: Task,
    pub state: DeliveryState,
    /// Attempts counted towards the schedule (a redelivery starts it again).
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub log: Vec<DeliveryAttempt>,
}

impl WebhookDelivery {
    /// The attempt's number in the log.
    pub fn next_attempt_number(&self) -> u32 {
        self.log.last().map_or(1, |a| a.attempt + 1)
    }

    /// Records an attempt's end: delivered on a 2xx, else due again after the backoff, or dead
    /// once `max_attempts` have failed. `jitter` in [0, 1) spreads retries of many events.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        at: DateTime<Utc>,
        status_code: Option<u16>,
        error: Option<String>,
        duration_ms: u64,
        schedule: &RetrySchedule,
        jitter: f64,
    ) {
        let ok = error.is_none() && status_code.is_some_and(|c| (200..300).contains(&c));
        self.attempts += 1;
        let next = if ok {
            self.state = DeliveryState::Delivered;
            None
        } else if self.attempts >= schedule.max_attempts {
            self.state = DeliveryState::Dead;
            None
        } else {
            self.state = DeliveryState::Pending;
            let delay = schedule.delay(self.attempts, jitter);
            Some(at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(8)))
        };
        let error = match (ok, error, status_code) {
            (true, _, _) => None,
            (false, Some(e), _) => Some(e),
            (false, None, Some(c)) => Some(format!("answered {c}")),
            (false, None, None) => Some("no answer".into()),
        };
        self.log.push(DeliveryAttempt {
            attempt: self.next_attempt_number(),
            at,
            status_code,
            error,
            duration_ms,
            next_attempt_at: next,
        });
        self.next_attempt_at = next;
    }

    /// Sends a delivered or dead event again from a fresh schedule (its log is kept).
    pub fn redeliver(&mut self, now: DateTime<Utc>) {
        self.state = DeliveryState::Pending;
        self.attempts = 0;
        self.next_attempt_at = Some(now);
    }
}

/// Exponential backoff: `base`, then ×4 each attempt up to `cap`, each delay scaled by a jitter
/// factor in [0.75, 1.25). With the defaults (5 s, 8 h cap, 12 attempts) the last attempt comes
/// 30 to 50 hours after the first.
#[derive(Debug, Clone)]
pub struct RetrySchedule {
    pub base: Duration,
    pub cap: Duration,
    pub max_attempts: u32,
}

impl RetrySchedule {
    /// The wait after the `failed`-th failed attempt (1-based).
    pub fn delay(&self, failed: u32, jitter: f64) -> Duration {
        let factor = 4f64.powi(failed.saturating_sub(1).min(30) as i32);
        let plain = (self.base.as_secs_f64() * factor).min(self.cap.as_secs_f64());
        Duration::from_secs_f64(plain * (0.75 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

/// The outbox entries a change from `current` to `next` makes for the task's webhook: a start
/// the first time the task runs (again after a user's retry), a completion on reaching any
/// terminal state. Their ids derive from the task and the version, so writing one twice (a
/// retried write, or the MongoDB relay meeting it again) is harmless.
pub fn events_for(current: &Task, next: &Task) -> Vec<WebhookDelivery> {
    let Some(target) = &next.webhook else {
        return Vec::new();
    };
    let started = current.status == TaskStatus::Pending
        && next.status == TaskStatus::Processing
        && current.started_at.is_none();
    let finished = !current.status.is_terminal() && next.status.is_terminal();
    let event = match (started, finished) {
        (true, _) if target.wants(WebhookEvent::Start) => WebhookEvent::Start,
        (_, true) if target.wants(WebhookEvent::Completed) => WebhookEvent::Completed,
        _ => return Vec::new(),
    };
    let mut snapshot = next.clone();
    // Not in the body, and large: reference images may be data URLs of megabytes.
    snapshot.params.images.clear();
    if let Some(v) = snapshot.video.as_mut() {
        // A video's frames likewise; its callback token is the provider's secret, not the owner's.
        v.frames.clear();
        v.callback_token = None;
    }
    snapshot.params.options = None;
    snapshot.unkept = None;
    snapshot.outbox.clear();
    vec![WebhookDelivery {
        id: format!("msg_{}_{}", next.id, next.version),
        task_id: next.id.clone(),
        user_id: next.user_id.clone(),
        url: target.url.clone(),
        event,
        created_at: next.updated_at,
        task: snapshot,
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: Some(next.updated_at),
        log: Vec::new(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageParams;

    fn task(webhook: Option<WebhookTarget>) -> Task {
        let mut t = Task::new_pending(
            "u".into(),
            "m".into(),
            "p".into(),
            ImageParams::default(),
            None,
            Utc::now(),
        );
        t.webhook = webhook;
        t
    }

    fn target(events: &[WebhookEvent]) -> Option<WebhookTarget> {
        Some(WebhookTarget {
            url: "https://example.com/hook".into(),
            events: events.to_vec(),
        })
    }

    #[test]
    fn parse_defaults_to_both_events_and_refuses_bad_input() {
        let t = WebhookTarget::parse(Some("https://example.com/h"), None)
            .expect("valid")
            .expect("some");
        assert_eq!(t.events, [WebhookEvent::Start, WebhookEvent::Completed]);
        assert_eq!(WebhookTarget::parse(None, None).expect("none"), None);
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "http://user:pw@example.com/",
            "http://",
        ] {
            let e = WebhookTarget::parse(Some(bad), None).expect_err(bad);
            assert_eq!(e[0].field, "webhook", "{bad}");
        }
        let filter = vec!["start".to_string(), "nope".to_string()];
        let e = WebhookTarget::parse(Some("https://example.com/"), Some(&filter)).expect_err("x");
        assert_eq!(e[0].field, "webhook_events_filter");
        let only = vec!["COMPLETED".to_string()];
        let t = WebhookTarget::parse(Some("https://example.com/"), Some(&only))
            .expect("ok")
            .expect("some");
        assert_eq!(t.events, [WebhookEvent::Completed]);
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ok in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            let ip: IpAddr = ok.parse().expect("ip");
            assert!(!forbidden_ip(ip), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "10.1.2.3",
            "::ffff:192.168.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "64:ff9b::a00:1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = bad.parse().expect("ip");
            assert!(forbidden_ip(ip), "{bad}");
        }
    }

    #[test]
    fn a_start_and_a_completion_each_make_one_event_when_wanted() {
        let now = Utc::now();
        let t = task(target(&[WebhookEvent::Start, WebhookEvent::Completed]));
        let p = t.start("w", now, now).expect("start");
        let started = events_for(&t, &p);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].event, WebhookEvent::Start);
        assert_eq!(started[0].id, format!("msg_{}_2", t.id));
        let requeued = p.requeue(None, now, now).expect("requeue");
        let again = requeued.start("w", now, now).expect("start again");
        assert!(events_for(&requeued, &again).is_empty(), "a second attempt");
        let c = again.complete(vec![], None, now).expect("complete");
        assert_eq!(events_for(&again, &c)[0].event, WebhookEvent::Completed);
        let only_done = task(target(&[WebhookEvent::Completed]));
        let p = only_done.start("w", now, now).expect("start");
        assert!(events_for(&only_done, &p).is_empty());
        assert_eq!(events_for(&p, &p.cancel(now).expect("cancel")).len(), 1);
        assert!(events_for(&t, &t.start("w", now, now).expect("s")).len() == 1);
        assert!(events_for(&task(None), &task(None)).is_empty());
    }

    #[test]
    fn the_schedule_spans_a_day_and_a_delivery_dies_after_its_attempts() {
        let s = RetrySchedule {
            base: Duration::from_secs(5),
            cap: Duration::from_secs(8 * 3600),
            max_attempts: 12,
        };
        let least: f64 = (1..12).map(|n| s.delay(n, 0.0).as_secs_f64()).sum();
        assert!(least >= 24.0 * 3600.0, "{least}");
        let t = task(target(&[WebhookEvent::Completed]));
        let now = Utc::now();
        let p = t.start("w", now, now).expect("s");
        let mut d = events_for(&p, &p.cancel(now).expect("c")).remove(0);
        for n in 1..12 {
            d.record(now, Some(500), None, 1, &s, 0.5);
            assert_eq!(d.state, DeliveryState::Pending, "{n}");
            assert!(d.next_attempt_at.is_some());
        }
        d.record(now, None, Some("timeout".into()), 1, &s, 0.5);
        assert_eq!((d.state, d.log.len()), (DeliveryState::Dead, 12));
        d.redeliver(now);
        d.record(now, Some(204), None, 1, &s, 0.5);
        assert_eq!((d.state, d.log[12].attempt), (DeliveryState::Delivered, 13));
    }
}
