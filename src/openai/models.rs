//! `GET /v1/models`: the image models, by the ids `model` accepts.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ErrorEnvelope, OpenAiError};
use super::Key;
use crate::domain::ModelSpec;
use crate::state::AppState;

/// One model in OpenAI's shape, with what the catalogue knows of it beside.
#[derive(Serialize, ToSchema)]
pub struct Model {
    /// The friendly name, accepted as `model` (as are the provider id and the aliases).
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0: the catalogue has no release dates.
    pub created: i64,
    /// Always `volcengine`.
    pub owned_by: &'static str,
    /// The provider model id sent to Ark (configurable per deployment).
    pub provider_model_id: String,
    pub display_name: String,
    /// The default `size`.
    pub default_size: String,
    /// The most images one request makes (`n`).
    pub max_images: u32,
    /// Reference images the model takes (`image`; `/v1/images/edits`).
    pub min_reference_images: u32,
    pub max_reference_images: u32,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<Model>,
}

fn model(m: &ModelSpec) -> Model {
    Model {
        id: m.name.clone(),
        object: "model",
        created: 0,
        owned_by: "volcengine",
        provider_model_id: m.id.clone(),
        display_name: m.display_name.clone(),
        default_size: m.default_size.clone(),
        max_images: m.max_output_images,
        min_reference_images: m.min_reference_images,
        max_reference_images: m.max_reference_images,
    }
}

/// List models
///
/// The image models this server makes images with.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses(
        (status = 200, description = "The image models", body = ModelList),
        (status = 401, description = "Missing or invalid key", body = ErrorEnvelope),
    ))]
pub async fn list(State(s): State<AppState>, Key(_): Key) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: s.service.catalog().all().iter().map(model).collect(),
    })
}

/// Get a model
///
/// One image model, by any name `model` accepts.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai",
    params(("model" = String, Path, description = "Model id, provider id or alias")),
    responses(
        (status = 200, description = "The model", body = Model),
        (status = 404, description = "No such model", body = ErrorEnvelope),
    ))]
pub async fn get(
    State(s): State<AppState>,
    Key(_): Key,
    Path(name): Path<String>,
) -> Result<Json<Model>, OpenAiError> {
    s.service
        .catalog()
        .find(&name)
        .map(|m| Json(model(m)))
        .ok_or_else(|| {
            OpenAiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model '{name}' does not exist"),
                Some("model"),
                Some("model_not_found"),
            )
        })
}
