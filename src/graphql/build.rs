//! Building the schema: the strict, the checked and the introspection schema of a process (see
//! `Schemas`), the introspection `InputCheck` needs, and the SDL checked in as `schema.graphql`.

use async_graphql::Schema;

use super::inputs;
use super::schema::{Mutation, Query, Subscription};
use crate::config::Config;
use crate::state::AppState;

pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// A strict schema; resolvers need `state` in its data (`None` for introspection and the SDL).
pub fn build_schema(state: Option<AppState>, cfg: &Config) -> AppSchema {
    build_schema_validating(state, cfg, async_graphql::ValidationMode::Strict)
}

/// The schemas of one process: `strict` validates everything; `checked` runs documents that
/// passed strict validation before, with variables `InputCheck` accepted, and validates only
/// what can still differ (the limits, which `Fast` mode keeps); `introspection` runs documents
/// that only introspect, strictly, without the library's depth limit (see `executor.rs`).
pub struct Schemas {
    pub strict: AppSchema,
    pub checked: AppSchema,
    pub introspection: AppSchema,
}

impl Schemas {
    pub fn new(state: &AppState) -> Schemas {
        let cfg = &state.config;
        Schemas {
            strict: build_schema(Some(state.clone()), cfg),
            checked: build_schema_validating(
                Some(state.clone()),
                cfg,
                async_graphql::ValidationMode::Fast,
            ),
            // `budget::admit` holds these documents to GRAPHQL_MAX_DEPTH, `ofType` not counted.
            introspection: build_schema_validating(
                Some(state.clone()),
                &Config {
                    graphql_max_depth: usize::MAX,
                    ..(**cfg).clone()
                },
                async_graphql::ValidationMode::Strict,
            ),
        }
    }
}

/// The input types `InputCheck` needs, read by introspection from a schema that allows it
/// (whatever `GRAPHQL_INTROSPECTION` says for clients).
pub async fn input_check() -> inputs::InputCheck {
    inputs::InputCheck::of(&build_schema(None, &Config::default())).await
}

fn build_schema_validating(
    state: Option<AppState>,
    cfg: &Config,
    mode: async_graphql::ValidationMode,
) -> AppSchema {
    let mut b = Schema::build(Query, Mutation, Subscription)
        .validation_mode(mode)
        .limit_depth(cfg.graphql_max_depth)
        .limit_complexity(cfg.graphql_max_complexity);
    if !cfg.graphql_introspection {
        b = b.disable_introspection();
    }
    if let Some(s) = state {
        b = b.data(s);
    }
    b.finish()
}

/// The SDL checked in as `schema.graphql`.
pub fn sdl() -> String {
    build_schema(None, &Config::default()).sdl()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `schema.graphql` is the GraphQL documentation, so every type, field, input field and enum
    /// value we define must say what it is. Built-in types (`__*`, scalars) and the connection
    /// and edge types async-graphql generates (whose description it does not let us set) are
    /// exempt as types; their fields are not.
    #[tokio::test]
    async fn every_type_and_field_has_a_description() {
        let schema = build_schema(None, &Config::default());
        let q = "{ __schema { types { name kind description
            fields { name description } inputFields { name description }
            enumValues { name description } } } }";
        let resp = schema.execute(q).await;
        assert!(resp.errors.is_empty(), "{:?}", resp.errors);
        let data = resp.data.into_json().expect("introspection JSON");
        let mut missing = Vec::new();
        for t in data["__schema"]["types"].as_array().expect("types") {
            let name = t["name"].as_str().unwrap_or_default();
            let builtin = name.starts_with("__")
                || matches!(name, "String" | "Int" | "Float" | "Boolean" | "ID");
            if builtin {
                continue;
            }
            let generated = name.ends_with("Connection") || name.ends_with("Edge");
            if !generated && t["description"].as_str().unwrap_or_default().is_empty() {
                missing.push(name.to_string());
            }
            for list in ["fields", "inputFields", "enumValues"] {
                for f in t[list].as_array().into_iter().flatten() {
                    if f["description"].as_str().unwrap_or_default().is_empty() {
                        missing.push(format!("{name}.{}", f["name"].as_str().unwrap_or("?")));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "no description: {missing:?}");
    }
}
