//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with the status codes
//! the official SDKs turn into their exception classes (400 `BadRequestError`, 401
//! `AuthenticationError`, 403 `PermissionDeniedError`, 404 `NotFoundError`, 409 `ConflictError`,
//! 429 `RateLimitError`, 5xx `InternalServerError`). `AppError` and a failed task are mapped to it
//! here and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{TaskError, TaskStatus};
use crate::error::{AppError, FieldError};

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorObject,
}

#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct ErrorObject {
    /// What went wrong, for people.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `rate_limit_error`
    /// or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request parameter at fault (`size`, `prompt`, `n`, …), when one is.
    pub param: Option<String>,
    /// A machine code: ours (`invalid_value`, `invalid_api_key`, `rate_limit_exceeded`, …) or,
    /// for a task the provider refused, the provider's (`InputTextSensitiveContentDetected`).
    pub code: Option<String>,
}

/// An error answer: status, body, and the headers the SDKs read (`Retry-After`, and
/// `x-should-retry`, which tells them not to retry what would only make another task).
#[derive(Debug)]
pub struct OpenAiError {
    pub status: StatusCode,
    pub error: Box<ErrorObject>,
    pub retry_after: Option<u64>,
    pub should_retry: Option<bool>,
    /// Logged once where the answer is made (internal causes never reach the client).
    source: Option<Box<AppError>>,
}

impl OpenAiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> OpenAiError {
        OpenAiError {
            status,
            error: Box::new(ErrorObject {
                message: message.into(),
                kind,
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            }),
            retry_after: None,
            should_retry: None,
            source: None,
        }
    }

    /// A 400 naming the parameter at fault.
    pub fn invalid(param: &str, message: impl Into<String>) -> OpenAiError {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            message,
            Some(param),
            Some("invalid_value"),
        )
    }

    /// A 400 for an OpenAI parameter this server does not implement.
    pub fn unsupported(param: &str, message: impl Into<String>) -> OpenAiError {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            message,
            Some(param),
            Some("unsupported_parameter"),
        )
    }

    pub fn not_retryable(mut self) -> OpenAiError {
        self.should_retry = Some(false);
        self
    }
}

const INVALID: &str = "invalid_request_error";

/// The parameter name a client sent for one of the service's field names.
fn param_of(field: &str) -> String {
    let base = field.split('[').next().unwrap_or(field);
    match base {
        "user_id" => "user".into(),
        "idempotency_key" => "Idempotency-Key".into(),
        _ => base.into(),
    }
}

fn describe(fields: &[FieldError]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.field == "user_id" && f.message.contains("required") {
                "user: the admin key (or any key while auth is off) must name the task's owner, \
                 a user id, in `user`; a user's key needs none"
                    .to_string()
            } else {
                format!("{}: {}", param_of(&f.field), f.message)
            }
        })
        .collect();
    parts.join("; ")
}

impl From<AppError> for OpenAiError {
    fn from(e: AppError) -> OpenAiError {
        let message = e.public_message();
        let mut out = match &e {
            AppError::Validation(fields) => {
                let param = fields.first().map(|f| param_of(&f.field));
                OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    INVALID,
                    describe(fields),
                    param.as_deref(),
                    Some("invalid_value"),
                )
            }
            AppError::InvalidJson(_) => OpenAiError::new(
                StatusCode::BAD_REQUEST,
                INVALID,
                message,
                None,
                Some("invalid_json"),
            ),
            AppError::NotFound(_) => OpenAiError::new(
                StatusCode::NOT_FOUND,
                INVALID,
                message,
                None,
                Some("not_found"),
            ),
            AppError::Conflict(_) => OpenAiError::new(
                StatusCode::CONFLICT,
                INVALID,
                message,
                None,
                Some("conflict"),
            )
            .not_retryable(),
            AppError::Unauthenticated(_) => OpenAiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                message,
                None,
                Some("invalid_api_key"),
            ),
            AppError::Forbidden(_) => OpenAiError::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                message,
                None,
                Some("forbidden"),
            ),
            AppError::PayloadTooLarge { .. } => OpenAiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                INVALID,
                message,
                None,
                Some("payload_too_large"),
            ),
            AppError::RateLimited {
                retry_after_secs, ..
            } => {
                let mut r = OpenAiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    message,
                    None,
                    Some("rate_limit_exceeded"),
                );
                r.retry_after = Some(*retry_after_secs);
                r
            }
            AppError::Unavailable(_) => OpenAiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                message,
                None,
                Some("unavailable"),
            ),
            AppError::Internal(_) => OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                message,
                None,
                Some("internal_error"),
            ),
        };
        out.source = Some(Box::new(e));
        out
    }
}

/// Why a task that ended without images is answered so: the provider's refusals (content
/// filters, invalid parameters) are the request's fault, a 400 with the provider's code;
/// anything else is ours or the provider's, a 500. Neither is retried by the SDK: a retry would
/// only make another task, and our worker already retried what could pass.
pub fn task_failure(status: TaskStatus, error: Option<&TaskError>) -> OpenAiError {
    if status == TaskStatus::Cancelled {
        return OpenAiError::new(
            StatusCode::CONFLICT,
            INVALID,
            "the task was cancelled before it finished",
            None,
            Some("task_cancelled"),
        )
        .not_retryable();
    }
    let Some(e) = error else {
        return OpenAiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the task failed",
            None,
            Some("task_failed"),
        )
        .not_retryable();
    };
    let client_fault = !e.retryable
        && (e.code.contains("SensitiveContent")
            || e.code.starts_with("InvalidParameter")
            || e.code.starts_with("MissingParameter")
            || e.code.starts_with("InvalidImage"));
    if client_fault {
        let param = if e.code.starts_with("InputText") {
            Some("prompt")
        } else if e.code.starts_with("InputImage") {
            Some("image")
        } else {
            None
        };
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            INVALID,
            e.message.clone(),
            param,
            Some(&e.code),
        )
        .not_retryable()
    } else {
        OpenAiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            e.message.clone(),
            None,
            Some(&e.code),
        )
        .not_retryable()
    }
}

impl OpenAiError {
    /// The JSON body alone (for an answer whose 200 status is already sent).
    pub fn body(&self) -> ErrorEnvelope {
        if let Some(e) = &self.source {
            e.log_internal();
        }
        ErrorEnvelope {
            error: (*self.error).clone(),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, Json(body)).into_response();
        let h = resp.headers_mut();
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(retry) = self.should_retry {
            h.insert(
                "x-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: &str, retryable: bool) -> OpenAiError {
        let e = TaskError {
            code: code.into(),
            message: "m".into(),
            retryable,
        };
        task_failure(TaskStatus::Failed, Some(&e))
    }

    #[test]
    fn provider_refusals_are_400_with_the_providers_code_and_the_rest_500() {
        let e = failed("InputTextSensitiveContentDetected", false);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            e.error.code.as_deref(),
            Some("InputTextSensitiveContentDetected")
        );
        assert_eq!(e.error.param.as_deref(), Some("prompt"));
        let e = failed("InputImageSensitiveContentDetected", false);
        assert_eq!(e.error.param.as_deref(), Some("image"));
        let e = failed("OutputImageSensitiveContentDetected", false);
        assert_eq!(
            (e.status, e.error.param.as_deref()),
            (StatusCode::BAD_REQUEST, None)
        );
        assert_eq!(
            failed("InvalidParameter", false).status,
            StatusCode::BAD_REQUEST
        );
        let e = failed("InternalServiceError", true);
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.should_retry, Some(false));
        let e = task_failure(TaskStatus::Cancelled, None);
        assert_eq!(e.status, StatusCode::CONFLICT);
    }

    #[test]
    fn field_errors_name_the_parameter_the_client_sent() {
        let e = OpenAiError::from(AppError::Validation(vec![
            FieldError::new("image[1]", "bad"),
            FieldError::new("size", "bad"),
        ]));
        assert_eq!(e.error.param.as_deref(), Some("image"));
        assert!(e.error.message.contains("size: bad"), "{}", e.error.message);
        let e = OpenAiError::from(AppError::invalid("user_id", "user_id is required"));
        assert_eq!(e.error.param.as_deref(), Some("user"));
        let e = OpenAiError::from(AppError::RateLimited {
            retry_after_secs: 7,
            reason: "r".into(),
        });
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(7))
        );
    }
}
