//! The repository client against a real HTTP server on 127.0.0.1 serving metadata made by
//! `uptane-core`'s builders.

#![allow(clippy::unwrap_used)] // test support code outside #[test] functions

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use primary_ecu::repo::{
    ClientError, FetchError, Fetcher, MetadataDir, RefreshOutcome, Updater, download_verified,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uptane_core::error::{AttackKind, UpdateError};
use uptane_core::sign::delegated_role;
use uptane_core::testing::{RepoFixture, key, now};
use uptane_core::trusted::{ImageRepo, Limits};

#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Streams this many bytes without a Content-Length.
    Endless(u64),
    /// Sends one byte per interval.
    Trickle(Vec<u8>, Duration),
}

#[derive(Clone, Default)]
struct Server {
    files: Arc<Mutex<HashMap<String, Reply>>>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    async fn start() -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = Server::default();
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(s.clone().handle(socket));
            }
        });
        (server, base)
    }

    fn put(&self, path: &str, reply: Reply) {
        self.files.lock().unwrap().insert(path.to_string(), reply);
    }

    fn publish(&self, repo: &RepoFixture) {
        for (i, root) in repo.roots.iter().enumerate() {
            self.put(
                &format!("/metadata/{}.root.json", i + 1),
                Reply::Body(root.clone()),
            );
        }
        self.put(
            "/metadata/timestamp.json",
            Reply::Body(repo.timestamp.clone()),
        );
        let version = |bytes: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            v["signed"]["version"].as_u64().unwrap()
        };
        self.put(
            &format!("/metadata/{}.snapshot.json", version(&repo.snapshot)),
            Reply::Body(repo.snapshot.clone()),
        );
        for (role, bytes) in &repo.targets_files {
            let quoted = primary_ecu::repo::quote_role(role);
            self.put(
                &format!("/metadata/{}.{quoted}.json", version(bytes)),
                Reply::Body(bytes.clone()),
            );
        }
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    async fn handle(self, mut socket: tokio::net::TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&request).to_string();
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let range_from: Option<usize> = text.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("range: bytes=")
                .and_then(|r| r.trim_end_matches('-').parse().ok())
        });
        self.log.lock().unwrap().push(path.clone());
        let reply = self.files.lock().unwrap().get(&path).cloned();
        let _ = match reply {
            None => {
                socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await
            }
            Some(Reply::Body(body)) => {
                let (status, body) = match range_from {
                    Some(from) => ("206 Partial Content", body[from.min(body.len())..].to_vec()),
                    None => ("200 OK", body),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await.ok();
                socket.write_all(&body).await
            }
            Some(Reply::Endless(total)) => {
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    .await
                    .ok();
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                while sent < total {
                    if socket.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                }
                Ok(())
            }
            Some(Reply::Trickle(body, interval)) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                socket.write_all(head.as_bytes()).await.ok();
                for b in body {
                    if socket.write_all(&[b]).await.is_err() {
                        break;
                    }
                    socket.flush().await.ok();
                    tokio::time::sleep(interval).await;
                }
                Ok(())
            }
        };
        let _ = socket.shutdown().await;
    }
}

fn fetcher() -> Fetcher {
    Fetcher::new(Duration::from_secs(10), 0).unwrap()
}

fn updater(base: &str, dir: &std::path::Path) -> Result<Updater<ImageRepo>, ClientError> {
    Updater::new(
        &format!("{base}/metadata"),
        MetadataDir::new(dir),
        fetcher(),
        now(),
        Limits::default(),
    )
}

fn pinned(repo: &RepoFixture) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.json"), repo.initial_root()).unwrap();
    dir
}

fn json_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn first_refresh_makes_the_tuf_requests_in_order_and_keeps_exact_bytes() {
    let mut repo = RepoFixture::new();
    repo.add_target("a.bin", b"aaa", None);
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let mut up = updater(&base, dir.path()).unwrap();
    assert_eq!(up.refresh().await.unwrap(), RefreshOutcome::Updated);
    assert_eq!(
        server.take_log(),
        [
            "/metadata/2.root.json",
            "/metadata/timestamp.json",
            "/metadata/2.snapshot.json",
            "/metadata/2.targets.json"
        ]
    );
    assert_eq!(
        std::fs::read(dir.path().join("timestamp.json")).unwrap(),
        repo.timestamp
    );
    assert_eq!(
        std::fs::read(dir.path().join("snapshot.json")).unwrap(),
        repo.snapshot
    );
    assert_eq!(
        json_files(dir.path()),
        [
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );

    // Nothing changed: only root and timestamp are asked for, local metadata is reused.
    let mut up = updater(&base, dir.path()).unwrap();
    assert_eq!(up.refresh().await.unwrap(), RefreshOutcome::Unchanged);
    assert_eq!(
        server.take_log(),
        ["/metadata/2.root.json", "/metadata/timestamp.json"]
    );
    assert!(
        up.trusted()
            .targets()
            .unwrap()
            .targets
            .contains_key("a.bin")
    );
}

#[tokio::test]
async fn refused_metadata_is_not_persisted() {
    let mut repo = RepoFixture::new();
    repo.publish_timestamp_only();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    updater(&base, dir.path()).unwrap().refresh().await.unwrap();
    let trusted = std::fs::read(dir.path().join("timestamp.json")).unwrap();

    let mut old = RepoFixture::new();
    old.expires = repo.expires;
    server.put(
        "/metadata/timestamp.json",
        Reply::Body(old.timestamp.clone()),
    );
    let err = updater(&base, dir.path())
        .unwrap()
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        ClientError::Update { source, .. } if matches!(**source, UpdateError::Rollback { .. })
    ));
    assert_eq!(err.attack(), Some(AttackKind::Rollback));
    assert_eq!(
        std::fs::read(dir.path().join("timestamp.json")).unwrap(),
        trusted
    );
}

#[tokio::test]
async fn endless_metadata_is_cut_at_the_limit() {
    let repo = RepoFixture::new();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    server.put(
        "/metadata/timestamp.json",
        Reply::Endless(100 * 1024 * 1024),
    );
    let dir = pinned(&repo);
    let err = updater(&base, dir.path())
        .unwrap()
        .refresh()
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::Fetch(FetchError::TooLarge { limit: 16_384, .. })
    ));
    assert_eq!(err.attack(), Some(AttackKind::EndlessData));
    assert_eq!(json_files(dir.path()), ["root.json"]);
}

#[tokio::test]
async fn delegated_role_names_are_percent_encoded() {
    let mut repo = RepoFixture::new();
    let k = key(30);
    repo.delegate(
        "targets",
        delegated_role("/a?b#c", &[k.public_key()], 1, &["*"], false),
        vec![k],
    );
    repo.add_delegated_target("/a?b#c", "x.bin", b"xx");
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let mut up = updater(&base, dir.path()).unwrap();
    up.refresh().await.unwrap();
    server.take_log();
    let target = up.find_target("x.bin").await.unwrap();
    assert_eq!(target.role(), "/a?b#c");
    assert_eq!(server.take_log(), ["/metadata/1.%2Fa%3Fb%23c.json"]);
    assert!(dir.path().join("%2Fa%3Fb%23c.json").exists());
}

#[tokio::test]
async fn target_download_verifies_and_leaves_nothing_on_failure() {
    let mut repo = RepoFixture::new();
    repo.add_target("dir/a.bin", b"good bytes", None);
    repo.publish();
    let (server, base) = Server::start().await;
    server.publish(&repo);
    let dir = pinned(&repo);
    let out = tempfile::tempdir().unwrap();
    let mut up = updater(&base, dir.path()).unwrap();
    up.refresh().await.unwrap();
    let target = up.find_target("dir/a.bin").await.unwrap();
    let url = up.target_url(&format!("{base}/targets"), "dir/a.bin", target.info());
    let hash = &target.info().hashes["sha256"];
    assert_eq!(url, format!("{base}/targets/dir/{hash}.a.bin"));

    let path = url.strip_prefix(&base).unwrap().to_string();
    server.put(&path, Reply::Body(b"evil bytes".to_vec()));
    let dest = out.path().join("a.bin");
    let err = download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.attack(), Some(AttackKind::ArbitrarySoftware));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    server.put(&path, Reply::Body(b"good bytes and more".to_vec()));
    let err = download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.attack(), Some(AttackKind::EndlessData));
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);

    server.put(&path, Reply::Body(b"good bytes".to_vec()));
    download_verified(&fetcher(), &url, target.info(), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"good bytes");
}

#[tokio::test]
async fn resumes_a_download_with_a_range_request() {
    let body = b"0123456789abcdef".to_vec();
    let (server, base) = Server::start().await;
    server.put("/t", Reply::Body(body.clone()));
    let hashes = uptane_core::hash::standard_hashes(&body);
    let mut verifier = uptane_core::hash::StreamVerifier::new(Some(16), &hashes).unwrap();
    verifier.update(&body[..6]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    std::fs::write(&path, &body[..6]).unwrap();
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .unwrap();
    fetcher()
        .download_to(&format!("{base}/t"), &mut file, &mut verifier, 16)
        .await
        .unwrap();
    verifier.finish().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
}

#[tokio::test]
async fn a_download_slower_than_the_minimum_is_abandoned() {
    let (server, base) = Server::start().await;
    server.put(
        "/slow",
        Reply::Trickle(vec![b'x'; 200], Duration::from_millis(20)),
    );
    let slow = Fetcher::with_grace(
        Duration::from_secs(10),
        1_000_000,
        Duration::from_millis(100),
    )
    .unwrap();
    let err = slow
        .fetch_bounded(&format!("{base}/slow"), 1000)
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooSlow { .. }));
    assert_eq!(
        ClientError::from(err).attack(),
        Some(AttackKind::SlowRetrieval)
    );
}
