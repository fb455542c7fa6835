//! Input rules, written once for REST and GraphQL. Field names are the REST (snake_case) ones;
//! the GraphQL layer renames them to its camelCase fields.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use crate::domain::models::ModelSpec;
use crate::error::{AppError, FieldError};

pub const MAX_EMAIL_CHARS: usize = 100;
pub const MAX_URL_CHARS: usize = 4096;
/// A data URL of a 10 MB image is ~13.4 MB of base64.
pub const MAX_DATA_URL_CHARS: usize = 14 * 1024 * 1024;
pub const MAX_SHORT_TEXT: usize = 64;
pub const MAX_OPTIONS_BYTES: usize = 4096;
pub const MAX_IDEMPOTENCY_KEY: usize = 200;
/// Ark counts reference images and outputs together against this.
pub const MAX_IMAGES_IN_AND_OUT: u32 = 15;

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

pub fn prompt(p: &mut Problems, raw: &str, max_chars: usize) -> String {
    let t = raw.trim().to_string();
    if t.is_empty() {
        p.push("prompt", "prompt must not be blank");
    } else if t.chars().count() > max_chars {
        p.push(
            "prompt",
            format!(
                "prompt must be at most {max_chars} characters (got {})",
                t.chars().count()
            ),
        );
    } else if t
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        p.push("prompt", "prompt must not contain control characters");
    }
    t
}

pub fn short_text(p: &mut Problems, field: &str, v: Option<String>) -> Option<String> {
    let v = v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    if let Some(s) = &v {
        if s.chars().count() > MAX_SHORT_TEXT || s.chars().any(char::is_control) {
            p.push(
                field,
                format!("must be at most {MAX_SHORT_TEXT} printable characters"),
            );
        }
    }
    v
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

pub fn reference_image(p: &mut Problems, index: usize, url: &str) {
    let field = format!("image[{index}]");
    if let Some(rest) = url.strip_prefix("data:") {
        let ok = rest.split_once(";base64,").is_some_and(|(mime, data)| {
            mime.strip_prefix("image/")
                .is_some_and(|fmt| !fmt.is_empty() && fmt.chars().all(|c| c.is_ascii_lowercase()))
                && !data.is_empty()
        });
        if !ok {
            p.push(
                &field,
                "data URL must look like data:image/<png|jpeg|webp…>;base64,<data> (lowercase format)",
            );
        } else if url.len() > MAX_DATA_URL_CHARS {
            p.push(&field, "reference image is larger than 10 MB");
        }
    } else if url.len() > MAX_URL_CHARS {
        p.push(
            &field,
            format!("URL must be at most {MAX_URL_CHARS} characters"),
        );
    } else {
        let ok = reqwest::Url::parse(url)
            .map(|u| (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some())
            .unwrap_or(false);
        if !ok {
            p.push(
                &field,
                "must be an http(s) URL or a data:image/…;base64 URL",
            );
        }
    }
}

/// Model-dependent parameters: size, seed, guidance scale, reference images, output count.
pub struct ModelParams {
    pub size: String,
    pub seed: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub images: Vec<String>,
    pub n: u32,
}

pub fn model_params(
    p: &mut Problems,
    m: &ModelSpec,
    size: Option<String>,
    seed: Option<i64>,
    guidance_scale: Option<f64>,
    images: Vec<String>,
    n: Option<i64>,
) -> ModelParams {
    let size = match size.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => m.default_size.clone(),
        Some(s) => match m.check_size(s) {
            Ok(normal) => normal,
            Err(msg) => {
                p.add(FieldError::new("size", msg).with_value(s));
                s.to_string()
            }
        },
    };
    if let Some(s) = seed {
        if !m.supports_seed {
            p.push("seed", format!("model {} does not take a seed", m.name));
        } else if !(-1..=i64::from(i32::MAX)).contains(&s) {
            p.add(FieldError::new("seed", "seed must be between -1 and 2147483647").with_value(s));
        }
    }
    if let Some(g) = guidance_scale {
        if !m.supports_guidance {
            p.push(
                "guidance_scale",
                format!("model {} does not take a guidance scale", m.name),
            );
        } else if !(1.0..=10.0).contains(&g) || g.is_nan() {
            p.add(
                FieldError::new("guidance_scale", "guidance_scale must be between 1 and 10")
                    .with_value(g),
            );
        }
    }
    let count = images.len() as u32;
    if count < m.min_reference_images || count > m.max_reference_images {
        let msg = match (m.min_reference_images, m.max_reference_images) {
            (0, 0) => format!("model {} does not take reference images", m.name),
            (a, b) if a == b => format!("model {} needs exactly {a} reference image(s)", m.name),
            (a, b) => format!("model {} takes {a} to {b} reference images", m.name),
        };
        p.push("image", msg);
    }
    for (i, url) in images.iter().enumerate() {
        reference_image(p, i, url);
    }
    let n = match n {
        None => 1,
        Some(k) if k >= 1 && k <= i64::from(m.max_output_images) => k as u32,
        Some(k) => {
            p.add(
                FieldError::new(
                    "n",
                    format!(
                        "model {} makes 1 to {} images per task",
                        m.name, m.max_output_images
                    ),
                )
                .with_value(k),
            );
            1
        }
    };
    if n > 1 && count + n > MAX_IMAGES_IN_AND_OUT {
        p.push(
            "n",
            format!("reference images plus output images must not exceed {MAX_IMAGES_IN_AND_OUT}"),
        );
    }
    ModelParams {
        size,
        seed,
        guidance_scale,
        images,
        n,
    }
}
