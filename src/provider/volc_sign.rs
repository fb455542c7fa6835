//! Volcengine's request signature V4 (HMAC-SHA256), as the visual API (Jimeng) and every other
//! AK/SK-signed Volcengine OpenAPI check it (volcengine-api.md, C.2). The provider client signs
//! with [`sign_request`]; the emulator verifies by recomputing [`signature`] from the request's
//! own `SignedHeaders` with the same canonicalisation, so the two cannot drift apart.
//!
//! No crate does Volcengine's variant as a whole: `aws-sigv4` and `signv4` hard-code AWS's
//! `AWS4-HMAC-SHA256` algorithm name, `"AWS4" + secret` key derivation and `aws4_request`
//! terminator; `volcengine-rs` (0.1, three releases in one day) signs with the clock inside and
//! sends the request itself, so it can neither be tested against fixed vectors nor verify. The
//! primitives come from `hmac` and `sha2`; the rest is the few lines of canonical text below.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "HMAC-SHA256";
/// The visual API's fixed region and service.
pub const VISUAL_REGION: &str = "cn-north-1";
pub const VISUAL_SERVICE: &str = "cv";

/// RFC 3986 unreserved characters stay as they are; everything else is percent-encoded
/// (a space as `%20`, never `+`).
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error(
        "the Authorization header is not `HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`"
    )]
    MalformedAuthorization,
    #[error("the credential scope is not `AK/YYYYMMDD/region/service/request`")]
    MalformedCredential,
    #[error("signed header `{0}` is not in the request")]
    MissingSignedHeader(String),
    #[error("`host` and `x-date` must be signed")]
    RequiredHeaderNotSigned,
}

/// An access key pair and the scope it signs for.
#[derive(Clone)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    pub service: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("region", &self.region)
            .field("service", &self.service)
            .finish()
    }
}

impl Credentials {
    /// Credentials for the visual API (`cn-north-1`, `cv`).
    pub fn visual(access_key: impl Into<String>, secret_key: impl Into<String>) -> Credentials {
        Credentials {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            region: VISUAL_REGION.into(),
            service: VISUAL_SERVICE.into(),
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Lowercase hex SHA-256 of a body (`X-Content-Sha256`, the canonical request's last line).
pub fn sha256_hex(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `X-Date` for `now`: `YYYYMMDDThhmmssZ`, UTC.
pub fn x_date(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The query string as signed: pairs decoded (a `+` is a space, as servers parse it), names and
/// values RFC 3986-encoded, sorted by name (equal names keep their order), joined by `&`.
pub fn canonical_query(raw: &str) -> String {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, UNRESERVED),
                utf8_percent_encode(v, UNRESERVED)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request and the `SignedHeaders` list for `headers` (any case and order; each
/// value trimmed) and a body whose SHA-256 is `body_sha256`.
pub fn canonical_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body_sha256: &str,
) -> (String, String) {
    let mut hs: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
        .collect();
    hs.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical_headers: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed = hs
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let path = if path.is_empty() { "/" } else { path };
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed}\n{body_sha256}",
        canonical_query(query)
    );
    (canonical, signed)
}

/// kSigning: the key derived from the secret for one day, region and service.
pub fn signing_key(secret_key: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac(secret_key.as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"request")
}

/// `YYYYMMDD/region/service/request`.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/request")
}

/// The signature (lowercase hex) of a canonical request made at `x_date`.
pub fn signature(
    secret_key: &str,
    x_date: &str,
    region: &str,
    service: &str,
    canonical_request: &str,
) -> String {
    let date = x_date.get(..8).unwrap_or(x_date);
    let string_to_sign = format!(
        "{ALGORITHM}\n{x_date}\n{}\n{}",
        credential_scope(date, region, service),
        sha256_hex(canonical_request.as_bytes())
    );
    hex(&hmac(
        &signing_key(secret_key, date, region, service),
        string_to_sign.as_bytes(),
    ))
}

/// The `Authorization` header for a request whose signed headers (including `host` and
/// `x-date`) are `headers`.
pub fn authorization(
    creds: &Credentials,
    method: &str,
    path: &str,
    query: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<String, SignError> {
    let x_date = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-date"))
        .map(|(_, v)| v.trim())
        .ok_or(SignError::RequiredHeaderNotSigned)?;
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        return Err(SignError::RequiredHeaderNotSigned);
    }
    let (canonical, signed) = canonical_request(method, path, query, headers, &sha256_hex(body));
    let sig = signature(
        &creds.secret_key,
        x_date,
        &creds.region,
        &creds.service,
        &canonical,
    );
    let date = x_date.get(..8).unwrap_or(x_date);
    Ok(format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={signed}, Signature={sig}",
        creds.access_key,
        credential_scope(date, &creds.region, &creds.service)
    ))
}

/// The headers a signed request carries besides its own (`Content-Type`, `Host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub x_date: String,
    pub x_content_sha256: String,
    pub authorization: String,
}

/// Signs a request to `url` the way Volcengine's Go SDK does: `content-type` (when there is
/// one), `host`, `x-content-sha256` and `x-date` signed. Send the returned headers as `X-Date`,
/// `X-Content-Sha256` and `Authorization`, with the same `Content-Type` and the URL unchanged.
pub fn sign_request(
    creds: &Credentials,
    method: &str,
    url: &reqwest::Url,
    content_type: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Signed {
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let x_date = x_date(now);
    let body_hash = sha256_hex(body);
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", &host),
        ("x-content-sha256", &body_hash),
        ("x-date", &x_date),
    ];
    if let Some(ct) = content_type {
        headers.push(("content-type", ct));
    }
    let authorization = authorization(
        creds,
        method,
        url.path(),
        url.query().unwrap_or_default(),
        &headers,
        body,
    )
    .unwrap_or_default();
    Signed {
        x_date,
        x_content_sha256: body_hash,
        authorization,
    }
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAuthorization {
    pub access_key: String,
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercase names, as listed.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

/// Parses `HMAC-SHA256 Credential=AK/date/region/service/request, SignedHeaders=a;b,
/// Signature=hex`.
pub fn parse_authorization(value: &str) -> Result<ParsedAuthorization, SignError> {
    let rest = value
        .trim()
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or(SignError::MalformedAuthorization)?;
    let (mut credential, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else {
            return Err(SignError::MalformedAuthorization);
        };
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => sig = Some(v.trim()),
            _ => return Err(SignError::MalformedAuthorization),
        }
    }
    let (Some(credential), Some(signed), Some(sig)) = (credential, signed, sig) else {
        return Err(SignError::MalformedAuthorization);
    };
    let parts: Vec<&str> = credential.split('/').collect();
    let [ak, date, region, service, "request"] = parts.as_slice() else {
        return Err(SignError::MalformedCredential);
    };
    if ak.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignError::MalformedCredential);
    }
    let signed_headers: Vec<String> = signed
        .split(';')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    if !signed_headers.iter().any(|h| h == "host") || !signed_headers.iter().any(|h| h == "x-date")
    {
        return Err(SignError::RequiredHeaderNotSigned);
    }
    Ok(ParsedAuthorization {
        access_key: ak.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: sig.to_ascii_lowercase(),
    })
}

/// The signature a server expects for a request signed as `auth` says, with `secret_key`;
/// `header` looks a request header up by lowercase name.
pub fn expected_signature<'a>(
    auth: &ParsedAuthorization,
    secret_key: &str,
    method: &str,
    path: &str,
    query: &str,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<String, SignError> {
    let mut headers = Vec::with_capacity(auth.signed_headers.len());
    for name in &auth.signed_headers {
        let value = header(name).ok_or_else(|| SignError::MissingSignedHeader(name.clone()))?;
        headers.push((name.as_str(), value));
    }
    let x_date = header("x-date").ok_or(SignError::RequiredHeaderNotSigned)?;
    let (canonical, _) = canonical_request(method, path, query, &headers, &sha256_hex(body));
    Ok(signature(
        secret_key,
        x_date.trim(),
        &auth.region,
        &auth.service,
        &canonical,
    ))
}

/// Compares two signatures in time independent of where they differ.
pub fn signatures_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // volcengine-api.md C.2, vector 1: the official example (billing service, cn-beijing).
    const AK1: &str = "AKLTYWViMTVmZGYzM2E0NDI5Mzk2MDZjNjFmMjc2MjRjMzg";
    const SK1: &str = "WkRZeE1EQmxPVGhsWWpWak5HVmtNbUUxTXpZeU9UVXlOMlE1TmpZeVlqTQ==";

    fn billing() -> Credentials {
        Credentials {
            access_key: AK1.into(),
            secret_key: SK1.into(),
            region: "cn-beijing".into(),
            service: "billing".into(),
        }
    }

    fn signature_of(auth: &str) -> &str {
        auth.rsplit("Signature=").next().unwrap_or_default()
    }

    #[test]
    fn official_vector_signing_key() {
        assert_eq!(
            hex(&signing_key(SK1, "20250329", "cn-beijing", "billing")),
            "b491ed164936de3bb06c1eb23326aa9587b5aaa6a4e02144b9d523bbebb7ca9f"
        );
    }

    #[test]
    fn official_vector_get() {
        let headers = [
            ("Host", "billing.volcengineapi.com"),
            ("X-Date", "20250329T180937Z"),
        ];
        let auth = authorization(
            &billing(),
            "GET",
            "/",
            "Action=QueryBalanceAcct&Version=2022-01-01",
            &headers,
            b"",
        )
        .expect("sign");
        assert_eq!(
            signature_of(&auth),
            "1eda9e7e6b1728151a8e8791fdaf67cfbd28bd5c80d0fce2eb208746cf483105"
        );
        assert_eq!(
            auth,
            format!("HMAC-SHA256 Credential={AK1}/20250329/cn-beijing/billing/request, SignedHeaders=host;x-date, Signature=1eda9e7e6b1728151a8e8791fdaf67cfbd28bd5c80d0fce2eb208746cf483105")
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn official_vector_post() {
        let body = br#"{"Limit":10,"BillPeriod":"2023-08"}"#;
        let hash = sha256_hex(body);
        assert!(
            hash.starts_with("e8cc56e1") && hash.ends_with("f23ed663"),
            "{hash}"
        );
        let headers = [
            ("host", "billing.volcengineapi.com"),
            ("x-date", "20250329T180937Z"),
        ];
        let auth = authorization(
            &billing(),
            "POST",
            "/",
            "Version=2022-01-01&Action=ListBill",
            &headers,
            body,
        )
        .expect("sign");
        assert_eq!(
            signature_of(&auth),
            "5e8480ceea12d0000a23c054151c50dd02c1a7dec835004057d19f13d53a7658"
        );
    }

    /// volcengine-api.md C.2, vector 2: the visual API as Volcengine's Go signer signs it.
    #[test]
    fn visual_api_vector() {
        let creds = Credentials::visual("AKTEST", "SKTEST");
        let url = reqwest::Url::parse(
            "https://visual.volcengineapi.com/?Action=CVSync2AsyncGetResult&Version=2022-08-31",
        )
        .expect("url");
        let body = br#"{"req_key":"jimeng_vgfm_t2v_l20","task_id":"abc"}"#;
        let now = Utc
            .with_ymd_and_hms(2024, 1, 15, 12, 0, 0)
            .single()
            .expect("time");
        let signed = sign_request(&creds, "POST", &url, Some("application/json"), body, now);
        assert_eq!(signed.x_date, "20240115T120000Z");
        assert_eq!(
            signed.x_content_sha256,
            "2e83d6a6ed2aef0fb0dd7125abe5bad97718ec9bd6be63d52418921ea3133955"
        );
        assert_eq!(
            signed.authorization,
            "HMAC-SHA256 Credential=AKTEST/20240115/cn-north-1/cv/request, SignedHeaders=content-type;host;x-content-sha256;x-date, Signature=5cbe194cc35a9fe8a0dcf34cbfc8f10d2c989caa3059aa6fe4f186977c0fef7a"
        );
    }

    #[test]
    fn a_server_recomputes_what_the_client_signed_and_notices_changes() {
        let creds = Credentials::visual("AK", "SK");
        let url = reqwest::Url::parse(
            "http://127.0.0.1:9090/?Version=2022-08-31&Action=CVSync2AsyncSubmitTask",
        )
        .expect("url");
        let body = br#"{"req_key":"jimeng_t2i_v31","prompt":"a cat"}"#;
        let signed = sign_request(
            &creds,
            "POST",
            &url,
            Some("application/json"),
            body,
            Utc::now(),
        );
        let auth = parse_authorization(&signed.authorization).expect("parse");
        assert_eq!(auth.access_key, "AK");
        let lookup = |name: &str| match name {
            "host" => Some("127.0.0.1:9090"),
            "x-date" => Some(signed.x_date.as_str()),
            "x-content-sha256" => Some(signed.x_content_sha256.as_str()),
            "content-type" => Some("application/json"),
            _ => None,
        };
        let q = url.query().unwrap_or_default();
        let expected = expected_signature(&auth, "SK", "POST", "/", q, lookup, body).expect("sig");
        assert!(signatures_match(&expected, &auth.signature));
        let tampered = expected_signature(&auth, "SK", "POST", "/", q, lookup, b"{}").expect("sig");
        assert!(!signatures_match(&tampered, &auth.signature));
        let wrong_key = expected_signature(&auth, "SK2", "POST", "/", q, lookup, body).expect("s");
        assert!(!signatures_match(&wrong_key, &auth.signature));
    }

    #[test]
    fn canonical_query_sorts_and_encodes_as_rfc3986() {
        assert_eq!(
            canonical_query("Version=2022-08-31&Action=CVSync2AsyncSubmitTask"),
            "Action=CVSync2AsyncSubmitTask&Version=2022-08-31"
        );
        assert_eq!(canonical_query("b=a+b&a=x%2Fy~"), "a=x%2Fy~&b=a%20b");
        assert_eq!(canonical_query(""), "");
    }

    #[test]
    fn malformed_authorizations_are_refused() {
        assert_eq!(
            parse_authorization("AWS4-HMAC-SHA256 Credential=a/b"),
            Err(SignError::MalformedAuthorization)
        );
        assert_eq!(
            parse_authorization(
                "HMAC-SHA256 Credential=AK/2024/cn-north-1/cv/request, SignedHeaders=host;x-date, Signature=00"
            ),
            Err(SignError::MalformedCredential)
        );
        assert_eq!(
            parse_authorization(
                "HMAC-SHA256 Credential=AK/20240101/cn-north-1/cv/request, SignedHeaders=host, Signature=00"
            ),
            Err(SignError::RequiredHeaderNotSigned)
        );
    }
}
