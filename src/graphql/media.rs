//! GraphQL over HTTP's media types: which one an answer is written in (`Accept`), what a POST
//! body must be (`Content-Type`), and the status code and shape each type calls for.
//!
//! - `application/graphql-response+json` when the client asks for it: a request error (the
//!   document did not parse or validate, was refused by the budget, or the request was not
//!   allowed) is a 4xx with no `data` entry, so a client or a proxy can tell a refused request
//!   from one that ran.
//! - `application/json` otherwise (no `Accept`, `*/*`, `application/json`, or a type this server
//!   does not write): the legacy answer clients were written for, 200 with `data: null` for a
//!   request error.

use std::collections::BTreeMap;

use async_graphql::ServerError;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The media type of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Json,
    GraphqlResponse,
}

impl Media {
    /// `application/graphql-response+json` when `Accept` names it, with a weight above zero and
    /// at least that of `application/json` (named, or matched by `application/*` or `*/*`); a
    /// wildcard alone never selects it, so `*/*` keeps the legacy type.
    pub fn negotiate(headers: &HeaderMap) -> Media {
        let mut graphql: f32 = 0.0;
        // (specificity, weight) of the most specific range matching application/json.
        let mut json: (u8, f32) = (0, 0.0);
        for value in headers.get_all(header::ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for range in value.split(',') {
                let mut parts = range.split(';');
                let ty = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let q = parts
                    .filter_map(|p| p.split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                    .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(1.0))
                    .clamp(0.0, 1.0);
                let specificity = match ty.as_str() {
                    GRAPHQL_RESPONSE_JSON => {
                        graphql = graphql.max(q);
                        continue;
                    }
                    JSON => 3,
                    "application/*" => 2,
                    "*/*" => 1,
                    _ => continue,
                };
                if specificity > json.0 {
                    json = (specificity, q);
                } else if specificity == json.0 {
                    json.1 = json.1.max(q);
                }
            }
        }
        if graphql > 0.0 && graphql >= json.1 {
            Media::GraphqlResponse
        } else {
            Media::Json
        }
    }

    pub fn content_type(self) -> HeaderValue {
        match self {
            Media::Json => HeaderValue::from_static("application/json; charset=utf-8"),
            Media::GraphqlResponse => {
                HeaderValue::from_static("application/graphql-response+json; charset=utf-8")
            }
        }
    }
}

/// Whether a POST body is declared JSON: `application/json`, in UTF-8 if a charset is named
/// (the only encoding GraphQL over HTTP allows). `Err` says what is wrong, for the 415 answer.
pub fn json_body(headers: &HeaderMap) -> Result<(), String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("a GraphQL POST needs Content-Type: application/json".into());
    };
    let value = value.to_str().unwrap_or_default();
    let mut parts = value.split(';');
    let ty = parts.next().unwrap_or_default().trim();
    if !ty.eq_ignore_ascii_case(JSON) {
        return Err(format!(
            "a GraphQL POST needs Content-Type: application/json, not {ty:?}"
        ));
    }
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"'));
    match charset {
        Some(c) if !c.eq_ignore_ascii_case("utf-8") => Err(format!(
            "a GraphQL POST body must be UTF-8, not charset={c}"
        )),
        _ => Ok(()),
    }
}

/// The errors of a request that did not run; no `data` entry.
#[derive(Serialize)]
struct RequestError<'a> {
    errors: &'a [ServerError],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extensions: &'a BTreeMap<String, async_graphql::Value>,
}

/// A request error: nothing was executed (parse, validation, limits, an unknown operation),
/// which async-graphql answers with `data: null` and errors that have no path. A resolver's
/// error always has one, even when it nulls the whole `data`.
fn is_request_error(resp: &async_graphql::Response) -> bool {
    resp.data == async_graphql::Value::Null
        && !resp.errors.is_empty()
        && resp.errors.iter().all(|e| e.path.is_empty())
}

/// The HTTP answer for an executed (or refused) GraphQL request.
pub fn respond(media: Media, resp: &async_graphql::Response) -> Response {
    let refused = media == Media::GraphqlResponse && is_request_error(resp);
    let body = if refused {
        serde_json::to_vec(&RequestError {
            errors: &resp.errors,
            extensions: &resp.extensions,
        })
    } else {
        serde_json::to_vec(resp)
    };
    let status = if refused {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    write(media, status, body)
}

/// An answer for a request refused before GraphQL saw it (authentication, body, method).
pub fn refuse(media: Media, status: StatusCode, error: ServerError) -> Response {
    let errors = [error];
    let body = match media {
        Media::Json => serde_json::to_vec(&serde_json::json!({ "data": null, "errors": errors })),
        Media::GraphqlResponse => serde_json::to_vec(&RequestError {
            errors: &errors,
            extensions: &BTreeMap::new(),
        }),
    };
    write(media, status, body)
}

fn write(media: Media, status: StatusCode, body: serde_json::Result<Vec<u8>>) -> Response {
    match body {
        Ok(body) => (status, [(header::CONTENT_TYPE, media.content_type())], body).into_response(),
        // Serialising a response of JSON values does not fail; say so if it ever does.
        Err(e) => {
            tracing::error!(error = %e, "GraphQL response could not be serialised");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Media {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        Media::negotiate(&h)
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(Media::negotiate(&HeaderMap::new()), Media::Json);
        for (v, want) in [
            ("application/json", Media::Json),
            ("*/*", Media::Json),
            ("application/*", Media::Json),
            ("text/html", Media::Json),
            ("application/graphql-response+json", Media::GraphqlResponse),
            ("Application/GraphQL-Response+JSON", Media::GraphqlResponse),
            // Apollo Client and graphql-http's client.
            (
                "application/graphql-response+json, application/json;q=0.9",
                Media::GraphqlResponse,
            ),
            (
                "application/graphql-response+json,application/json",
                Media::GraphqlResponse,
            ),
            (
                "application/json, application/graphql-response+json;q=0.5",
                Media::Json,
            ),
            ("application/graphql-response+json;q=0", Media::Json),
            (
                "application/graphql-response+json;q=0.4, */*;q=0.5",
                Media::Json,
            ),
            (
                "application/graphql-response+json;q=0.4, */*;q=0.5, application/json;q=0.1",
                Media::GraphqlResponse,
            ),
            ("text/html, */*;q=0.8", Media::Json),
        ] {
            assert_eq!(accept(v), want, "{v}");
        }
    }

    #[test]
    fn a_post_body_must_be_declared_json() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(v).expect("header"),
            );
            json_body(&h)
        };
        assert!(json_body(&HeaderMap::new()).is_err());
        assert!(ct("application/json").is_ok());
        assert!(ct("application/json; charset=utf-8").is_ok());
        assert!(ct("Application/JSON;charset=\"UTF-8\"").is_ok());
        assert!(ct("application/json; charset=latin1").is_err());
        assert!(ct("text/plain").is_err());
        assert!(ct("application/x-www-form-urlencoded").is_err());
        assert!(ct("application/graphql").is_err());
        assert!(ct("multipart/form-data; boundary=x").is_err());
    }

    #[tokio::test]
    async fn request_errors_lose_data_and_get_400_only_in_the_new_media_type() {
        let refused = async_graphql::Response::from_errors(vec![ServerError::new("bad", None)]);
        let body = |r: Response| async move {
            let status = r.status();
            let ct = r.headers()[header::CONTENT_TYPE]
                .to_str()
                .expect("ct")
                .to_string();
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
                .await
                .expect("body");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            (status, ct, v)
        };
        let (status, ct, v) = body(respond(Media::GraphqlResponse, &refused)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(ct.starts_with(GRAPHQL_RESPONSE_JSON));
        assert!(v.get("data").is_none(), "{v}");
        assert_eq!(v["errors"][0]["message"], "bad");
        let (status, ct, v) = body(respond(Media::Json, &refused)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ct.starts_with("application/json"));
        assert!(v["data"].is_null() && v.get("data").is_some(), "{v}");

        // A resolver's error has a path: the request ran, so 200 with its data.
        let mut ran = async_graphql::Response::new(async_graphql::Value::Null);
        let mut e = ServerError::new("resolver failed", None);
        e.path = vec![async_graphql::PathSegment::Field("task".into())];
        ran.errors.push(e);
        let (status, _, v) = body(respond(Media::GraphqlResponse, &ran)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(v.get("data").is_some(), "{v}");

        let (status, _, v) = body(refuse(
            Media::GraphqlResponse,
            StatusCode::UNAUTHORIZED,
            ServerError::new("no key", None),
        ))
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(v.get("data").is_none(), "{v}");
    }
}
