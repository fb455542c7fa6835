//! Seedance's models as the provider has them (volcengine-api.md B.2): modes, resolutions,
//! durations and limits as data, output sizes (B.3), and the validated request (`Spec`).

pub struct VideoModel {
    pub id: &'static str,
    pub t2v: bool,
    pub first_frame: bool,
    pub first_last: bool,
    /// 1–4 `reference_image`s (not at 1080p).
    pub reference: bool,
    pub default_resolution: &'static str,
    pub min_duration: i64,
    pub max_duration: i64,
    /// 1.5 pro: `duration: -1` lets the model choose, `generate_audio` and `draft` exist,
    /// `adaptive` is the ratio by default.
    pub v15: bool,
    /// Creates per minute and tasks running at once, per account (default tier).
    pub rpm: u32,
    pub concurrency: u32,
}

pub const MODELS: &[VideoModel] = &[
    VideoModel {
        id: "doubao-seedance-1-0-pro-250528",
        t2v: true,
        first_frame: true,
        first_last: true,
        reference: false,
        default_resolution: "1080p",
        min_duration: 2,
        max_duration: 12,
        v15: false,
        rpm: 600,
        concurrency: 10,
    },
    VideoModel {
        id: "doubao-seedance-1-0-pro-fast-251015",
        t2v: true,
        first_frame: true,
        first_last: false,
        reference: false,
        default_resolution: "1080p",
        min_duration: 2,
        max_duration: 12,
        v15: false,
        rpm: 600,
        concurrency: 10,
    },
    VideoModel {
        id: "doubao-seedance-1-0-lite-t2v-250428",
        t2v: true,
        first_frame: false,
        first_last: false,
        reference: false,
        default_resolution: "720p",
        min_duration: 2,
        max_duration: 12,
        v15: false,
        rpm: 300,
        concurrency: 5,
    },
    VideoModel {
        id: "doubao-seedance-1-0-lite-i2v-250428",
        t2v: false,
        first_frame: true,
        first_last: true,
        reference: true,
        default_resolution: "720p",
        min_duration: 2,
        max_duration: 12,
        v15: false,
        rpm: 300,
        concurrency: 5,
    },
    VideoModel {
        id: "doubao-seedance-1-5-pro-251215",
        t2v: true,
        first_frame: true,
        first_last: true,
        reference: false,
        default_resolution: "720p",
        min_duration: 4,
        max_duration: 12,
        v15: true,
        rpm: 600,
        concurrency: 10,
    },
];

pub const RESOLUTIONS: &[&str] = &["480p", "720p", "1080p"];
pub const RATIOS: &[&str] = &["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"];

/// Output pixel size of a resolution and (concrete) ratio (B.3).
pub fn dims(resolution: &str, ratio: &str) -> (u32, u32) {
    let i = RATIOS.iter().position(|r| *r == ratio).unwrap_or(0);
    let table: [(u32, u32); 6] = match resolution {
        "480p" => [
            (864, 480),
            (736, 544),
            (640, 640),
            (544, 736),
            (480, 864),
            (960, 416),
        ],
        "1080p" => [
            (1920, 1088),
            (1664, 1248),
            (1440, 1440),
            (1248, 1664),
            (1088, 1920),
            (2176, 928),
        ],
        _ => [
            (1248, 704),
            (1120, 832),
            (960, 960),
            (832, 1120),
            (704, 1248),
            (1504, 640),
        ],
    };
    table[i]
}

/// The ratio closest to `w`:`h`.
pub fn nearest_ratio(w: u32, h: u32) -> &'static str {
    let want = f64::from(w) / f64::from(h.max(1));
    RATIOS
        .iter()
        .copied()
        .min_by(|a, b| {
            let d = |r: &str| {
                let (x, y) = r.split_once(':').unwrap_or(("16", "9"));
                let v = x.parse::<f64>().unwrap_or(16.0) / y.parse::<f64>().unwrap_or(9.0);
                (v.ln() - want.ln()).abs()
            };
            d(a).total_cmp(&d(b))
        })
        .unwrap_or("16:9")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Text,
    FirstFrame,
    FirstLast,
    Reference(usize),
    Draft,
}

/// A validated create request.
#[derive(Debug, Clone)]
pub struct Spec {
    pub model: &'static str,
    pub prompt: String,
    pub mode: Mode,
    pub resolution: String,
    pub ratio: String,
    /// What the request asked for: a duration (seconds) or a frame count.
    pub duration: Option<i64>,
    pub frames: Option<u32>,
    pub seed: i64,
    pub camera_fixed: bool,
    pub watermark: bool,
    pub service_tier: String,
    pub execution_expires_after: u64,
    pub callback_url: Option<String>,
    pub return_last_frame: bool,
    pub generate_audio: Option<bool>,
    pub draft: bool,
}

impl Spec {
    pub fn dims(&self) -> (u32, u32) {
        dims(&self.resolution, &self.ratio)
    }

    /// Frames of the output: as asked, or 24 per second plus one.
    pub fn frame_count(&self) -> u32 {
        self.frames
            .unwrap_or_else(|| (self.duration.unwrap_or(5).max(1) as u32) * 24 + 1)
    }

    /// Tokens billed: `w · h · frames / 1024` (B.2, derived from the official example).
    pub fn tokens(&self) -> u64 {
        let (w, h) = self.dims();
        u64::from(w) * u64::from(h) * u64::from(self.frame_count()) / 1024
    }
}

pub fn find(model: &str) -> Option<&'static VideoModel> {
    MODELS.iter().find(|m| m.id == model)
}
