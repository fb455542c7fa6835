//! Input rules, written once for REST and GraphQL. Field names are the REST (snake_case) ones;
//! the GraphQL layer renames them to its camelCase fields.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::error::{AppError, FieldError};

pub const MAX_EMAIL_CHARS: usize = 100;
pub const MAX_SHORT_TEXT: usize = 64;

/// Collects every problem of a request before answering, so a client fixes them in one go.
#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn into_result(self) -> Result<(), AppError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.0))
        }
    }
}

/// An email, in NFC so that one address typed composed or decomposed is one user. Only
/// letters, marks, digits, punctuation and symbols are accepted: separators and the "other"
/// categories (controls, format characters such as bidi overrides, zero-width joiners and soft
/// hyphens, private-use and unassigned code points) would let an address look like another.
pub fn email(p: &mut Problems, field: &str, raw: &str) -> String {
    let e: String = raw.trim().nfc().collect();
    let valid_shape = e.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
    });
    if e.is_empty() {
        p.push(field, "email is required");
    } else if e.chars().count() > MAX_EMAIL_CHARS {
        p.push(
            field,
            format!("email must be at most {MAX_EMAIL_CHARS} characters"),
        );
    } else if e.chars().any(|c| {
        matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Separator | GeneralCategoryGroup::Other
        )
    }) {
        p.add(
            FieldError::new(
                field,
                "email must not contain spaces, control, invisible or bidirectional-override \
                 characters",
            )
            .with_value(e.escape_default().to_string()),
        );
    } else if !valid_shape {
        p.add(FieldError::new(field, "email is not a valid address").with_value(&e));
    }
    e
}

pub fn name(p: &mut Problems, field: &str, raw: &str) -> String {
    let n = raw.trim().to_string();
    let len = n.chars().count();
    if !(2..=50).contains(&len) {
        p.add(FieldError::new(field, "name must be 2 to 50 characters").with_value(&n));
    } else if n.chars().any(|c| c.is_control()) {
        p.push(field, "name must not contain control characters");
    }
    n
}

/// An API key's label: 1 to 64 printable characters.
pub fn key_name(p: &mut Problems, v: &str) -> String {
    let v = v.trim().to_string();
    if v.is_empty() || v.chars().count() > MAX_SHORT_TEXT || v.chars().any(char::is_control) {
        p.push(
            "name",
            format!("must be 1 to {MAX_SHORT_TEXT} printable characters"),
        );
    }
    v
}
