//! Jimeng (即梦) on Volcengine's visual API: which provider family runs a model, and the Jimeng
//! image and video models with what each accepts (volcengine-api.md C.3, C.4). Their provider
//! ids are the visual API's `req_key`s, sent as they are.

use serde::Serialize;

use super::models::{ModelFamily, ModelSpec, SizeRule};
use super::video::VideoModelSpec;

/// Which API runs a model's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderFamily {
    /// Volcengine Ark (API key): Seedream images, Seedance videos.
    Ark,
    /// The visual API (access key and secret key, signed): Jimeng images and videos, always as
    /// provider-side tasks (submit, then poll).
    Jimeng,
}

/// Every Jimeng `req_key` begins with this; no Ark model id does (they begin with `doubao-`).
pub const REQ_KEY_PREFIX: &str = "jimeng_";

impl ProviderFamily {
    /// The family of a provider model id (as stored in a task).
    pub fn of_model(id: &str) -> ProviderFamily {
        if id.starts_with(REQ_KEY_PREFIX) {
            ProviderFamily::Jimeng
        } else {
            ProviderFamily::Ark
        }
    }
}

/// Jimeng's prompts: at most 800 characters (C.4).
pub const MAX_JIMENG_PROMPT_CHARS: usize = 800;

/// Seconds a Jimeng image task is expected to take at the provider, to poll by (community
/// figures: 5–10 s for text to image, volcengine-api.md D).
pub const IMAGE_EXPECTED_SECS: u64 = 10;

fn image(
    req_key: &str,
    name: &str,
    display: &str,
    family: ModelFamily,
    size: (&str, SizeRule),
    references: (u32, u32),
) -> ModelSpec {
    let tiers = match family {
        ModelFamily::Seedream4 => vec![
            ("1K".to_string(), 1024),
            ("2K".to_string(), 2048),
            ("4K".to_string(), 4096),
        ],
        _ => Vec::new(),
    };
    ModelSpec {
        id: req_key.into(),
        name: name.into(),
        aliases: vec![],
        display_name: display.into(),
        family,
        default_size: size.0.into(),
        size_rule: size.1,
        tiers,
        supports_seed: true,
        // Jimeng's `scale` weighs text against image, not Ark's guidance: not offered.
        supports_guidance: false,
        default_guidance: None,
        min_reference_images: references.0,
        max_reference_images: references.1,
        // 4.0 and 4.6 decide how many images to make; we ask for one (`force_single`).
        max_output_images: 1,
        max_prompt_chars: MAX_JIMENG_PROMPT_CHARS,
        // Not paced by images per minute: the visual API limits submits per second and tasks
        // at once, and answers 50429 / 50430, which requeue the task without an attempt.
        images_per_minute: 500,
    }
}

/// The Jimeng image models, after Ark's in the catalogue.
pub fn image_models() -> Vec<ModelSpec> {
    let v3 = || SizeRule::Pixels {
        min_pixels: 512 * 512,
        max_pixels: 2048 * 2048,
        max_ratio: 3.0,
    };
    let v4 = || SizeRule::Pixels {
        min_pixels: 1024 * 1024,
        max_pixels: 4096 * 4096,
        max_ratio: 3.0,
    };
    vec![
        image(
            "jimeng_t2i_v30",
            "jimeng-t2i-3.0",
            "Jimeng 3.0 (text to image)",
            ModelFamily::Seedream3,
            ("1328x1328", v3()),
            (0, 0),
        ),
        image(
            "jimeng_t2i_v31",
            "jimeng-t2i-3.1",
            "Jimeng 3.1 (text to image)",
            ModelFamily::Seedream3,
            ("1328x1328", v3()),
            (0, 0),
        ),
        image(
            "jimeng_t2i_v40",
            "jimeng-4.0",
            "Jimeng 4.0",
            ModelFamily::Seedream4,
            ("2048x2048", v4()),
            (0, 10),
        ),
        image(
            "jimeng_seedream46_cvtob",
            "jimeng-4.6",
            "Jimeng 4.6",
            ModelFamily::Seedream4,
            ("2048x2048", v4()),
            (0, 14),
        ),
        image(
            "jimeng_i2i_v30",
            "jimeng-i2i-3.0",
            "Jimeng 3.0 (image to image)",
            ModelFamily::SeedEdit3,
            // Each side 512 to 2016: the area and ratio bounds of that square range.
            (
                "1328x1328",
                SizeRule::Pixels {
                    min_pixels: 512 * 512,
                    max_pixels: 2016 * 2016,
                    max_ratio: 2016.0 / 512.0,
                },
            ),
            (1, 1),
        ),
    ]
}

/// Jimeng video durations: 121 frames (5 s) or 241 (10 s) at 24 fps.
pub const VIDEO_DURATIONS: &[u32] = &[5, 10];
const HD: &[&str] = &["1080p"];
const SD: &[&str] = &["720p"];

/// `frames` for a duration in seconds: 24 a second and the first.
pub fn frames_of(duration: u32) -> u32 {
    duration * 24 + 1
}

/// The Jimeng video models (视频 3.0), after Seedance in the catalogue.
pub fn video_models() -> Vec<VideoModelSpec> {
    let m = |id: &str, name: &str, display: &str, modes: (bool, bool, bool), res| VideoModelSpec {
        id: id.into(),
        name: name.into(),
        display_name: display.into(),
        text_to_video: modes.0,
        first_frame: modes.1,
        first_last_frame: modes.2,
        default_resolution: if res == HD { "1080p" } else { "720p" },
        min_duration: 5,
        max_duration: 10,
        durations: Some(VIDEO_DURATIONS),
        resolutions: res,
        takes_camera_fixed: false,
        secs_per_video_sec: 12,
        // Not published (C.7): set per account; the pace learns it from 429s.
        submits_per_minute: 60,
    };
    vec![
        m(
            "jimeng_t2v_v30",
            "jimeng-t2v-3.0",
            "Jimeng Video 3.0 720p (text to video)",
            (true, false, false),
            SD,
        ),
        m(
            "jimeng_t2v_v30_1080p",
            "jimeng-t2v-3.0-1080p",
            "Jimeng Video 3.0 1080p (text to video)",
            (true, false, false),
            HD,
        ),
        m(
            "jimeng_i2v_first_v30",
            "jimeng-i2v-first-3.0",
            "Jimeng Video 3.0 720p (first frame)",
            (false, true, false),
            SD,
        ),
        m(
            "jimeng_i2v_first_v30_1080",
            "jimeng-i2v-first-3.0-1080p",
            "Jimeng Video 3.0 1080p (first frame)",
            (false, true, false),
            HD,
        ),
        m(
            "jimeng_i2v_first_tail_v30",
            "jimeng-i2v-first-tail-3.0",
            "Jimeng Video 3.0 720p (first and last frame)",
            (false, false, true),
            SD,
        ),
        m(
            "jimeng_i2v_first_tail_v30_1080",
            "jimeng-i2v-first-tail-3.0-1080p",
            "Jimeng Video 3.0 1080p (first and last frame)",
            (false, false, true),
            HD,
        ),
        m(
            "jimeng_ti2v_v30_pro",
            "jimeng-video-3.0-pro",
            "Jimeng Video 3.0 Pro (text or first frame, 1080p)",
            (true, true, false),
            HD,
        ),
        // The older video models the Go server used (being retired at the provider).
        m(
            "jimeng_vgfm_t2v_l20",
            "jimeng-vgfm-t2v",
            "Jimeng Video S2.0 Pro (text to video)",
            (true, false, false),
            SD,
        ),
        m(
            "jimeng_vgfm_i2v_l20",
            "jimeng-vgfm-i2v",
            "Jimeng Video S2.0 Pro (first frame)",
            (false, true, false),
            SD,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jimeng_models_are_told_from_arks_by_their_req_keys() {
        for m in image_models() {
            assert_eq!(ProviderFamily::of_model(&m.id), ProviderFamily::Jimeng);
        }
        for m in video_models() {
            assert_eq!(ProviderFamily::of_model(&m.id), ProviderFamily::Jimeng);
        }
        let ark = crate::domain::Catalog::new(&Default::default());
        for m in ark.all().iter().filter(|m| !m.id.starts_with("jimeng")) {
            assert_eq!(ProviderFamily::of_model(&m.id), ProviderFamily::Ark);
        }
        assert_eq!((frames_of(5), frames_of(10)), (121, 241));
    }
}
