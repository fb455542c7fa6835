//! `VOLCENGINE_API_KEYS`, the provider key pool.

use super::{ms, Config, ConfigError, Env, Secret};

/// `VOLCENGINE_API_KEYS` (an error never repeats the keys) and `PROVIDER_KEY_REPROBE`.
pub(super) fn read(config: &mut Config, env: &Env<'_>) -> Result<(), ConfigError> {
    if let Some((var, value)) = env.raw(&["VOLCENGINE_API_KEYS"]) {
        config.volcengine_api_keys = parse_key_pool(&value).map_err(|reason| ConfigError {
            var,
            value: "[redacted]".into(),
            reason,
        })?;
    }
    config.provider_key_reprobe = env.duration(
        &["PROVIDER_KEY_REPROBE"],
        config.provider_key_reprobe,
        ms(10),
    )?;
    Ok(())
}

/// `k1,k2:3,…`: keys with an optional weight after the last colon (1 when absent).
pub(super) fn parse_key_pool(value: &str) -> Result<Vec<(Secret, u32)>, String> {
    let mut keys: Vec<(Secret, u32)> = Vec::new();
    for (i, item) in value.split(',').map(str::trim).enumerate() {
        let (key, weight) = match item.rsplit_once(':') {
            Some((k, w)) if w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() => {
                let w: u32 = w
                    .parse()
                    .map_err(|_| format!("key {}: weight too large", i + 1))?;
                (k, w)
            }
            _ => (item, 1),
        };
        if key.is_empty() {
            return Err(format!("key {} is empty", i + 1));
        }
        if weight == 0 {
            return Err(format!("key {}: a weight must be at least 1", i + 1));
        }
        if keys.iter().any(|(k, _)| k.expose() == key) {
            return Err(format!("key {} is listed twice", i + 1));
        }
        keys.push((Secret(key.to_string()), weight));
    }
    Ok(keys)
}
