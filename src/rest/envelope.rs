//! The legacy REST envelope (rest-compat.md): `{"success": true, "data": …}` and
//! `{"success": false, "error", "message", "code", "details"?}`. `AppError` is mapped to it here
//! and nowhere else.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{AppError, FieldError};
use crate::state::AppState;

pub fn status_of(e: &AppError) -> StatusCode {
    match e {
        AppError::Validation(_) | AppError::InvalidJson(_) => StatusCode::BAD_REQUEST,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::Conflict(_) => StatusCode::CONFLICT,
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) => StatusCode::FORBIDDEN,
        AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn short(e: &AppError) -> &'static str {
    match e {
        AppError::Validation(_) => "validation failed",
        AppError::InvalidJson(_) => "invalid JSON",
        AppError::NotFound(_) => "not found",
        AppError::Conflict(_) => "conflict",
        AppError::Unauthenticated(_) => "unauthenticated",
        AppError::Forbidden(_) => "forbidden",
        AppError::PayloadTooLarge { .. } => "payload too large",
        AppError::RateLimited { .. } => "rate limited",
        AppError::Unavailable(_) => "service unavailable",
        AppError::Internal(_) => "internal error",
    }
}

/// An error answer; `path` is set for unknown routes.
pub struct ApiError {
    pub error: AppError,
    pub path: Option<String>,
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        ApiError { error, path: None }
    }
}

/// The error envelope on the wire (and in the OpenAPI document).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// Short human text, e.g. `validation failed`.
    pub error: &'static str,
    /// Detail; never internals for `INTERNAL`.
    pub message: String,
    /// `VALIDATION_FAILED`, `INVALID_JSON`, `UNAUTHENTICATED`, `FORBIDDEN`, `NOT_FOUND`,
    /// `CONFLICT`, `PAYLOAD_TOO_LARGE`, `RATE_LIMITED`, `UNAVAILABLE` or `INTERNAL`.
    pub code: &'static str,
    /// The invalid fields of a `VALIDATION_FAILED` answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Vec<FieldError>>,
    /// The requested path, on an unknown route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.error;
        e.log_internal();
        let body = ErrorBody {
            success: false,
            error: short(&e),
            message: e.public_message(),
            code: e.code(),
            details: match &e {
                // `value` always present, "" when none was received, as the Go server wrote it.
                AppError::Validation(fields) => Some(
                    fields
                        .iter()
                        .cloned()
                        .map(|mut f| {
                            f.value.get_or_insert_with(|| serde_json::json!(""));
                            f
                        })
                        .collect(),
                ),
                // The Go server named the body as the offending field of unreadable JSON.
                AppError::InvalidJson(why) => Some(vec![FieldError::new("request_body", why)]),
                _ => None,
            },
            path: self.path,
        };
        let mut resp = (status_of(&e), Json(body)).into_response();
        if let AppError::RateLimited {
            retry_after_secs, ..
        } = e
        {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// The success envelope on the wire (and in the OpenAPI document).
#[derive(Serialize, ToSchema)]
pub struct Envelope<T> {
    /// Always `true`.
    pub success: bool,
    pub data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A page of a list, with its paging information beside `data`.
#[derive(Serialize, ToSchema)]
pub struct Paged<T, P> {
    /// Always `true`.
    pub success: bool,
    pub data: Vec<T>,
    pub pagination: P,
}

pub fn ok(status: StatusCode, data: impl Serialize, message: Option<&str>) -> ApiResult {
    let body = Envelope {
        success: true,
        data,
        message: message.map(str::to_string),
    };
    Ok((status, Json(body)).into_response())
}

/// A page: `data` plus `pagination`.
pub fn ok_page<T: Serialize, P: Serialize>(data: Vec<T>, pagination: P) -> ApiResult {
    let body = Paged {
        success: true,
        data,
        pagination,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// A JSON body whose syntax errors answer `INVALID_JSON`, type errors `VALIDATION_FAILED` with
/// the offending field, and oversize `PAYLOAD_TOO_LARGE`, all in the envelope.
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<AppState> for ApiJson<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::PayloadTooLarge {
                        limit: state.config.max_body_bytes,
                    }
                } else {
                    AppError::InvalidJson("the request body could not be read".into())
                }
            })?;
        parse_json(&bytes).map(ApiJson).map_err(ApiError::from)
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AppError::InvalidJson("the request body is empty".into()));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                AppError::Validation(vec![FieldError::new(&field, inner.to_string())])
            }
            _ => AppError::InvalidJson(inner.to_string()),
        }
    })
}
