//! One table of what each image model accepts. Request validation, the `imageModels` query and
//! the emulator all read it, so the three cannot drift apart. Limits follow
//! `volcengine-api.md` (A.2–A.5); provider model ids are configurable because Volcengine ships
//! new dated versions without other changes.

use serde::Serialize;

use super::field::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFamily {
    /// Seedream 3.0 text-to-image.
    Seedream3,
    /// SeedEdit 3.0 instruction editing of exactly one image.
    SeedEdit3,
    /// Seedream 4.0 / 4.5: text-to-image, multi-reference, groups.
    Seedream4,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeRule {
    /// `WxH` with W·H in `[min_pixels, max_pixels]` and W/H in `[1/max_ratio, max_ratio]`.
    Pixels {
        min_pixels: u64,
        max_pixels: u64,
        max_ratio: f64,
    },
    /// Only `adaptive`: the output follows the input image.
    Adaptive,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSpec {
    /// Provider model id sent to Ark, e.g. `doubao-seedream-3-0-t2i-250415`.
    pub id: String,
    /// Friendly name of the older server, e.g. `doubao-seedream-3.0-t2i`.
    pub name: String,
    pub aliases: Vec<String>,
    pub display_name: String,
    pub family: ModelFamily,
    pub default_size: String,
    pub size_rule: SizeRule,
    /// Size tiers accepted instead of `WxH` (`1K`, `2K`, `4K`), with the square size we assume.
    pub tiers: Vec<(String, u32)>,
    pub supports_seed: bool,
    pub supports_guidance: bool,
    pub default_guidance: Option<f64>,
    pub min_reference_images: u32,
    pub max_reference_images: u32,
    /// Most images one request may produce (groups).
    pub max_output_images: u32,
    pub max_prompt_chars: usize,
    /// The provider's images-per-minute quota for this model (A.11).
    pub images_per_minute: u32,
}

/// Longest prompt we accept. Ark advises ≤ 300 Chinese characters or 600 English words and does
/// not publish a hard limit; 2,000 characters covers the advice with room and bounds storage.
pub const MAX_PROMPT_CHARS: usize = 2000;

impl ModelSpec {
    /// Checks a requested size against the model and returns the form to send (lowercase `x`,
    /// upper-case tier names).
    pub fn check_size(&self, size: &str) -> Result<String, String> {
        let size = size.trim();
        match &self.size_rule {
            SizeRule::Adaptive => {
                if size.eq_ignore_ascii_case("adaptive") {
                    Ok("adaptive".into())
                } else {
                    Err(format!(
                        "model {} only accepts size \"adaptive\"",
                        self.name
                    ))
                }
            }
            SizeRule::Pixels {
                min_pixels,
                max_pixels,
                max_ratio,
            } => {
                if let Some((tier, _)) = self
                    .tiers
                    .iter()
                    .find(|(t, _)| t.eq_ignore_ascii_case(size))
                {
                    return Ok(tier.clone());
                }
                let (w, h) = parse_wxh(size).ok_or_else(|| {
                    let tiers: Vec<&str> = self.tiers.iter().map(|(t, _)| t.as_str()).collect();
                    if tiers.is_empty() {
                        "size must be WIDTHxHEIGHT, e.g. 1024x1024".to_string()
                    } else {
                        format!(
                            "size must be WIDTHxHEIGHT (e.g. 2048x2048) or one of {}",
                            tiers.join(", ")
                        )
                    }
                })?;
                let pixels = u64::from(w) * u64::from(h);
                if pixels < *min_pixels || pixels > *max_pixels {
                    return Err(format!(
                        "size {w}x{h} has {pixels} pixels; model {} accepts {min_pixels} to {max_pixels}",
                        self.name
                    ));
                }
                let ratio = f64::from(w) / f64::from(h);
                if ratio > *max_ratio || ratio < 1.0 / *max_ratio {
                    return Err(format!(
                        "size {w}x{h}: aspect ratio must lie between 1:{max_ratio} and {max_ratio}:1"
                    ));
                }
                Ok(format!("{w}x{h}"))
            }
        }
    }

    /// The output dimensions a size stands for (tiers map to their square size; `adaptive` to
    /// the 1:1 row of SeedEdit's table).
    pub fn output_dims(&self, size: &str) -> (u32, u32) {
        if let Some((_, side)) = self
            .tiers
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(size))
        {
            return (*side, *side);
        }
        parse_wxh(size).unwrap_or((1024, 1024))
    }
}

/// Parses `WxH` (either case of `x`); `None` for anything else or a zero side.
pub fn parse_wxh(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once(['x', 'X'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    (w > 0 && h > 0 && w <= 16384 && h <= 16384).then_some((w, h))
}

#[derive(Debug, Clone)]
pub struct Catalog {
    models: Vec<ModelSpec>,
    default_index: usize,
}

/// Provider model ids, overridable from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelIds {
    pub seedream_3_0: String,
    pub seededit_3_0: String,
    pub seedream_4_0: String,
    pub seedream_4_5: String,
}

impl Default for ModelIds {
    fn default() -> Self {
        ModelIds {
            seedream_3_0: "doubao-seedream-3-0-t2i-250415".into(),
            seededit_3_0: "doubao-seededit-3-0-i2i-250628".into(),
            seedream_4_0: "doubao-seedream-4-0-250828".into(),
            seedream_4_5: "doubao-seedream-4-5-251128".into(),
        }
    }
}

fn tiers(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|(t, s)| (t.to_string(), *s)).collect()
}

impl Catalog {
    pub fn new(ids: &ModelIds) -> Catalog {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let mut models = vec![
            ModelSpec {
                id: ids.seedream_3_0.clone(),
                name: "doubao-seedream-3.0-t2i".into(),
                aliases: s(&["seedream-3.0", "seedream-3-0", "doubao-seedream-3-0-t2i"]),
                display_name: "Seedream 3.0 (text to image)".into(),
                family: ModelFamily::Seedream3,
                default_size: "1024x1024".into(),
                size_rule: SizeRule::Pixels {
                    min_pixels: 512 * 512,
                    max_pixels: 2048 * 2048,
                    max_ratio: 16.0,
                },
                tiers: vec![],
                supports_seed: true,
                supports_guidance: true,
                default_guidance: Some(2.5),
                min_reference_images: 0,
                max_reference_images: 0,
                max_output_images: 1,
                max_prompt_chars: MAX_PROMPT_CHARS,
                images_per_minute: 500,
            },
            ModelSpec {
                id: ids.seededit_3_0.clone(),
                name: "doubao-seededit-3.0-i2i".into(),
                aliases: s(&["seededit-3.0", "seededit-3-0", "doubao-seededit-3-0-i2i"]),
                display_name: "SeedEdit 3.0 (image editing)".into(),
                family: ModelFamily::SeedEdit3,
                default_size: "adaptive".into(),
                size_rule: SizeRule::Adaptive,
                tiers: vec![],
                supports_seed: true,
                supports_guidance: true,
                default_guidance: Some(5.5),
                min_reference_images: 1,
                max_reference_images: 1,
                max_output_images: 1,
                max_prompt_chars: MAX_PROMPT_CHARS,
                images_per_minute: 500,
            },
            ModelSpec {
                id: ids.seedream_4_0.clone(),
                name: "doubao-seedream-4.0".into(),
                aliases: s(&["seedream-4.0", "seedream-4-0", "doubao-seedream-4-0"]),
                display_name: "Seedream 4.0".into(),
                family: ModelFamily::Seedream4,
                default_size: "2048x2048".into(),
                size_rule: SizeRule::Pixels {
                    min_pixels: 921_600,
                    max_pixels: 16_777_216,
                    max_ratio: 16.0,
                },
                tiers: tiers(&[("1K", 1024), ("2K", 2048), ("4K", 4096)]),
                supports_seed: false,
                supports_guidance: false,
                default_guidance: None,
                min_reference_images: 0,
                max_reference_images: 14,
                max_output_images: 15,
                max_prompt_chars: MAX_PROMPT_CHARS,
                images_per_minute: 500,
            },
            ModelSpec {
                id: ids.seedream_4_5.clone(),
                name: "doubao-seedream-4.5".into(),
                aliases: s(&["seedream-4.5", "seedream-4-5", "doubao-seedream-4-5"]),
                display_name: "Seedream 4.5".into(),
                family: ModelFamily::Seedream4,
                default_size: "2048x2048".into(),
                size_rule: SizeRule::Pixels {
                    min_pixels: 3_686_400,
                    max_pixels: 16_777_216,
                    max_ratio: 16.0,
                },
                tiers: tiers(&[("2K", 2048), ("4K", 4096)]),
                supports_seed: false,
                supports_guidance: false,
                default_guidance: None,
                min_reference_images: 0,
                max_reference_images: 14,
                max_output_images: 15,
                max_prompt_chars: MAX_PROMPT_CHARS,
                images_per_minute: 500,
            },
        ];
        models.extend(super::jimeng::image_models());
        Catalog {
            models,
            default_index: 0,
        }
    }

    pub fn all(&self) -> &[ModelSpec] {
        &self.models
    }

    pub fn default_model(&self) -> &ModelSpec {
        &self.models[self.default_index]
    }

    /// Finds a model by provider id, friendly name or alias, ignoring case.
    pub fn find(&self, name: &str) -> Option<&ModelSpec> {
        let name = name.trim();
        self.models.iter().find(|m| {
            m.id.eq_ignore_ascii_case(name)
                || m.name.eq_ignore_ascii_case(name)
                || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// The model a request names (left out or blank: the default), or the error listing the
    /// known ones.
    pub fn parse_model(&self, raw: Option<&str>) -> Result<&ModelSpec, FieldError> {
        match raw.map(str::trim).filter(|m| !m.is_empty()) {
            None => Ok(self.default_model()),
            Some(name) => self.find(name).ok_or_else(|| {
                let known: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                FieldError::new(
                    "model",
                    format!("unknown model; known models: {}", known.join(", ")),
                )
                .with_value(name)
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_each_models_rule() {
        let c = Catalog::new(&ModelIds::default());
        let s3 = c.find("doubao-seedream-3.0-t2i").expect("3.0");
        assert_eq!(s3.check_size("1024X1024").as_deref(), Ok("1024x1024"));
        assert!(s3.check_size("256x256").is_err());
        assert!(s3.check_size("4096x4096").is_err());
        assert!(s3.check_size("2K").is_err());
        assert!(s3.check_size("abc").is_err());
        let s45 = c.find("doubao-seedream-4-5-251128").expect("4.5");
        assert!(s45.check_size("1500x1500").is_err());
        assert!(s45.check_size("3750x1250").is_ok());
        assert!(s45.check_size("1K").is_err());
        assert_eq!(s45.check_size("2k").as_deref(), Ok("2K"));
        let s40 = c.find("seedream-4.0").expect("4.0");
        assert!(s40.check_size("1600x600").is_ok());
        assert!(s40.check_size("800x800").is_err());
        let edit = c.find("doubao-seededit-3.0-i2i").expect("edit");
        assert!(edit.check_size("adaptive").is_ok());
        assert!(edit.check_size("1024x1024").is_err());
        assert!(c.find("dall-e-3").is_none());
    }

    #[test]
    fn a_request_names_a_known_model_or_gets_the_default() {
        let c = Catalog::new(&ModelIds::default());
        for blank in [None, Some(""), Some("  ")] {
            assert_eq!(
                c.parse_model(blank).map(|m| m.id.as_str()),
                Ok(c.default_model().id.as_str())
            );
        }
        assert_eq!(
            c.parse_model(Some(" SEEDREAM-4.5 "))
                .map(|m| m.name.as_str()),
            Ok("doubao-seedream-4.5")
        );
        let e = c.parse_model(Some("dall-e-3")).expect_err("unknown");
        assert_eq!(e.field, "model");
        assert_eq!(e.value, Some(serde_json::json!("dall-e-3")));
        assert!(
            e.message
                .contains("doubao-seedream-3.0-t2i, doubao-seededit-3.0-i2i"),
            "{}",
            e.message
        );
    }
}
