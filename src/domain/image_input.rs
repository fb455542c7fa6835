//! The model-dependent fields of an image request (size, seed, guidance scale, reference images,
//! output count), each parsed into a type that holds only values the chosen model accepts. A
//! value of these types is proof its field was checked: nothing downstream checks again.

use super::field::FieldError;
use super::models::ModelSpec;

pub const MAX_URL_CHARS: usize = 4096;
/// A data URL of a 10 MB image is ~13.4 MB of base64.
pub const MAX_DATA_URL_CHARS: usize = 14 * 1024 * 1024;
/// Ark counts reference images and outputs together against this.
pub const MAX_IMAGES_IN_AND_OUT: u32 = 15;

/// A size the model accepts, in the form sent to the provider (`1024x1024`, `2K`, `adaptive`).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSize(String);

impl ImageSize {
    /// Left out or blank: the model's default size.
    pub fn parse(raw: Option<&str>, m: &ModelSpec) -> Result<ImageSize, FieldError> {
        match raw.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(ImageSize(m.default_size.clone())),
            Some(s) => m
                .check_size(s)
                .map(ImageSize)
                .map_err(|msg| FieldError::new("size", msg).with_value(s)),
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// A seed in the provider's range (-1 means random), for a model that takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seed(i64);

impl Seed {
    pub fn parse(raw: Option<i64>, m: &ModelSpec) -> Result<Option<Seed>, FieldError> {
        match raw {
            None => Ok(None),
            Some(_) if !m.supports_seed => Err(FieldError::new(
                "seed",
                format!("model {} does not take a seed", m.name),
            )),
            Some(s) if !(-1..=i64::from(i32::MAX)).contains(&s) => {
                Err(FieldError::new("seed", "seed must be between -1 and 2147483647").with_value(s))
            }
            Some(s) => Ok(Some(Seed(s))),
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Prompt adherence in `[1, 10]`, for a model that takes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuidanceScale(f64);

impl GuidanceScale {
    pub fn parse(raw: Option<f64>, m: &ModelSpec) -> Result<Option<GuidanceScale>, FieldError> {
        match raw {
            None => Ok(None),
            Some(_) if !m.supports_guidance => Err(FieldError::new(
                "guidance_scale",
                format!("model {} does not take a guidance scale", m.name),
            )),
            // NaN is outside every range.
            Some(g) if !(1.0..=10.0).contains(&g) => Err(FieldError::new(
                "guidance_scale",
                "guidance_scale must be between 1 and 10",
            )
            .with_value(g)),
            Some(g) => Ok(Some(GuidanceScale(g))),
        }
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// One reference image: an http(s) URL with a host, or a `data:image/<format>;base64,` URL of at
/// most ~10 MB. Its field is `image[<index>]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceImage(String);

impl ReferenceImage {
    pub fn into_inner(self) -> String {
        self.0
    }

    pub fn parse(index: usize, url: String) -> Result<ReferenceImage, FieldError> {
        let field = format!("image[{index}]");
        let problem = if let Some(rest) = url.strip_prefix("data:") {
            let ok = rest.split_once(";base64,").is_some_and(|(mime, data)| {
                mime.strip_prefix("image/").is_some_and(|fmt| {
                    !fmt.is_empty() && fmt.chars().all(|c| c.is_ascii_lowercase())
                }) && !data.is_empty()
            });
            if !ok {
                Some("data URL must look like data:image/<png|jpeg|webp…>;base64,<data> (lowercase format)".to_string())
            } else if url.len() > MAX_DATA_URL_CHARS {
                Some("reference image is larger than 10 MB".to_string())
            } else {
                None
            }
        } else if url.len() > MAX_URL_CHARS {
            Some(format!("URL must be at most {MAX_URL_CHARS} characters"))
        } else {
            let ok = reqwest::Url::parse(&url)
                .map(|u| (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some())
                .unwrap_or(false);
            (!ok).then(|| "must be an http(s) URL or a data:image/…;base64 URL".to_string())
        };
        match problem {
            Some(msg) => Err(FieldError::new(&field, msg)),
            None => Ok(ReferenceImage(url)),
        }
    }
}

/// As many reference images as the model takes, each one valid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReferenceImages(Vec<ReferenceImage>);

impl ReferenceImages {
    /// Every problem: the count (field `image`) and then each bad image (`image[i]`).
    pub fn parse(images: Vec<String>, m: &ModelSpec) -> Result<ReferenceImages, Vec<FieldError>> {
        let mut errors = Vec::new();
        let count = images.len() as u32;
        if count < m.min_reference_images || count > m.max_reference_images {
            let msg = match (m.min_reference_images, m.max_reference_images) {
                (0, 0) => format!("model {} does not take reference images", m.name),
                (a, b) if a == b => {
                    format!("model {} needs exactly {a} reference image(s)", m.name)
                }
                (a, b) => format!("model {} takes {a} to {b} reference images", m.name),
            };
            errors.push(FieldError::new("image", msg));
        }
        let mut valid = Vec::with_capacity(images.len());
        for (i, url) in images.into_iter().enumerate() {
            match ReferenceImage::parse(i, url) {
                Ok(img) => valid.push(img),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(ReferenceImages(valid))
        } else {
            Err(errors)
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_urls(self) -> Vec<String> {
        self.0.into_iter().map(|i| i.0).collect()
    }
}

/// How many images one task makes: 1 by default, at most the model's group size, and with the
/// reference images within Ark's shared limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutputCount(u32);

impl OutputCount {
    /// `references` is the number of reference images asked for (valid or not).
    pub fn parse(
        raw: Option<i64>,
        m: &ModelSpec,
        references: usize,
    ) -> Result<OutputCount, FieldError> {
        let n = match raw {
            None => return Ok(OutputCount(1)),
            Some(k) if k >= 1 && k <= i64::from(m.max_output_images) => k as u32,
            Some(k) => {
                return Err(FieldError::new(
                    "n",
                    format!(
                        "model {} makes 1 to {} images per task",
                        m.name, m.max_output_images
                    ),
                )
                .with_value(k))
            }
        };
        let references = u32::try_from(references).unwrap_or(u32::MAX);
        if n > 1 && references.saturating_add(n) > MAX_IMAGES_IN_AND_OUT {
            return Err(FieldError::new(
                "n",
                format!(
                    "reference images plus output images must not exceed {MAX_IMAGES_IN_AND_OUT}"
                ),
            ));
        }
        Ok(OutputCount(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Everything of a request that depends on the model, parsed against it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParams {
    pub size: ImageSize,
    pub seed: Option<Seed>,
    pub guidance_scale: Option<GuidanceScale>,
    pub images: ReferenceImages,
    pub n: OutputCount,
}

/// The model-dependent fields as they arrive.
#[derive(Debug, Clone, Default)]
pub struct RawModelParams {
    pub size: Option<String>,
    pub seed: Option<i64>,
    pub guidance_scale: Option<f64>,
    pub images: Vec<String>,
    pub n: Option<i64>,
}

impl ModelParams {
    /// Every field's problems, in the order size, seed, guidance scale, images, n.
    pub fn parse(raw: RawModelParams, m: &ModelSpec) -> Result<ModelParams, Vec<FieldError>> {
        let references = raw.images.len();
        let size = ImageSize::parse(raw.size.as_deref(), m);
        let seed = Seed::parse(raw.seed, m);
        let guidance_scale = GuidanceScale::parse(raw.guidance_scale, m);
        let images = ReferenceImages::parse(raw.images, m);
        let n = OutputCount::parse(raw.n, m, references);
        match (size, seed, guidance_scale, images, n) {
            (Ok(size), Ok(seed), Ok(guidance_scale), Ok(images), Ok(n)) => Ok(ModelParams {
                size,
                seed,
                guidance_scale,
                images,
                n,
            }),
            (size, seed, guidance_scale, images, n) => {
                let mut errors: Vec<FieldError> = [size.err(), seed.err(), guidance_scale.err()]
                    .into_iter()
                    .flatten()
                    .collect();
                errors.extend(images.err().unwrap_or_default());
                errors.extend(n.err());
                Err(errors)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::models::{Catalog, ModelIds};

    fn model(name: &str) -> ModelSpec {
        Catalog::new(&ModelIds::default())
            .find(name)
            .cloned()
            .unwrap_or_else(|| panic!("no model {name}"))
    }

    fn v3() -> ModelSpec {
        model("doubao-seedream-3.0-t2i")
    }

    fn v4() -> ModelSpec {
        model("doubao-seedream-4.0")
    }

    fn edit() -> ModelSpec {
        model("doubao-seededit-3.0-i2i")
    }

    #[test]
    fn size_defaults_normalizes_and_names_the_rule() {
        assert_eq!(
            ImageSize::parse(None, &v3()).map(ImageSize::into_inner),
            Ok("1024x1024".into())
        );
        assert_eq!(
            ImageSize::parse(Some("  "), &v3()).map(ImageSize::into_inner),
            Ok("1024x1024".into())
        );
        assert_eq!(
            ImageSize::parse(Some(" 768X1024 "), &v3()).map(ImageSize::into_inner),
            Ok("768x1024".into())
        );
        assert_eq!(
            ImageSize::parse(Some("2k"), &v4()).map(ImageSize::into_inner),
            Ok("2K".into())
        );
        let e = ImageSize::parse(Some("10x10"), &v3()).expect_err("too small");
        assert_eq!(e.field, "size");
        assert!(e.message.contains("pixels"), "{}", e.message);
        assert_eq!(e.value, Some(serde_json::json!("10x10")));
        assert!(ImageSize::parse(Some("big"), &v3()).is_err());
        assert!(ImageSize::parse(Some("1024x1024"), &edit()).is_err());
        assert_eq!(
            ImageSize::parse(Some("Adaptive"), &edit()).map(ImageSize::into_inner),
            Ok("adaptive".into())
        );
    }

    #[test]
    fn seed_is_in_range_and_only_where_the_model_takes_one() {
        assert_eq!(Seed::parse(None, &v3()), Ok(None));
        assert_eq!(
            Seed::parse(Some(-1), &v3()).map(|s| s.map(Seed::get)),
            Ok(Some(-1))
        );
        assert_eq!(
            Seed::parse(Some(2147483647), &v3()).map(|s| s.map(Seed::get)),
            Ok(Some(2147483647))
        );
        for bad in [-2, 2147483648, i64::MIN, i64::MAX] {
            let e = Seed::parse(Some(bad), &v3()).expect_err("out of range");
            assert_eq!((e.field.as_str(), e.value), ("seed", Some(bad.into())));
        }
        let mut m = v3();
        m.supports_seed = false;
        let e = Seed::parse(Some(1), &m).expect_err("no seed");
        assert!(e.message.contains("does not take a seed"), "{}", e.message);
        assert_eq!(Seed::parse(None, &m), Ok(None));
    }

    #[test]
    fn guidance_scale_is_between_1_and_10_where_taken() {
        assert_eq!(
            GuidanceScale::parse(Some(1.0), &v3()).map(|g| g.map(GuidanceScale::get)),
            Ok(Some(1.0))
        );
        assert!(GuidanceScale::parse(Some(10.0), &v3()).is_ok());
        for bad in [0.99, 10.01, f64::NAN, f64::INFINITY, -3.0] {
            let e = GuidanceScale::parse(Some(bad), &v3()).expect_err("out of range");
            assert_eq!(e.field, "guidance_scale");
            assert!(e.message.contains("between 1 and 10"), "{}", e.message);
        }
        let e = GuidanceScale::parse(Some(5.0), &v4()).expect_err("4.0 takes none");
        assert!(e.message.contains("does not take a guidance scale"));
        assert_eq!(GuidanceScale::parse(None, &v4()), Ok(None));
    }

    #[test]
    fn reference_image_is_an_http_url_or_an_image_data_url() {
        for ok in [
            "https://example.com/a.png",
            "http://10.0.0.1:8080/x",
            "data:image/png;base64,iVBORw0K",
            "data:image/webp;base64,AAAA",
        ] {
            assert!(ReferenceImage::parse(0, ok.into()).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "example.com/a.png",
            "ftp://example.com/a.png",
            "file:///etc/passwd",
            "https://",
            "data:image/PNG;base64,AAAA",
            "data:image/;base64,AAAA",
            "data:text/plain;base64,AAAA",
            "data:image/png;base64,",
            "data:image/png,AAAA",
        ] {
            let e = ReferenceImage::parse(3, bad.into()).expect_err(bad);
            assert_eq!(e.field, "image[3]", "{bad}");
            assert_eq!(e.value, None, "URLs are not echoed");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_CHARS));
        let e = ReferenceImage::parse(0, long).expect_err("too long");
        assert!(e.message.contains("at most 4096"), "{}", e.message);
        let huge = format!("data:image/png;base64,{}", "A".repeat(MAX_DATA_URL_CHARS));
        let e = ReferenceImage::parse(0, huge).expect_err("too large");
        assert!(e.message.contains("10 MB"), "{}", e.message);
    }

    #[test]
    fn reference_images_report_the_count_and_every_bad_one() {
        let e = ReferenceImages::parse(vec!["https://a.example/x".into()], &v3())
            .expect_err("3.0 takes none");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("does not take reference images"));
        let e = ReferenceImages::parse(vec![], &edit()).expect_err("needs one");
        assert!(e[0].message.contains("exactly 1"), "{}", e[0].message);
        let e = ReferenceImages::parse(
            vec!["x".into(), "https://a.example/ok".into(), "y".into()],
            &edit(),
        )
        .expect_err("three bad things");
        let fields: Vec<&str> = e.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["image", "image[0]", "image[2]"]);
        let too_many = vec!["https://a.example/x".to_string(); 15];
        let e = ReferenceImages::parse(too_many, &v4()).expect_err("max 14");
        assert!(e[0].message.contains("0 to 14"), "{}", e[0].message);
        let ok = ReferenceImages::parse(vec!["https://a.example/x".into(); 2], &v4())
            .expect("two references");
        assert_eq!(ok.len(), 2);
        assert_eq!(ok.into_urls(), vec!["https://a.example/x".to_string(); 2]);
    }

    #[test]
    fn output_count_within_the_group_and_the_shared_limit() {
        assert_eq!(
            OutputCount::parse(None, &v3(), 0).map(OutputCount::get),
            Ok(1)
        );
        assert_eq!(
            OutputCount::parse(Some(1), &v3(), 0).map(OutputCount::get),
            Ok(1)
        );
        let e = OutputCount::parse(Some(2), &v3(), 0).expect_err("3.0 makes one");
        assert_eq!((e.field.as_str(), e.value), ("n", Some(2.into())));
        for bad in [0, -1, 16, i64::MAX] {
            assert!(OutputCount::parse(Some(bad), &v4(), 0).is_err(), "{bad}");
        }
        assert_eq!(
            OutputCount::parse(Some(15), &v4(), 0).map(OutputCount::get),
            Ok(15)
        );
        assert_eq!(
            OutputCount::parse(Some(5), &v4(), 10).map(OutputCount::get),
            Ok(5)
        );
        let e = OutputCount::parse(Some(6), &v4(), 10).expect_err("16 in and out");
        assert!(e.message.contains("must not exceed 15"), "{}", e.message);
        // One output with many references is the provider's ordinary case, not a group.
        assert!(OutputCount::parse(Some(1), &v4(), 15).is_ok());
    }

    #[test]
    fn model_params_report_every_field_in_order() {
        let raw = RawModelParams {
            size: Some("1x1".into()),
            seed: Some(-5),
            guidance_scale: Some(11.0),
            images: vec!["nope".into()],
            n: Some(3),
        };
        let e = ModelParams::parse(raw, &v3()).expect_err("all wrong");
        let fields: Vec<&str> = e.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            ["size", "seed", "guidance_scale", "image", "image[0]", "n"]
        );
        let ok = ModelParams::parse(
            RawModelParams {
                seed: Some(7),
                guidance_scale: Some(2.5),
                ..RawModelParams::default()
            },
            &v3(),
        )
        .expect("valid");
        assert_eq!(ok.size.into_inner(), "1024x1024");
        assert_eq!(ok.seed.map(Seed::get), Some(7));
        assert_eq!(ok.guidance_scale.map(GuidanceScale::get), Some(2.5));
        assert!(ok.images.is_empty());
        assert_eq!(ok.n.get(), 1);
    }
}
