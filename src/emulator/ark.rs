//! What Ark's two APIs share: the Bearer key check (with per-key accounting and revoked keys),
//! the error envelope (A.10), request ids and response headers, and sliding-window counters.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use rand::Rng;
use serde_json::{json, Value};

use super::Emulator;

/// Ark's server request id: `"02"` + 13-digit Unix milliseconds + 38 lowercase hex (53 chars).
pub fn request_id() -> String {
    let mut rng = rand::thread_rng();
    let hex: String = (0..38)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap_or('0'))
        .collect();
    format!("02{:013}{hex}", Utc::now().timestamp_millis())
}

#[derive(Debug)]
pub struct ArkError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: String,
}

impl ArkError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ArkError {
        ArkError {
            status,
            code,
            message: message.into(),
            param: String::new(),
        }
    }

    pub fn param(mut self, p: impl Into<String>) -> ArkError {
        self.param = p.into();
        self
    }

    /// 400 `MissingParameter` naming `p`.
    pub fn missing(p: &str) -> ArkError {
        ArkError::new(
            StatusCode::BAD_REQUEST,
            "MissingParameter",
            format!("The request failed because it is missing `{p}` parameter."),
        )
        .param(p)
    }

    /// 400 `InvalidParameter` naming `p`.
    pub fn invalid(p: &str, why: impl std::fmt::Display) -> ArkError {
        ArkError::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            format!("The parameter `{p}` specified in the request is not valid: {why}."),
        )
        .param(p)
    }

    pub fn unauthorized() -> ArkError {
        ArkError::new(
            StatusCode::UNAUTHORIZED,
            "AuthenticationError",
            "The API key or AK/SK in the request is missing or invalid.",
        )
    }

    pub fn internal() -> ArkError {
        ArkError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServiceError",
            "The service encountered an unexpected internal error. Please retry later.",
        )
    }

    fn into_response(self, rid: &str) -> Response {
        let kind = match self.status.as_u16() {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            429 => "TooManyRequests",
            _ => "InternalServerError",
        };
        let body = json!({"error": {
            "code": self.code,
            "message": format!("{} Request id: {rid}", self.message),
            "param": self.param,
            "type": kind,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "x-error-code",
                HeaderValue::from_static("AuthN_MissOrInvalidAuthorizationHeader"),
            );
        }
        resp
    }
}

/// The Bearer token of a request ("" without one).
pub fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("")
}

/// Events in a sliding window, each weighing `n` (images, requests).
#[derive(Default)]
pub struct Window(VecDeque<(Instant, u32)>);

impl Window {
    /// Takes `n` if the last `span` holds at most `limit − n`; otherwise how long until it may.
    pub fn take(
        &mut self,
        now: Instant,
        span: Duration,
        limit: u32,
        n: u32,
    ) -> Result<(), Duration> {
        while self
            .0
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= span)
        {
            self.0.pop_front();
        }
        let used: u32 = self.0.iter().map(|(_, k)| *k).sum();
        if used + n > limit {
            let wait = self
                .0
                .front()
                .map(|(t, _)| span.saturating_sub(now.duration_since(*t)))
                .unwrap_or_default();
            return Err(wait);
        }
        self.0.push_back((now, n));
        Ok(())
    }
}

impl Emulator {
    /// Checks the Bearer key of an Ark call (counting the call under the key): revoked keys and,
    /// when keys are configured, unknown ones get 401 `AuthenticationError`.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<String, ArkError> {
        let token = bearer(headers);
        if !token.is_empty() {
            self.with_stats(|s| s.by_key.entry(token.to_string()).or_default().calls += 1);
        }
        let ok = !token.is_empty()
            && self
                .0
                .limits
                .lock()
                .map(|l| l.accepts(token))
                .unwrap_or(false);
        if ok {
            Ok(token.to_string())
        } else {
            Err(ArkError::unauthorized())
        }
    }

    /// The answer to an Ark call: the JSON or the error envelope, `x-request-id` (`rid`, also at
    /// the end of error messages), `Retry-After` on 429s when configured, the client's
    /// `X-Client-Request-Id` echoed; counted by status, code and key.
    pub(crate) fn ark_response(
        &self,
        headers: &HeaderMap,
        rid: &str,
        result: Result<Value, ArkError>,
    ) -> Response {
        let key = bearer(headers);
        let mut resp = match result {
            Ok(v) => {
                self.count(200, None);
                Json(v).into_response()
            }
            Err(e) => {
                let status = e.status.as_u16();
                self.count(status, Some(e.code));
                if !key.is_empty() && (status == 429 || status == 401) {
                    self.with_stats(|s| {
                        let k = s.by_key.entry(key.to_string()).or_default();
                        if status == 429 {
                            k.rate_limited += 1;
                        } else {
                            k.unauthorized += 1;
                        }
                    });
                }
                let mut r = e.into_response(rid);
                if let (429, Some(after)) = (status, self.0.cfg.retry_after) {
                    if let Ok(h) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                        r.headers_mut().insert("retry-after", h);
                    }
                }
                r
            }
        };
        if let Ok(h) = HeaderValue::from_str(rid) {
            resp.headers_mut().insert("x-request-id", h);
        }
        if let Some(c) = headers.get("x-client-request-id") {
            resp.headers_mut().insert("x-client-request-id", c.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_weights_and_forgets_old_events() {
        let mut w = Window::default();
        let t0 = Instant::now();
        let span = Duration::from_secs(60);
        assert!(w.take(t0, span, 3, 2).is_ok());
        assert!(w.take(t0, span, 3, 1).is_ok());
        let wait = w
            .take(t0 + Duration::from_secs(10), span, 3, 1)
            .expect_err("full");
        assert_eq!(wait, Duration::from_secs(50));
        assert!(w.take(t0 + span, span, 3, 3).is_ok());
    }

    #[test]
    fn request_ids_have_arks_shape() {
        let id = request_id();
        assert_eq!(id.len(), 53);
        assert!(id.starts_with("02"));
    }
}
