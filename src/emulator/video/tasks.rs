//! Seedance tasks and their clock: `queued` → `running` → `succeeded` | `failed` | `expired`
//! on timers, at most the model's concurrency running per key, the task object of B.4, and a
//! callback for each change.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::models::{self, Spec};
use crate::emulator::images::{contains_any, jitter, Format};
use crate::emulator::{Emulator, Inner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// How a task will end once it has run, decided when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeed,
    Fail,
    Expire,
}

/// A status change to deliver to the task's `callback_url`: the task object, and whether it is
/// final (final ones are re-sent until acknowledged).
pub type Callback = (Value, bool);

pub struct Task {
    pub id: String,
    pub key: String,
    pub spec: Spec,
    pub status: Status,
    /// Creation order (the list is newest first).
    pub seq: u64,
    pub created: Instant,
    pub created_at: i64,
    pub updated_at: i64,
    /// When it may start running (it stays queued at least `queue_time`).
    pub startable: Instant,
    pub finish_at: Option<Instant>,
    /// When it reached its final status (the bench's start of "completion to terminal here").
    pub ended_at: Option<chrono::DateTime<Utc>>,
    pub expires_at: Instant,
    pub outcome: Outcome,
    pub error: Option<(&'static str, &'static str)>,
    pub video_url: Option<String>,
    pub last_frame_url: Option<String>,
    pub callbacks: Option<mpsc::UnboundedSender<Callback>>,
}

impl Task {
    /// The task object of GET, list items and callbacks (B.4).
    pub fn json(&self) -> Value {
        let s = &self.spec;
        let mut v = json!({
            "id": self.id,
            "model": s.model,
            "status": self.status.as_str(),
            "error": self.error.map(|(code, message)| json!({"code": code, "message": message})),
            "seed": s.seed,
            "resolution": s.resolution,
            "ratio": s.ratio,
            "framespersecond": 24,
            "service_tier": s.service_tier,
            "execution_expires_after": s.execution_expires_after,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        });
        match s.frames {
            Some(f) => v["frames"] = json!(f),
            None => v["duration"] = json!(s.duration.unwrap_or(5)),
        }
        if let Some(audio) = s.generate_audio {
            v["generate_audio"] = json!(audio);
        }
        if s.draft {
            v["draft"] = json!(true);
        }
        if let Some(url) = &self.video_url {
            let mut content = json!({ "video_url": url });
            if let Some(frame) = &self.last_frame_url {
                content["last_frame_url"] = json!(frame);
            }
            v["content"] = content;
            let tokens = s.tokens();
            v["usage"] = json!({"completion_tokens": tokens, "total_tokens": tokens});
        }
        v
    }

    fn set(&mut self, status: Status) -> Option<(mpsc::UnboundedSender<Callback>, Callback)> {
        self.status = status;
        let now = Utc::now();
        self.updated_at = now.timestamp();
        if status.terminal() && self.ended_at.is_none() {
            self.ended_at = Some(now);
        }
        let tx = self.callbacks.clone()?;
        let callback = (self.json(), status.terminal());
        if status.terminal() {
            // Nothing follows a final status: the sender goes, and the delivery task with it.
            self.callbacks = None;
        }
        Some((tx, callback))
    }
}

/// A video handed out by URL.
pub struct IssuedVideo {
    pub seed: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Tasks {
    pub by_id: HashMap<String, Task>,
    pub next_seq: u64,
}

/// `cgt-` + Beijing time `YYYYMMDDhhmmss` + `-` + 5 lowercase alphanumerics (B.1).
pub fn task_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..5)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect();
    let beijing = Utc::now() + chrono::Duration::hours(8);
    format!("cgt-{}-{tail}", beijing.format("%Y%m%d%H%M%S"))
}

impl Emulator {
    /// How a new video or Jimeng task with this prompt will end.
    pub(crate) fn task_outcome(&self, prompt: &str) -> Outcome {
        let cfg = &self.0.cfg;
        let roll: f64 = rand::thread_rng().gen();
        if contains_any(prompt, &cfg.output_sensitive_words) || roll < cfg.task_fail_rate {
            Outcome::Fail
        } else if contains_any(prompt, &cfg.expire_words)
            || roll < cfg.task_fail_rate + cfg.task_expire_rate
        {
            Outcome::Expire
        } else {
            Outcome::Succeed
        }
    }

    /// Tasks of `key` on `model` running at once, at most (0: unlimited).
    pub(super) fn video_concurrency(&self, model: &str) -> u32 {
        let table = models::find(model).map_or(10, |m| m.concurrency);
        self.0.cfg.video.concurrency.unwrap_or(table)
    }

    /// Starts the clock of video tasks (once).
    pub(super) fn start_video_clock(&self) {
        let weak = Arc::downgrade(&self.0);
        self.0.video.clock.call_once(|| {
            tokio::spawn(clock(weak));
        });
    }

    /// Moves every task whose time has come; when next to look.
    pub(crate) fn video_step(&self, now: Instant) -> Option<Instant> {
        let mut out = Vec::new();
        let next = {
            let Ok(mut tasks) = self.0.video.tasks.lock() else {
                return None;
            };
            self.purge(&mut tasks, now);
            for t in tasks.by_id.values_mut() {
                if !t.status.terminal() && now >= t.expires_at {
                    out.extend(t.set(Status::Expired));
                } else if t.status == Status::Running && t.finish_at.is_some_and(|f| f <= now) {
                    self.finish(t);
                    out.extend(t.set(t.status));
                }
            }
            self.start_queued(&mut tasks, now, &mut out);
            tasks
                .by_id
                .values()
                .filter(|t| !t.status.terminal())
                .flat_map(|t| {
                    let start =
                        (t.status == Status::Queued && t.startable > now).then_some(t.startable);
                    [Some(t.expires_at), t.finish_at, start]
                })
                .flatten()
                .min()
        };
        for (tx, callback) in out {
            // A closed channel means the delivery task is gone: nothing to tell.
            let _ = tx.send(callback);
        }
        next
    }

    /// Starts queued tasks, oldest first, while their key and model have a free slot.
    fn start_queued(
        &self,
        tasks: &mut Tasks,
        now: Instant,
        out: &mut Vec<(mpsc::UnboundedSender<Callback>, Callback)>,
    ) {
        let mut running: HashMap<(String, &'static str), u32> = HashMap::new();
        let mut queued: Vec<(u64, String)> = Vec::new();
        for t in tasks.by_id.values() {
            match t.status {
                Status::Running => *running.entry((t.key.clone(), t.spec.model)).or_default() += 1,
                Status::Queued if t.startable <= now => queued.push((t.seq, t.id.clone())),
                _ => {}
            }
        }
        queued.sort();
        let cfg = &self.0.cfg.video;
        for (_, id) in queued {
            let Some(t) = tasks.by_id.get_mut(&id) else {
                continue;
            };
            let limit = self.video_concurrency(t.spec.model);
            let n = running.entry((t.key.clone(), t.spec.model)).or_default();
            if limit > 0 && *n >= limit {
                continue;
            }
            *n += 1;
            t.finish_at = Some(now + cfg.run_time + jitter(cfg.run_jitter));
            out.extend(t.set(Status::Running));
        }
    }

    /// Ends a task that has run: its video (and last frame) issued, or its failure.
    fn finish(&self, t: &mut Task) {
        match t.outcome {
            Outcome::Succeed => {
                let ttl = self.0.cfg.video.url_ttl;
                let (w, h) = t.spec.dims();
                t.video_url = Some(self.issue_video(
                    &t.id,
                    &t.spec.prompt,
                    (w, h),
                    t.spec.frame_count(),
                    ttl,
                ));
                if t.spec.return_last_frame {
                    let name = format!("{}_last_frame", t.id);
                    t.last_frame_url =
                        Some(self.issue_image(&name, &t.spec.prompt, 0, (w, h), Format::Png, ttl));
                }
                t.status = Status::Succeeded;
            }
            Outcome::Fail => {
                t.error = Some((
                    "OutputVideoSensitiveContentDetected",
                    "The request failed because the output video may contain sensitive information.",
                ));
                t.status = Status::Failed;
            }
            Outcome::Expire => t.status = Status::Expired,
        }
    }

    /// Forgets tasks older than the retention, and cancelled ones after a day.
    fn purge(&self, tasks: &mut Tasks, now: Instant) {
        let keep = self.0.cfg.video.retention;
        let day = Duration::from_secs(24 * 3600).min(keep);
        tasks.by_id.retain(|_, t| {
            let age = now.duration_since(t.created);
            age < keep && !(t.status == Status::Cancelled && age >= day)
        });
    }

    /// Issues the video `id` (a Seedance or Jimeng task's); its URL.
    pub(crate) fn issue_video(
        &self,
        id: &str,
        seed: &str,
        (width, height): (u32, u32),
        frames: u32,
        ttl: Duration,
    ) -> String {
        let name = format!("{id}.mp4");
        if let Ok(mut videos) = self.0.video.videos.lock() {
            let now = Instant::now();
            videos.retain(|_, v| v.expires > now);
            videos.insert(
                name.clone(),
                IssuedVideo {
                    seed: seed.to_string(),
                    width,
                    height,
                    frames,
                    expires: now + ttl,
                },
            );
        }
        format!(
            "{}/emulator/videos/{name}?{}",
            self.0.base_url,
            crate::emulator::images::tos_query(ttl)
        )
    }

    /// When each kept task that has ended reached its final status, by task id.
    pub fn video_ended_at(&self) -> HashMap<String, chrono::DateTime<Utc>> {
        self.0
            .video
            .tasks
            .lock()
            .map(|tasks| {
                tasks
                    .by_id
                    .values()
                    .filter_map(|t| Some((t.id.clone(), t.ended_at?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kept tasks by status, every status present.
    pub(crate) fn video_by_status(&self) -> std::collections::BTreeMap<String, u64> {
        let mut m: std::collections::BTreeMap<String, u64> = Status::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        if let Ok(tasks) = self.0.video.tasks.lock() {
            for t in tasks.by_id.values() {
                *m.entry(t.status.as_str().to_string()).or_default() += 1;
            }
        }
        m
    }
}

/// Advances tasks at their deadlines (and when woken by a create or a cancel) for as long as
/// the emulator lives.
async fn clock(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let emu = Emulator(inner);
        let now = Instant::now();
        // Look at least every 250 ms, so the clock notices when the emulator is gone.
        let cap = now + Duration::from_millis(250);
        let deadline = emu.video_step(now).map_or(cap, |n| n.min(cap));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = emu.0.video.wake.notified() => {}
        }
    }
}
