//! Webhook rules above the store: where a webhook may point (checked at create and again by the
//! deliverer, since DNS answers change), the signing secret every process shares, and reading a
//! task's delivery log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rand::RngCore;

use super::access::may_see_task;
use super::Service;
use crate::auth::Principal;
use crate::domain::webhook::{forbidden_ip, FORBIDDEN_TARGET};
use crate::domain::{FieldError, Task, WebhookDelivery};
use crate::error::AppError;
use crate::store::{Store, StoreError};

/// The name of the stored secret (settings).
const SECRET_SETTING: &str = "webhook_secret";
/// A name that does not resolve within this is refused (at create) or a failed attempt.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a target cannot be reached safely.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TargetError {
    #[error("{0}")]
    Refused(&'static str),
    #[error("cannot resolve the host: {0}")]
    Resolve(String),
}

/// The addresses `host:port` resolves to, every one of them checked: none may be loopback,
/// private, link-local, metadata or unspecified unless `allow_private`. All or nothing: a name
/// with one public and one private address is refused (it could be steered to the private one).
pub async fn resolve_target(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, TargetError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        vec![SocketAddr::new(ip, port)]
    } else {
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| TargetError::Resolve("timed out".into()))?
            .map_err(|e| TargetError::Resolve(e.to_string()))?
            .collect()
    };
    if addrs.is_empty() {
        return Err(TargetError::Resolve("no addresses".into()));
    }
    if !allow_private && addrs.iter().any(|a| forbidden_ip(a.ip())) {
        return Err(TargetError::Refused(FORBIDDEN_TARGET));
    }
    Ok(addrs)
}

/// The host and port of an http(s) URL.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    Some((u.host_str()?.to_string(), u.port_or_known_default()?))
}

/// The secret webhooks are signed with: `WEBHOOK_SECRET`, else the one stored by the first
/// process that started without it (generated then: 32 random bytes). `true` when this call
/// generated it, so the caller shows it once.
pub async fn signing_secret(
    store: &dyn Store,
    configured: Option<&str>,
) -> Result<(String, bool), StoreError> {
    if let Some(s) = configured {
        return Ok((s.to_string(), false));
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let candidate = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    store.setting_or_insert(SECRET_SETTING, &candidate).await
}

impl Service {
    /// Refuses (400, field `webhook`) a target that resolves to a forbidden address or not at
    /// all.
    pub(super) async fn check_webhook_target(&self, url: &str) -> Result<(), AppError> {
        let Some((host, port)) = host_port(url) else {
            return Err(AppError::invalid(
                "webhook",
                "must be an http(s) URL with a host",
            ));
        };
        match resolve_target(&host, port, self.webhook_allow_private).await {
            Ok(_) => Ok(()),
            Err(e) => Err(AppError::Validation(vec![FieldError::new(
                "webhook",
                e.to_string(),
            )
            .with_value(url)])),
        }
    }

    /// The deliveries of a task the caller may see, oldest first.
    pub async fn webhook_deliveries(
        &self,
        who: &Principal,
        task_id: &str,
    ) -> Result<Vec<WebhookDelivery>, AppError> {
        let task = self.get_task(who, task_id).await?;
        self.webhook_deliveries_of(who, &task).await
    }

    /// The deliveries of a task already in hand (GraphQL's `Task.webhookDeliveries`), checked
    /// against the caller again: another user's task has none to show.
    pub async fn webhook_deliveries_of(
        &self,
        who: &Principal,
        task: &Task,
    ) -> Result<Vec<WebhookDelivery>, AppError> {
        if !may_see_task(who, task) {
            return Err(AppError::NotFound("task not found".into()));
        }
        if task.webhook.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.store.webhook_deliveries(&task.id).await?)
    }

    /// Sends one of the task's deliveries again (`delivery_id`, or the newest when none is
    /// named) from a fresh schedule, under the same `webhook-id`. A delivered or dead one is due
    /// at once; a pending one waiting for its backoff is due at once; one being attempted right
    /// now is left to that attempt (each event goes out by one deliverer at a time).
    pub async fn redeliver_webhook(
        &self,
        who: &Principal,
        task_id: &str,
        delivery_id: Option<&str>,
    ) -> Result<WebhookDelivery, AppError> {
        let task = self.get_task(who, task_id).await?;
        let known = self.webhook_deliveries_of(who, &task).await?;
        let wanted = match delivery_id {
            Some(id) => known.iter().find(|d| d.id == id),
            None => known.iter().max_by_key(|d| (d.created_at, d.task.version)),
        };
        let Some(wanted) = wanted else {
            return Err(AppError::NotFound(match delivery_id {
                Some(_) => "webhook delivery not found".into(),
                None => "the task has no webhook deliveries".into(),
            }));
        };
        let d = self
            .store
            .redeliver_webhook(&wanted.id, chrono::Utc::now())
            .await?
            .ok_or_else(|| AppError::NotFound("webhook delivery not found".into()))?;
        tracing::info!(task_id = %task.id, delivery = %d.id, "webhook redelivery requested");
        metrics::counter!("webhook_redeliveries_total").increment(1);
        self.webhook_wake.notify_one();
        Ok(d)
    }

    /// Woken when a change wrote webhook events, so a deliverer in this process starts at once.
    pub fn webhook_wake(&self) -> Arc<tokio::sync::Notify> {
        self.webhook_wake.clone()
    }
}
