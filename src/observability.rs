//! Prometheus metrics (`GET /metrics`), through the `metrics` facade so any code can record
//! without a handle. One recorder per process, installed on first use.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `http_requests_total`, `http_request_duration_seconds` | counter, histogram | `method` (`OTHER` for non-standard ones), `route` (the template), `status` |
//! | `tasks` | gauge (at scrape, from the store) | `status` |
//! | `queue_depth` | gauge (at scrape) | |
//! | `queue_oldest_pending_age_seconds` | gauge (at scrape) | |
//! | `task_transitions_total` | counter | `status` (the new one) |
//! | `provider_calls_total`, `provider_call_duration_seconds` | counter, histogram | `model`, `outcome`, `code` |
//! | `rate_limiter_wait_seconds` | histogram | `model` |
//! | `websocket_connections`, `graphql_subscriptions` | gauge | |
//! | `websocket_slow_closed_total` | counter: sockets dropped because their client stopped reading for `WS_SEND_TIMEOUT` | |
//! | `task_event_lag_seconds` | histogram: a change's `updated_at` to its publication | `status` (the new one) |
//! | `subscription_update_lag_seconds` | histogram: a change's `updated_at` to its hand-over to a subscriber's socket | |
//! | `subscription_position_updates_total` | counter: a pending task sent again to a `taskUpdated` subscriber because its queue position changed (paced by `SUBSCRIPTION_POSITION_RATE`) | |
//! | `webhook_deliveries_total` | counter: attempts' outcomes (`retried`: failed, another is due; `dead`: failed, the last; `delivered`) | `outcome` |
//! | `webhook_delivery_delay_seconds` | histogram: a change's time to its event's delivery, retries included (redelivered events not counted) | |
//! | `webhook_attempt_duration_seconds` | histogram: one POST to a receiver | `outcome` (the delivery's state after it) |
//! | `webhook_redeliveries_total` | counter: redeliveries asked for | |
//! | `task_cache_tasks`, `task_cache_bytes` | gauge: what the embedded store's task cache holds, or a distributed api process's poll cache (`TASK_CACHE_SIZE`, `TASK_CACHE_BYTES`) | |
//! | `poll_cache_total` | counter: polls of a distributed api process answered from memory or not (`service::polls`) | `result` (`hit`, `miss`) |
//! | `task_event_delivery_seconds` | histogram: a change's `updated_at` to its event reaching this process's relay (distributed) | |

use std::sync::OnceLock;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// A webhook's delay spans milliseconds (a receiver that answers) to days (one that is down
/// through the retry schedule).
const DELIVERY_DELAY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
    43200.0, 86400.0, 172800.0,
];

/// Installs the process's recorder (once) and returns the handle that renders it; `None` when
/// another recorder was installed first (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("webhook_delivery_delay_seconds".into()),
                    DELIVERY_DELAY_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Prometheus metrics
///
/// Refreshes the gauges read from the store, then renders the text exposition format. With
/// auth on it needs the admin key (Prometheus: `authorization: {credentials: …}` in the scrape
/// config).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn render(State(s): State<AppState>, caller: crate::rest::Caller) -> Response {
    if !caller.0.is_admin() {
        return crate::rest::envelope::ApiError::from(crate::error::AppError::Forbidden(
            "metrics need the admin key".into(),
        ))
        .into_response();
    }
    let Some(handle) = handle() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable",
        )
            .into_response();
    };
    match s.service.queue_stats(&caller.0).await {
        Ok(stats) => {
            for (status, n) in &stats.by_status {
                metrics::gauge!("tasks", "status" => status.clone()).set(*n as f64);
            }
            metrics::gauge!("queue_depth").set(stats.queue_depth as f64);
            metrics::gauge!("queue_oldest_pending_age_seconds")
                .set(stats.oldest_pending_age_seconds);
        }
        Err(e) => tracing::warn!(error = %e.chain(), "metrics: task counts unavailable"),
    }
    handle.run_upkeep();
    (
        [("content-type", "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// Keeps a gauge raised for as long as it lives (a socket, a subscription).
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub fn new(name: &'static str) -> GaugeGuard {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}
