//! The HTTP surface: one router with GraphQL, the legacy REST routes, image downloads and health.

mod edge;
pub mod openapi;
pub mod server;
pub mod video;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tower_http::trace::TraceLayer;

use crate::error::AppError;
use crate::graphql;
use crate::rest::envelope::{ApiError, ErrorBody};
use crate::state::AppState;

/// The API's router: every surface over `state`, GraphQL's through `graphql`.
pub fn router(state: AppState, graphql: graphql::Endpoint) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(graphql::routes(graphql))
        .route("/images/{file}", get(image))
        .route("/videos/{file}", get(video::video))
        .route("/metrics", get(crate::observability::render))
        .route("/openapi.json", get(openapi::spec))
        .merge(crate::rest::routes())
        .merge(crate::console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // Bounds slow clients (a trickled body holds a connection and a task otherwise).
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.config.request_timeout,
        ))
        // After the timeout layer: these wait for their task as long as the client does, and
        // bound their own body reads by REQUEST_TIMEOUT and MAX_BODY_BYTES.
        .merge(crate::openai::routes())
        .layer(edge::EdgeLayer::new(
            (!state.service.auth_enabled()).then(|| state.config.allowed_hosts.clone().into()),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// What a `worker` process serves when given `WORKER_HTTP_PORT`: health, readiness and its
/// metrics (provider calls, limiter waits), for orchestrators and Prometheus.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(crate::observability::render))
        .fallback(not_found)
        .layer(edge::EdgeLayer::new(None))
        .with_state(state)
}

/// Liveness
///
/// Always 200 while the process serves HTTP; tells the provider mode (`ark` or `sandbox`),
/// the deployment mode and the backends.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{status: \"ok\", provider, mode, store, queue, events, version, uptime_seconds}`", body = Object)))]
pub async fn health(State(s): State<AppState>) -> Response {
    let kinds = s.service.backend_kinds();
    // `message` is the v2 Go server's and `success`/`data.status` the latest one's.
    Json(json!({
        "status": "ok",
        "success": true,
        "message": "service is running",
        "data": {"status": "ok"},
        "service": "volcengine-ai-server",
        "version": env!("CARGO_PKG_VERSION"),
        "provider": s.provider_mode,
        "mode": if s.config.is_distributed() { "distributed" } else { "embedded" },
        "store": kinds.store,
        "queue": kinds.queue,
        "events": kinds.events,
        "uptime_seconds": s.started.elapsed().as_secs(),
    }))
    .into_response()
}

/// Readiness
///
/// Ready when every backend answers; 503 naming the ones that do not.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "`{status: \"ready\", store: \"ok\", queue: \"ok\", events: \"ok\"}`; where the worker runs, `provider_keys`: each API key by fingerprint with its state (`enabled`, `disabled`, `probing`), calls, refusals, probes and learned pace per model", body = Object),
        (status = 503, description = "Some backend is `unavailable`", body = Object),
    ))]
pub async fn ready(State(s): State<AppState>) -> Response {
    let r = s.service.readiness().await;
    let store = r.store.map_err(|e| e.to_string());
    let queue = r.queue.map_err(|e| e.to_string());
    let events = r.events.map_err(|e| e.to_string());
    let all_ok = store.is_ok() && queue.is_ok() && events.is_ok();
    for (name, r) in [("store", &store), ("queue", &queue), ("events", &events)] {
        if let Err(e) = r {
            tracing::warn!(backend = name, error = %e, "not ready");
        }
    }
    let show = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
    let status = if all_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if all_ok { "ready" } else { "unavailable" },
        "store": show(&store),
        "queue": show(&queue),
        "events": show(&events),
    });
    if let Some((pool, limiter)) = &s.provider_keys {
        body["provider_keys"] = provider_keys(&s, pool, limiter).await;
    }
    (status, Json(body)).into_response()
}

/// Each provider API key by fingerprint (never the key): its state in this process and its
/// learned pace per model, in images per minute.
async fn provider_keys(
    s: &AppState,
    pool: &crate::provider::keys::KeyPool,
    limiter: &crate::provider::limiter::ProviderLimiter,
) -> serde_json::Value {
    let mut keys = Vec::new();
    for state in pool.states() {
        let mut pace = serde_json::Map::new();
        for model in s.service.catalog().all() {
            if let Some(rate) = limiter.rate(&state.key, &model.id).await {
                pace.insert(model.id.clone(), json!((rate * 10.0).round() / 10.0));
            }
        }
        let mut v = json!(state);
        v["pace"] = serde_json::Value::Object(pace);
        keys.push(v);
    }
    serde_json::Value::Array(keys)
}

/// A stored image
///
/// The bytes of a generated image, under the URL handed out in `result.image_url`. Content
/// never changes under an id, so it is cacheable forever (`ETag`, `If-None-Match` → 304).
#[utoipa::path(get, path = "/images/{file}", tag = "images",
    params(("file" = String, Path, description = "`<image id>.<ext>`, e.g. `0192….png`")),
    responses(
        (status = 200, description = "The image", content_type = "image/png"),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such image", body = ErrorBody),
    ))]
pub async fn image(
    State(s): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = file.split('.').next().unwrap_or_default();
    if !crate::domain::is_valid_id(id) {
        return ApiError::from(AppError::NotFound("image not found".into())).into_response();
    }
    let etag = format!("\"{id}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    match s.service.get_image(id).await {
        Ok(Some(img)) => {
            let mut resp = img.data.into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&img.content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&etag) {
                h.insert(header::ETAG, v);
            }
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            );
            resp
        }
        Ok(None) => ApiError::from(AppError::NotFound("image not found".into())).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    ApiError {
        error: AppError::NotFound(format!(
            "no route for {} {}",
            req.method(),
            req.uri().path()
        )),
        path: Some(req.uri().path().to_string()),
    }
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    let mut resp = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({
            "success": false,
            "error": "method not allowed",
            "message": format!("{} is not allowed on {}", req.method(), req.uri().path()),
            "code": "METHOD_NOT_ALLOWED",
            "path": req.uri().path(),
        })),
    )
        .into_response();
    resp.headers_mut().remove(header::ALLOW);
    resp
}
