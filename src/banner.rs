//! What a person starting the service needs to see first: where it listens, where the console,
//! docs and GraphiQL are, which backends and provider it runs on, how fast it will call the
//! provider, and whether anyone can call it without a key. Built as label/value pairs so the
//! same facts go to a terminal as an aligned block or to a JSON log as one structured line.

use std::net::SocketAddr;

use crate::config::Config;
use crate::domain::{Catalog, ProviderFamily};

/// The facts of one start, in display order.
pub struct Banner {
    pub title: String,
    pub lines: Vec<(&'static str, String)>,
}

/// Hides the user and password of a URL (`mongodb://user:pw@host` → `mongodb://***@host`):
/// the banner goes to logs, and logs must not carry secrets.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// `role` is `serve`, `api` or `worker`; `addr` is where HTTP listens (none for a worker).
/// Each Ark model's pace and the worker's bounds. Jimeng's models are not paced per minute:
/// the visual API's refusals (429) hold their tasks back.
fn pacing(config: &Config) -> String {
    let catalog = Catalog::new(&config.model_ids);
    let paces: Vec<String> = catalog
        .all()
        .iter()
        .filter(|m| ProviderFamily::of_model(&m.id) == ProviderFamily::Ark)
        .map(|m| {
            let ipm = config.provider_ipm.for_model(&m.id, m.images_per_minute);
            format!("{} {ipm}/min", m.name)
        })
        .collect();
    format!(
        "{}; {} calls in flight per model, {} worker slots, {} downloads at once within {} MiB",
        paces.join(", "),
        config.provider_concurrency,
        config.worker_concurrency,
        config.download_concurrency,
        config.download_memory_bytes.div_ceil(1024 * 1024)
    )
}

/// Where Jimeng's tasks go: the visual API with the configured access key, the sandbox
/// emulator's, or nowhere.
fn jimeng(config: &Config, provider_mode: &str) -> String {
    match (&config.jimeng.keys, provider_mode) {
        (Some((ak, _)), _) => format!(
            "visual API at {} with access key {ak}",
            config.jimeng.endpoint
        ),
        (None, "sandbox") => "sandbox: the built-in emulator's visual API".to_string(),
        (None, _) => {
            "off: Jimeng models need VOLCENGINE_ACCESS_KEY and VOLCENGINE_SECRET_KEY".to_string()
        }
    }
}

pub fn build(
    config: &Config,
    role: &str,
    addr: Option<SocketAddr>,
    public_base: &str,
    provider_mode: &str,
) -> Banner {
    let distributed = config.is_distributed();
    let what = match role {
        "serve" => "API + worker",
        "api" => "API only",
        _ => "worker only",
    };
    let mode = if distributed {
        "distributed"
    } else {
        "embedded"
    };
    let title = format!(
        "volcengine-ai-server {} — {role} ({what}), {mode} mode",
        env!("CARGO_PKG_VERSION")
    );
    let mut lines = Vec::new();
    if let Some(a) = addr {
        lines.push(("listening", format!("http://{a}")));
        lines.push(("public URL", public_base.to_string()));
        lines.push(("console", format!("{public_base}/")));
        lines.push((
            "REST docs",
            format!("{public_base}/docs (OpenAPI: {public_base}/openapi.json)"),
        ));
        let ws = public_base.replacen("http", "ws", 1);
        lines.push((
            "GraphiQL",
            format!("{public_base}/graphql (subscriptions: {ws}/graphql/ws)"),
        ));
    }
    match (&config.mongo_url, &config.redis_url) {
        (Some(mongo), Some(redis)) => {
            lines.push((
                "storage",
                format!(
                    "MongoDB {} database {} (images in GridFS)",
                    redact_url(mongo),
                    config.mongo_database
                ),
            ));
            lines.push((
                "queue",
                format!(
                    "Redis Streams {} (key prefix {})",
                    redact_url(redis),
                    config.redis_prefix
                ),
            ));
            lines.push(("events", "Redis pub/sub".to_string()));
        }
        _ => {
            lines.push((
                "storage",
                format!(
                    "SQLite in {} (with the image bytes)",
                    config.data_dir.display()
                ),
            ));
            lines.push((
                "queue",
                "in-process (durable through the store)".to_string(),
            ));
            lines.push(("events", "in-process".to_string()));
        }
    }
    let provider = if provider_mode == "sandbox" {
        format!(
            "sandbox: built-in Ark emulator, {} per image (set VOLCENGINE_API_KEY for real images)",
            humantime::format_duration(config.sandbox_latency)
        )
    } else {
        format!("Volcengine Ark at {}", config.volcengine_endpoint)
    };
    lines.push(("provider", provider));
    lines.push(("jimeng", jimeng(config, provider_mode)));
    if role != "api" {
        lines.push(("pacing", pacing(config)));
    }
    if addr.is_some() {
        let auth = if config.admin_api_key.is_some() {
            format!(
                "on: every request needs an API key (ADMIN_API_KEY or a user's); \
                 users may submit {}/min (bursts of {}), {} in flight",
                config.user_submit_per_minute, config.user_submit_burst, config.user_max_in_flight
            )
        } else {
            // The server refuses to start on any other address without a key.
            "off: no ADMIN_API_KEY, so only this machine can reach it and every caller is admin"
                .to_string()
        };
        lines.push(("auth", auth));
    }
    Banner { title, lines }
}

impl Banner {
    /// The aligned block for a terminal.
    pub fn render(&self) -> String {
        let width = self.lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.title);
        for (k, v) in &self.lines {
            out.push_str(&format!("  {k:<width$}  {v}\n"));
        }
        out
    }

    /// The value of one fact, for a structured log line.
    pub fn get(&self, label: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|(k, _)| *k == label)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_hidden() {
        assert_eq!(
            redact_url("mongodb://admin:s3cret@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
        assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn embedded_serve_banner_names_every_fact_a_person_needs() {
        let cfg = Config::default();
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        let b = build(
            &cfg,
            "serve",
            Some(addr),
            "http://127.0.0.1:8080",
            "sandbox",
        );
        let text = b.render();
        for needle in [
            "embedded mode",
            "http://127.0.0.1:8080/docs",
            "http://127.0.0.1:8080/graphql",
            "ws://127.0.0.1:8080/graphql/ws",
            "SQLite in ./data",
            "sandbox",
            "/min",
            "auth",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn distributed_worker_banner_hides_secrets_and_has_no_urls() {
        let cfg = Config {
            mongo_url: Some("mongodb://u:pw@db/x".into()),
            redis_url: Some("redis://:pw@cache:6379".into()),
            volcengine_api_key: Some("key".into()),
            ..Config::default()
        };
        let b = build(&cfg, "worker", None, "", "ark");
        let text = b.render();
        assert!(!text.contains("pw"), "{text}");
        assert!(!text.contains("listening"), "{text}");
        assert!(text.contains("Redis Streams"), "{text}");
        assert!(b.get("provider").is_some_and(|p| p.contains("Ark")));
    }
}
