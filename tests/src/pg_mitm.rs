//! A man in the middle on a Director's link to PostgreSQL: a listener on 127.0.0.1 that
//! answers PostgreSQL's TLS request (`SSLRequest`) as the attacker chooses, and reports what
//! the client did. It never relays to a real server: what is tested is that the Director
//! sends nothing (no startup message, no password, no query) to a peer that is not its
//! database.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// How the attacker answers.
#[derive(Debug)]
pub enum PgAnswer {
    /// "No TLS here" (`N`), hoping the client goes on in plaintext.
    StripTls,
    /// "TLS" (`S`), then a handshake with this server configuration.
    Tls(Box<rustls::ServerConfig>),
}

/// What the man in the middle saw of its one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgSeen {
    /// After `N`, the client closed without sending a byte more.
    ClosedAfterRefusal,
    /// The client sent this many bytes in plaintext after `N`, or did not ask for TLS.
    PlaintextSent(usize),
    /// After `N`, the client neither sent anything nor closed (within 30 s).
    NoAnswer(String),
    /// The TLS handshake failed (the client refused the certificate).
    HandshakeFailed(String),
    /// The TLS handshake completed, with this many client certificates.
    Handshake {
        /// Certificates the client presented.
        client_certificates: usize,
    },
}

/// The listener; it takes one connection.
#[derive(Debug)]
pub struct PgMitm {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Receiver<PgSeen>,
}

impl PgMitm {
    /// Listens on 127.0.0.1, answering the first client as `answer` says.
    pub fn start(answer: PgAnswer) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (report, seen) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut request = [0u8; 8];
            if stream.read_exact(&mut request).is_err() {
                return;
            }
            // PostgreSQL's SSLRequest: length 8, code 80877103. Anything else is a client
            // that went on without asking for TLS: a startup message in plaintext.
            if request != [0, 0, 0, 8, 4, 210, 22, 47] {
                let _ = report.send(PgSeen::PlaintextSent(request.len()));
                return;
            }
            let outcome = match answer {
                PgAnswer::StripTls => {
                    let _ = stream.write_all(b"N");
                    match stream.read(&mut [0u8; 4096]) {
                        Ok(0) => PgSeen::ClosedAfterRefusal,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            PgSeen::ClosedAfterRefusal
                        }
                        Err(e) => PgSeen::NoAnswer(e.to_string()),
                        Ok(n) => PgSeen::PlaintextSent(n),
                    }
                }
                PgAnswer::Tls(config) => {
                    let _ = stream.write_all(b"S");
                    match rustls::ServerConnection::new(Arc::new(*config)) {
                        Ok(mut conn) => match conn.complete_io(&mut stream) {
                            Ok(_) => PgSeen::Handshake {
                                client_certificates: conn.peer_certificates().map_or(0, <[_]>::len),
                            },
                            Err(e) => PgSeen::HandshakeFailed(e.to_string()),
                        },
                        Err(e) => PgSeen::HandshakeFailed(e.to_string()),
                    }
                }
            };
            let _ = report.send(outcome);
        });
        Ok(Self { port, seen })
    }

    /// What it saw of its client (waits up to `limit`).
    pub fn seen(&self, limit: Duration) -> Result<PgSeen, String> {
        self.seen.recv_timeout(limit).map_err(|e| match e {
            RecvTimeoutError::Timeout => "no client came".to_string(),
            RecvTimeoutError::Disconnected => "the client left before the TLS request".to_string(),
        })
    }

    /// A server configuration presenting `identity`, as PostgreSQL's (ALPN `postgresql`).
    pub fn tls(
        identity: &service_runtime::pki::CertifiedKey,
        auth: &service_runtime::tls::ClientAuth,
    ) -> Result<rustls::ServerConfig, String> {
        let identity = identity.identity().map_err(|e| e.to_string())?;
        let mut config =
            service_runtime::tls::server_config(&identity, auth).map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(config)
    }
}
