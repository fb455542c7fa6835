//! The service layer's error: what REST and GraphQL report to clients. Each lower layer has its
//! own error type (`StoreError`, `QueueError`, `EventsError`, `ProviderError`, `ConfigError`)
//! and is converted here once; `rest::envelope` and `graphql::error` each map this type once.

use std::error::Error;
use std::fmt;

pub use crate::domain::FieldError;
use crate::events::EventsError;
use crate::queue::QueueError;
use crate::store::StoreError;

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
    /// A backend is unreachable. The cause is for logs only.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] Cause),
    /// A bug or an unexpected backend answer. The cause is for logs only.
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// Why an `Internal` or `Unavailable` error happened: the lower layer's own error (a
/// `StoreError`, a `QueueError`, …) with its causes, kept whole for the logs.
pub type Cause = Box<dyn Error + Send + Sync + 'static>;

/// What was being done when `cause` happened (the message of an `Internal` error's cause).
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct Failed {
    doing: String,
    #[source]
    cause: Cause,
}

/// An error and its causes on one line, `outer: inner: innermost`, for logs.
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
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

    /// An internal error: `doing` says what failed and `cause` why, both only in the logs.
    pub fn internal(doing: impl Into<String>, cause: impl Into<Cause>) -> AppError {
        AppError::Internal(Box::new(Failed {
            doing: doing.into(),
            cause: cause.into(),
        }))
    }

    /// The error with its causes, for logs (clients see `public_message`).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
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
            AppError::Internal(cause) => {
                tracing::error!(error = %Chain(cause.as_ref()), "internal error")
            }
            AppError::Unavailable(cause) => {
                tracing::warn!(error = %Chain(cause.as_ref()), "backend unavailable")
            }
            _ => {}
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(msg) => AppError::Conflict(msg),
            e @ StoreError::Unavailable(_) => AppError::Unavailable(Box::new(e)),
            e @ StoreError::Backend(_) => AppError::Internal(Box::new(e)),
        }
    }
}

impl From<QueueError> for AppError {
    fn from(e: QueueError) -> Self {
        AppError::Unavailable(Box::new(e))
    }
}

impl From<EventsError> for AppError {
    fn from(e: EventsError) -> Self {
        AppError::Unavailable(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clients see the same short message; the logs get every cause down the chain.
    #[test]
    fn causes_survive_into_the_logs_but_not_to_clients() {
        let e = AppError::from(StoreError::Backend("disk I/O error".into()));
        assert_eq!(e.public_message(), "internal error");
        assert_eq!(
            e.chain().to_string(),
            "internal error: store error: disk I/O error"
        );
        let json = serde_json::from_str::<serde_json::Value>("{").expect_err("bad JSON");
        let e = AppError::internal("reading the task", json);
        assert_eq!(e.public_message(), "internal error");
        let logged = e.chain().to_string();
        assert!(
            logged.starts_with("internal error: reading the task: EOF while parsing"),
            "{logged}"
        );
        let e = AppError::from(QueueError::Unavailable("connection refused".into()));
        assert_eq!(e.public_message(), "service temporarily unavailable");
        assert!(e
            .chain()
            .to_string()
            .ends_with("queue unavailable: connection refused"));
    }
}
