//! What every request passes through before its handler: the host and cross-site guards (auth
//! off only) and the request metrics. One tower layer instead of two `axum::middleware::from_fn`s: those
//! box a future per request each and clone the whole inner service stack to call it, and the
//! metrics facade looked each request's labels up in the registry again. Here the inner service
//! is called in place, the response future is wrapped, not boxed, and the metric handles of a
//! (route, method, status) are looked up once and kept.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use futures::future::{ready, Either, Ready};
use metrics::{Counter, Histogram};
use tower::{Layer, Service};

use crate::error::AppError;
use crate::rest::envelope::ApiError;

/// While auth is off: the host names served besides loopback (`ALLOWED_HOSTS`).
pub type Guard = Option<Arc<[String]>>;

#[derive(Clone)]
pub struct EdgeLayer {
    /// Refuse other hosts and cross-site browser requests (see `refusal`): only while auth is
    /// off.
    guard: Guard,
    metrics: Arc<RouteMetrics>,
}

impl EdgeLayer {
    pub fn new(guard: Guard) -> EdgeLayer {
        EdgeLayer {
            guard,
            metrics: Arc::default(),
        }
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Edge<S> {
        Edge {
            inner,
            guard: self.guard.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    guard: Guard,
    metrics: Arc<RouteMetrics>,
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture<Either<S::Future, Ready<Result<Response, Infallible>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let route = req.extensions().get::<MatchedPath>().cloned();
        // Methods beyond the standard ones count as one label value, so a client inventing
        // methods cannot grow the label set.
        let method = match *req.method() {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::PATCH => "PATCH",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "OTHER",
        };
        let started = Instant::now();
        let inner = match self
            .guard
            .as_deref()
            .and_then(|allowed| refusal(&req, allowed))
        {
            Some(refusal) => Either::Right(ready(Ok(refusal))),
            None => Either::Left(self.inner.call(req)),
        };
        EdgeFuture {
            inner,
            done: Some(Done {
                route,
                method,
                started,
                metrics: self.metrics.clone(),
            }),
        }
    }
}

/// With auth off every caller is the admin, and a web page the user happens to visit is a
/// caller too: a browser sends cross-site form posts and opens WebSockets (which CORS does not
/// guard) to `127.0.0.1` on the page's behalf. Browsers say where such a request comes from in
/// `Origin`; one that is not this server is refused. Clients other than browsers send no
/// `Origin` and are unaffected; with auth on, a page cannot attach the bearer key, so the guard
/// is not needed.
///
/// That check alone falls to DNS rebinding: a page on the attacker's name, once the name
/// resolves to 127.0.0.1, is same-origin with "this server" (`Host` and `Origin` both name it).
/// So the `Host` must be one the operator uses: a loopback address, `localhost`, or a name in
/// `ALLOWED_HOSTS`. A request without one (HTTP/1.0) came from no browser and passes.
fn refusal(req: &Request, allowed: &[String]) -> Option<Response> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let host = header(header::HOST).or_else(|| req.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host.filter(|h| !served_host(h, allowed)) {
        tracing::warn!(host, "request for another host refused (auth is off)");
        return Some(forbidden(
            "this host name is not served while the server runs without API keys \
             (use localhost or 127.0.0.1, or list the name in ALLOWED_HOSTS)",
        ));
    }
    let origin = header(header::ORIGIN)?;
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    if Some(origin_host) == host {
        return None;
    }
    tracing::warn!(origin, "cross-site request refused (auth is off)");
    Some(forbidden(
        "cross-site requests are refused while the server runs without API keys",
    ))
}

/// A loopback address or `localhost` (any port), or a name of `allowed`.
fn served_host(host: &str, allowed: &[String]) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => name == "localhost" || allowed.contains(&name),
    }
}

fn forbidden(message: &str) -> Response {
    ApiError::from(AppError::Forbidden(message.into())).into_response()
}

pin_project_lite::pin_project! {
    /// The handler's response future (or the guard's refusal), timed and counted when it ends.
    pub struct EdgeFuture<F> {
        #[pin]
        inner: F,
        done: Option<Done>,
    }
}

struct Done {
    route: Option<MatchedPath>,
    method: &'static str,
    started: Instant,
    metrics: Arc<RouteMetrics>,
}

impl<F> Future for EdgeFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match this.inner.poll(cx) {
            Poll::Ready(Ok(r)) => r,
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => return Poll::Pending,
        };
        if let Some(d) = this.done.take() {
            let route = d.route.as_ref().map_or("unmatched", |p| p.as_str());
            let (requests, duration) = d.metrics.handles(route, d.method, resp.status().as_u16());
            requests.increment(1);
            duration.record(d.started.elapsed().as_secs_f64());
        }
        Poll::Ready(Ok(resp))
    }
}

/// `http_requests_total` and `http_request_duration_seconds` by route template (not path: ids
/// would explode the label set), method and status: the handles, registered on first use.
#[derive(Default)]
pub struct RouteMetrics {
    by_route: RwLock<ByRoute>,
}

/// Route template → (method, status, handles).
type ByRoute = HashMap<String, Vec<(&'static str, u16, Counter, Histogram)>>;

impl RouteMetrics {
    fn handles(&self, route: &str, method: &'static str, status: u16) -> (Counter, Histogram) {
        let find = |m: &ByRoute| {
            m.get(route)?
                .iter()
                .find(|(me, st, _, _)| *me == method && *st == status)
                .map(|(_, _, c, h)| (c.clone(), h.clone()))
        };
        if let Some(found) = self.by_route.read().ok().as_deref().and_then(find) {
            return found;
        }
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.to_string()),
        ];
        let made = (
            metrics::counter!("http_requests_total", &labels),
            metrics::histogram!("http_request_duration_seconds", &labels),
        );
        if let Ok(mut m) = self.by_route.write() {
            if find(&m).is_none() {
                m.entry(route.to_string()).or_default().push((
                    method,
                    status,
                    made.0.clone(),
                    made.1.clone(),
                ));
            }
        }
        made
    }
}
