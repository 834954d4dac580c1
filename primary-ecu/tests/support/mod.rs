//! A small HTTP/1.1 server on 127.0.0.1 for the Primary's tests: fixed replies per path,
//! Range requests, and the faults a hostile or broken network produces (endless bodies,
//! trickled bytes, a connection cut mid-body). It logs every request and keeps POST bodies,
//! answering each POST with 200.
//! Written on raw sockets so each fault is exact.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod world;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uptane_core::testing::RepoFixture;

#[derive(Clone, Debug)]
pub enum Reply {
    Body(Vec<u8>),
    /// Streams this many bytes without a Content-Length.
    Endless(u64),
    /// Sends one byte per interval.
    Trickle(Vec<u8>, Duration),
    /// Announces the whole body, sends the first `after` bytes and closes; later requests
    /// get the body (with Range).
    CutOnce(Vec<u8>, usize),
}

/// One request as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range_from: Option<usize>,
    pub bearer: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Clone, Default)]
pub struct Server {
    files: Arc<Mutex<HashMap<String, Reply>>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// Paths starting with the prefix need this bearer token (401 otherwise).
    guarded: Arc<Mutex<Option<(String, String)>>>,
}

fn version(bytes: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

impl Server {
    pub async fn start() -> (Self, String) {
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

    pub fn put(&self, path: &str, reply: Reply) {
        self.files.lock().unwrap().insert(path.to_string(), reply);
    }

    pub fn guard(&self, prefix: &str, token: &str) {
        *self.guarded.lock().unwrap() = Some((prefix.to_string(), token.to_string()));
    }

    /// Serves `repo`'s metadata under `/metadata/`.
    pub fn publish(&self, repo: &RepoFixture) {
        self.publish_at("/metadata", repo);
    }

    /// Serves `repo`'s metadata under `prefix` (consistent-snapshot names).
    pub fn publish_at(&self, prefix: &str, repo: &RepoFixture) {
        for (i, root) in repo.roots.iter().enumerate() {
            self.put(
                &format!("{prefix}/{}.root.json", i + 1),
                Reply::Body(root.clone()),
            );
        }
        self.put(
            &format!("{prefix}/timestamp.json"),
            Reply::Body(repo.timestamp.clone()),
        );
        self.put(
            &format!("{prefix}/{}.snapshot.json", version(&repo.snapshot)),
            Reply::Body(repo.snapshot.clone()),
        );
        for (role, bytes) in &repo.targets_files {
            let quoted = primary_ecu::repo::quote_role(role);
            self.put(
                &format!("{prefix}/{}.{quoted}.json", version(bytes)),
                Reply::Body(bytes.clone()),
            );
        }
    }

    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
            .into_iter()
            .map(|l| l.path)
            .collect()
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    async fn handle(self, mut socket: tokio::net::TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let text = String::from_utf8_lossy(&request[..head_end]).to_string();
        let mut words = text.split_whitespace();
        let method = words.next().unwrap_or("GET").to_string();
        let path = words.next().unwrap_or("/").to_string();
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let range_from: Option<usize> = header("range").and_then(|r| {
            r.strip_prefix("bytes=")
                .and_then(|r| r.trim_end_matches('-').parse().ok())
        });
        let bearer =
            header("authorization").and_then(|a| a.strip_prefix("Bearer ").map(String::from));
        let mut body = request[head_end..].to_vec();
        let length: usize = header("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        while body.len() < length {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        self.log.lock().unwrap().push(Logged {
            method: method.clone(),
            path: path.clone(),
            range_from,
            bearer: bearer.clone(),
            body,
        });
        let guarded = self.guarded.lock().unwrap().clone();
        if let Some((prefix, token)) = guarded
            && path.starts_with(&prefix)
            && bearer.as_deref() != Some(token.as_str())
        {
            let _ = socket
                .write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
        // A POST gets the reply stored for its path (a credential renewal), or `{}`.
        if method == "POST" && !self.files.lock().unwrap().contains_key(&path) {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                .await;
            return;
        }
        let reply = self.files.lock().unwrap().get(&path).cloned();
        let _ =
            match reply {
                None => socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    )
                    .await,
                Some(Reply::Body(body)) => send_body(&mut socket, body, range_from).await,
                Some(Reply::CutOnce(body, after)) => {
                    self.put(&path, Reply::Body(body.clone()));
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    socket.write_all(head.as_bytes()).await.ok();
                    socket.write_all(&body[..after]).await.ok();
                    socket.flush().await
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

async fn send_body(
    socket: &mut tokio::net::TcpStream,
    body: Vec<u8>,
    range_from: Option<usize>,
) -> std::io::Result<()> {
    let (status, body) = match range_from {
        Some(from) => ("206 Partial Content", body[from.min(body.len())..].to_vec()),
        None => ("200 OK", body),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    socket.write_all(&body).await
}
