//! `POST /v1/images/edits`: OpenAI's multipart form, as the SDKs send it, for SeedEdit and the
//! reference-image models. The uploaded files become `data:` URLs, the reference images of an
//! ordinary task; the rest is `POST /v1/images/generations`.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use serde_json::{Map, Value};

use super::error::{ErrorEnvelope, OpenAiError};
use super::images::{
    check_params, create_and_answer, idempotency_key, GenerationBody, OneOrMany, TaskAccepted,
};
use super::{read_body, Key};
use crate::state::AppState;

/// The model an edit uses when it names none: the generations' default makes no edits.
const DEFAULT_EDIT_MODEL: &str = "doubao-seededit-3.0-i2i";

/// The form fields an edit reads, besides the image files.
const KNOWN: &[&str] = &[
    // OpenAI's end-user id for abuse monitoring: accepted, not used.
    "safety_identifier",
    "prompt",
    "model",
    "n",
    "size",
    "response_format",
    "user",
    "quality",
    "style",
    "seed",
    "guidance_scale",
    "watermark",
    "sequential_image_generation",
    "max_images",
];

/// The multipart form of `POST /v1/images/edits` (for the OpenAPI document).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EditForm {
    /// The image(s) to edit or use as references: files (`image`, or `image[]` for several, as
    /// the SDKs send a list), or URLs as text.
    #[schema(value_type = Vec<String>, format = Binary)]
    image: Vec<Vec<u8>>,
    /// Required.
    prompt: String,
    /// Default `doubao-seededit-3.0-i2i`.
    model: Option<String>,
    n: Option<i64>,
    /// `adaptive` for SeedEdit; `WxH` or a tier for Seedream 4.x.
    size: Option<String>,
    /// `url` (default) or `b64_json`.
    response_format: Option<String>,
    /// The task's owner with the admin key or auth off.
    user: Option<String>,
    seed: Option<i64>,
    guidance_scale: Option<f64>,
    watermark: Option<bool>,
}

/// An uploaded image as a `data:` URL; its format is read from its bytes, whatever the part
/// claims.
fn data_url(index: usize, bytes: &[u8]) -> Result<String, OpenAiError> {
    use imagesize::ImageType as T;
    let format = match imagesize::image_type(bytes) {
        Ok(T::Png) => "png",
        Ok(T::Jpeg) => "jpeg",
        Ok(T::Webp) => "webp",
        Ok(T::Bmp) => "bmp",
        Ok(T::Tiff) => "tiff",
        Ok(T::Gif) => "gif",
        _ => {
            return Err(OpenAiError::invalid(
                "image",
                format!("image {index} is not a PNG, JPEG, WebP, BMP, TIFF or GIF file"),
            ))
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:image/{format};base64,{b64}"))
}

/// A text field as the JSON value `GenerationBody` reads.
fn typed(name: &str, text: String) -> Result<Value, OpenAiError> {
    let bad = |what: &str| OpenAiError::invalid(name, format!("{name} must be {what}"));
    Ok(match name {
        "n" | "seed" | "max_images" => Value::from(
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad("a whole number"))?,
        ),
        "guidance_scale" => Value::from(text.trim().parse::<f64>().map_err(|_| bad("a number"))?),
        "watermark" | "stream" => match text.trim() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(bad("true or false")),
        },
        _ => Value::String(text),
    })
}

/// The form's fields and its images (files as `data:` URLs, text as given).
async fn read_form(mut form: Multipart) -> Result<(Map<String, Value>, Vec<String>), OpenAiError> {
    let malformed = |e: axum::extract::multipart::MultipartError| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the multipart body could not be read: {}", e.body_text()),
            None,
            Some("invalid_multipart"),
        )
    };
    let mut fields = Map::new();
    let mut images = Vec::new();
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let base = name.split('[').next().unwrap_or_default().to_string();
        match (base.as_str(), is_file) {
            ("image", true) => {
                let bytes = field.bytes().await.map_err(malformed)?;
                images.push(data_url(images.len(), &bytes)?);
            }
            ("image", false) => images.push(field.text().await.map_err(malformed)?),
            ("mask", _) => {
                return Err(OpenAiError::unsupported(
                    "mask",
                    "mask is not supported: SeedEdit edits by instruction",
                ))
            }
            (_, true) => {
                return Err(OpenAiError::unsupported(
                    &base,
                    format!("{base} is not a file parameter of this server"),
                ))
            }
            _ => {
                let text = field.text().await.map_err(malformed)?;
                fields.insert(base.clone(), typed(&base, text)?);
            }
        }
    }
    Ok((fields, images))
}

/// Edit images
///
/// OpenAI's images edit (multipart: `image` file(s), `prompt`, …) over a durable task with the
/// uploads as reference images: SeedEdit 3.0 by default, or a Seedream 4.x model with several
/// references. Answers as `POST /v1/images/generations` does (`Prefer: respond-async`,
/// `Idempotency-Key`, the keep-alive). `mask` is refused: SeedEdit edits by instruction.
#[utoipa::path(post, path = "/v1/images/edits", tag = "openai",
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the task created with this key"),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: answer 202 at once"),
    ),
    request_body(content = EditForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The images", body = super::images::ImagesResponse),
        (status = 202, description = "`Prefer: respond-async`: the task, not done yet", body = TaskAccepted),
        (status = 400, description = "Invalid or unsupported parameter (`param` names it), or the provider refused the request", body = ErrorEnvelope),
        (status = 401, description = "Missing or invalid key", body = ErrorEnvelope),
        (status = 429, description = "The user's submit rate or in-flight quota (`Retry-After`)", body = ErrorEnvelope),
        (status = 500, description = "The task failed", body = ErrorEnvelope),
    ))]
pub async fn edits(
    State(s): State<AppState>,
    Key(who): Key,
    req: Request,
) -> Result<Response, OpenAiError> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers.clone();
    let bytes = read_body(&s, Request::from_parts(parts.clone(), body)).await?;
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let form = Multipart::from_request(req, &s).await.map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "{}; send multipart/form-data, as the SDKs do",
                e.body_text()
            ),
            None,
            Some("invalid_multipart"),
        )
    })?;
    let (mut fields, images) = read_form(form).await?;
    check_params(&fields, KNOWN)?;
    if images.is_empty() {
        return Err(OpenAiError::invalid("image", "image is required"));
    }
    fields
        .entry("model")
        .or_insert_with(|| Value::String(DEFAULT_EDIT_MODEL.into()));
    let mut body: GenerationBody = serde_json::from_value(Value::Object(fields))
        .map_err(|e| OpenAiError::invalid("body", e.to_string()))?;
    body.image = Some(OneOrMany::Many(images));
    let key = idempotency_key(&headers)?;
    let (input, format) = body.into_input(&who, key)?;
    create_and_answer(s, who, &headers, input, format).await
}
