//! One invalid input field, the unit every parser in `domain` reports. Parsers return all of a
//! request's field errors at once, so a client fixes them in one go; `error::AppError` carries
//! them to REST (`details`) and GraphQL (`extensions.details`).

use serde::Serialize;

/// Longest input value an error repeats back.
pub const MAX_ECHO_CHARS: usize = 200;

/// One invalid input field, as listed in a `VALIDATION_FAILED` answer's `details`. Field names
/// are the REST (snake_case) ones; the GraphQL layer renames them to its camelCase fields.
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
        let e = FieldError::new("options", "bad").with_value(vec![1u64 << 40; 100]);
        assert_eq!(e.value, Some(serde_json::json!("(too long to show)")));
    }
}
