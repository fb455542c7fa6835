//! The GraphiQL playground (`GET /graphql` in a browser), served whole from the binary: the page,
//! its script, and GraphiQL 4.1.2 with React 18.3.1, pinned and checked by integrity in
//! `vendor/packages.txt` (refreshed by `scripts/vendor-graphiql`, licences kept beside them). It
//! used to load them from a CDN, so offline or behind a firewall it was a blank "Loading…" page.
//!
//! The vendored files are the packages' production builds, stored gzipped (1.6 MB of JavaScript
//! and CSS are 0.66 MB so; the CSS inlines its fonts), sent as they are to clients that accept
//! gzip (every browser) and inflated for the rest. Their names carry their versions, so they are
//! cached for good; the page and its script change with the binary and are revalidated.

use std::io::Read;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The page references these files only (by path on this server).
const PAGE: &str = include_str!("index.html");

enum Body {
    /// Our own files, changed with the binary.
    Text(&'static str),
    /// A vendored file, gzipped.
    Gzip(&'static [u8]),
}

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: Body,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

const ASSETS: &[Asset] = &[
    Asset {
        name: "playground.js",
        content_type: JS,
        body: Body::Text(include_str!("playground.js")),
    },
    Asset {
        name: "playground.css",
        content_type: CSS,
        body: Body::Text(include_str!("playground.css")),
    },
    Asset {
        name: "react@18.3.1.min.js",
        content_type: JS,
        body: Body::Gzip(include_bytes!("vendor/react@18.3.1.min.js.gz")),
    },
    Asset {
        name: "react-dom@18.3.1.min.js",
        content_type: JS,
        body: Body::Gzip(include_bytes!("vendor/react-dom@18.3.1.min.js.gz")),
    },
    Asset {
        name: "graphiql@4.1.2.min.js",
        content_type: JS,
        body: Body::Gzip(include_bytes!("vendor/graphiql@4.1.2.min.js.gz")),
    },
    Asset {
        name: "graphiql@4.1.2.min.css",
        content_type: CSS,
        body: Body::Gzip(include_bytes!("vendor/graphiql@4.1.2.min.css.gz")),
    },
];

/// Where the assets are served; the page's links start with it.
pub const ASSETS_PATH: &str = "/graphql/assets/{file}";

/// The page loads nothing from elsewhere: say so, so an injected script could not either.
/// GraphiQL sets inline styles (hence `'unsafe-inline'` for styles only) and inlines its fonts
/// and icons as `data:` URLs; scripts are this server's files alone.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The playground's HTML.
pub fn page() -> Response {
    let mut resp = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    resp
}

/// Whether `Accept-Encoding` takes gzip (named or `*`, with a weight above zero).
fn takes_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(1.0));
            q > 0.0
                && (name.eq_ignore_ascii_case("gzip")
                    || name.eq_ignore_ascii_case("x-gzip")
                    || name == "*")
        })
}

fn inflate(gz: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(gz.len() * 4);
    flate2::read::GzDecoder::new(gz).read_to_end(&mut out)?;
    Ok(out)
}

/// `GET /graphql/assets/{file}`.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such playground file").into_response();
    };
    let mut resp = match a.body {
        Body::Text(t) => ([(header::CACHE_CONTROL, "no-cache")], t).into_response(),
        Body::Gzip(gz) => {
            let forever = (header::CACHE_CONTROL, "public, max-age=31536000, immutable");
            let vary = (header::VARY, "accept-encoding");
            if takes_gzip(&headers) {
                ([forever, vary, (header::CONTENT_ENCODING, "gzip")], gz).into_response()
            } else {
                match inflate(gz) {
                    Ok(raw) => ([forever, vary], raw).into_response(),
                    Err(e) => {
                        tracing::error!(file = a.name, error = %e, "embedded asset does not inflate");
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> String {
        match a.body {
            Body::Text(t) => t.to_string(),
            Body::Gzip(gz) => String::from_utf8(inflate(gz).expect("inflates")).expect("utf-8"),
        }
    }

    /// Every `http(s)://` address in `text`, up to the first character that cannot be in one.
    fn urls(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for scheme in ["http://", "https://"] {
            for (i, _) in text.match_indices(scheme) {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| c.is_whitespace() || "\"'`<>)(\\,;".contains(c))
                    .unwrap_or(rest.len());
                out.push(rest[..end].to_string());
            }
        }
        out
    }

    /// Addresses in the vendored builds that a browser never fetches: XML namespace names,
    /// links in error messages and comments, and two links a person may click in GraphiQL's
    /// interface (its logo, the CodeMirror key map manual). Anything else fails the test: a
    /// new version that loads something from elsewhere must be looked at.
    const NEVER_FETCHED: &[&str] = &[
        // XML namespaces (React DOM, SVG icons).
        "http://www.w3.org/",
        // URL normalisation in markdown-it (prefixing scheme-less links).
        "http://",
        // React's minified error messages.
        "https://reactjs.org/docs/error-decoder.html",
        // graphql-js and GraphiQL messages, licence comments.
        "https://en.wikipedia.org/wiki/IEEE_floating_point",
        "https://commonmark.org/",
        "https://github.com/graphql/graphiql/blob/master/examples/graphiql-cdn/index.html",
        "https://radix-ui.com/primitives/docs/components/",
        "https://github.com/jonschlinkert",
        // Links in GraphiQL's interface (target=_blank).
        "https://github.com/graphql/graphiql",
        "https://codemirror.net/5/doc/manual.html",
    ];

    #[test]
    fn the_page_and_our_script_name_no_other_host() {
        assert!(urls(PAGE).is_empty(), "{:?}", urls(PAGE));
        for a in ASSETS {
            if let Body::Text(t) = a.body {
                assert!(urls(t).is_empty(), "{}: {:?}", a.name, urls(t));
            }
        }
    }

    #[test]
    fn vendored_files_fetch_nothing_from_elsewhere() {
        for a in ASSETS {
            let body = text(a);
            assert!(
                body.len() > 1000 || matches!(a.body, Body::Text(_)),
                "{}",
                a.name
            );
            for url in urls(&body) {
                assert!(
                    NEVER_FETCHED
                        .iter()
                        .any(|ok| url == *ok || (ok.len() > 8 && url.starts_with(ok))),
                    "{} refers to {url}",
                    a.name
                );
            }
            // No stylesheet import or font from elsewhere either.
            assert!(!body.contains("@import"), "{}", a.name);
        }
    }

    #[test]
    fn every_file_the_page_loads_is_served() {
        let prefix = ASSETS_PATH.trim_end_matches("{file}");
        let mut loaded = 0;
        for piece in PAGE.split(prefix).skip(1) {
            let name = &piece[..piece.find('"').expect("quoted")];
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "the page loads {name}, which is not served"
            );
            loaded += 1;
        }
        assert_eq!(loaded, ASSETS.len(), "every served file is used");
    }

    #[test]
    fn accept_encoding() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(v).expect("header"),
            );
            takes_gzip(&m)
        };
        assert!(!takes_gzip(&HeaderMap::new()));
        assert!(h("gzip, deflate, br, zstd"));
        assert!(h("br;q=1.0, gzip;q=0.8"));
        assert!(h("*"));
        assert!(!h("gzip;q=0"));
        assert!(!h("br, identity"));
    }
}
