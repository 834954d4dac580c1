//! HTTP on every link: the accept loop both servers share (TLS by default, plaintext only
//! when an operator asked for it by name), and the one way a client is built, so that no
//! program talks clear text by accident.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{
    HANDSHAKE_TIMEOUT, Identity, PeerIdentity, ServerTls, ServerTrust, TlsError, client_config,
};

/// What one HTTP/2 stream may queue for sending beyond its peer's window.
pub const HTTP2_SEND_BUFFER_BYTES: usize = 256 * 1024;

/// Longest a client may take to send a request's headers once connected, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What one server gives its clients at most: connections, time without progress, and
/// time at a trickle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; further ones wait in the kernel's backlog until one
    /// closes (each costs a file descriptor and a task).
    pub max_connections: usize,
    /// Time to send a request's headers (HTTP/1; a client trickling them is cut).
    pub header_read_timeout: Duration,
    /// Time without a byte either way before a connection is closed (an idle keep-alive
    /// connection, a stalled body or TLS handshake, a client that stopped reading), and
    /// without a request running on it, whatever bytes move.
    pub idle_timeout: Duration,
    /// Requests in flight at once on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Bytes one connection's streamed responses may hold at once, all its streams
    /// together: the [`crate::conn_memory::Allowance`] put in each of its requests.
    pub response_memory_per_connection: usize,
    /// Slowest a transfer may run, in bytes per second, judged past a grace period of
    /// `idle_timeout` over windows as long: a connection's socket while a response is being
    /// sent ([`crate::idle::RequestActivity::sent_below`]; the connection is dropped), and a
    /// streamed upload (the Image repository's images; refused with 408). 0: no minimum.
    pub min_transfer_bytes_per_sec: u64,
}

impl ServerLimits {
    /// The speed below which a response is too slowly read, or an upload too slowly sent.
    pub fn min_transfer_speed(&self) -> crate::speed::MinSpeed {
        crate::speed::MinSpeed {
            bytes_per_sec: self.min_transfer_bytes_per_sec,
            grace: self.idle_timeout,
        }
    }
}

/// Slowest a transfer may run by default, in bytes per second: a quarter of the minimum the
/// Primary holds its own downloads to (`--min-download-bytes-per-sec`), so that only a client
/// that would itself give up is dropped; a download kept open on each of a server's 1,024
/// connections then costs a client 4 MiB/s.
pub const MIN_TRANSFER_BYTES_PER_SEC: u64 = 4096;

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: Duration::from_secs(60),
            max_streams_per_connection: 32,
            response_memory_per_connection: crate::conn_memory::DEFAULT_BYTES,
            min_transfer_bytes_per_sec: MIN_TRANSFER_BYTES_PER_SEC,
        }
    }
}

/// A server's connection limits as flags (`--max-connections`, `--header-timeout-secs`,
/// `--idle-timeout-secs`, `--min-transfer-bytes-per-sec`), shared by both servers.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerLimitsArgs {
    /// Connections served at once; more wait until one closes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout_secs: u64,
    /// Seconds without a byte either way, or without a request running, before a connection
    /// is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,
    /// Slowest a client may read the responses of its connection, or send an image it uploads,
    /// in bytes per second, judged once the idle timeout has passed, over windows as long; a
    /// connection below it is dropped, an upload refused. 0: no minimum.
    #[arg(long, default_value_t = MIN_TRANSFER_BYTES_PER_SEC, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub min_transfer_bytes_per_sec: u64,
}

impl ServerLimitsArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections as usize,
            header_read_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            min_transfer_bytes_per_sec: self.min_transfer_bytes_per_sec,
            ..ServerLimits::default()
        }
    }
}

/// How a server talks to its clients.
#[derive(Debug, Clone)]
pub enum Transport {
    /// HTTPS with this (reloadable) configuration.
    Tls(ServerTls),
    /// Clear text (`--insecure`): every credential crosses the network readable.
    Plaintext,
}

impl Transport {
    /// From a server's flags: HTTPS with `cert` and `key` (reloaded on SIGHUP) asking for
    /// client certificates as `auth` says, or plaintext when `insecure` (logged as a
    /// warning). Neither is an error: a server never falls back to clear text by itself.
    pub fn from_flags(
        cert: Option<&Path>,
        key: Option<&Path>,
        auth: crate::tls::ClientAuth,
        insecure: bool,
    ) -> Result<Self, TransportError> {
        match (cert, key, insecure) {
            (Some(cert), Some(key), false) => Ok(Self::Tls(ServerTls::reloading(cert, key, auth)?)),
            (None, None, true) => {
                tracing::warn!(
                    "--insecure: serving plaintext HTTP; tokens and credentials cross the network readable"
                );
                Ok(Self::Plaintext)
            }
            (_, _, true) => Err(TransportError::Both),
            _ => Err(TransportError::Neither),
        }
    }

    /// `https` or `http`, for the URL a server prints when it is ready.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Tls(_) => "https",
            Self::Plaintext => "http",
        }
    }
}

/// Why a server's transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Neither a certificate nor `--insecure`.
    #[error(
        "give --tls-cert and --tls-key (PEM) to serve HTTPS, or --insecure to serve plaintext HTTP"
    )]
    Neither,
    /// A certificate and `--insecure` both.
    #[error("--insecure serves plaintext: it cannot be combined with --tls-cert/--tls-key")]
    Both,
    /// The certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// [`serve_with`] the default [`ServerLimits`].
pub async fn serve<S, B>(
    listener: tokio::net::TcpListener,
    transport: Transport,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(
        listener,
        transport,
        ServerLimits::default(),
        service,
        shutdown,
    )
    .await
}

/// Accepts connections on `listener` and serves HTTP/1.1 and HTTP/2 on each with `service`,
/// until `shutdown` completes (then lets requests in progress finish, for at most 10 s).
/// Every request carries the connection's [`PeerIdentity`] as an extension (empty on
/// plaintext). A TLS handshake has [`HANDSHAKE_TIMEOUT`] to finish, in its own task; every
/// connection lives within `limits`.
pub async fn serve_with<S, B>(
    listener: tokio::net::TcpListener,
    transport: Transport,
    limits: ServerLimits,
    service: S,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Told to every connection at shutdown; each holds a slot until it has ended, so all
    // slots back means every connection has.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, new connections wait in the backlog, not in memory.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let tcp = crate::idle::Idle::new(tcp, limits.idle_timeout);
        let written = tcp.written();
        let service = service.clone();
        let mut stopping = stopping.clone();
        match &transport {
            Transport::Tls(tls) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                tokio::spawn(async move {
                    let _slot = slot;
                    // A handshake still under way at shutdown is given up: nothing has been
                    // asked on it yet.
                    let accepted = tokio::select! {
                        accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => accepted,
                        _ = stopping.wait_for(|stop| *stop) => return,
                    };
                    let stream = match accepted {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let peer = PeerIdentity::of(stream.get_ref().1);
                    connection(stream, peer, written, limits, service, stopping).await;
                });
            }
            Transport::Plaintext => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let peer = PeerIdentity::default();
                    connection(tcp, peer, written, limits, service, stopping).await;
                });
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let every_slot = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    // A little past each connection's own grace, which starts when its task sees the stop.
    tokio::select! {
        _ = slots.acquire_many(every_slot) => {},
        () = tokio::time::sleep(CLOSE_GRACE + Duration::from_secs(1)) => {
            tracing::warn!("requests still running at shutdown were cut");
        }
    }
    Ok(())
}

/// Serves one connection, every request tagged with `peer`; `written` counts what its
/// socket took.
async fn connection<IO, S, B>(
    io: IO,
    peer: PeerIdentity,
    written: crate::idle::Written,
    limits: ServerLimits,
    service: S,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let memory = crate::conn_memory::Allowance::new(limits.response_memory_per_connection);
    let activity = Arc::new(crate::idle::RequestActivity::new(written, memory.clone()));
    let tracking = Arc::clone(&activity);
    let service = tower::service_fn(move |mut request: http::Request<_>| {
        request.extensions_mut().insert(peer);
        request.extensions_mut().insert(memory.clone());
        // Running until its response body is sent or dropped.
        let running = tracking.begin();
        let response = service.clone().oneshot(request);
        async move {
            response
                .await
                .map(|r| r.map(|body| crate::idle::Tracked::new(body, running)))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper's header-read timeout does nothing: a client that finished the
    // handshake could then hold the connection by trickling header bytes.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    // No HTTP/2 keep-alive pings: the idle timeouts find dead peers.
    // A stream's send queue of one 256 KiB chunk (hyper's default lets h2 queue up to 400
    // KiB, so a fast download wanted a fifth chunk past its connection's 1 MiB allowance):
    // what a response streamed from a file keeps queued, read ahead and handed over fits.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_send_buf_size(HTTP2_SEND_BUFFER_BYTES);
    let connection = builder.serve_connection(
        TokioIo::new(io),
        hyper_util::service::TowerToHyperService::new(service),
    );
    // Closed at shutdown, and once no request has run for the idle timeout whatever bytes
    // move (an HTTP/2 client sending PINGs, which the server must answer, would otherwise
    // hold it for ever). Closed gracefully: HTTP/2 says GOAWAY (streams the client opens
    // before it has read it are still served; any later are refused, which its client may
    // safely send again), and HTTP/1 ends after the response in progress. What has not
    // ended within `CLOSE_GRACE` is dropped, a response in progress cut. Dropped at once
    // when its responses are read slower than the minimum: a graceful close would wait for
    // that same response.
    let too_slow = activity.sent_below(limits.min_transfer_speed());
    tokio::pin!(connection, too_slow);
    // Armed when the connection is told to close.
    let grace = tokio::time::sleep(CLOSE_GRACE);
    tokio::pin!(grace);
    let mut closing = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
            }
            () = activity.idle_for(limits.idle_timeout), if !closing => {
                tracing::debug!("connection closing: no request for the idle timeout");
                connection.as_mut().graceful_shutdown();
            }
            () = &mut grace, if closing => {
                tracing::debug!("connection dropped: it did not end within its grace");
                return;
            }
            bytes_per_sec = &mut too_slow => {
                tracing::debug!(
                    bytes_per_sec,
                    "connection dropped: its responses were read slower than the minimum"
                );
                return;
            }
        }
        closing = true;
        grace
            .as_mut()
            .reset(tokio::time::Instant::now() + CLOSE_GRACE);
    }
}

/// How long a connection told to close (idle, or at shutdown) may take to end.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How a client reaches HTTP servers: whom it trusts, what certificate it shows, and
/// whether clear text is allowed at all.
#[derive(Debug, Clone)]
pub struct ClientTls {
    trust: ServerTrust,
    identity: Option<Arc<Identity>>,
    insecure: bool,
}

/// A URL a client refuses to use.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// `http://` without `--insecure`.
    #[error(
        "{0} is plaintext http://: credentials would cross the network readable; use https:// (or --insecure, for tests only)"
    )]
    Plaintext(String),
    /// Neither `https://` nor `http://`.
    #[error("{0} is not an https:// URL")]
    Scheme(String),
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_cert` (PEM), or the operating system's roots when
    /// none is given; presents `identity` to servers that ask; refuses `http://` unless
    /// `insecure`.
    pub fn new(
        ca_cert: Option<&Path>,
        identity: Option<Identity>,
        insecure: bool,
    ) -> Result<Self, TlsError> {
        let trust = match ca_cert {
            Some(path) => ServerTrust::Roots(Arc::new(crate::tls::roots_from_pem_file(path)?)),
            None => ServerTrust::System,
        };
        Ok(Self {
            trust,
            identity: identity.map(Arc::new),
            insecure,
        })
    }

    /// The same, presenting `identity`.
    pub fn with_identity(mut self, identity: Identity) -> Self {
        self.identity = Some(Arc::new(identity));
        self
    }

    /// Whether clear text is allowed.
    pub fn insecure(&self) -> bool {
        self.insecure
    }

    /// The certificate this client presents, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// Checks that `url` may be used: `https://`, or `http://` with `--insecure` (logged).
    pub fn check_url(&self, url: &str) -> Result<(), UrlError> {
        check_url(url, self.insecure)
    }

    /// A reqwest client builder over this TLS configuration that will not send a request to
    /// an `http://` URL unless clear text is allowed. Callers add their timeouts.
    pub fn reqwest(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        let config = client_config(&self.trust, self.identity.as_deref())?;
        Ok(reqwest::Client::builder()
            .no_proxy()
            .tls_backend_preconfigured(config)
            .https_only(!self.insecure))
    }
}

/// Checks that `url` may be used: `https://`, or `http://` when `insecure` (logged as a
/// warning, once per check).
pub fn check_url(url: &str, insecure: bool) -> Result<(), UrlError> {
    let lower = url.trim().to_ascii_lowercase();
    if lower.starts_with("https://") {
        Ok(())
    } else if lower.starts_with("http://") {
        if insecure {
            tracing::warn!(%url, "--insecure: talking plaintext HTTP");
            Ok(())
        } else {
            Err(UrlError::Plaintext(url.to_string()))
        }
    } else {
        Err(UrlError::Scheme(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_text_only_when_asked_for_by_name() {
        assert!(check_url("https://director.example", false).is_ok());
        assert!(matches!(
            check_url("http://director.example", false),
            Err(UrlError::Plaintext(_))
        ));
        assert!(check_url("http://127.0.0.1:1", true).is_ok());
        assert!(matches!(
            check_url("ftp://x", true),
            Err(UrlError::Scheme(_))
        ));
        let tls = ClientTls::new(None, None, false).unwrap();
        assert!(tls.check_url("HTTP://x").is_err());
    }

    #[test]
    fn a_server_needs_a_certificate_or_insecure_and_not_both() {
        let auth = || crate::tls::ClientAuth::None;
        assert!(matches!(
            Transport::from_flags(None, None, auth(), false),
            Err(TransportError::Neither)
        ));
        let (cert, key) = (Path::new("/nonexistent/c"), Path::new("/nonexistent/k"));
        assert!(matches!(
            Transport::from_flags(Some(cert), Some(key), auth(), true),
            Err(TransportError::Both)
        ));
        assert!(matches!(
            Transport::from_flags(Some(cert), Some(key), auth(), false),
            Err(TransportError::Tls(_))
        ));
        assert!(matches!(
            Transport::from_flags(None, None, auth(), true),
            Ok(Transport::Plaintext)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_trickles_its_headers_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        });
        tokio::spawn(serve(
            listener,
            Transport::Plaintext,
            service,
            std::future::pending(),
        ));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // One whole request first, so the connection is being served before time moves.
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let n = tcp.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        // Then headers that never end: the server closes the connection after the timeout
        // (time is paused and jumps ahead when everything waits).
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(HEADER_READ_TIMEOUT * 4, tcp.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "the server kept a trickling client's connection open"
        );
    }

    /// A plaintext server with `limits` answering "ok"; its address.
    async fn ok_server(limits: ServerLimits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("ok")))
        });
        plaintext(listener, limits, service)
    }

    /// Serves `service` in plaintext on `listener` within `limits`, for ever; its address.
    fn plaintext<B>(
        listener: tokio::net::TcpListener,
        limits: ServerLimits,
        service: impl tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static,
    ) -> std::net::SocketAddr
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(
            listener,
            Transport::Plaintext,
            limits,
            service,
            std::future::pending(),
        ));
        addr
    }

    async fn get(tcp: &mut tokio::net::TcpStream) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut answer = vec![0u8; 256];
        let n = tcp.read(&mut answer).await?;
        answer.truncate(n);
        Ok(answer)
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_wait_until_one_closes() {
        let limits = ServerLimits {
            max_connections: 2,
            ..ServerLimits::default()
        };
        let addr = ok_server(limits).await;
        let mut a = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut a).await.unwrap().starts_with(b"HTTP/1.1 200"));
        assert!(get(&mut b).await.unwrap().starts_with(b"HTTP/1.1 200"));
        // The third is accepted by the kernel but not served while both are open...
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_secs(5), get(&mut c)).await;
        assert!(
            waiting.is_err(),
            "a third connection was served: {waiting:?}"
        );
        // ...and is as soon as one closes. In real time from here: with the clock paused, the
        // runtime moves it on whenever it waits, even for bytes still on their way through
        // the sockets of a loaded machine, and a short timeout could pass before they land.
        tokio::time::resume();
        drop(a);
        let served = tokio::time::timeout(Duration::from_secs(30), async {
            use tokio::io::AsyncReadExt;
            let mut answer = vec![0u8; 256];
            let n = c.read(&mut answer).await.unwrap();
            answer.truncate(n);
            answer
        })
        .await
        .unwrap();
        assert!(served.starts_with(b"HTTP/1.1 200"), "{served:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed() {
        use tokio::io::AsyncReadExt;
        let limits = ServerLimits {
            idle_timeout: Duration::from_secs(60),
            ..ServerLimits::default()
        };
        let addr = ok_server(limits).await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut tcp).await.unwrap().starts_with(b"HTTP/1.1 200"));
        let started = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(600), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection stayed open");
        assert!(
            started.elapsed() >= Duration::from_secs(30),
            "closed too early"
        );
    }

    /// An HTTP/2 client that asks for nothing more but sends a PING every 200 ms (which the
    /// server must answer, so bytes move both ways): closed, with a GOAWAY, once no request
    /// has run for the idle timeout. Before, it held its connection, and a connection slot,
    /// for ever. Real
    /// time, short: with the test clock paused, the runtime would move the clock past the
    /// server's byte timer while a PING is still on its way through the socket.
    #[tokio::test]
    async fn an_http2_connection_kept_busy_by_pings_alone_is_closed() {
        let limits = ServerLimits {
            idle_timeout: Duration::from_secs(2),
            ..ServerLimits::default()
        };
        let addr = ok_server(limits).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, mut connection) = h2::client::handshake(tcp).await.unwrap();
        let mut pings = connection.ping_pong().unwrap();
        let driven = tokio::spawn(connection);
        // One request first: the time counts from its end, on the server, which is after
        // this instant (an instant taken here after the body would be after the server's, by
        // as long as this thread waited to run, and could see the close come "too early").
        let asked = tokio::time::Instant::now();
        let (response, _) = client
            .send_request(http::Request::get("http://x/").body(()).unwrap(), true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        while body.data().await.is_some() {}
        drop(body);
        let pinger = tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if pings.ping(h2::Ping::opaque()).await.is_err() {
                    return;
                }
            }
        });
        let ended = tokio::time::timeout(Duration::from_secs(20), driven).await;
        assert!(ended.is_ok(), "a connection kept busy by PINGs stayed open");
        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "closed too early"
        );
        pinger.abort();
        // Closed with a GOAWAY, not dropped: a client may send again, elsewhere, what the
        // server said it did not take.
        let refused = client
            .send_request(http::Request::get("http://x/").body(()).unwrap(), true)
            .expect_err("a request on a closed connection");
        assert!(refused.is_go_away(), "{refused:?}");
    }

    /// A plaintext server of `max_connections` answering every request with 16 MiB,
    /// dropping connections read slower than `min_transfer_bytes_per_sec` past 2 s; its address.
    /// Its sockets' send buffers are small (the kernel would grow them to megabytes over
    /// loopback), so its writes move as the client reads, as over a real network.
    async fn download_server(
        max_connections: usize,
        min_transfer_bytes_per_sec: u64,
    ) -> std::net::SocketAddr {
        let limits = ServerLimits {
            max_connections,
            idle_timeout: Duration::from_secs(2),
            min_transfer_bytes_per_sec,
            ..ServerLimits::default()
        };
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Accepted sockets inherit it.
        socket.set_send_buffer_size(16 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let service = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
            let chunks = (0..1024).map(|_| Ok::<_, std::io::Error>(vec![7u8; 16 * 1024]));
            let body = axum::body::Body::from_stream(futures_util::stream::iter(chunks));
            Ok::<_, Infallible>(http::Response::new(body))
        });
        plaintext(listener, limits, service)
    }

    /// An HTTP/1.1 client taking 4 KiB of a 16 MiB download every 250 ms (16 KiB/s) through
    /// a small receive buffer, on a server of one connection slot: its connection is dropped
    /// and the slot given to the next client. Bytes move every quarter of a second, so the
    /// idle timeout alone never drops it. Real time, short.
    #[tokio::test]
    async fn an_http1_client_reading_a_download_at_a_trickle_loses_its_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = download_server(1, 64 * 1024).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut trickling = socket.connect(addr).await.unwrap();
        trickling
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            for _ in 0..400 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if matches!(trickling.read(&mut buf).await, Ok(0) | Err(_)) {
                    return;
                }
            }
        });
        // Waits in the backlog until the trickling client's slot is free.
        let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
        let served = tokio::time::timeout(Duration::from_secs(30), get(&mut next)).await;
        let served = served.expect("a client reading at 16 KiB/s kept the slot for 30 s");
        assert!(served.unwrap().starts_with(b"HTTP/1.1 200"));
        reader.abort();
    }

    /// An HTTP/2 client downloading 16 MiB that takes 4 KiB every 250 ms (16 KiB/s; each
    /// window update brings bytes, so the connection is never idle): dropped once past the
    /// grace period, against a minimum of 64 KiB/s. Before, it held its connection, and a
    /// connection slot, for as long as it liked. Real time, short, as above.
    #[tokio::test]
    async fn an_http2_client_reading_a_download_at_a_trickle_is_dropped() {
        let addr = download_server(16, 64 * 1024).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut client, connection) = h2::client::Builder::new()
            .initial_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .unwrap();
        let driven = tokio::spawn(connection);
        let (response, _) = client
            .send_request(http::Request::get("http://x/").body(()).unwrap(), true)
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        let started = tokio::time::Instant::now();
        let read = tokio::time::timeout(Duration::from_secs(30), async {
            let mut read = 0usize;
            loop {
                match body.data().await {
                    Some(Ok(data)) => {
                        // Given back 4 KiB at a time, a quarter of a second apart.
                        for part in (0..data.len()).step_by(4096) {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                            let n = 4096.min(data.len() - part);
                            body.flow_control().release_capacity(n).unwrap();
                            read += n;
                        }
                    }
                    Some(Err(e)) => return (read, Some(e)),
                    None => return (read, None),
                }
            }
        })
        .await;
        let (read, error) = read.expect("a client reading at 16 KiB/s held its download for 30 s");
        assert!(
            error.is_some(),
            "the download ended whole after {read} bytes"
        );
        assert!(read < 1 << 20, "{read} bytes read");
        // The server's clock starts a little before the client's (at the response's
        // headers), and looks once a second.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "dropped within the grace period"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), driven).await;
        assert!(ended.is_ok(), "the connection is still open");
    }

    #[tokio::test]
    async fn a_reqwest_client_refuses_to_send_to_http_unless_insecure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let service =
            tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                let peer = request.extensions().get::<PeerIdentity>().copied();
                let body = format!("{:?}", peer.and_then(|p| p.fingerprint));
                Ok::<_, Infallible>(http::Response::new(body))
            });
        tokio::spawn(serve(
            listener,
            Transport::Plaintext,
            service,
            std::future::pending(),
        ));
        let strict = ClientTls::new(None, None, false)
            .unwrap()
            .reqwest()
            .unwrap()
            .build()
            .unwrap();
        assert!(strict.get(&url).send().await.is_err());
        let lax = ClientTls::new(None, None, true)
            .unwrap()
            .reqwest()
            .unwrap()
            .build()
            .unwrap();
        let body = lax.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(body, "None");
    }
}
