//! `GET /targets/<path>`: image files from the `targets/` directory, streamed from disk, with
//! one HTTP range for resumed downloads.
//!
//! Each chunk is read from the file straight into the buffer that is sent (`read_to_end` into
//! a fresh allocation, which it fills without zeroing), one read ahead of the socket.
//! `tower-http`'s `ServeDir`, used before, read through `tokio::fs::File`, which reads into a
//! buffer of its own and copies it into the caller's: that copy was 18% of the server's CPU
//! while it served an image (docs/BENCHMARKS.md).
//!
//! What is served is a regular file under `targets/`, reached one path component at a time
//! without following a symbolic link (a link placed in `targets/` cannot hand out the online
//! keys beside it) and opened without blocking (a FIFO cannot hold a thread). No segment may
//! be empty, `.` or `..`, and the file's own name may not start with a dot (the publisher's
//! temporary links). Anything else is a 404, as is a directory.

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use service_runtime::conn_memory::{Allowance, Reserved};
use tokio::task::JoinHandle;

use crate::server::ApiError;

/// Bytes read from the file per chunk: large reads for a fast single stream. The downloads of
/// one connection together hold no more than its allowance ([`service_runtime::conn_memory`],
/// 1 MiB by default: four chunks) and [`OWN_CHUNK_BYTES`] each.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// What a download reads at a time when its connection's allowance is taken, from a small
/// allowance of its own: 32 streams add at most half a MiB to a connection's 1 MiB.
pub const OWN_CHUNK_BYTES: usize = 16 * 1024;

/// Serves `path` (below `/targets/`, percent-decoded) from `dir`, reading ahead only as much
/// as `connection`, the connection's allowance, has room for.
pub async fn serve(
    dir: PathBuf,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
    connection: Allowance,
) -> Response {
    let Some(relative) = safe_relative(path) else {
        return not_found();
    };
    let opened = tokio::task::spawn_blocking(move || open_regular(&dir, &relative)).await;
    let (file, length) = match opened {
        Ok(Ok(Some(opened))) => opened,
        Ok(Ok(None)) => return not_found(),
        Ok(Err(e)) => {
            tracing::error!(path, error = %e, "cannot open a target file");
            return internal_error();
        }
        Err(e) => {
            tracing::error!(path, error = %e, "the open of a target file stopped");
            return internal_error();
        }
    };
    // Range applies to GET only (RFC 9110 §14.2).
    let requested = if method == Method::GET {
        requested_range(headers, length)
    } else {
        Requested::Whole
    };
    let (status, start, len) = match requested {
        Requested::Whole => (StatusCode::OK, 0, length),
        Requested::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Requested::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{length}"))],
            )
                .into_response();
        }
    };
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        Body::from_stream(FileChunks::new(file, start, len, connection))
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{length}", start + len - 1);
        if let Ok(value) = HeaderValue::from_str(&range) {
            h.insert(header::CONTENT_RANGE, value);
        }
    }
    response
}

fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not found").into_response()
}

fn internal_error() -> Response {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
}

/// The path's segments, each safe to open below the targets directory, or `None`.
fn safe_relative(path: &str) -> Option<Vec<String>> {
    if path.is_empty() || path.len() > 4096 {
        return None;
    }
    let segments: Vec<String> = path.split('/').map(str::to_string).collect();
    let plain = |s: &String| {
        !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']) && s.len() <= 255
    };
    let name = segments.last()?;
    (segments.iter().all(plain) && !name.starts_with('.')).then_some(segments)
}

/// The file and its length if `segments` below `dir` name a regular file, reached without
/// following a symbolic link; `None` if there is none (or it is something else).
fn open_regular(dir: &Path, segments: &[String]) -> std::io::Result<Option<(File, u64)>> {
    use rustix::fs::{Mode, OFlags, openat};
    let Some((name, parents)) = segments.split_last() else {
        return Ok(None);
    };
    let opened = (|| {
        let mut at = openat(
            rustix::fs::CWD,
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for parent in parents {
            at = openat(
                &at,
                parent.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
        }
        openat(
            &at,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })();
    let file = match opened {
        Ok(fd) => File::from(fd),
        // A link where a directory or the file should be (ELOOP, or ENOTDIR for a link to a
        // directory opened as one), or nothing there.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => {
            let e = std::io::Error::from(e);
            return if is_absent(&e) { Ok(None) } else { Err(e) };
        }
    };
    let metadata = file.metadata()?;
    Ok(metadata.is_file().then_some((file, metadata.len())))
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::InvalidFilename
    )
}

/// What a request's `Range` asks of a file of `length` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Requested {
    /// No range, one this server ignores (several ranges, other units, malformed, or an
    /// `If-Range`): the whole file, 200 (RFC 9110 §14.2 lets a server ignore `Range`).
    Whole,
    /// Bytes `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// A single byte range that starts past the end (or an empty suffix), 416.
    Unsatisfiable,
}

fn requested_range(headers: &HeaderMap, length: u64) -> Requested {
    // The files are never changed in place (a new image is a new name), but a validator this
    // server does not send cannot match: the whole file (RFC 9110 §13.1.5).
    if headers.contains_key(header::IF_RANGE) {
        return Requested::Whole;
    }
    let mut values = headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Requested::Whole;
    };
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Requested::Whole;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Requested::Whole;
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let number = |text: &str| digits(text).then(|| text.parse::<u64>().ok()).flatten();
    match (first.trim(), last.trim()) {
        // bytes=-N: the last N bytes.
        ("", suffix) => match number(suffix) {
            Some(0) => Requested::Unsatisfiable,
            // A suffix of an empty file: nothing to send, which the whole file says.
            Some(_) if length == 0 => Requested::Whole,
            Some(n) => Requested::Part {
                start: length.saturating_sub(n),
                end: length - 1,
            },
            None => Requested::Whole,
        },
        (first, last) => {
            let Some(start) = number(first) else {
                return Requested::Whole;
            };
            let end = if last.is_empty() {
                None
            } else if digits(last) {
                // An end past what u64 holds is past the end of any file.
                match last.parse::<u64>().unwrap_or(u64::MAX) {
                    end if end >= start => Some(end),
                    _ => return Requested::Whole,
                }
            } else {
                return Requested::Whole;
            };
            if start >= length {
                return Requested::Unsatisfiable;
            }
            let end = end.map_or(length - 1, |end| end.min(length - 1));
            Requested::Part { start, end }
        }
    }
}

/// `len` bytes of a file from `offset`, a chunk at a time, the next chunk read while the
/// last is sent.
///
/// Each chunk is read only once there is memory for it, and gives it back when the
/// transport drops it (written, or the connection gone): a full chunk from the connection's
/// allowance if it has room now, else a small one from this download's own allowance. A
/// download never waits for the connection's allowance, which other streams may hold for as
/// long as their client reads nothing: it waits only for its own previous small chunk, which
/// its own client's reading sends. An error (or a file shorter than it was) ends the body
/// with an error, so the client sees a broken response, never a short one taken as whole.
struct FileChunks {
    next: Next,
    connection: Allowance,
    own: Allowance,
    offset: u64,
    remaining: u64,
}

/// What the body is doing for its next chunk.
enum Next {
    /// Waiting for its own previous chunk to be let go.
    Reserving {
        file: File,
        want: usize,
        reserving: Pin<Box<dyn Future<Output = Option<Reserved>> + Send>>,
    },
    /// Reading it on the blocking pool.
    Reading(JoinHandle<(File, std::io::Result<Chunk>)>),
    /// Nothing more to send.
    Done,
}

/// A chunk's bytes and the memory they hold.
struct Chunk {
    bytes: Vec<u8>,
    _held: Reserved,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl FileChunks {
    fn new(file: File, offset: u64, len: u64, connection: Allowance) -> Self {
        let mut chunks = Self {
            next: Next::Done,
            connection,
            own: Allowance::new(OWN_CHUNK_BYTES),
            offset,
            remaining: len,
        };
        chunks.next = chunks.start(file);
        chunks
    }

    /// The next full read: at most a chunk, and never more than the allowance holds.
    fn full(&self) -> usize {
        usize::try_from(self.remaining.min(CHUNK_BYTES as u64))
            .unwrap_or(CHUNK_BYTES)
            .min(self.connection.total_bytes())
    }

    /// Reads the next chunk now if there is memory for it, else waits for its own.
    fn start(&self, file: File) -> Next {
        let want = self.full();
        if let Some(held) = self.connection.try_reserve(want) {
            return self.read(file, want, held);
        }
        let want = want.min(OWN_CHUNK_BYTES);
        match self.own.try_reserve(want) {
            Some(held) => self.read(file, want, held),
            None => Next::Reserving {
                file,
                want,
                reserving: Box::pin(self.own.reserve(want)),
            },
        }
    }

    fn read(&self, file: File, want: usize, held: Reserved) -> Next {
        let offset = self.offset;
        // Allocated here, on one of the runtime's few worker threads, not on whichever of
        // the many blocking threads reads it: the allocator gives each thread pages of its
        // own, so buffers taken across dozens of blocking threads spread over as many
        // regions of memory (each resident whole where transparent huge pages are on).
        let buffer = Vec::with_capacity(want);
        Next::Reading(tokio::task::spawn_blocking(move || {
            let read =
                read_chunk(&file, offset, want, buffer).map(|bytes| Chunk { bytes, _held: held });
            (file, read)
        }))
    }
}

impl Drop for FileChunks {
    /// A read that has not started yet is kept from reading (tokio's `abort` can do that
    /// much for blocking work; its buffer and memory are freed when the pool reaches it),
    /// so a client that opens and drops downloads faster than the pool reads does not make
    /// it read for nobody. A read already running finishes and then gives its memory back.
    fn drop(&mut self) {
        if let Next::Reading(reading) = &self.next {
            reading.abort();
        }
    }
}

/// Reads `want` bytes at `offset` into `buffer`, empty with room for them (`read_to_end`
/// fills its spare capacity without zeroing it first).
fn read_chunk(
    file: &File,
    offset: u64,
    want: usize,
    mut buffer: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    reader.take(want as u64).read_to_end(&mut buffer)?;
    if buffer.len() < want {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the target file is shorter than when it was opened",
        ));
    }
    Ok(buffer)
}

impl futures_util::Stream for FileChunks {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match &mut self.next {
                Next::Done => return Poll::Ready(None),
                Next::Reserving { reserving, .. } => {
                    let reserved = ready!(reserving.as_mut().poll(cx));
                    let Next::Reserving { file, want, .. } =
                        std::mem::replace(&mut self.next, Next::Done)
                    else {
                        unreachable!("matched just above");
                    };
                    let Some(held) = reserved else {
                        return Poll::Ready(Some(Err(std::io::Error::other(
                            "a download's own allowance was closed",
                        ))));
                    };
                    // The connection's allowance may have room again by now.
                    let full = self.full();
                    self.next = match self.connection.try_reserve(full) {
                        Some(shared) => self.read(file, full, shared),
                        None => self.read(file, want, held),
                    };
                }
                Next::Reading(reading) => {
                    let joined = ready!(Pin::new(reading).poll(cx));
                    self.next = Next::Done;
                    let (file, read) = match joined {
                        Ok(done) => done,
                        Err(e) => {
                            tracing::error!(error = %e, "reading a target file stopped");
                            return Poll::Ready(Some(Err(std::io::Error::other(e))));
                        }
                    };
                    let chunk = match read {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            tracing::error!(error = %e, "reading a target file failed");
                            return Poll::Ready(Some(Err(e)));
                        }
                    };
                    let len = chunk.bytes.len() as u64;
                    self.offset += len;
                    self.remaining -= len;
                    if self.remaining > 0 {
                        self.next = self.start(file);
                    }
                    return Poll::Ready(Some(Ok(Bytes::from_owner(chunk))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_runtime::conn_memory::DEFAULT_BYTES;

    fn range(value: &str, length: u64) -> Requested {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        requested_range(&headers, length)
    }

    #[test]
    fn single_byte_ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range("bytes=6-", 10), Requested::Part { start: 6, end: 9 });
        assert_eq!(range("bytes=2-4", 10), Requested::Part { start: 2, end: 4 });
        assert_eq!(
            range("bytes=2-400", 10),
            Requested::Part { start: 2, end: 9 }
        );
        assert_eq!(range("bytes=-3", 10), Requested::Part { start: 7, end: 9 });
        assert_eq!(range("bytes=-30", 10), Requested::Part { start: 0, end: 9 });
        assert_eq!(range("bytes=9-9", 10), Requested::Part { start: 9, end: 9 });
        assert_eq!(
            range("bytes=3-99999999999999999999999", 10),
            Requested::Part { start: 3, end: 9 }
        );
    }

    #[test]
    fn a_range_past_the_end_is_unsatisfiable() {
        assert_eq!(range("bytes=10-", 10), Requested::Unsatisfiable);
        assert_eq!(range("bytes=10-20", 10), Requested::Unsatisfiable);
        assert_eq!(range("bytes=-0", 10), Requested::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), Requested::Unsatisfiable);
        assert_eq!(range("bytes=-5", 0), Requested::Whole);
    }

    #[test]
    fn ranges_this_server_does_not_serve_get_the_whole_file() {
        for ignored in [
            "bytes=0-1,4-5",
            "bytes=5-2",
            "bytes=a-",
            "bytes=-",
            "bytes=+1-",
            "bytes=1",
            "items=0-1",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(range(ignored, 10), Requested::Whole, "{ignored:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=2-"));
        headers.insert(
            header::IF_RANGE,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(requested_range(&headers, 10), Requested::Whole);
        let mut headers = HeaderMap::new();
        headers.append(header::RANGE, HeaderValue::from_static("bytes=2-"));
        headers.append(header::RANGE, HeaderValue::from_static("bytes=3-"));
        assert_eq!(requested_range(&headers, 10), Requested::Whole);
    }

    #[test]
    fn only_plain_segments_below_the_directory_are_served() {
        let segments = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(safe_relative("a.bin"), segments(&["a.bin"]));
        assert_eq!(safe_relative("dir/a.bin"), segments(&["dir", "a.bin"]));
        // A target name may have a directory starting with a dot; only the file's own name
        // may not (the publisher's temporary links).
        assert_eq!(
            safe_relative(".well-known/a.bin"),
            segments(&[".well-known", "a.bin"])
        );
        for refused in [
            "",
            "../secret",
            "dir/../../secret",
            "./a.bin",
            ".tmp-link-1",
            "dir/.tmp-link-1",
            "/etc/passwd",
            "dir//a.bin",
            "dir/",
            "a\\..\\b",
            "a\0b",
        ] {
            assert_eq!(safe_relative(refused), None, "{refused:?}");
        }
        assert_eq!(safe_relative(&"a".repeat(256)), None);
        assert_eq!(safe_relative(&("a/".repeat(2048) + "a")), None);
    }

    /// What `serve` answered, and the body's bytes.
    async fn served(dir: &Path, path: &str, method: Method) -> (StatusCode, Vec<u8>, Option<u64>) {
        let response = serve(
            dir.to_path_buf(),
            path,
            &method,
            &HeaderMap::new(),
            Allowance::new(DEFAULT_BYTES),
        )
        .await;
        let status = response.status();
        let exact = axum::body::HttpBody::size_hint(response.body()).exact();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec(), exact)
    }

    #[tokio::test]
    async fn links_fifos_and_directories_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("key.pem"), b"secret").unwrap();
        std::fs::write(dir.path().join("a.bin"), b"image").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), b"image b").unwrap();
        let link = |to: &Path, name: &str| std::os::unix::fs::symlink(to, dir.path().join(name));
        link(&outside.path().join("key.pem"), "key.bin").unwrap();
        link(outside.path(), "out").unwrap();
        link(&dir.path().join("a.bin"), "inside.bin").unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.path().join("fifo.bin"),
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .unwrap();

        assert_eq!(served(dir.path(), "a.bin", Method::GET).await.1, b"image");
        assert_eq!(
            served(dir.path(), "sub/b.bin", Method::GET).await.1,
            b"image b"
        );
        for refused in ["key.bin", "out/key.pem", "inside.bin", "fifo.bin", "sub"] {
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                served(dir.path(), refused, Method::GET),
            )
            .await
            .unwrap_or_else(|_| panic!("{refused}: no answer"));
            assert_eq!(answer.0, StatusCode::NOT_FOUND, "{refused}");
        }
    }

    #[tokio::test]
    async fn head_reads_nothing_and_ignores_a_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"image").unwrap();
        let (status, body, exact) = served(dir.path(), "a.bin", Method::HEAD).await;
        assert_eq!((status, body.len(), exact), (StatusCode::OK, 0, Some(0)));
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=1-"));
        let response = serve(
            dir.path().to_path_buf(),
            "a.bin",
            &Method::HEAD,
            &headers,
            Allowance::new(DEFAULT_BYTES),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "5");
    }

    #[tokio::test]
    async fn a_file_of_several_chunks_is_read_whole_and_from_any_offset() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 3 + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        for (start, len) in [
            (0, bytes.len()),
            (1, bytes.len() - 1),
            (CHUNK_BYTES - 1, CHUNK_BYTES + 2),
            (bytes.len() - 1, 1),
        ] {
            let file = File::open(&path).unwrap();
            // Collected, so every chunk is held at once: an allowance for all of them.
            let memory = Allowance::new(bytes.len() + (4 << 10));
            let chunks: Vec<Bytes> = FileChunks::new(file, start as u64, len as u64, memory)
                .map(|c| c.unwrap())
                .collect()
                .await;
            assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
            assert_eq!(chunks.concat(), &bytes[start..start + len]);
        }
    }

    #[tokio::test]
    async fn a_file_shorter_than_promised_ends_in_an_error() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        std::fs::write(&path, vec![7u8; CHUNK_BYTES + 10]).unwrap();
        let file = File::open(&path).unwrap();
        let memory = Allowance::new(DEFAULT_BYTES);
        let items: Vec<_> = FileChunks::new(file, 0, CHUNK_BYTES as u64 + 20, memory)
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().len(), CHUNK_BYTES);
        let error = items[1].as_ref().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// `future`'s output, failing the test if it takes more than 30 s (a download left
    /// waiting for memory it will never get).
    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(30), future)
            .await
            .expect("no answer within 30 s")
    }

    /// A file of `chunks` full chunks, its bytes.
    fn image(dir: &Path, chunks: usize) -> (PathBuf, Vec<u8>) {
        let path = dir.join("image");
        let bytes: Vec<u8> = (0..CHUNK_BYTES * chunks).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    #[tokio::test]
    async fn the_downloads_of_one_connection_hold_no_more_than_its_allowance() {
        use futures_util::{FutureExt, StreamExt};
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = image(dir.path(), 8);
        let len = bytes.len() as u64;
        // Room for two chunks, shared by the downloads (HTTP/2 streams, say) of a client that
        // reads none of them: what the transport has not yet written stays held.
        let connection = Allowance::new(2 * CHUNK_BYTES);
        let mut first = FileChunks::new(File::open(&path).unwrap(), 0, len, connection.clone());
        let held = within(first.next()).await.unwrap().unwrap();
        assert_eq!(held.len(), CHUNK_BYTES);
        assert!(
            matches!(first.next, Next::Reading(_)),
            "one chunk read ahead"
        );
        assert_eq!(connection.available_bytes(), 0);
        // A second download finds the allowance taken: it reads a small chunk of its own,
        // and then waits for that one, not for the connection's.
        let mut second = FileChunks::new(File::open(&path).unwrap(), 0, len, connection.clone());
        let small = within(second.next()).await.unwrap().unwrap();
        assert_eq!(&small[..], &bytes[..OWN_CHUNK_BYTES]);
        assert!(matches!(second.next, Next::Reserving { .. }));
        assert!(
            second.next().now_or_never().is_none(),
            "nothing of its own free"
        );
        drop(small);
        let woken = within(second.next()).await;
        assert_eq!(
            &woken.unwrap().unwrap()[..],
            &bytes[OWN_CHUNK_BYTES..2 * OWN_CHUNK_BYTES]
        );
        // Throughout, the first download's two chunks are all the connection holds.
        assert_eq!(connection.available_bytes(), 0);
        drop((held, first));
    }

    #[tokio::test]
    async fn a_download_whose_client_reads_finishes_while_others_hold_the_allowance() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = image(dir.path(), 4);
        let len = bytes.len() as u64;
        let connection = Allowance::new(2 * CHUNK_BYTES);
        // Downloads whose client reads nothing more hold the whole allowance ...
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut chunks =
                FileChunks::new(File::open(&path).unwrap(), 0, len, connection.clone());
            let first = within(chunks.next()).await.unwrap().unwrap();
            stalled.push((chunks, first));
        }
        assert_eq!(connection.available_bytes(), 0);
        // ... and a third, whose client reads each chunk as it comes, still gets all of it.
        let reading = FileChunks::new(File::open(&path).unwrap(), 0, len, connection.clone());
        let read = within(reading.map(|c| c.unwrap().to_vec()).concat()).await;
        assert_eq!(read, bytes);
        drop(stalled);
    }

    #[tokio::test]
    async fn a_dropped_download_gives_its_memory_back() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = image(dir.path(), 4);
        let connection = Allowance::new(DEFAULT_BYTES);
        let mut chunks = FileChunks::new(
            File::open(&path).unwrap(),
            0,
            bytes.len() as u64,
            connection.clone(),
        );
        let chunk = within(chunks.next()).await.unwrap().unwrap();
        drop((chunk, chunks));
        // The read ahead may be running on a blocking thread: it ends by itself (bounded).
        for _ in 0..1000 {
            if connection.available_bytes() == DEFAULT_BYTES {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(connection.available_bytes(), DEFAULT_BYTES);
    }
}
