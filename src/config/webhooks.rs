//! `WEBHOOK_*`: the signing secret, the retry schedule and the bounds of a delivery.

use std::time::Duration;

use super::{ms, positive, slots, ConfigError, Env, Secret};

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// `whsec_<base64>`; generated and stored on first start when unset.
    pub secret: Option<Secret>,
    /// The wait after the first failed attempt; each later one is four times the previous, up
    /// to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Attempts before a delivery is marked dead.
    pub max_attempts: u32,
    /// One attempt, from connecting to the end of the answer read.
    pub timeout: Duration,
    /// Attempts in flight to one host and port, per worker process.
    pub per_target_concurrency: usize,
    /// Attempts in flight per worker process.
    pub concurrency: usize,
    /// Lets webhooks reach loopback, private and link-local addresses (local receivers, tests).
    pub allow_private: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(8 * 3600),
            max_attempts: 12,
            timeout: Duration::from_secs(10),
            per_target_concurrency: 4,
            concurrency: 32,
            allow_private: false,
        }
    }
}

/// A `whsec_` secret must decode to at least 24 bytes (Standard Webhooks asks for 24 to 64).
pub fn check_secret(value: &str) -> Result<(), String> {
    use base64::Engine;
    let Some(b64) = value.strip_prefix("whsec_") else {
        return Err("must start with whsec_ followed by base64".into());
    };
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(bytes) if (24..=64).contains(&bytes.len()) => Ok(()),
        Ok(_) => Err("must decode to 24 to 64 bytes".into()),
        Err(e) => Err(format!("not base64 after whsec_: {e}")),
    }
}

pub(super) fn read(env: &Env<'_>, d: WebhookConfig) -> Result<WebhookConfig, ConfigError> {
    let secret = match env.raw(&["WEBHOOK_SECRET"]) {
        None => None,
        Some((var, value)) => {
            check_secret(&value).map_err(|reason| ConfigError {
                var,
                value: "[redacted]".into(),
                reason,
            })?;
            Some(Secret(value))
        }
    };
    Ok(WebhookConfig {
        secret,
        retry_base: env.duration(&["WEBHOOK_RETRY_BASE"], d.retry_base, ms(1))?,
        retry_cap: env.duration(&["WEBHOOK_RETRY_CAP"], d.retry_cap, ms(1))?,
        max_attempts: env.parse(&["WEBHOOK_MAX_ATTEMPTS"], d.max_attempts, positive)?,
        timeout: env.duration(&["WEBHOOK_TIMEOUT"], d.timeout, ms(100))?,
        per_target_concurrency: env.parse(
            &["WEBHOOK_TARGET_CONCURRENCY"],
            d.per_target_concurrency,
            slots,
        )?,
        concurrency: env.parse(&["WEBHOOK_CONCURRENCY"], d.concurrency, slots)?,
        allow_private: env.parse(&["WEBHOOK_ALLOW_PRIVATE"], d.allow_private, |_| Ok(()))?,
    })
}
