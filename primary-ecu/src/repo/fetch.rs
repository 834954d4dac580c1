//! HTTP GETs with hard byte limits, streamed, over a client that refuses clear text unless
//! told otherwise ([`ClientTls`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use service_runtime::http::ClientTls;

use service_runtime::speed::{MinSpeed, SpeedMonitor};

use futures_util::{FutureExt, StreamExt};
use service_runtime::digest::{Batch, Batcher, ThreadedDigests};
use service_runtime::direct::DirectAppender;
use service_runtime::durable::BackgroundSync;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The server answered with a status other than 200 (or 206 for a range).
    #[error("{url}: HTTP status {status}")]
    Status {
        /// URL requested.
        url: String,
        /// Status code.
        status: u16,
    },
    /// The body is larger than allowed (endless data attack); reading stopped at the limit.
    #[error("{url}: more than {limit} bytes")]
    TooLarge {
        /// URL requested.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The body arrived slower than the configured minimum (slow retrieval attack).
    #[error("{url}: slower than {min_bytes_per_sec} bytes/s")]
    TooSlow {
        /// URL requested.
        url: String,
        /// The configured minimum.
        min_bytes_per_sec: u64,
    },
    /// Connection or protocol failure (a refused certificate among them).
    #[error("{url}: {}", service_runtime::error_chain(.source))]
    Transport {
        /// URL requested.
        url: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// The bytes do not match the expected length or hashes.
    #[error("{url}: {source}")]
    Digest {
        /// URL requested.
        url: String,
        /// What differs.
        #[source]
        source: uptane_core::hash::DigestError,
    },
    /// Writing the download to disk failed.
    #[error("writing download of {url}: {source}")]
    Io {
        /// URL requested.
        url: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The HTTP status, if the server sent one.
    pub fn status(&self) -> Option<u16> {
        match self {
            FetchError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Why an HTTP client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The TLS configuration (a CA or certificate file).
    #[error(transparent)]
    Tls(#[from] service_runtime::tls::TlsError),
    /// reqwest refused the configuration.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// The vehicle's bearer credential, shared by every request that sends it, so that a
/// renewed one is used from the next request on.
#[derive(Clone, Default)]
pub struct Credential(Arc<RwLock<String>>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

impl Credential {
    /// Holding `secret`.
    pub fn new(secret: &str) -> Self {
        Self(Arc::new(RwLock::new(secret.to_string())))
    }

    /// The secret now.
    pub fn get(&self) -> String {
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the secret.
    pub fn set(&self, secret: &str) {
        match self.0.write() {
            Ok(mut s) => *s = secret.to_string(),
            Err(poisoned) => *poisoned.into_inner() = secret.to_string(),
        }
    }
}

/// An HTTP client with a read timeout (a stalled connection) and a minimum speed over each
/// download (slow retrieval, `service_runtime::speed`).
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    min_speed: MinSpeed,
    /// The window the speed is judged over: the read timeout (a pause the connection may
    /// take), at least the grace period.
    speed_window: Duration,
    bearer: Option<Credential>,
}

impl Fetcher {
    /// A client over `tls`; `min_bytes_per_sec` of 0 disables the speed check, which starts
    /// after a five-second grace period.
    pub fn new(
        tls: &ClientTls,
        read_timeout: Duration,
        min_bytes_per_sec: u64,
    ) -> Result<Self, HttpClientError> {
        Self::with_grace(tls, read_timeout, min_bytes_per_sec, Duration::from_secs(5))
    }

    /// Like [`Fetcher::new`], with the grace period before the speed check applies.
    pub fn with_grace(
        tls: &ClientTls,
        read_timeout: Duration,
        min_bytes_per_sec: u64,
        grace: Duration,
    ) -> Result<Self, HttpClientError> {
        let http = tls
            .reqwest()?
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(read_timeout)
            .build()?;
        Ok(Self {
            http,
            min_speed: MinSpeed {
                bytes_per_sec: min_bytes_per_sec,
                grace,
            },
            speed_window: read_timeout,
            bearer: None,
        })
    }

    /// The same client, sending `credential` as a bearer credential with every request
    /// (the Director serves a vehicle's metadata only to that vehicle).
    pub fn with_bearer(mut self, credential: Credential) -> Self {
        self.bearer = Some(credential);
        self
    }

    /// The underlying HTTP client (connection pool shared with other calls).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn get(&self, url: &str, from: u64) -> Result<reqwest::Response, FetchError> {
        let mut request = self.http.get(url);
        if let Some(credential) = &self.bearer {
            request = request.bearer_auth(credential.get());
        }
        if from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|source| FetchError::Transport {
                url: url.to_string(),
                source,
            })?;
        let status = response.status().as_u16();
        let expected = if from > 0 { 206 } else { 200 };
        if status != expected {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        Ok(response)
    }

    /// The body of `url`, read chunk by chunk with a byte limit and the minimum speed.
    fn body(
        &self,
        url: &str,
        response: reqwest::Response,
        limit: u64,
    ) -> Result<Body<'_>, FetchError> {
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        Ok(Body {
            fetcher: self,
            url: url.to_string(),
            stream: Box::pin(response.bytes_stream()),
            limit,
            received: 0,
            started: tokio::time::Instant::now(),
            speed: SpeedMonitor::with_window(self.min_speed, self.speed_window),
        })
    }

    /// Downloads a whole body of at most `limit` bytes into memory (metadata).
    pub async fn fetch_bounded(&self, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
        let response = self.get(url, 0).await?;
        // The announced length, once `body` has checked it against the limit: a 3 MB targets
        // file is then received without growing (and copying) its buffer a dozen times.
        let announced = response.content_length().unwrap_or(0);
        let mut body = self.body(url, response, limit)?;
        let mut out = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        while let Some(chunk) = body.next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Streams `url` into `file` (already holding `digests.bytes_seen()` bytes of it, which
    /// the digests have seen), resuming with an HTTP Range request when that is not zero.
    /// Every batch of chunks is checked against the approved length and handed to the hash
    /// threads before it is written, so nothing beyond the approved length reaches the disk;
    /// the file is durable when this returns `Ok`.
    pub async fn download_to(
        &self,
        url: &str,
        file: &std::fs::File,
        digests: &mut ThreadedDigests,
        length: u64,
    ) -> Result<(), FetchError> {
        let from = digests.bytes_seen();
        let response = self.get(url, from).await?;
        let remaining = length.saturating_sub(from);
        let io_err = |source| FetchError::Io {
            url: url.to_string(),
            source,
        };
        let mut writer = BatchWriter::new(file).map_err(io_err)?;
        let mut batcher = Batcher::default();
        let mut body = self.body(url, response, remaining)?;
        let ended = loop {
            // Wait for a chunk, then take what else has already arrived, up to a batch: a fast
            // link gives batches of a megabyte, a slow one hands on each chunk as it comes
            // (so an interrupted download keeps what arrived).
            let mut end = None;
            let mut full = match body.next().await {
                Ok(Some(chunk)) => batcher.push(chunk),
                other => break other.map(drop),
            };
            while full.is_none() && end.is_none() {
                match body.next().now_or_never() {
                    None => break,
                    Some(Ok(Some(chunk))) => full = batcher.push(chunk),
                    Some(other) => end = Some(other.map(drop)),
                }
            }
            let batch = full.unwrap_or_else(|| batcher.take());
            self.hand_on(url, batch, digests, &mut writer).await?;
            if let Some(end) = end {
                break end;
            }
        };
        writer.finish().await.map_err(io_err)?;
        ended
    }

    /// Checks a batch against the approved length, hands it to the hash threads, then to the
    /// disk (one write in flight while the next batch arrives).
    async fn hand_on(
        &self,
        url: &str,
        batch: Batch,
        digests: &mut ThreadedDigests,
        writer: &mut BatchWriter,
    ) -> Result<(), FetchError> {
        if batch.is_empty() {
            return Ok(());
        }
        digests
            .update(batch.clone())
            .await
            .map_err(|source| FetchError::Digest {
                url: url.to_string(),
                source,
            })?;
        writer.write(batch).await.map_err(|source| FetchError::Io {
            url: url.to_string(),
            source,
        })
    }
}

type ChunkStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
>;

/// A response body being read under a byte limit and the fetcher's minimum speed.
struct Body<'f> {
    fetcher: &'f Fetcher,
    url: String,
    stream: ChunkStream,
    limit: u64,
    received: u64,
    started: tokio::time::Instant,
    speed: SpeedMonitor,
}

impl Body<'_> {
    /// The next chunk; an error past the limit (endless data) or when slower than the
    /// minimum (slow retrieval).
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, FetchError> {
        let Some(chunk) = self.stream.next().await else {
            return Ok(None);
        };
        let chunk = chunk.map_err(|source| FetchError::Transport {
            url: self.url.clone(),
            source,
        })?;
        self.received += chunk.len() as u64;
        if self.received > self.limit {
            return Err(FetchError::TooLarge {
                url: self.url.clone(),
                limit: self.limit,
            });
        }
        if self
            .speed
            .observe(self.started.elapsed(), self.received)
            .is_some()
        {
            return Err(FetchError::TooSlow {
                url: self.url.clone(),
                min_bytes_per_sec: self.fetcher.min_speed.bytes_per_sec,
            });
        }
        Ok(Some(chunk))
    }
}

/// Writes batches to a file on a blocking thread, one batch in flight: the disk works while
/// the next batch arrives from the network. Whole blocks go to the device directly
/// ([`DirectAppender`]: one copy into an aligned buffer instead of one into fresh page-cache
/// pages, which was a fifth of the download's CPU). Where the filesystem refuses direct
/// writes, every [`SYNC_BEHIND`] bytes the file is synced on a thread of its own instead, so
/// the sync that makes it durable at the end has little left to write: without it, a 512 MiB
/// image sat dirty in memory until that sync, which then took a quarter of the download's
/// time.
struct BatchWriter {
    appender: Option<DirectAppender>,
    in_flight: Option<tokio::task::JoinHandle<(DirectAppender, std::io::Result<()>)>>,
    /// Bytes handed to the file by this writer.
    written: u64,
    /// Where the last sync behind started.
    sync_started_at: u64,
    syncing: Option<BackgroundSync>,
}

/// How far the bytes written may run ahead of the last sync started behind them (buffered
/// writes only).
const SYNC_BEHIND: u64 = 8 << 20;

impl BatchWriter {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        Ok(Self::over(DirectAppender::new(file.try_clone()?)?))
    }

    fn over(appender: DirectAppender) -> Self {
        Self {
            appender: Some(appender),
            in_flight: None,
            written: 0,
            sync_started_at: 0,
            syncing: None,
        }
    }

    async fn settle(&mut self) -> std::io::Result<DirectAppender> {
        if let Some(writing) = self.in_flight.take() {
            let (appender, written) = writing.await.map_err(std::io::Error::other)?;
            self.appender = Some(appender);
            written?;
        }
        // A finished sync behind is collected: its failure is this write's.
        if let Some(syncing) = &self.syncing
            && syncing.poll()?.is_some()
        {
            self.syncing = None;
        }
        self.appender
            .take()
            .ok_or_else(|| std::io::Error::other("an earlier write failed"))
    }

    async fn write(&mut self, batch: Batch) -> std::io::Result<()> {
        let mut appender = self.settle().await?;
        // The next sync behind starts once enough has been written since the last one, never
        // two at once. One that cannot start (no thread, no descriptor) only costs speed: the
        // sync at the end still makes everything durable.
        if !appender.is_direct()
            && self.syncing.is_none()
            && self.written - self.sync_started_at >= SYNC_BEHIND
        {
            match BackgroundSync::start(appender.file(), self.written) {
                Ok(syncing) => self.syncing = Some(syncing),
                Err(e) => tracing::warn!(error = %e, "not syncing a download behind its writes"),
            }
            self.sync_started_at = self.written;
        }
        self.written += batch.len() as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let written = batch
                .chunks()
                .iter()
                .try_for_each(|chunk| appender.append(chunk))
                .and_then(|()| appender.write_gathered());
            (appender, written)
        }));
        Ok(())
    }

    /// Waits for the last write, writes what is left of the last block, and makes the file
    /// durable: after an interrupted download too, so that the file holds every byte the
    /// hash threads saw and the download resumes where it stopped.
    async fn finish(mut self) -> std::io::Result<()> {
        let appender = self.settle().await?;
        let syncing = self.syncing.take();
        tokio::task::spawn_blocking(move || {
            let file = appender.finish()?;
            if let Some(syncing) = syncing {
                syncing.wait()?;
            }
            file.sync_all()
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of awkward sizes reach the file whole and in order, written directly (where
    /// the filesystem takes it) and buffered with syncs behind the writes (where it does not).
    #[tokio::test]
    async fn a_downloaded_file_holds_every_batch_in_order() {
        let dir = tempfile::tempdir().unwrap();
        for directly in [true, false] {
            let path = dir.path().join(format!("image-{directly}"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .unwrap();
            let appender = if directly {
                DirectAppender::new(file.try_clone().unwrap()).unwrap()
            } else {
                DirectAppender::buffered(file.try_clone().unwrap()).unwrap()
            };
            assert_eq!(
                appender.is_direct(),
                directly,
                "the test directory takes O_DIRECT"
            );
            let mut writer = BatchWriter::over(appender);
            // Five batches of 3 MiB and a few bytes: buffered, syncs behind start after the
            // third and again later.
            let mut expected = Vec::new();
            for i in 0..5u8 {
                let chunk = bytes::Bytes::from(vec![i; (3 << 20) + 1 + i as usize]);
                expected.extend_from_slice(&chunk);
                let mut batcher = Batcher::default();
                let batch = batcher.push(chunk).unwrap_or_else(|| batcher.take());
                writer.write(batch).await.unwrap();
            }
            assert!(
                writer.written > SYNC_BEHIND,
                "the test must pass the interval"
            );
            assert_eq!(
                writer.syncing.is_some() || writer.sync_started_at > 0,
                !directly
            );
            writer.finish().await.unwrap();
            assert!(std::fs::read(&path).unwrap() == expected);
        }
    }
}
