//! Per-key limits of Ark's image API (issue #18): each API key is its own account with its own
//! images-per-minute per model, some keys are revoked (401), and a test lifts or lowers a limit
//! while the service runs (`POST /emulator/limits`) to watch the pace follow.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::config::{EmulatorConfig, KeyLimit};
use super::Emulator;

/// The limits in force. The most specific entry wins: key and model, then key, then model,
/// then the default (`--ipm`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    pub default_ipm: Option<u32>,
    pub by_model: BTreeMap<String, Option<u32>>,
    pub by_key: BTreeMap<String, Option<u32>>,
    /// `"key:model"` → limit.
    pub by_key_model: BTreeMap<String, Option<u32>>,
    pub bad_keys: BTreeSet<String>,
    /// Keys accepted; empty: any non-empty key.
    pub keys: BTreeSet<String>,
}

impl Limits {
    pub fn new(cfg: &EmulatorConfig) -> Limits {
        let mut l = Limits {
            default_ipm: cfg.images_per_minute,
            bad_keys: cfg.bad_keys.iter().cloned().collect(),
            keys: cfg.api_key.iter().chain(&cfg.api_keys).cloned().collect(),
            ..Limits::default()
        };
        for k in &cfg.key_ipm {
            l.set(k.clone());
        }
        l
    }

    pub fn accepts(&self, key: &str) -> bool {
        !self.bad_keys.contains(key) && (self.keys.is_empty() || self.keys.contains(key))
    }

    /// The images-per-minute limit of `key` on `model` (`None`: unlimited).
    pub fn ipm(&self, key: &str, model: &str) -> Option<u32> {
        self.by_key_model
            .get(&format!("{key}:{model}"))
            .or_else(|| self.by_key.get(key))
            .or_else(|| self.by_model.get(model))
            .copied()
            .unwrap_or(self.default_ipm)
    }

    /// Sets a limit; a key named in one becomes an accepted key.
    pub fn set(&mut self, l: KeyLimit) {
        match (l.key, l.model) {
            (Some(k), Some(m)) => {
                if !self.keys.is_empty() {
                    self.keys.insert(k.clone());
                }
                self.by_key_model.insert(format!("{k}:{m}"), l.ipm);
            }
            (Some(k), None) => {
                if !self.keys.is_empty() {
                    self.keys.insert(k.clone());
                }
                self.by_key.insert(k, l.ipm);
            }
            (None, Some(m)) => {
                self.by_model.insert(m, l.ipm);
            }
            (None, None) => self.default_ipm = l.ipm,
        }
    }
}

impl Emulator {
    /// Changes an images-per-minute limit while running: of `key` and `model`, of `key` on
    /// every model, of `model` for every key, or (neither) the default.
    pub fn set_ipm(&self, key: Option<&str>, model: Option<&str>, ipm: Option<u32>) {
        if let Ok(mut l) = self.0.limits.lock() {
            l.set(KeyLimit {
                key: key.map(str::to_string),
                model: model.map(str::to_string),
                ipm,
            });
        }
    }

    /// Revokes `key` (401 from now on) or, with `bad: false`, accepts it again.
    pub fn set_bad_key(&self, key: &str, bad: bool) {
        if let Ok(mut l) = self.0.limits.lock() {
            if bad {
                l.bad_keys.insert(key.to_string());
            } else {
                l.bad_keys.remove(key);
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.0.limits.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

pub(super) async fn get_limits(State(emu): State<Emulator>) -> Json<Limits> {
    Json(emu.limits())
}

/// `POST /emulator/limits` with `{"key"?, "model"?, "ipm"?: n | null, "bad"?: bool}`: `ipm`
/// sets (a number) or lifts (`null`) the limit of the key and/or model (neither: the default);
/// `bad` revokes or restores the key. Answers the limits now in force.
pub(super) async fn post_limits(State(emu): State<Emulator>, Json(body): Json<Value>) -> Response {
    let text = |f: &str| body.get(f).and_then(Value::as_str).map(str::to_string);
    let (key, model) = (text("key"), text("model"));
    let ipm = match body.get("ipm") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => Some(Some(n)),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "ipm must be a number of images per minute or null"})),
                )
                    .into_response()
            }
        },
    };
    let bad = body.get("bad").and_then(Value::as_bool);
    if bad.is_some() && key.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "bad needs a key"})),
        )
            .into_response();
    }
    if let Some(ipm) = ipm {
        emu.set_ipm(key.as_deref(), model.as_deref(), ipm);
    }
    if let (Some(bad), Some(key)) = (bad, key.as_deref()) {
        emu.set_bad_key(key, bad);
    }
    Json(emu.limits()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_specific_limit_wins() {
        let cfg = EmulatorConfig {
            images_per_minute: Some(500),
            key_ipm: vec![
                "k1=30".parse().expect("p"),
                "k1:m2=10".parse().expect("p"),
                "*:m3=7".parse().expect("p"),
            ],
            ..EmulatorConfig::default()
        };
        let mut l = Limits::new(&cfg);
        assert_eq!(l.ipm("k1", "m1"), Some(30));
        assert_eq!(l.ipm("k1", "m2"), Some(10));
        assert_eq!(l.ipm("k1", "m3"), Some(30));
        assert_eq!(l.ipm("k2", "m3"), Some(7));
        assert_eq!(l.ipm("k2", "m1"), Some(500));
        l.set("k1=unlimited".parse().expect("p"));
        assert_eq!(l.ipm("k1", "m1"), None);
        // No keys configured: any key is accepted, except revoked ones.
        assert!(l.accepts("anything"));
        l.bad_keys.insert("anything".into());
        assert!(!l.accepts("anything"));
    }

    #[test]
    fn configured_keys_are_the_only_ones_accepted() {
        let cfg = EmulatorConfig {
            api_key: Some("a".into()),
            api_keys: vec!["b".into()],
            key_ipm: vec!["c=5".parse().expect("p")],
            ..EmulatorConfig::default()
        };
        let l = Limits::new(&cfg);
        assert!(l.accepts("a") && l.accepts("b") && l.accepts("c"));
        assert!(!l.accepts("d"));
    }
}
