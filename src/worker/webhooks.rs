//! The webhook deliverer: claims due deliveries from the store (one claimer at a time each, under
//! a lease), posts them signed per Standard Webhooks, and records each attempt. Bounded: attempts
//! in flight per process and per target, a timeout per attempt, and at most `MAX_ANSWER_BYTES`
//! of an answer read. Targets are checked again here, after DNS: the connection goes only to
//! addresses that passed (`CheckedResolver`), never through a proxy, and redirects are not
//! followed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::WebhookConfig;
use crate::domain::{rfc3339, DeliveryState, RetrySchedule, Task, WebhookDelivery};
use crate::service::webhooks::{host_port, resolve_target};
use crate::store::Store;

/// Renders a task as the body's `data` (the REST detail shape; supplied by the assembly, which
/// knows the surfaces).
pub type RenderTask = Arc<dyn Fn(&Task) -> serde_json::Value + Send + Sync>;

/// Of a receiver's answer, only this much is read (the rest is dropped with the connection).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How often the store is asked for due deliveries when nothing wakes the deliverer sooner.
const POLL: Duration = Duration::from_millis(500);
/// A claim outlives the attempt by this much (store writes, clocks of different processes).
/// It is taken again once the per-target slot is free, so waiting for the slot needs no margin,
/// and the deliveries of a process killed mid-attempt are due again this soon after.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

pub struct Deliverer {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    signer: standardwebhooks::Webhook,
    render: RenderTask,
    cfg: WebhookConfig,
    schedule: RetrySchedule,
    wake: Arc<Notify>,
    /// Attempts in flight in this process.
    slots: Arc<Semaphore>,
    /// Attempts in flight per `host:port`.
    targets: Mutex<HashMap<String, Arc<Semaphore>>>,
    id: String,
}

/// Resolves a webhook's host name and keeps only what may be reached: with a forbidden address
/// among the answers the attempt fails, so the connection can only go to a checked address.
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (host, allow) = (name.as_str().to_string(), self.allow_private);
        Box::pin(async move {
            // The port is the URL's; hyper sets it on whatever address comes back.
            let addrs = resolve_target(&host, 0, allow).await?;
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// How an attempt ended.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DelivererError {
    #[error("WEBHOOK_SECRET: {0}")]
    Secret(String),
    #[error("webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn Store>,
        secret: &str,
        render: RenderTask,
        cfg: WebhookConfig,
        wake: Arc<Notify>,
    ) -> Result<Deliverer, DelivererError> {
        let signer = standardwebhooks::Webhook::new(secret)
            .map_err(|e| DelivererError::Secret(e.to_string()))?;
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver {
                allow_private: cfg.allow_private,
            }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .user_agent(concat!(
                "volcengine-ai-server/",
                env!("CARGO_PKG_VERSION"),
                " webhooks"
            ))
            .build()?;
        Ok(Deliverer {
            store,
            client,
            signer,
            render,
            schedule: RetrySchedule {
                base: cfg.retry_base,
                cap: cfg.retry_cap,
                max_attempts: cfg.max_attempts,
            },
            slots: Arc::new(Semaphore::new(cfg.concurrency)),
            targets: Mutex::default(),
            cfg,
            wake,
            id: format!("webhooks-{}", uuid::Uuid::new_v4()),
        })
    }

    /// Runs until `shutdown`; attempts in flight then finish on their own (or their claims run
    /// out and another process takes them).
    pub fn spawn(self: Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(shutdown).await })
    }

    async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let free = self.slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                let claim = format!("{}-{}", self.id, uuid::Uuid::new_v4());
                let now = Utc::now();
                match self
                    .store
                    .claim_webhooks(&claim, now, self.lease_end(), free)
                    .await
                {
                    Ok(ds) => ds.into_iter().map(|d| (d, claim.clone())).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming webhook deliveries failed; retrying");
                        Vec::new()
                    }
                }
            };
            let full = !claimed.is_empty() && claimed.len() == free;
            for (d, claim) in claimed {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                let span = tracing::info_span!("webhook", task_id = %d.task_id, delivery = %d.id);
                tokio::spawn(
                    async move {
                        me.deliver(d, &claim).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// The end of a claim taken (or renewed) now.
    fn lease_end(&self) -> chrono::DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(self.cfg.timeout + LEASE_MARGIN)
                .unwrap_or(chrono::Duration::minutes(2))
    }

    fn target_slots(&self, url: &str) -> Arc<Semaphore> {
        let key = host_port(url).map_or_else(|| url.to_string(), |(h, p)| format!("{h}:{p}"));
        let mut map = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 4096 {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.cfg.per_target_concurrency)))
            .clone()
    }

    async fn deliver(&self, mut d: WebhookDelivery, claim: &str) {
        let target = self.target_slots(&d.url);
        let Ok(_slot) = target.acquire().await else {
            return;
        };
        // The wait for the slot may have outlasted the claim: attempt only while it is still
        // ours (then for a whole lease), else whoever claimed it since attempts it.
        match self
            .store
            .renew_webhook(&d.id, claim, self.lease_end())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("webhook claim lost while waiting for the target; skipped");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing a webhook claim failed; due again later");
                return;
            }
        }
        let attempt = self.attempt(&d).await;
        let at = Utc::now();
        d.record(
            at,
            attempt.status,
            attempt.error.clone(),
            attempt.took.as_millis() as u64,
            &self.schedule,
            rand::random::<f64>(),
        );
        metrics::histogram!("webhook_attempt_duration_seconds", "outcome" => d.state.as_str())
            .record(attempt.took.as_secs_f64());
        match d.state {
            DeliveryState::Delivered => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                // From the change to its delivery; a redelivery's wait is the user's, not ours.
                if d.log.len() == d.attempts as usize {
                    let delay = (at - d.created_at).to_std().unwrap_or_default();
                    metrics::histogram!("webhook_delivery_delay_seconds")
                        .record(delay.as_secs_f64());
                }
                tracing::info!(attempts = d.log.len(), "webhook delivered");
            }
            DeliveryState::Pending => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "retried").increment(1);
                tracing::info!(
                    status = attempt.status,
                    error = attempt.error.as_deref(),
                    next = ?d.next_attempt_at,
                    "webhook attempt failed; will retry"
                );
            }
            DeliveryState::Dead => {
                metrics::counter!("webhook_deliveries_total", "outcome" => "dead").increment(1);
                tracing::warn!(
                    attempts = d.log.len(),
                    error = attempt.error.as_deref(),
                    "webhook delivery dead after its last attempt"
                );
            }
        }
        match self.store.finish_webhook(&d, claim).await {
            Ok(true) => self.wake_when_due(&d),
            Ok(false) => tracing::warn!("webhook claim ran out before the attempt was recorded"),
            Err(e) => tracing::warn!(error = %e, "recording a webhook attempt failed"),
        }
    }

    /// A retry due sooner than a few polls from now wakes this deliverer on time, instead of
    /// at the next poll (up to `POLL` late: with a small `WEBHOOK_RETRY_BASE` that doubled the
    /// first retries' wait). Later ones are found by the poll, a small error on their wait.
    fn wake_when_due(&self, d: &WebhookDelivery) {
        let Some(next) = d
            .next_attempt_at
            .filter(|_| d.state == DeliveryState::Pending)
        else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        if wait < POLL * 10 {
            let wake = self.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                wake.notify_one();
            });
        }
    }

    /// One POST: checked target, signed body, bounded answer.
    async fn attempt(&self, d: &WebhookDelivery) -> Attempt {
        let started = Instant::now();
        let failed = |error: String| Attempt {
            status: None,
            error: Some(error),
            took: started.elapsed(),
        };
        let Some((host, port)) = host_port(&d.url) else {
            return failed("not an http(s) URL".into());
        };
        // Names are checked by the resolver as they are resolved; an address literal never
        // reaches it.
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            if let Err(e) = resolve_target(&host, port, self.cfg.allow_private).await {
                return failed(e.to_string());
            }
        }
        let body = serde_json::json!({
            "type": d.event.type_name(),
            "timestamp": rfc3339(d.created_at),
            "data": (self.render)(&d.task),
        })
        .to_string();
        let ts = Utc::now().timestamp();
        let signature = match self.signer.sign(&d.id, ts, body.as_bytes()) {
            Ok(s) => s,
            Err(e) => return failed(format!("signing: {e}")),
        };
        let sent = self
            .client
            .post(&d.url)
            .header("content-type", "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &d.id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, ts.to_string())
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(e) => return failed(describe(&e)),
        };
        let status = resp.status().as_u16();
        // Read a little of the answer (a receiver may say why it failed), never all of it.
        let mut read = 0usize;
        while read < MAX_ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) => break,
                Err(e) => {
                    return Attempt {
                        status: Some(status),
                        error: (!(200..300).contains(&status)).then(|| describe(&e)),
                        took: started.elapsed(),
                    }
                }
            }
        }
        Attempt {
            status: Some(status),
            error: None,
            took: started.elapsed(),
        }
    }
}

/// A short, stable reason for the log (reqwest's own text nests its causes).
fn describe(e: &reqwest::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    let mut innermost = e.to_string();
    while let Some(s) = source {
        innermost = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        format!("connection failed: {innermost}")
    } else {
        innermost
    }
}
