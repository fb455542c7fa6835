//! The one mapping from `AppError` to GraphQL errors (`extensions.code`, and `field` for bad
//! input, named as the GraphQL field is).

use async_graphql::ErrorExtensions;

use crate::error::AppError;

pub fn to_gql(e: AppError) -> async_graphql::Error {
    e.log_internal();
    let code = match &e {
        AppError::Validation(_) | AppError::InvalidJson(_) | AppError::PayloadTooLarge { .. } => {
            "BAD_USER_INPUT"
        }
        other => other.code(),
    };
    let message = e.public_message();
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", code);
        match &e {
            AppError::Validation(fields) => {
                if let Some(first) = fields.first() {
                    ext.set("field", camel(&first.field));
                }
                let details: Vec<async_graphql::Value> = fields
                    .iter()
                    .map(|f| {
                        let mut m = async_graphql::indexmap::IndexMap::new();
                        m.insert(async_graphql::Name::new("field"), camel(&f.field).into());
                        m.insert(
                            async_graphql::Name::new("message"),
                            f.message.clone().into(),
                        );
                        async_graphql::Value::Object(m)
                    })
                    .collect();
                ext.set("details", details);
            }
            AppError::RateLimited {
                retry_after_secs, ..
            } => ext.set("retryAfter", *retry_after_secs),
            _ => {}
        }
    })
}

/// `guidance_scale` → `guidanceScale`, `image[0]` → `images[0]`, `delay` → `delaySeconds` (the
/// GraphQL input's name).
fn camel(field: &str) -> String {
    if field == "delay" {
        return "delaySeconds".into();
    }
    let field = if field == "image" || field.starts_with("image[") {
        field.replacen("image", "images", 1)
    } else {
        field.to_string()
    };
    let mut out = String::with_capacity(field.len());
    let mut upper = false;
    for c in field.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `?`-friendly conversion; async-graphql's blanket `From<Display>` would drop the code.
pub trait GqlResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResultExt<T> for Result<T, AppError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(to_gql)
    }
}
