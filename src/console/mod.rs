//! The web console (`/`) and the REST documentation page (`/docs`): static HTML, CSS and
//! JavaScript modules compiled into the binary, so the service needs no asset folder, no build
//! step and no CDN. The pages talk to the public API only (GraphQL over HTTP and WebSocket,
//! `/openapi.json`); nothing here has access the browser would not have.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// One embedded file: its route, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("index.html"),
    },
    Asset {
        path: "/console/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        path: "/console/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("api.js"),
    },
    Asset {
        path: "/console/ws.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ws.js"),
    },
    Asset {
        path: "/console/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
    Asset {
        path: "/docs",
        content_type: "text/html; charset=utf-8",
        body: include_str!("docs.html"),
    },
    Asset {
        path: "/console/docs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("docs.js"),
    },
];

fn serve(asset: &'static Asset) -> Response {
    let mut resp = asset.body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    // The files change with the binary, not under it: revalidate rather than cache for long, so
    // an upgrade is picked up at the next load.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // The pages load nothing from elsewhere; say so, so an injected script could not either.
    h.insert(
        header::HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data: http: https:; media-src 'self' http: https:; \
             connect-src 'self' ws: wss:; \
             style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    resp
}

pub fn routes() -> Router<AppState> {
    ASSETS.iter().fold(Router::new(), |r, a| {
        r.route(a.path, get(move || async move { serve(a) }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module a page imports must be served, or the console breaks with a blank page.
    #[test]
    fn every_imported_script_and_stylesheet_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for a in ASSETS {
            for open in ["from \"./", "src=\"/console/", "href=\"/console/"] {
                for piece in a.body.split(open).skip(1) {
                    let Some(end) = piece.find('"') else { continue };
                    let path = format!("/console/{}", &piece[..end]);
                    assert!(
                        served.contains(&path.as_str()),
                        "{} refers to {path}, which is not served",
                        a.path
                    );
                }
            }
        }
    }
}
