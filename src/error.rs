//! The service layer's error: what REST and GraphQL report to clients. Each lower layer has its
//! own error type (`StoreError`, `QueueError`, `EventsError`, `ProviderError`, `ConfigError`)
//! and is converted here once; `rest::envelope` and `graphql::error` each map this type once.

use serde::Serialize;

/// Longest input value an error repeats back.
const MAX_ECHO_CHARS: usize = 200;

use crate::events::EventsError;
use crate::queue::QueueError;
use crate::store::StoreError;

/// One invalid input field, as listed in a `VALIDATION_FAILED` answer's `details`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The offending field, e.g. `prompt` or `input.size`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// The value received, when it can be shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            message: message.into(),
            value: None,
        }
    }

    pub fn with_value(mut self, value: impl Serialize) -> FieldError {
        // A value that cannot be shown is simply not shown; a long one is cut, so an error never
        // echoes a huge input back.
        self.value = serde_json::to_value(value).ok().map(|v| match v {
            serde_json::Value::String(s) if s.chars().count() > MAX_ECHO_CHARS => {
                serde_json::Value::String(s.chars().take(MAX_ECHO_CHARS).chain(['…']).collect())
            }
            serde_json::Value::String(s) => serde_json::Value::String(s),
            other if other.to_string().len() > MAX_ECHO_CHARS => {
                serde_json::Value::String("(too long to show)".into())
            }
            other => other,
        });
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{}", summarize(.0))]
    Validation(Vec<FieldError>),
    #[error("malformed JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A per-user limit was hit; `reason` says which (safe to show).
    #[error("{reason}; retry after {retry_after_secs} s")]
    RateLimited {
        retry_after_secs: u64,
        reason: String,
    },
    /// A backend is unreachable. The detail is for logs only.
    #[error("service temporarily unavailable")]
    Unavailable(String),
    /// A bug or an unexpected backend answer. The detail is for logs only.
    #[error("internal error")]
    Internal(String),
}

fn summarize(errors: &[FieldError]) -> String {
    match errors {
        [] => "invalid input".into(),
        [one] => format!("{}: {}", one.field, one.message),
        [first, rest @ ..] => format!(
            "{}: {} (and {} more)",
            first.field,
            first.message,
            rest.len()
        ),
    }
}

impl AppError {
    pub fn invalid(field: &str, message: impl Into<String>) -> AppError {
        AppError::Validation(vec![FieldError::new(field, message)])
    }

    /// Stable machine code, shared by REST (`code`) and GraphQL (`extensions.code`) where the
    /// contracts agree; GraphQL renames the validation codes.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "VALIDATION_FAILED",
            AppError::InvalidJson(_) => "INVALID_JSON",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::Conflict(_) => "CONFLICT",
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::Unavailable(_) => "UNAVAILABLE",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    /// The message a client may see: internal details never leave the process.
    pub fn public_message(&self) -> String {
        self.to_string()
    }

    /// Logs what clients do not see, once, where the error is turned into a response.
    pub fn log_internal(&self) {
        match self {
            AppError::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            AppError::Unavailable(detail) => tracing::warn!(error = %detail, "backend unavailable"),
            _ => {}
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(msg) => AppError::Conflict(msg),
            StoreError::Unavailable(msg) => AppError::Unavailable(msg),
            StoreError::Backend(msg) => AppError::Internal(msg),
        }
    }
}

impl From<QueueError> for AppError {
    fn from(e: QueueError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

impl From<EventsError> for AppError {
    fn from(e: EventsError) -> Self {
        AppError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_before_they_are_echoed() {
        let e = FieldError::new("model", "unknown").with_value("m".repeat(10_000));
        let shown = e
            .value
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        assert_eq!(shown.chars().count(), MAX_ECHO_CHARS + 1);
        let e = FieldError::new("size", "bad").with_value("512x512");
        assert_eq!(e.value, Some(serde_json::json!("512x512")));
    }
}
