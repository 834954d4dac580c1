//! A TCP relay on 127.0.0.1 that stands for a network link: it can be cut (every open
//! connection reset), stalled (bytes held), slowed, made to corrupt a byte, pointed at a new
//! target when the far end restarts on another port, and tapped: a sniffer keeps a copy of
//! every byte that crosses it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct LinkState {
    /// Where new connections go: the first of these, in turn, that accepts the connection
    /// (one target: a link; several: a TCP load balancer over replicas).
    targets: Mutex<Vec<String>>,
    next: std::sync::atomic::AtomicUsize,
    stalled: AtomicBool,
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    chunk_delay_micros: std::sync::atomic::AtomicU64,
    relayed_back: std::sync::atomic::AtomicU64,
    capture: Mutex<Option<Vec<u8>>>,
    /// Flip a bit in the next read passed on towards the target (a corrupted frame).
    corrupt_next: AtomicBool,
}

/// Most bytes a tap keeps (both directions together); the rest is dropped.
const CAPTURE_LIMIT: usize = 64 << 20;

impl LinkState {
    fn cut(&self) {
        if let Ok(mut open) = self.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A relay from its own address to a target address.
#[derive(Debug)]
pub struct LinkProxy {
    addr: String,
    state: Arc<LinkState>,
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: Arc<LinkState>, back: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while state.stalled.load(Ordering::Relaxed) && !state.stopped.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let delay = state.chunk_delay_micros.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_micros(delay));
        }
        if let Ok(mut capture) = state.capture.lock()
            && let Some(capture) = capture.as_mut()
        {
            let room = CAPTURE_LIMIT.saturating_sub(capture.len());
            capture.extend_from_slice(&buf[..n.min(room)]);
        }
        if !back && state.corrupt_next.swap(false, Ordering::SeqCst) {
            buf[n / 2] ^= 0x10;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if back {
            state.relayed_back.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl LinkProxy {
    /// Starts relaying to `target` (`host:port`).
    pub fn start(target: &str) -> std::io::Result<Self> {
        Self::balance(&[target])
    }

    /// Starts relaying each new connection to the next of `targets` in turn that accepts it,
    /// as a TCP load balancer in front of replicas does (a replica that died refuses, and
    /// its share goes to the others).
    pub fn balance(targets: &[&str]) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(LinkState {
            targets: Mutex::new(targets.iter().map(|t| t.to_string()).collect()),
            ..LinkState::default()
        });
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if shared.stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = incoming else { continue };
                let targets = shared.targets.lock().map(|t| t.clone()).unwrap_or_default();
                let first = shared.next.fetch_add(1, Ordering::Relaxed);
                let connected = (0..targets.len())
                    .find_map(|i| TcpStream::connect(&targets[(first + i) % targets.len()]).ok());
                let Some(server) = connected else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                if let Ok(mut open) = shared.open.lock() {
                    open.push(c3);
                    open.push(s3);
                }
                let (a, b) = (Arc::clone(&shared), Arc::clone(&shared));
                std::thread::spawn(move || pump(client, s2, a, false));
                std::thread::spawn(move || pump(server, c2, b, true));
            }
        });
        Ok(Self { addr, state })
    }

    /// Where to connect to reach the target through the link.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Points the link at a new target (new connections only).
    pub fn set_target(&self, target: &str) {
        if let Ok(mut t) = self.state.targets.lock() {
            *t = vec![target.to_string()];
        }
    }

    /// Resets every open connection.
    pub fn cut(&self) {
        self.state.cut();
    }

    /// Slows the link: each read of up to 64 KiB waits this long before it is passed on.
    pub fn set_chunk_delay(&self, delay: Duration) {
        self.state
            .chunk_delay_micros
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Bytes passed from the target back to the clients so far.
    pub fn bytes_relayed_back(&self) -> u64 {
        self.state.relayed_back.load(Ordering::Relaxed)
    }

    /// Starts keeping a copy of every byte that crosses the link, either way (a sniffer).
    pub fn tap(&self) {
        if let Ok(mut capture) = self.state.capture.lock() {
            *capture = Some(Vec::new());
        }
    }

    /// Stops keeping copies, and drops what was kept.
    pub fn untap(&self) {
        if let Ok(mut capture) = self.state.capture.lock() {
            *capture = None;
        }
    }

    /// What the sniffer saw since [`LinkProxy::tap`] (at most 64 MiB).
    pub fn captured(&self) -> Vec<u8> {
        self.state
            .capture
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .unwrap_or_default()
    }

    /// Flips one bit in the next read passed on towards the target (bytes corrupted in
    /// transit, once).
    pub fn corrupt_next(&self) {
        self.state.corrupt_next.store(true, Ordering::SeqCst);
    }

    /// Holds (or releases) every byte in flight.
    pub fn set_stalled(&self, stalled: bool) {
        self.state.stalled.store(stalled, Ordering::Relaxed);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Relaxed);
        self.state.cut();
        // Wakes the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(&self.addr);
    }
}
