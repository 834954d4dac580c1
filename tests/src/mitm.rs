//! A man in the middle in front of a repository: an HTTPS relay on 127.0.0.1 that passes
//! requests to the real server and can, per path, answer with bytes of the attacker's
//! choosing, replay what the server said earlier, refuse, send endless or trickled bodies.
//! It keeps every distinct body the server sent for each path, as an attacker who watched
//! the traffic would.
//!
//! It terminates TLS with a certificate the fleet's CA issued to it: the attacker of the
//! Uptane threat model holds the network *and* a certificate clients accept (a misissuing
//! or compromised CA), so what stops it is Uptane's signatures, not TLS. (An attacker
//! without such a certificate is refused at the handshake; the attack suite shows that
//! too.)

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use service_runtime::http::{ClientTls, Transport};
use service_runtime::tls::{ClientAuth, Identity, ServerTls};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the attacker does to responses for a path.
#[derive(Debug, Clone)]
pub enum Tamper {
    /// Answer 200 with these bytes.
    Replace(Vec<u8>),
    /// Answer with this status and no body (a dropped request).
    Status(u16),
    /// Answer 200 with an endless body (stopped after 256 MiB).
    Endless,
    /// Pass the server's body on, one 256-byte piece per interval.
    Trickle(Duration),
}

#[derive(Debug)]
struct MitmState {
    upstream: String,
    http: reqwest::Client,
    rules: Mutex<Vec<(String, Tamper)>>,
    seen: Mutex<Vec<(String, Vec<u8>)>>,
}

/// The relay; stops when dropped.
#[derive(Debug)]
pub struct Mitm {
    /// Its base URL (use it in place of the server's).
    pub url: String,
    state: Arc<MitmState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Mitm {
    /// A relay to `upstream` (a base URL), serving `certificate` and trusting the CAs in
    /// `ca_cert` towards the real server.
    pub fn start(upstream: &str, certificate: &Identity, ca_cert: &Path) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("https://{}", listener.local_addr()?);
        let server = service_runtime::tls::server_config(certificate, &ClientAuth::None)
            .map_err(std::io::Error::other)?;
        let client = ClientTls::new(Some(ca_cert), None, false)
            .and_then(|tls| tls.reqwest())
            .map_err(std::io::Error::other)?;
        let state = Arc::new(MitmState {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: client.build().map_err(std::io::Error::other)?,
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new().fallback(relay).with_state(shared);
                let transport = Transport::Tls(ServerTls::fixed(server));
                let _ = service_runtime::http::serve(listener, transport, app, async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        Ok(Self {
            url,
            state,
            shutdown: Some(tx),
        })
    }

    /// Tampers with responses for every path ending with `suffix` (the latest rule for a
    /// suffix replaces an earlier one).
    pub fn tamper(&self, suffix: &str, tamper: Tamper) {
        if let Ok(mut rules) = self.state.rules.lock() {
            rules.retain(|(s, _)| s != suffix);
            rules.push((suffix.to_string(), tamper));
        }
    }

    /// Stops tampering.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.state.rules.lock() {
            rules.clear();
        }
    }

    /// Every distinct body the server sent for paths ending with `suffix` (and every body
    /// posted to such paths), oldest first.
    pub fn seen(&self, suffix: &str) -> Vec<Vec<u8>> {
        self.state
            .seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .filter(|(path, _)| path.ends_with(suffix))
                    .map(|(_, body)| body.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn status(code: u16) -> Response {
    StatusCode::from_u16(code)
        .unwrap_or(StatusCode::BAD_GATEWAY)
        .into_response()
}

async fn relay(State(state): State<Arc<MitmState>>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let rule = state.rules.lock().ok().and_then(|rules| {
        rules
            .iter()
            .rev()
            .find(|(suffix, _)| path.ends_with(suffix.as_str()))
            .map(|(_, t)| t.clone())
    });
    match &rule {
        Some(Tamper::Replace(bytes)) => {
            return (StatusCode::OK, bytes.clone()).into_response();
        }
        Some(Tamper::Status(code)) => return status(*code),
        Some(Tamper::Endless) => {
            let stream = futures_util::stream::unfold(0u64, |sent| async move {
                (sent < 256 << 20).then(|| {
                    (
                        Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 64 * 1024])),
                        sent + 64 * 1024,
                    )
                })
            });
            return (StatusCode::OK, Body::from_stream(stream)).into_response();
        }
        _ => {}
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return status(413);
    };
    if parts.method == axum::http::Method::POST
        && let Ok(mut seen) = state.seen.lock()
    {
        seen.push((path.clone(), body.to_vec()));
    }
    let mut upstream = state
        .http
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .body(body.to_vec());
    for name in [header::AUTHORIZATION, header::RANGE, header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(answer) = upstream.send().await else {
        return status(502);
    };
    let code = answer.status().as_u16();
    let mut headers = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::CONTENT_RANGE] {
        if let Some(value) = answer.headers().get(&name) {
            headers.insert(name, value.clone());
        }
    }
    if path.contains("/metadata/") {
        let Ok(bytes) = answer.bytes().await else {
            return status(502);
        };
        if code == 200
            && let Ok(mut seen) = state.seen.lock()
        {
            let repeated = seen
                .iter()
                .rev()
                .find(|(p, _)| *p == path)
                .is_some_and(|(_, last)| last.as_slice() == bytes.as_ref());
            if !repeated {
                seen.push((path.clone(), bytes.to_vec()));
            }
        }
        return finish(code, headers, rule.as_ref(), Body::from(bytes));
    }
    if let Some(length) = answer.content_length()
        && !matches!(rule, Some(Tamper::Trickle(_)))
        && let Ok(value) = HeaderValue::from_str(&length.to_string())
    {
        headers.insert(header::CONTENT_LENGTH, value);
    }
    let stream = answer.bytes_stream();
    finish(code, headers, rule.as_ref(), Body::from_stream(stream))
}

fn finish(code: u16, headers: HeaderMap, rule: Option<&Tamper>, body: Body) -> Response {
    let body = match rule {
        Some(Tamper::Trickle(interval)) => {
            let interval = *interval;
            let pieces = futures_util::StreamExt::flat_map(body.into_data_stream(), |chunk| {
                let chunk = chunk.unwrap_or_default();
                let pieces: Vec<Result<Bytes, axum::Error>> = chunk
                    .chunks(256)
                    .map(|p| Ok(Bytes::copy_from_slice(p)))
                    .collect();
                futures_util::stream::iter(pieces)
            });
            let slowed = futures_util::StreamExt::then(pieces, move |piece| async move {
                tokio::time::sleep(interval).await;
                piece
            });
            Body::from_stream(slowed)
        }
        _ => body,
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
    *response.headers_mut() = headers;
    response
}
