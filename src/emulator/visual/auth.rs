//! The visual API's gateway check of signature V4 (C.2): the signature recomputed from the
//! request's own `SignedHeaders` with the configured secret, by the same code the provider client
//! signs with (`provider::volc_sign`); refusals in the `ResponseMetadata` envelope.

use axum::http::{HeaderMap, StatusCode};
use chrono::{NaiveDateTime, Utc};

use crate::emulator::config::VisualConfig;
use crate::provider::volc_sign::{self, SignError};

/// A gateway refusal: HTTP status, `CodeN`, `Code`, `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub status: StatusCode,
    pub code_n: u32,
    pub code: &'static str,
    pub message: &'static str,
}

const fn gateway(
    status: StatusCode,
    code_n: u32,
    code: &'static str,
    message: &'static str,
) -> GatewayError {
    GatewayError {
        status,
        code_n,
        code,
        message,
    }
}

pub const MISSING_PARAMETER: GatewayError = gateway(
    StatusCode::BAD_REQUEST,
    100002,
    "MissingParameter",
    "The request is missing the parameter Action or Version.",
);
pub const INVALID_ACTION: GatewayError = gateway(
    StatusCode::NOT_FOUND,
    100008,
    "InvalidActionOrVersion",
    "The requested Action or Version is not supported.",
);
const MISSING_INFO: GatewayError = gateway(
    StatusCode::BAD_REQUEST,
    100004,
    "MissingRequestInfo",
    "The request is missing the X-Date header or the Authorization header.",
);
const INVALID_TIMESTAMP: GatewayError = gateway(
    StatusCode::BAD_REQUEST,
    100006,
    "InvalidTimestamp",
    "The Signature of the request is expired.",
);
const SERVICE_NOT_FOUND: GatewayError = gateway(
    StatusCode::NOT_FOUND,
    100007,
    "ServiceNotFound",
    "The service in the credential scope is not found.",
);
const INVALID_ACCESS_KEY: GatewayError = gateway(
    StatusCode::UNAUTHORIZED,
    100009,
    "InvalidAccessKey",
    "The AccessKey you provided is invalid.",
);
const SIGNATURE_MISMATCH: GatewayError = gateway(
    StatusCode::UNAUTHORIZED,
    100010,
    "SignatureDoesNotMatch",
    "The request signature we calculated does not match the signature you provided. Check your Secret Access Key and signing method. Consult the service documentation for details.",
);
const INVALID_AUTHORIZATION: GatewayError = gateway(
    StatusCode::BAD_REQUEST,
    100024,
    "InvalidAuthorization",
    "The Authorization header is malformed.",
);
const INVALID_CREDENTIAL: GatewayError = gateway(
    StatusCode::BAD_REQUEST,
    100025,
    "InvalidCredential",
    "The Credential in the Authorization header is malformed.",
);

/// Checks a request's signature; the access key that signed it.
pub fn verify(
    cfg: &VisualConfig,
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, GatewayError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(authorization), Some(x_date)) = (header("authorization"), header("x-date")) else {
        return Err(MISSING_INFO);
    };
    let auth = volc_sign::parse_authorization(authorization).map_err(|e| match e {
        SignError::MalformedCredential => INVALID_CREDENTIAL,
        _ => INVALID_AUTHORIZATION,
    })?;
    let signed_at = NaiveDateTime::parse_from_str(x_date.trim(), "%Y%m%dT%H%M%SZ")
        .map_err(|_| INVALID_TIMESTAMP)?
        .and_utc();
    let skew = (Utc::now() - signed_at).num_seconds().unsigned_abs();
    if skew > cfg.max_skew.as_secs() {
        return Err(INVALID_TIMESTAMP);
    }
    if x_date.trim().get(..8) != Some(auth.date.as_str()) || auth.region != volc_sign::VISUAL_REGION
    {
        return Err(INVALID_CREDENTIAL);
    }
    if auth.service != volc_sign::VISUAL_SERVICE {
        return Err(SERVICE_NOT_FOUND);
    }
    let secret = cfg
        .credentials
        .iter()
        .find(|(ak, _)| *ak == auth.access_key)
        .map(|(_, sk)| sk.as_str())
        .ok_or(INVALID_ACCESS_KEY)?;
    let expected = volc_sign::expected_signature(&auth, secret, method, path, query, header, body)
        .map_err(|_| INVALID_AUTHORIZATION)?;
    if !volc_sign::signatures_match(&expected, &auth.signature) {
        return Err(SIGNATURE_MISMATCH);
    }
    Ok(auth.access_key)
}
