//! Target `primary_http`: the Primary's handling of HTTP responses (status, lengths,
//! `Content-Length` against the body, ranges on resume, redirects, early closes), through
//! its real HTTP client (`Fetcher`, reqwest) against a server on 127.0.0.1 that answers each
//! connection with the next response the fuzzer wrote, byte for byte.
//!
//! Input: one byte (bit 0: an image download through `ImageStore::fetch`, with its resumes;
//! else a metadata fetch of at most [`METADATA_LIMIT`] bytes), then records, each the raw
//! bytes of one response (status line, headers, body); once they run out every connection
//! gets a 404. The harness keeps redirects on this server: a `Location` that is not a path
//! on it becomes `/redirected` (the fuzzer cannot make the client look up other hosts).
//!
//! Oracle: metadata is never longer than its limit; a downloaded image is handed out only
//! when its bytes are exactly the approved image, and a failed download leaves no image
//! file behind.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use primary_ecu::download::ImageStore;
use primary_ecu::ports::HttpRepository;
use primary_ecu::repo::Fetcher;
use service_runtime::http::ClientTls;
use uptane_core::ids::{EcuSerial, HardwareId, Vin};
use uptane_core::refresh::Refresh;
use uptane_core::testing::now;
use uptane_core::trusted::{Director, Limits};
use uptane_core::uptane::{ApprovedImage, EcuIdentity, verify_partial};
use uptane_core::verify::Raw;

use crate::fixtures::{HARDWARE_ID, IMAGE_NAME, SERIAL, VIN, director_repo, image};
use crate::records;

/// The most metadata bytes fetched.
pub const METADATA_LIMIT: u64 = 4096;
/// What a connection gets once the input's responses are used up.
const NOT_FOUND: &[u8] =
    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// The most request bytes the server reads before answering.
const MAX_REQUEST: usize = 16 << 10;

struct Server {
    addr: SocketAddr,
    responses: Mutex<VecDeque<Vec<u8>>>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<&'static Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let server: &'static Server = Box::leak(Box::new(Server {
            addr: listener.local_addr().expect("bound address"),
            responses: Mutex::new(VecDeque::new()),
        }));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = server
                    .responses
                    .lock()
                    .map(|mut r| r.pop_front())
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| NOT_FOUND.to_vec());
                let _ = stream.write_all(&response);
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        });
        server
    })
}

/// `response` with every line that could be a `Location` header (in any header block: a
/// 1xx answer may come first, and a body line costs nothing to rewrite) pointed at a path of
/// this server: its value keeps only the characters of a plain path, and one that is not a
/// single-slash path becomes `/redirected`. Folded continuation lines (leading whitespace)
/// are dropped. The fuzzer cannot make the client look up or reach another host.
pub fn keep_redirects_local(response: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(response.len());
    for (i, line) in response.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        let Some(value) = lower.strip_prefix(b"location:") else {
            out.extend_from_slice(line);
            continue;
        };
        let path: Vec<u8> = value
            .iter()
            .copied()
            .filter(|b| b.is_ascii_alphanumeric() || b"/._-".contains(b))
            .collect();
        let local = path.starts_with(b"/") && !path.starts_with(b"//");
        out.extend_from_slice(b"location: ");
        out.extend_from_slice(if local { &path } else { b"/redirected" });
        if line.ends_with(b"\r") {
            out.push(b'\r');
        }
    }
    out
}

struct Client {
    runtime: tokio::runtime::Runtime,
    fetcher: Fetcher,
    approved: ApprovedImage,
}

fn client() -> &'static Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let tls = ClientTls::new(None, None, true).expect("a client configuration");
        let fetcher = runtime
            .block_on(async { Fetcher::new(&tls, Duration::from_secs(2), 0) })
            .expect("a client");
        Client {
            runtime,
            fetcher,
            approved: approved_image(),
        }
    })
}

/// The fixture Director's assignment to the Secondary, partially verified and approved.
fn approved_image() -> ApprovedImage {
    let repo = director_repo();
    let root = Raw::new(repo.initial_root().to_vec());
    let mut refresh =
        Refresh::<Director>::partial(&root, now(), Limits::default()).expect("the root loads");
    let mut source = repo.clone();
    refresh
        .run(&mut source)
        .expect("the fixture Director verifies");
    let (vin, serial, hardware_id) = (
        Vin::new(VIN).expect("fixture VIN"),
        EcuSerial::new(SERIAL).expect("fixture serial"),
        HardwareId::new(HARDWARE_ID).expect("fixture hardware id"),
    );
    verify_partial(
        refresh.trusted(),
        &EcuIdentity {
            vin: &vin,
            ecu_serial: &serial,
            hardware_id: &hardware_id,
            installed_release_counter: 0,
        },
    )
    .expect("the assignment verifies")
    .expect("the fixture assigns an image")
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let server = server();
    let client = client();
    {
        let mut queue = server.responses.lock().expect("response queue");
        queue.clear();
        queue.extend(
            records::parse(rest)
                .iter()
                .map(|(_, r)| keep_redirects_local(r)),
        );
    }
    let base = format!("http://{}/", server.addr);
    if mode & 1 == 0 {
        let url = format!("{base}metadata/timestamp.json");
        if let Ok(bytes) = client
            .runtime
            .block_on(client.fetcher.fetch_bounded(&url, METADATA_LIMIT))
        {
            assert!(
                bytes.len() as u64 <= METADATA_LIMIT,
                "{} bytes of metadata read past the limit",
                bytes.len()
            );
        }
        return;
    }
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let images = scratch.path().join("images");
    let store = ImageStore::new(images.clone(), scratch.path().join("downloads"));
    let repo = HttpRepository::new(
        client.fetcher.clone(),
        &format!("{base}metadata"),
        &format!("{base}targets"),
    );
    let location = format!("{base}targets/{IMAGE_NAME}");
    let fetched = client
        .runtime
        .block_on(store.fetch(&repo, &location, &client.approved));
    match fetched {
        Ok(file) => {
            let bytes = std::fs::read(file.path()).expect("the verified file reads");
            assert!(
                bytes == image(),
                "an image handed out that is not the approved bytes"
            );
        }
        Err(_) => {
            let left = std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0);
            assert_eq!(left, 0, "a failed download left an image file behind");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keep_redirects_local;

    #[test]
    fn redirects_stay_on_this_server() {
        for (given, kept) in [
            (
                &b"HTTP/1.1 302 Found\r\nLocation: http://evil.example/x\r\n\r\n"[..],
                "/redirected",
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302\r\nlocation: //evil.example/\r\n\r\n",
                "/redirected",
            ),
            (
                b"HTTP/1.1 302\r\nLocation: /\t/evil.example/\r\n\r\n",
                "/redirected",
            ),
            (
                b"HTTP/1.1 302\r\nLocation: /targets/a.bin\r\n\r\n",
                "/targets/a.bin",
            ),
        ] {
            let out = String::from_utf8_lossy(&keep_redirects_local(given)).into_owned();
            assert!(out.contains(&format!("location: {kept}\r")), "{out:?}");
            assert!(!out.contains("evil"), "{out:?}");
        }
    }
}
