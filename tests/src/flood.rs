//! What an unauthenticated attacker can throw at the servers without any key: connections
//! that never finish their headers or handshake, floods of refused requests, large
//! uploads without a token, downloads left unread or read at a trickle, and an upload sent at
//! a trickle. Used by `tests/limits.rs` and the attack suite's rows.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use service_runtime::tls::{ServerTrust, client_config, connect, roots_from_pem_file};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sim::Fleet;

/// A TLS connection the test holds.
pub type Held = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS client configuration that trusts the fleet's CA.
pub fn tls(fleet: &Fleet) -> Arc<rustls::ClientConfig> {
    let roots = roots_from_pem_file(&fleet.ca_cert).expect("the fleet's CA");
    Arc::new(
        client_config(&ServerTrust::Roots(Arc::new(roots)), None).expect("a TLS configuration"),
    )
}

/// `ADDR` of `https://ADDR`.
pub fn addr(url: &str) -> String {
    url.trim_start_matches("https://").to_string()
}

/// Opens a TLS connection to `addr`, sends the start of a request's headers and never the
/// rest.
pub async fn partial_headers(
    addr: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<Held> {
    let mut tls = connect(addr, "127.0.0.1", config).await?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        .await?;
    tls.flush().await?;
    Ok(tls)
}

/// Reads until the server closes the connection; `false` if it is still open after `limit`.
pub async fn closed_within(tls: &mut Held, limit: Duration) -> bool {
    let mut rest = Vec::new();
    tokio::time::timeout(limit, tls.read_to_end(&mut rest))
        .await
        .is_ok()
}

/// Connections held half-open against `url`: half with partial headers, half that never
/// start their TLS handshake.
pub async fn hold_half_open(
    fleet: &Fleet,
    url: &str,
    count: usize,
) -> std::io::Result<(Vec<Held>, Vec<tokio::net::TcpStream>)> {
    let config = tls(fleet);
    let (mut held, mut silent) = (Vec::new(), Vec::new());
    for i in 0..count {
        if i % 2 == 0 {
            held.push(partial_headers(&addr(url), Arc::clone(&config)).await?);
        } else {
            silent.push(tokio::net::TcpStream::connect(addr(url)).await?);
        }
    }
    Ok((held, silent))
}

/// The Director's security events after event `after`.
pub async fn security_events_after(
    fleet: &Fleet,
    after: i64,
) -> Result<Vec<serde_json::Value>, String> {
    let client = fleet.https_client();
    let mut out = Vec::new();
    let mut cursor = after;
    for _ in 0..1000 {
        let page = operator_get(
            &client,
            fleet,
            &format!("/api/v1/events?security=true&after={cursor}&limit=500"),
        )
        .await?;
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last().and_then(|e| e["id"].as_i64()) else {
            return Ok(out);
        };
        cursor = last;
        out.extend(page);
    }
    Ok(out)
}

/// The Director's security events after event `after`, once they include one of each of
/// `kinds` (or after 30 s): on PostgreSQL a follower of the log is given an event only once
/// every older transaction of the Director's database ended, so events may show a moment
/// later there.
pub async fn security_events_including(
    fleet: &Fleet,
    after: i64,
    kinds: &[&str],
) -> Result<Vec<serde_json::Value>, String> {
    let mut added = Vec::new();
    for _ in 0..300 {
        added = security_events_after(fleet, after).await?;
        if kinds
            .iter()
            .all(|kind| added.iter().any(|e| e["kind"] == *kind))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(added)
}

/// The kinds of security event a flood of unauthenticated requests
/// ([`unauthenticated_flood`]) leaves.
pub const FLOOD_EVENT_KINDS: [&str; 3] = [
    "unauthorized_api_call",
    "provisioning_refused",
    "vehicle_auth_refused",
];

/// Where a follower of the Director's event log starts now (`GET /api/v1/events/position`):
/// what [`security_events_after`] takes to list what is recorded from now on.
pub async fn follow_position(fleet: &Fleet) -> Result<i64, String> {
    let position = operator_get(&fleet.https_client(), fleet, "/api/v1/events/position").await?;
    position["after"]
        .as_i64()
        .ok_or_else(|| format!("no follow position in {position}"))
}

/// `GET path` of the fleet's Director as its operator: the JSON answer.
async fn operator_get(
    client: &reqwest::Client,
    fleet: &Fleet,
    path: &str,
) -> Result<serde_json::Value, String> {
    let body = client
        .get(format!("{}{path}", fleet.director_url))
        .bearer_auth(&fleet.token)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// `count` requests to the Director without valid credentials: five kinds first (no token,
/// a forged one, registration without and with a forged token, a vehicle without a
/// credential), then a spread over 100 VINs, more kinds than the refusal log keeps per
/// window. Returns the HTTP statuses that were not 401.
pub async fn unauthenticated_flood(fleet: &Fleet, count: usize) -> Vec<String> {
    let client = fleet.https_client();
    let base = fleet.director_url.clone();
    let requests = (0..count).map(|i| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let request = match i % 5 {
                0 if i < count / 2 => client.get(format!("{base}/api/v1/vehicles")),
                1 if i < count / 2 => client
                    .get(format!("{base}/api/v1/vehicles"))
                    .bearer_auth("dat_forged"),
                2 if i < count / 2 => client
                    .post(format!("{base}/api/v1/register"))
                    .body(vec![b'x'; 10_000]),
                3 if i < count / 2 => client
                    .post(format!("{base}/api/v1/register"))
                    .bearer_auth("dpt_forged")
                    .body(vec![b'x'; 10_000]),
                _ => client.get(format!(
                    "{base}/vehicles/VIN-FLOOD-{}/metadata/timestamp.json",
                    i % 100
                )),
            };
            match request.send().await {
                Ok(r) if r.status() == 401 => None,
                Ok(r) => Some(format!("request {i}: {}", r.status())),
                Err(e) => Some(format!("request {i}: {e}")),
            }
        }
    });
    futures_util::stream::iter(requests)
        .buffer_unordered(16)
        .filter_map(|r| async move { r })
        .collect()
        .await
}

/// Sends `count` requests with made-up methods and paths (every one different) to the
/// Director, to grow its metrics; returns how many got an answer.
pub async fn made_up_requests(fleet: &Fleet, count: usize) -> usize {
    let client = fleet.https_client();
    let base = fleet.director_url.clone();
    let requests = (0..count).map(|i| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let method = reqwest::Method::from_bytes(format!("M{i}").as_bytes())
                .unwrap_or(reqwest::Method::GET);
            let path = match i % 3 {
                0 => format!("{base}/vehicles/VIN-MADE-UP-{i}/metadata/{i}.json"),
                1 => format!("{base}/api/v1/campaigns/c{i}/a{i}"),
                _ => format!("{base}/nothing/{i}"),
            };
            client.request(method, path).send().await.is_ok()
        }
    });
    futures_util::stream::iter(requests)
        .buffer_unordered(16)
        .filter(|answered| std::future::ready(*answered))
        .count()
        .await
}

/// The HTTP request series in a scrape of metrics.
pub fn request_series(scrape: &str) -> usize {
    scrape
        .lines()
        .filter(|l| l.contains("_http_request_duration_seconds_count{"))
        .count()
}

/// The most rows a flood may add to the Director's event log within two refusal windows:
/// 64 kinds recorded at once and 64 summaries plus one for the rest, per window.
pub const MAX_FLOOD_ROWS: usize = 2 * (2 * 64 + 1);

/// Resident and peak resident memory of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64), String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A 60 MB body, made as it is sent.
pub fn sixty_megabytes() -> reqwest::Body {
    let chunks = (0..60).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 1 << 20])));
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// How much a server's peak resident memory may rise under [`unauthenticated_uploads`], in
/// KiB. Buffering the eight 60 MB bodies would be 480 MB; what a refused upload may cost is
/// what its connection's flow-control window let the client send before the refusal (hyper's
/// HTTP/2 default, 1 MiB) and the TLS and allocator buffers around it: 2 MiB each. At 1 MiB
/// each, the bound the window alone sets, a healthy server failed one run in two (8.3-8.6 MiB).
pub const UPLOADS_MEMORY_BOUND_KIB: u64 = 8 * 2 * 1024;

/// Eight concurrent unauthenticated 60 MB uploads to each server (images and metadata to the
/// Image repository, registrations and manifests to the Director). Returns, per server, its
/// peak resident memory before and after, in KiB; an error for an upload that was accepted.
pub async fn unauthenticated_uploads(
    fleet: &Fleet,
) -> Result<Vec<(&'static str, u64, u64)>, String> {
    let client = fleet.https_client();
    let servers = [
        (
            "image-repo",
            fleet.image_repo_pid(),
            reqwest::Method::PUT,
            [
                format!("{}/api/v1/blobs/{}", fleet.image_url, "ab".repeat(32)),
                format!("{}/api/v1/metadata/targets", fleet.image_url),
            ],
        ),
        (
            "director",
            fleet.director_pid().ok_or("the Director is not running")?,
            reqwest::Method::POST,
            [
                format!("{}/api/v1/register", fleet.director_url),
                format!("{}/vehicles/VIN-NONE/manifest", fleet.director_url),
            ],
        ),
    ];
    let mut out = Vec::new();
    for (name, pid, method, urls) in servers {
        let (_, before) = memory_kib(pid)?;
        let uploads = (0..8).map(|i| {
            let (client, method, url) = (client.clone(), method.clone(), urls[i % 2].clone());
            async move {
                // Refused before the body is read: a 401, or the connection closed under the
                // upload.
                match client
                    .request(method, &url)
                    .body(sixty_megabytes())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 401 => Ok(()),
                    Ok(r) => Err(format!("{url}: {}", r.status())),
                    Err(e) if e.is_timeout() => Err(format!("{url}: {e}")),
                    Err(_) => Ok(()),
                }
            }
        });
        for result in futures_util::future::join_all(uploads).await {
            result?;
        }
        let (_, after) = memory_kib(pid)?;
        out.push((name, before, after));
    }
    Ok(out)
}

/// How much the Image repository's peak resident memory may rise under
/// [`unread_http2_downloads`], per connection, in KiB: the connection's response allowance
/// (`service_runtime::conn_memory`, 1 MiB), each stream's own 16 KiB, and the TLS, HTTP/2
/// and allocator state around them (allocator pages are resident 2 MiB at a time where
/// transparent huge pages are on). Without the allowance a connection cost 25 MiB.
pub const UNREAD_DOWNLOADS_BOUND_KIB: u64 = 4 * 1024;

/// Connections of [`unread_http2_downloads`].
pub const UNREAD_DOWNLOAD_CONNECTIONS: usize = 8;

/// What [`unread_http2_downloads`] saw of the Image repository.
#[derive(Debug)]
pub struct UnreadDownloads {
    /// Resident memory before, in KiB.
    pub before_kib: u64,
    /// Peak resident memory while the downloads were held, in KiB.
    pub peak_kib: u64,
    /// Streams held unread.
    pub unread: usize,
}

/// Publishes an 8 MiB image, then opens [`UNREAD_DOWNLOAD_CONNECTIONS`] HTTP/2 connections
/// to the Image repository, each with as many streams as the server allows: all but one
/// download the image and read nothing once their 64 KiB window is full; the last, on each
/// connection, downloads the whole image while they are held, reading as it comes. Errors if
/// such a download fails, is not the image, or does not finish within a minute (another
/// stream's unread bytes starved it).
pub async fn unread_http2_downloads(fleet: &Fleet) -> Result<UnreadDownloads, String> {
    let (url, hash) = publish_8_mib(fleet, "unread-download.bin", 253);
    let pid = fleet.image_repo_pid();
    // The peak from here on (the upload above raised it).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("resetting image-repo's peak memory (clear_refs): {e}"))?;
    let (before_kib, _) = memory_kib(pid)?;
    let held = tokio::time::timeout(Duration::from_secs(60), async {
        let mut held = Vec::new();
        for _ in 0..UNREAD_DOWNLOAD_CONNECTIONS {
            held.push(unread_streams(fleet, &url).await?);
        }
        Ok::<_, String>(held)
    })
    .await
    .map_err(|_| "the unread downloads were not all answered within a minute".to_string())??;
    let unread = held.iter().map(|(_, _, bodies)| bodies.len()).sum();
    wait_steady(pid).await?;
    // One more download on each connection, read as it comes: not starved by the others.
    let reads = held
        .iter()
        .map(|(client, _, _)| read_whole(client.clone(), &url));
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(reads),
    )
    .await
    .map_err(|_| "a download read as it came did not finish within a minute".to_string())?;
    for bytes in read {
        if uptane_core::hash::sha256_hex(&bytes?) != hash {
            return Err("a download read as it came is not the image".into());
        }
    }
    let (_, peak_kib) = memory_kib(pid)?;
    for (_, driver, _) in &held {
        driver.abort();
    }
    Ok(UnreadDownloads {
        before_kib,
        peak_kib,
        unread,
    })
}

/// An HTTP/2 connection over TLS to the fleet's Image repository.
type H2Client = h2::client::SendRequest<bytes::Bytes>;

/// One connection with all its streams but one downloading `url` and reading nothing.
async fn unread_streams(
    fleet: &Fleet,
    url: &str,
) -> Result<(H2Client, tokio::task::JoinHandle<()>, Vec<h2::RecvStream>), String> {
    let streams = service_runtime::http::ServerLimits::default().max_streams_per_connection;
    let io = connect(&addr(&fleet.image_url), "127.0.0.1", tls(fleet))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(64 << 10)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut responses = Vec::new();
    for _ in 1..streams {
        let (response, _) = send_get(client.clone(), url).await?;
        responses.push(response);
    }
    let mut bodies = Vec::new();
    for response in responses {
        let response = response.await.map_err(|e| format!("a response: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("the download answered {}", response.status()));
        }
        bodies.push(response.into_body());
    }
    Ok((client, driver, bodies))
}

async fn send_get(
    client: H2Client,
    url: &str,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>), String> {
    let mut ready = client.ready().await.map_err(|e| format!("a stream: {e}"))?;
    let request = http::Request::get(url)
        .body(())
        .map_err(|e| e.to_string())?;
    ready
        .send_request(request, true)
        .map_err(|e| format!("a request: {e}"))
}

/// Downloads `url` whole on a new stream of `client`, reading as it comes.
async fn read_whole(client: H2Client, url: &str) -> Result<Vec<u8>, String> {
    let (response, _) = send_get(client, url).await?;
    let response = response.await.map_err(|e| format!("a response: {e}"))?;
    let mut body = response.into_body();
    let mut read = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| format!("a download read as it came: {e}"))?;
        body.flow_control()
            .release_capacity(data.len())
            .map_err(|e| e.to_string())?;
        read.extend_from_slice(&data);
    }
    Ok(read)
}

/// Publishes an 8 MiB image named `name` (byte `i` is `i % modulus`, so images published
/// with different moduli differ); its download URL and sha256.
fn publish_8_mib(fleet: &Fleet, name: &str, modulus: u32) -> (String, String) {
    let content: Vec<u8> = (0..8u32 << 20).map(|i| (i % modulus) as u8).collect();
    fleet.publish(name, "attack-hw", 1, &content);
    let hash = uptane_core::hash::sha256_hex(&content);
    // With consistent snapshots the file is stored under its hash.
    (format!("{}/targets/{hash}.{name}", fleet.image_url), hash)
}

/// Connections of [`trickled_downloads`].
pub const TRICKLED_DOWNLOADS: usize = 4;

/// Bytes per second [`trickled_downloads`] reads each download at: a quarter of the servers'
/// minimum (`--min-transfer-bytes-per-sec`).
pub const TRICKLE_BYTES_PER_SEC: usize = 1024;

/// What became of one of [`trickled_downloads`].
#[derive(Debug)]
pub struct Trickled {
    /// Bytes read before the server dropped the connection.
    pub read: usize,
    /// Time from the response's headers until the server dropped it.
    pub held: Duration,
}

/// Publishes an 8 MiB image, then downloads it on [`TRICKLED_DOWNLOADS`] HTTP/2 connections
/// to the Image repository at once, each reading [`TRICKLE_BYTES_PER_SEC`] (a window
/// update a second, which brings data, so no connection is ever idle): a slot held for as
/// long as the attacker likes, unless the server drops a connection read too slowly. Errors
/// if a download ends whole, or is still running after `limit`.
pub async fn trickled_downloads(fleet: &Fleet, limit: Duration) -> Result<Vec<Trickled>, String> {
    let (url, _) = publish_8_mib(fleet, "trickled-download.bin", 251);
    let downloads = (0..TRICKLED_DOWNLOADS).map(|_| trickled_download(fleet, &url));
    tokio::time::timeout(limit, futures_util::future::join_all(downloads))
        .await
        .map_err(|_| format!("a download read at a trickle was still running after {limit:?}"))?
        .into_iter()
        .collect()
}

async fn trickled_download(fleet: &Fleet, url: &str) -> Result<Trickled, String> {
    let io = connect(&addr(&fleet.image_url), "127.0.0.1", tls(fleet))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(TRICKLE_BYTES_PER_SEC as u32)
        .initial_connection_window_size(TRICKLE_BYTES_PER_SEC as u32)
        .handshake::<_, bytes::Bytes>(io)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let (response, _) = send_get(client, url).await?;
    let response = response.await.map_err(|e| format!("a response: {e}"))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("the download answered {}", response.status()));
    }
    let started = tokio::time::Instant::now();
    let mut body = response.into_body();
    let mut read = 0;
    loop {
        match body.data().await {
            Some(Ok(data)) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                read += data.len();
                body.flow_control()
                    .release_capacity(data.len())
                    .map_err(|e| e.to_string())?;
            }
            Some(Err(_)) => break,
            None => {
                return Err(format!(
                    "a download read at a trickle ended whole ({read} bytes)"
                ));
            }
        }
    }
    driver.abort();
    Ok(Trickled {
        read,
        held: started.elapsed(),
    })
}

/// An image uploaded to the fleet's Image repository with its upload token (a release
/// engineer's, or one stolen) at 100 bytes every 5 s, each chunk well within the idle
/// timeout: its status and error once answered, and the time it took. Errors if it is not
/// answered within `limit`.
pub async fn trickled_upload(
    fleet: &Fleet,
    limit: Duration,
) -> Result<(http::StatusCode, String, Duration), String> {
    let token = fleet
        .upload_token()
        .ok_or("the fleet has no upload token")?;
    let trickle = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 100])),
            (),
        ))
    });
    let started = tokio::time::Instant::now();
    let sent = fleet
        .https_client()
        .put(format!(
            "{}/api/v1/blobs/{}",
            fleet.image_url,
            "cd".repeat(32)
        ))
        .bearer_auth(token)
        .body(reqwest::Body::wrap_stream(trickle))
        .send();
    let response = tokio::time::timeout(limit, sent)
        .await
        .map_err(|_| format!("an upload at a trickle was not answered within {limit:?}"))?
        .map_err(|e| format!("the upload: {e}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Ok((status, body, started.elapsed()))
}

/// Waits (bounded) until process `pid`'s resident memory stops growing: the server reads
/// its chunks on its blocking pool after answering the headers.
async fn wait_steady(pid: u32) -> Result<(), String> {
    let mut last = memory_kib(pid)?.0;
    let mut steady = 0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = memory_kib(pid)?.0;
        steady = if now.abs_diff(last) < 256 {
            steady + 1
        } else {
            0
        };
        last = now;
        if steady == 5 {
            break;
        }
    }
    Ok(())
}
