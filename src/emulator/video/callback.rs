//! Task callbacks (B.6): a POST of the task object to `callback_url` for each status change, in
//! order; a final status not answered 2xx within `callback_timeout` (5 s) is re-sent up to
//! `callback_retries` (3) more times. With `callback_copies`, each is sent that many times at
//! once, as an at-least-once deliverer may.

use std::sync::Weak;
use std::time::Instant;

use tokio::sync::mpsc;

use super::tasks::Callback;
use crate::emulator::{Emulator, Inner};

/// The sender of a task's callbacks; a task delivering them in order runs while it is open.
pub(super) fn start(emu: &Emulator, url: String) -> mpsc::UnboundedSender<Callback> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Callback>();
    let weak = std::sync::Arc::downgrade(&emu.0);
    tokio::spawn(async move {
        while let Some((body, final_status)) = rx.recv().await {
            let copies = weak
                .upgrade()
                .map_or(1, |inner| inner.cfg.video.callback_copies.max(1));
            let sends = (0..copies).map(|_| deliver(&weak, &url, &body, final_status));
            futures::future::join_all(sends).await;
        }
    });
    tx
}

async fn deliver(weak: &Weak<Inner>, url: &str, body: &serde_json::Value, final_status: bool) {
    let Some(inner) = weak.upgrade() else {
        return;
    };
    let emu = Emulator(inner);
    let cfg = &emu.0.cfg.video;
    let (timeout, attempts) = (
        cfg.callback_timeout,
        if final_status {
            1 + cfg.callback_retries
        } else {
            1
        },
    );
    let http = emu.0.video.http.clone();
    drop(emu);
    for attempt in 1..=attempts {
        let started = Instant::now();
        let answer = http.post(url).json(body).timeout(timeout).send().await;
        let ok = answer.as_ref().is_ok_and(|r| r.status().is_success());
        let Some(inner) = weak.upgrade() else {
            return;
        };
        Emulator(inner).with_stats(|s| {
            s.video.callbacks_sent += 1;
            if ok {
                s.video.callbacks_delivered += 1;
            } else {
                s.video.callbacks_failed += 1;
            }
        });
        if ok {
            return;
        }
        tracing::debug!(url, attempt, status = ?answer.map(|r| r.status()), "video callback not acknowledged");
        if attempt < attempts {
            // The next attempt comes when the previous one's 5 s have passed, answered or not.
            tokio::time::sleep_until((started + timeout).into()).await;
        }
    }
}
