use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::{ok, ok_with, ApiJson, ApiResult};
use super::Caller;
use crate::auth::Principal;
use crate::domain::{Task, TaskStatus, TASK_KIND_IMAGE};
use crate::error::AppError;
use crate::http::{image_url, rfc3339, AppState};
use crate::service::CreateImageTask;

/// One image or several: the old server took `image` as a string, Seedream 4.x takes a list.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub struct ImageBody {
    #[serde(default)]
    prompt: String,
    user_id: Option<String>,
    model: Option<String>,
    size: Option<String>,
    quality: Option<String>,
    style: Option<String>,
    n: Option<i64>,
    options: Option<Value>,
    seed: Option<i64>,
    guidance_scale: Option<f64>,
    watermark: Option<bool>,
    image: Option<OneOrMany>,
    images: Option<Vec<String>>,
}

#[derive(Deserialize)]
pub struct GenericBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    model: Option<String>,
    user_id: Option<String>,
    #[serde(default)]
    input: ImageBody,
}

impl ImageBody {
    fn into_input(self, idempotency_key: Option<String>) -> CreateImageTask {
        let mut images = match self.image {
            None => vec![],
            Some(OneOrMany::One(s)) => vec![s],
            Some(OneOrMany::Many(v)) => v,
        };
        images.extend(self.images.unwrap_or_default());
        CreateImageTask {
            user_id: self.user_id,
            prompt: self.prompt,
            model: self.model,
            size: self.size,
            seed: self.seed,
            guidance_scale: self.guidance_scale,
            watermark: self.watermark,
            images,
            n: self.n,
            quality: self.quality,
            style: self.style,
            options: self.options,
            idempotency_key,
        }
    }
}

/// The snake_case task shape of the old server.
pub fn task_json(t: &Task, base: &str) -> Value {
    let result = t.result.as_ref().map(|r| {
        let images: Vec<Value> = r
            .images
            .iter()
            .map(|i| {
                json!({
                    "id": i.id,
                    "url": image_url(base, i),
                    "provider_url": i.provider_url,
                    "width": i.width,
                    "height": i.height,
                    "bytes": i.bytes,
                    "content_type": i.content_type,
                })
            })
            .collect();
        json!({
            "image_url": r.images.first().map(|i| image_url(base, i)),
            "images": images,
        })
    });
    json!({
        "task_id": t.id,
        "id": t.id,
        "user_id": t.user_id,
        "type": t.kind,
        "model": t.model,
        "prompt": t.prompt,
        "size": t.params.size,
        "quality": t.params.quality,
        "style": t.params.style,
        "n": t.params.n,
        "seed": t.params.seed,
        "guidance_scale": t.params.guidance_scale,
        "watermark": t.params.watermark,
        "status": t.status,
        "version": t.version,
        "attempts": t.attempts,
        "result": result,
        "error": t.error,
        "provider_request_id": t.provider_request_id,
        "next_attempt_at": t.not_before.filter(|_| t.status == TaskStatus::Pending).map(rfc3339),
        "created_at": rfc3339(t.created_at),
        "updated_at": rfc3339(t.updated_at),
        "started_at": t.started_at.map(rfc3339),
        "completed_at": t.completed_at.map(rfc3339),
    })
}

fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, AppError> {
    match h.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| AppError::invalid("Idempotency-Key", "must be printable ASCII")),
    }
}

async fn create(s: &AppState, who: &Principal, input: CreateImageTask) -> ApiResult {
    let (t, created) = s.service.create_image_task(who, input).await?;
    let mut data = task_json(&t, &s.public_base);
    data["message"] = json!("image generation task created");
    let mut resp = ok(StatusCode::CREATED, data, Some("task created"))?;
    if !created {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

pub async fn create_image(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<ImageBody>,
) -> ApiResult {
    let key = idempotency_key(&headers)?;
    create(&s, &who, b.into_input(key)).await
}

pub async fn create_generic(
    State(s): State<AppState>,
    Caller(who): Caller,
    headers: HeaderMap,
    ApiJson(b): ApiJson<GenericBody>,
) -> ApiResult {
    match b.kind.as_deref() {
        None | Some(TASK_KIND_IMAGE) | Some("image") => {}
        Some(other) => {
            return Err(AppError::Validation(vec![crate::error::FieldError::new(
                "type",
                format!("unsupported task type; supported: {TASK_KIND_IMAGE}"),
            )
            .with_value(other)])
            .into())
        }
    }
    let key = idempotency_key(&headers)?;
    let mut input = b.input;
    input.model = b.model.or(input.model);
    input.user_id = b.user_id.or(input.user_id);
    create(&s, &who, input.into_input(key)).await
}

pub async fn get(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let t = s.service.get_task(&who, &id).await?;
    ok(StatusCode::OK, task_json(&t, &s.public_base), None)
}

pub fn parse_limit(q: &HashMap<String, String>) -> Result<Option<i64>, AppError> {
    q.get("limit")
        .map(|l| {
            l.parse::<i64>()
                .map_err(|_| AppError::invalid("limit", "must be a whole number"))
        })
        .transpose()
}

pub async fn list_for_user(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(user_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = parse_limit(&q)?;
    let offset = q
        .get("offset")
        .map(|o| {
            o.parse::<usize>()
                .map_err(|_| AppError::invalid("offset", "must be a whole number"))
        })
        .transpose()?
        .unwrap_or(0);
    let status = q
        .get("status")
        .filter(|st| !st.is_empty())
        .map(|st| {
            TaskStatus::parse(st).ok_or_else(|| {
                AppError::invalid(
                    "status",
                    "must be one of pending, processing, completed, failed, cancelled",
                )
            })
        })
        .transpose()?;
    s.service.get_user(&who, &user_id).await?;
    let cursor = q.get("cursor").filter(|c| !c.is_empty());
    let page = s
        .service
        .list_tasks(
            &who,
            Some(&user_id),
            status,
            cursor.map(String::as_str),
            offset,
            limit,
        )
        .await?;
    let next = page
        .has_more
        .then(|| page.items.last().map(|t| t.id.clone()))
        .flatten();
    let count = page.items.len();
    let data: Vec<Value> = page
        .items
        .iter()
        .map(|t| task_json(t, &s.public_base))
        .collect();
    ok_with(
        data,
        json!({"pagination": {
            "limit": limit.unwrap_or(crate::service::DEFAULT_PAGE as i64),
            "offset": offset,
            "count": count,
            "total": page.total,
            "has_more": page.has_more,
            "next_cursor": next,
        }}),
    )
}

pub async fn cancel(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let t = s.service.cancel_task(&who, &id).await?;
    ok(
        StatusCode::OK,
        task_json(&t, &s.public_base),
        Some("task cancelled"),
    )
}

pub async fn retry(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let t = s.service.retry_task(&who, &id).await?;
    ok(
        StatusCode::OK,
        task_json(&t, &s.public_base),
        Some("task queued again"),
    )
}

pub async fn delete(
    State(s): State<AppState>,
    Caller(who): Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let t = s.service.delete_task(&who, &id).await?;
    ok(
        StatusCode::OK,
        json!({"task_id": t.id, "deleted": true}),
        Some("task deleted"),
    )
}

pub async fn queue_stats(State(s): State<AppState>, Caller(who): Caller) -> ApiResult {
    let stats = s.service.queue_stats(&who).await?;
    ok(StatusCode::OK, stats, None)
}
