//! Reading the configuration: defaults, the older server's names, and errors naming the variable.

use super::*;
use std::collections::HashMap;

fn from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(&move |k| map.get(k).cloned())
}

#[test]
fn defaults_and_old_names() {
    let c = from(&[]).expect("defaults");
    assert_eq!(c.port, 8080);
    assert_eq!(c.task_deadline, Duration::from_secs(1800));
    assert_eq!(
        from(&[("TASK_DEADLINE", "2h")]).expect("2h").task_deadline,
        Duration::from_secs(7200)
    );
    assert!(c.is_sandbox());
    let c = from(&[
        ("ARK_API_KEY", "k"),
        ("MONGODB_URI", "mongodb://x"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
        ("AI_TIMEOUT", "30s"),
        ("VOLCENGINE_ENDPOINT", "http://127.0.0.1:9/"),
    ])
    .expect("aliases");
    assert_eq!(c.volcengine_api_key.as_ref().map(Secret::expose), Some("k"));
    assert!(
        !format!("{c:?}").contains("\"k\""),
        "the key must not show in Debug"
    );
    assert_eq!(c.mongo_url.as_deref(), Some("mongodb://x"));
    assert_eq!(c.ai_timeout, Duration::from_secs(30));
    assert_eq!(c.volcengine_endpoint, "http://127.0.0.1:9");
    assert_eq!(
        from(&[("AI_TIMEOUT", "45")])
            .expect("secs")
            .ai_timeout
            .as_secs(),
        45
    );
}

#[test]
fn invalid_values_name_the_variable() {
    for (var, value) in [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("AI_TIMEOUT", "soon"),
        ("WORKER_CONCURRENCY", "0"),
        ("DOWNLOAD_CONCURRENCY", "0"),
        ("DOWNLOAD_CONCURRENCY", "5000"),
        ("LOG_FORMAT", "xml"),
        ("VOLCENGINE_ENDPOINT", "ftp://x"),
        ("HOST", "localhost:80"),
        ("MAX_BODY_BYTES", "-1"),
        ("MONGO_WRITE_CONCERN", "some"),
        ("PROVIDER_IPM", "fast"),
        ("PROVIDER_IPM", "dall-e=5"),
        ("PROVIDER_IPM", "0"),
        ("TASK_CACHE_SIZE", "lots"),
        ("TASK_CACHE_SIZE", "20000000"),
        ("TASK_CACHE_BYTES", "32MB"),
        ("TASK_CACHE_BYTES", "-1"),
        ("GRAPHQL_MAX_EXPANDED_FIELDS", "0"),
        ("GRAPHQL_MAX_EXPANDED_FIELDS", "lots"),
        ("ALLOWED_HOSTS", "http://ai.lan"),
        ("ALLOWED_HOSTS", "ai.lan:8080"),
        ("HEADER_READ_TIMEOUT", "31s"),
        ("HEADER_READ_TIMEOUT", "10ms"),
        ("MAX_CONNECTIONS", "0"),
        ("TASK_DEADLINE", "500ms"),
        ("TASK_DEADLINE", "8d"),
        ("TASK_DEADLINE", "never"),
        ("SWEEP_INTERVAL", "1ms"),
    ] {
        let err = from(&[(var, value)]).expect_err(var);
        assert_eq!(err.var, var, "{err}");
        assert!(err.to_string().contains(var));
    }
    // Distributed mode needs both; the missing one is named.
    let err = from(&[("MONGO_URL", "mongodb://x")]).expect_err("mongo alone");
    assert_eq!(err.var, "REDIS_URL");
    let err = from(&[("REDIS_URL", "redis://x")]).expect_err("redis alone");
    assert_eq!(err.var, "MONGO_URL");
    let err =
        from(&[("MONGO_URL", "postgres://x"), ("REDIS_URL", "redis://x")]).expect_err("scheme");
    assert_eq!(err.var, "MONGO_URL");
}

#[test]
fn a_key_pool_parses_with_weights_and_refuses_bad_entries() {
    let keys = super::key_pool::parse_key_pool("k1, k2:3,ab:cd").expect("pool");
    let got: Vec<(&str, u32)> = keys.iter().map(|(k, w)| (k.expose(), *w)).collect();
    assert_eq!(got, vec![("k1", 1), ("k2", 3), ("ab:cd", 1)]);
    assert!(super::key_pool::parse_key_pool("k1,,k2").is_err());
    assert!(super::key_pool::parse_key_pool("k1:0").is_err());
    assert!(super::key_pool::parse_key_pool("k1,k1:2").is_err());
}
