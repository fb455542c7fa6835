//! `VOLCENGINE_ACCESS_KEY`, `VOLCENGINE_SECRET_KEY`, `JIMENG_ENDPOINT`: Jimeng on the visual
//! API, signed with an access key pair (not Ark's API key).

use super::{url, ConfigError, Env, Secret};

/// The access key's variable and the names it is also read under: the older Go server's config
/// reads `VOLCENGINE_ACCESS_KEY`, and its visual SDK (`volc-sdk-golang`) falls back to
/// `VOLC_ACCESSKEY` when that is empty, so deployments may have set either.
const ACCESS_KEY: &[&str] = &["VOLCENGINE_ACCESS_KEY", "VOLC_ACCESSKEY"];
const SECRET_KEY: &[&str] = &["VOLCENGINE_SECRET_KEY", "VOLC_SECRETKEY"];

/// The visual API's public endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://visual.volcengineapi.com";

#[derive(Debug, Clone, PartialEq)]
pub struct JimengConfig {
    /// The access key pair; `None`: the sandbox emulator's visual API in sandbox mode, else
    /// Jimeng models fail their tasks with `JimengNotConfigured`.
    pub keys: Option<(String, Secret)>,
    /// The visual API's root.
    pub endpoint: String,
}

impl Default for JimengConfig {
    fn default() -> Self {
        JimengConfig {
            keys: None,
            endpoint: DEFAULT_ENDPOINT.into(),
        }
    }
}

/// Both keys or neither; printable, without spaces (a value pasted with its quotes or a newline
/// would be signed and refused at every call). A secret never shows in an error.
pub(super) fn read(env: &Env<'_>, d: JimengConfig) -> Result<JimengConfig, ConfigError> {
    let access = env.raw(ACCESS_KEY);
    let secret = env.raw(SECRET_KEY);
    let keys = match (access, secret) {
        (None, None) => None,
        (Some((var, _)), None) => {
            return Err(ConfigError {
                var: SECRET_KEY[0],
                value: String::new(),
                reason: format!("{var} is set: the visual API needs the secret key too"),
            })
        }
        (None, Some((var, _))) => {
            return Err(ConfigError {
                var: ACCESS_KEY[0],
                value: String::new(),
                reason: format!("{var} is set: the visual API needs the access key too"),
            })
        }
        (Some((avar, ak)), Some((svar, sk))) => {
            let printable = |v: &str| v.chars().all(|c| c.is_ascii_graphic());
            if !printable(&ak) {
                return Err(ConfigError {
                    var: avar,
                    value: ak,
                    reason: "must be printable ASCII without spaces".into(),
                });
            }
            if !printable(&sk) {
                return Err(ConfigError {
                    var: svar,
                    value: "[redacted]".into(),
                    reason: "must be printable ASCII without spaces".into(),
                });
            }
            Some((ak, Secret(sk)))
        }
    };
    let endpoint = match env.raw(&["JIMENG_ENDPOINT", "VOLCENGINE_VISUAL_ENDPOINT"]) {
        Some((var, v)) => url(var, v)?,
        None => d.endpoint,
    };
    Ok(JimengConfig { keys, endpoint })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn the_key_pair_is_read_under_both_names_and_checked_whole() {
        let c = cfg(&[
            ("VOLCENGINE_ACCESS_KEY", "AK1"),
            ("VOLCENGINE_SECRET_KEY", "SK1"),
        ]);
        let keys = c.expect("config").jimeng.keys.expect("keys");
        assert_eq!((keys.0.as_str(), keys.1.expose()), ("AK1", "SK1"));
        let c = cfg(&[("VOLC_ACCESSKEY", "AK2"), ("VOLC_SECRETKEY", "SK2")]);
        assert_eq!(c.expect("config").jimeng.keys.expect("keys").0, "AK2");
        let e = cfg(&[("VOLCENGINE_ACCESS_KEY", "AK1")]).expect_err("half");
        assert_eq!(e.var, "VOLCENGINE_SECRET_KEY");
        let e = cfg(&[("VOLC_SECRETKEY", "SK")]).expect_err("half");
        assert_eq!(e.var, "VOLCENGINE_ACCESS_KEY");
        let e = cfg(&[
            ("VOLCENGINE_ACCESS_KEY", "AK"),
            ("VOLCENGINE_SECRET_KEY", "s k"),
        ])
        .expect_err("space");
        assert_eq!(
            (e.var, e.value.as_str()),
            ("VOLCENGINE_SECRET_KEY", "[redacted]")
        );
        let e = cfg(&[("JIMENG_ENDPOINT", "visual.example")]).expect_err("url");
        assert_eq!(e.var, "JIMENG_ENDPOINT");
        assert!(cfg(&[]).expect("config").jimeng.keys.is_none());
    }
}
