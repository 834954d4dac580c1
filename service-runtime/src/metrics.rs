//! Prometheus metrics, the same way on every server: requests counted and timed by route
//! template, method and status (an axum middleware), and `GET /metrics` served on a listener
//! of its own (`--metrics-listen`), apart from the API and its clients, in the OpenMetrics
//! text format.
//!
//! Every label value comes from a bounded set (route templates, known methods, status
//! codes), so no client can grow the number of series: a request with a made-up method is
//! counted as `OTHER`, one no route matches is not counted here.

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::http::{ServerLimits, Transport};

/// The OpenMetrics text format's content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A route template as a label, shared with the router (no copy per request).
#[derive(Clone, Debug)]
pub struct Route(Option<MatchedPath>);

impl Route {
    fn as_str(&self) -> &str {
        self.0.as_ref().map_or("unmatched", MatchedPath::as_str)
    }
}

impl std::hash::Hash for Route {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Route {}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// A label value that comes from data (a role's name, a campaign's), written escaped as the
/// exposition format asks (`\\`, `\"`, `\n`): `prometheus-client` writes a value as it is,
/// so a role named with a quote or a line break would otherwise break the whole scrape, and
/// every alert on it with the scrape.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Escaped(pub String);

impl EncodeLabelValue for Escaped {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A request's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route template (`/vehicles/{vin}/manifest`), never the path itself.
    pub route: Route,
    /// The method, or `OTHER`.
    pub method: &'static str,
    /// The response's status code.
    pub status: u16,
}

type Requests = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Requests by route, method and status, with their latencies (until the response's head):
/// one histogram per label set, whose `_count` counts the requests (one lookup per request
/// on the hot path, not two).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Requests,
}

fn latency_histogram() -> Histogram {
    // 250 µs to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl HttpMetrics {
    /// Adds these metrics to `registry`: `http_request_duration_seconds` (its `_count`: the
    /// requests answered), under the registry's prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response's head, by route template, method and status (_count: requests answered)",
            self.requests.clone(),
        );
    }
}

fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`, on `Router::route_layer` so that
/// the route template is known) that counts and times every request.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let route = Route(request.extensions().get::<MatchedPath>().cloned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail; a metric that cannot encode is a bug shown as such.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::error!(error = %e, "encoding metrics");
    }
    text
}

/// `--metrics-listen ADDR`: binds `addr`, says `metrics on ADDR` (the line a supervisor or a
/// test waits for, before the server's `listening on`), and serves [`serve`] there in the
/// background until the process is told to stop.
pub async fn listen<R, F>(addr: std::net::SocketAddr, render: R) -> anyhow::Result<()>
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<String, String>> + Send + 'static,
{
    use crate::cli::{Exit, Fail};
    let listener = tokio::net::TcpListener::bind(addr).await.fail(
        Exit::Config,
        format!("could not listen on {addr} for metrics: is another program using it?"),
    )?;
    crate::outln!("metrics on {}", listener.local_addr()?);
    tokio::spawn(serve(listener, render, crate::shutdown_signal()));
    Ok(())
}

/// Serves `GET /metrics` on `listener` (plaintext: bind it to an address only the scraper
/// reaches) until `shutdown`; each scrape's text comes from `render`, and a render that
/// fails is a 503 naming why.
pub async fn serve<R, F>(
    listener: tokio::net::TcpListener,
    render: R,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    R: Fn() -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<String, String>> + Send + 'static,
{
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match render().await {
                    Ok(text) => (
                        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
                        text,
                    )
                        .into_response(),
                    Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
                }
            }
        }),
    );
    let limits = ServerLimits {
        max_connections: 16,
        ..ServerLimits::default()
    };
    crate::http::serve_with(listener, Transport::Plaintext, limits, router, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    /// A value with a quote, a backslash and a line break stays one label value of one line.
    #[test]
    fn label_values_from_data_are_escaped() {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Labels {
            role: Escaped,
        }
        let family = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
        family
            .get_or_create(&Labels {
                role: Escaped("a\"b\\c\nd".into()),
            })
            .set(1);
        let mut registry = Registry::default();
        registry.register("expires", "help", family);
        let text = encode(&registry);
        assert!(
            text.contains("expires{role=\"a\\\"b\\\\c\\nd\"} 1\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_made_up_methods_stay_one_series() {
        let metrics = HttpMetrics::default();
        let app = Router::new()
            .route("/items/{id}", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(metrics.clone(), track));
        for (method, path) in [
            ("GET", "/items/1"),
            ("GET", "/items/2"),
            ("BREW", "/items/3"),
            ("FOO", "/items/4"),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
        }
        let mut registry = Registry::with_prefix("test");
        metrics.register(&mut registry);
        let text = encode(&registry);
        assert!(
            text.contains(
                r#"test_http_request_duration_seconds_count{route="/items/{id}",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"test_http_request_duration_seconds_count{route="/items/{id}",method="OTHER",status="405"} 2"#
            ),
            "{text}"
        );
        assert!(!text.contains("/items/1"), "{text}");
        assert!(
            text.contains("test_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
