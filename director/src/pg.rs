//! How the Director reaches PostgreSQL: the connection string's settings, the limits every
//! connection gets, and TLS, which is either verified or knowingly off, never half of
//! either.
//!
//! The database link carries every spent nonce, every credential and the state the
//! per-vehicle metadata is signed from, so over TCP it is TLS by default, with the
//! server's certificate checked against the roots for the name connected to
//! (libpq's `sslmode=verify-full`). The modes that would accept an unverified certificate or
//! fall back to plaintext when a man in the middle says "no TLS here" (`allow`, `prefer`,
//! `require`, `verify-ca`) are refused. Plaintext is `sslmode=disable`, said out loud, or a
//! Unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use service_runtime::tls::{self, ServerTrust};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::DbError;

/// The settings of a connection string that are the Director's, not the driver's.
const OURS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// What TLS a connection string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// `sslmode=disable`, or a Unix socket (the default there): no TLS.
    Off,
    /// `sslmode=verify-full`, the default over TCP: TLS required, the server's certificate
    /// chaining to `roots` and naming the host connected to.
    Verified {
        /// The certificates the server's must chain to.
        roots: Roots,
        /// `sslcert` and `sslkey`: a client certificate, for a server that asks for one.
        client: Option<(PathBuf, PathBuf)>,
    },
}

/// The roots a PostgreSQL server's certificate is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's (`sslrootcert=system`, or no `sslrootcert`).
    System,
    /// The CA certificates in a PEM file (`sslrootcert=FILE`).
    File(PathBuf),
}

impl std::fmt::Display for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgTls::Off => f.write_str("plaintext (sslmode=disable)"),
            PgTls::Verified { roots, client } => {
                f.write_str("TLS, the server's certificate verified against ")?;
                match roots {
                    Roots::System => f.write_str("the system's roots")?,
                    Roots::File(path) => write!(f, "{}", path.display())?,
                }
                match client {
                    Some((cert, _)) => write!(f, ", client certificate {}", cert.display()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A PostgreSQL server and database, as the Director connects to it.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    tls: PgTls,
    /// `Some` exactly when `tls` is [`PgTls::Verified`].
    connector: Option<MakeRustlsConnect>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A connection string the Director refuses, and why (never with the string itself: it may
/// hold a password).
fn refused(why: impl std::fmt::Display) -> DbError {
    DbError::Settings(why.to_string())
}

/// `url` parsed without reading any file: the driver's settings (with the Director's taken
/// out) and the TLS it asks for.
pub fn settings(url: &str) -> Result<(postgres::Config, PgTls), DbError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ours: [Option<String>; 4] = Default::default();
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        match OURS.iter().position(|o| *o == key) {
            Some(i) => {
                if ours[i].is_some() {
                    return Err(refused(format!("{key} is given twice")));
                }
                ours[i] = Some(percent_decode_str(value).decode_utf8_lossy().into_owned());
            }
            None => kept.push(pair),
        }
    }
    let driver = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let mut config: postgres::Config = driver.parse()?;
    let [mode, root, cert, key] = ours;
    // A `hostaddr` is reached over TCP whatever the host names (the driver connects to it
    // even beside a Unix socket path): it counts as TCP, and beside a socket path it is
    // refused as the contradiction it is.
    let unix = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, postgres::config::Host::Unix(_)));
    if unix && !config.get_hostaddrs().is_empty() {
        return Err(refused(
            "hostaddr names a TCP address beside a Unix socket path: give one or the other",
        ));
    }
    let over_tcp = !config.get_hostaddrs().is_empty()
        || config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, postgres::config::Host::Tcp(_)));
    let tls = match mode.as_deref() {
        Some("disable") => PgTls::Off,
        None if !over_tcp => PgTls::Off,
        Some("verify-full") | None => {
            if !over_tcp {
                return Err(refused(
                    "sslmode=verify-full: TLS does not apply to a Unix socket (leave sslmode out)",
                ));
            }
            let roots = match root.as_deref() {
                None | Some("system") => Roots::System,
                Some("") => return Err(refused("sslrootcert is empty: name a PEM file")),
                Some(file) => Roots::File(PathBuf::from(file)),
            };
            let client = match (cert.clone(), key.clone()) {
                (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
                (None, None) => None,
                _ => {
                    return Err(refused(
                        "sslcert and sslkey go together: give both or neither",
                    ));
                }
            };
            PgTls::Verified { roots, client }
        }
        Some(mode @ ("allow" | "prefer" | "require" | "verify-ca")) => {
            return Err(refused(format!(
                "sslmode={mode} would accept a server whose certificate is not checked for the \
                 host name, or plaintext: use sslmode=verify-full (the default; sslrootcert=FILE \
                 for a private CA) or, on a private network, sslmode=disable"
            )));
        }
        Some(other) => {
            return Err(refused(format!(
                "sslmode={other:?} is not a mode: verify-full (the default) or disable"
            )));
        }
    };
    if tls == PgTls::Off && [&root, &cert, &key].iter().any(|v| v.is_some()) {
        return Err(refused(
            "sslrootcert, sslcert and sslkey need TLS, which this connection string turns off",
        ));
    }
    config.ssl_mode(match tls {
        PgTls::Off => postgres::config::SslMode::Disable,
        PgTls::Verified { .. } => postgres::config::SslMode::Require,
    });
    Ok((config, tls))
}

impl PgTarget {
    /// The server and database `url` names, its TLS files read, with the limits a Director
    /// needs ([`with_limits`]).
    pub fn new(url: &str) -> Result<Self, DbError> {
        let (config, tls) = settings(url)?;
        let connector = match &tls {
            PgTls::Off => None,
            PgTls::Verified { roots, client } => Some(connector(roots, client.as_ref())?),
        };
        if tls == PgTls::Off && !local(&config) {
            tracing::warn!(
                "the connection to PostgreSQL is plaintext (sslmode=disable) to a host that \
                 is not this machine: anyone on the path reads and changes it"
            );
        }
        Ok(Self {
            config: with_limits(config),
            tls,
            connector,
        })
    }

    /// The TLS this target's connections use.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// A new connection (blocking: off the async threads), to a server that takes writes.
    pub fn connect(&self) -> Result<postgres::Client, DbError> {
        let mut client = match &self.connector {
            Some(tls) => self.config.connect(tls.clone())?,
            None => self.config.connect(postgres::NoTls)?,
        };
        // A hot standby cannot take the Director's writes, and its snapshots list no running
        // transaction of the primary, which the event log's followers rely on
        // (`service::events`).
        let standby: bool = client.query_one("SELECT pg_is_in_recovery()", &[])?.get(0);
        if standby {
            return Err(refused(
                "the server is a standby (in recovery): connect to the primary \
                 (target_session_attrs=read-write with several hosts)",
            ));
        }
        Ok(client)
    }
}

/// Whether every address `config` connects to is this machine (a socket, a loopback
/// address); `hostaddr`, when given, is where the driver connects.
fn local(config: &postgres::Config) -> bool {
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    }
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            postgres::config::Host::Unix(_) => true,
            postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        })
}

/// The TLS connector for `roots`, presenting `client` (certificate and key files) when the
/// server asks.
fn connector(
    roots: &Roots,
    client: Option<&(PathBuf, PathBuf)>,
) -> Result<MakeRustlsConnect, DbError> {
    let trust = match roots {
        Roots::System => ServerTrust::System,
        Roots::File(path) => ServerTrust::Roots(Arc::new(
            tls::roots_from_pem_file(path).map_err(|e| refused(format!("sslrootcert: {e}")))?,
        )),
    };
    let identity = client
        .map(|(cert, key)| tls::Identity::from_pem_files(cert, key))
        .transpose()
        .map_err(|e| refused(format!("sslcert/sslkey: {e}")))?;
    let mut config =
        tls::client_config(&trust, identity.as_ref()).map_err(|e| refused(format!("TLS: {e}")))?;
    // PostgreSQL's protocol name (servers from 17 on check it when a client offers ALPN).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(MakeRustlsConnect::new(config))
}

/// `config` with the limits a Director needs unless the connection string sets its own: a
/// connection attempt and a lock wait end (a replica partitioned while holding a vehicle's
/// row does not stall the others' writers for hours), statements and idle transactions are
/// bounded, and keepalives notice a dead peer.
fn with_limits(mut config: postgres::Config) -> postgres::Config {
    use std::time::Duration;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // A peer that vanished without a reset (a partition, a machine lost) is noticed in about
    // a minute, whether the connection is idle (keepalives) or waiting for data it sent to be
    // acknowledged (the user timeout), not after the operating system's 11 minutes.
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(30));
    config.keepalives_interval(Duration::from_secs(10));
    config.keepalives_retries(3);
    config.tcp_user_timeout(Duration::from_secs(60));
    // Each limit the connection string's `options` does not set itself.
    let given = config.get_options().unwrap_or("").to_owned();
    let mut options = given.clone();
    for (name, value) in [
        ("lock_timeout", "10s"),
        ("statement_timeout", "60s"),
        ("idle_in_transaction_session_timeout", "300s"),
    ] {
        if !given.contains(name) {
            options = format!("{options} -c {name}={value}");
        }
    }
    config.options(options.trim());
    config
}

/// `url` as printed: user, host, port and database, without any password.
pub fn redacted(url: &str) -> String {
    match settings(url) {
        // A host with an `@` is a password with an unescaped `@` read as a host.
        Ok((config, _))
            if config
                .get_hosts()
                .iter()
                .any(|h| matches!(h, postgres::config::Host::Tcp(name) if name.contains('@'))) =>
        {
            "postgres://…".into()
        }
        Ok((config, tls)) => {
            let host = config
                .get_hosts()
                .first()
                .map(|h| match h {
                    postgres::config::Host::Tcp(h) => h.clone(),
                    postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default();
            let port = config.get_ports().first().copied().unwrap_or(5432);
            let mode = match tls {
                PgTls::Off => "?sslmode=disable",
                PgTls::Verified { .. } => "",
            };
            format!(
                "postgres://{}@{host}:{port}/{}{mode}",
                config.get_user().unwrap_or(""),
                config.get_dbname().unwrap_or("")
            )
        }
        Err(_) => "postgres://…".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use service_runtime::pki::Ca;
    use service_runtime::tls::ClientAuth;
    use uptane_tests::pg_mitm::{PgAnswer, PgMitm, PgSeen};

    use super::*;

    fn refusal(url: &str) -> String {
        match settings(url) {
            Err(DbError::Settings(why)) => why,
            other => panic!("{url}: expected a refusal, got {other:?}"),
        }
    }
    #[test]
    fn tcp_connections_are_verified_tls_unless_disabled_out_loud() {
        let (config, tls) = settings("postgres://d@db.internal/director").unwrap();
        assert_eq!(
            tls,
            PgTls::Verified {
                roots: Roots::System,
                client: None
            }
        );
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Require);
        let (_, tls) = settings(
            "postgres://d@db.internal/director?connect_timeout=3&sslrootcert=%2Fetc%2Fca.pem&sslcert=c.pem&sslkey=k.pem",
        )
        .unwrap();
        assert_eq!(
            tls,
            PgTls::Verified {
                roots: Roots::File("/etc/ca.pem".into()),
                client: Some(("c.pem".into(), "k.pem".into()))
            }
        );
        let (config, tls) = settings("postgres://d@127.0.0.1/director?sslmode=disable").unwrap();
        assert_eq!(tls, PgTls::Off);
        assert_eq!(config.get_ssl_mode(), postgres::config::SslMode::Disable);
        // A Unix socket has no network to protect.
        let (_, tls) = settings("postgres://d@%2Frun%2Fpostgresql/director").unwrap();
        assert_eq!(tls, PgTls::Off);
        // A TCP address given as hostaddr is TCP, whatever the host list says.
        for url in [
            "postgres://d:pw@/director?hostaddr=10.0.0.5",
            "postgres://d@localhost/director?hostaddr=10.0.0.5",
        ] {
            let (config, tls) = settings(url).unwrap();
            assert_ne!(tls, PgTls::Off, "{url}");
            assert!(!local(&config), "{url}");
        }
        assert!(
            refusal("postgres://d@%2Frun%2Fpostgresql/director?hostaddr=10.0.0.5")
                .contains("beside a Unix socket")
        );
    }

    #[test]
    fn modes_that_accept_an_unchecked_server_or_plaintext_are_refused() {
        for mode in ["allow", "prefer", "require", "verify-ca"] {
            let why = refusal(&format!("postgres://d:s3cret@db/director?sslmode={mode}"));
            assert!(
                why.contains(&format!("sslmode={mode} would accept")),
                "{why}"
            );
            assert!(
                !why.contains("s3cret"),
                "the password is never echoed: {why}"
            );
        }
        assert!(refusal("postgres://d@db/x?sslmode=verify").contains("is not a mode"));
        assert!(refusal("postgres://d@db/x?sslcert=c.pem").contains("go together"));
        assert!(
            refusal("postgres://d@db/x?sslmode=disable&sslrootcert=ca.pem").contains("turns off")
        );
        assert!(
            refusal("postgres://d@db/x?sslmode=disable&sslmode=verify-full")
                .contains("given twice")
        );
        assert!(
            refusal("postgres://d@%2Frun%2Fpostgresql/x?sslmode=verify-full")
                .contains("Unix socket")
        );
        let missing = PgTarget::new("postgres://d@db/x?sslrootcert=/nonexistent/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("sslrootcert: /nonexistent/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn the_limits_the_connection_string_does_not_set_are_added() {
        let (config, _) = settings("postgres://d@db/x?options=-c%20lock_timeout%3D300ms").unwrap();
        let options = with_limits(config).get_options().unwrap().to_owned();
        assert_eq!(
            options,
            "-c lock_timeout=300ms -c statement_timeout=60s -c idle_in_transaction_session_timeout=300s"
        );
    }

    #[test]
    fn printed_without_password_and_with_plaintext_said() {
        assert_eq!(
            redacted("postgres://d:s3cret@db:6432/director?sslrootcert=ca.pem"),
            "postgres://d@db:6432/director"
        );
        assert_eq!(
            redacted("postgres://d:s3cret@db/director?sslmode=disable"),
            "postgres://d@db:5432/director?sslmode=disable"
        );
        assert_eq!(redacted("postgres://d:s3@cret@db/director"), "postgres://…");
    }

    /// Connects through `mitm` trusting `dir`/ca.pem; the error and what the man in the
    /// middle saw.
    fn connect(mitm: &PgMitm, dir: &std::path::Path, extra: &str) -> (String, PgSeen) {
        let url = format!(
            "postgres://d:s3cret@127.0.0.1:{}/x?sslrootcert={}{extra}",
            mitm.port,
            dir.join("ca.pem").display()
        );
        let why = match PgTarget::new(&url).unwrap().connect() {
            Ok(_) => panic!("connected to a server that is not the database"),
            Err(e) => e.to_string(),
        };
        (why, mitm.seen(Duration::from_secs(30)).unwrap())
    }

    #[test]
    fn a_server_that_is_not_the_database_is_refused_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("database CA").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();

        // Stripping TLS: "no TLS here" is not taken as leave to go on in plaintext.
        let mitm = PgMitm::start(PgAnswer::StripTls).unwrap();
        let (why, seen) = connect(&mitm, dir.path(), "");
        assert!(why.contains("server does not support TLS"), "{why}");
        assert_eq!(seen, PgSeen::ClosedAfterRefusal);

        // A man in the middle presenting `ca`'s certificate for `name`: refused with
        // `expected`, at the handshake.
        let presenting = |ca: &Ca, name: &str, expected: &str| {
            let tls = PgMitm::tls(&ca.issue_server(&[name]).unwrap(), &ClientAuth::None);
            let mitm = PgMitm::start(PgAnswer::Tls(Box::new(tls.unwrap()))).unwrap();
            let (why, seen) = connect(&mitm, dir.path(), "");
            assert!(why.contains(expected), "{why}");
            assert!(matches!(seen, PgSeen::HandshakeFailed(_)), "{seen:?}");
            assert!(!why.contains("s3cret"), "{why}");
        };
        // A certificate of another CA.
        let other = Ca::generate("attacker").unwrap();
        presenting(
            &other,
            "127.0.0.1",
            "invalid peer certificate: UnknownIssuer",
        );
        // The right CA's certificate, for another host.
        presenting(
            &ca,
            "db.internal",
            "certificate not valid for name \"127.0.0.1\"",
        );
    }

    #[test]
    fn a_client_certificate_is_presented_when_given() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("database CA").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let client = dir.path().join("client");
        ca.issue_client("director").unwrap().write(&client).unwrap();
        let roots = tls::roots_from_pem_file(&dir.path().join("ca.pem")).unwrap();
        let tls = PgMitm::tls(
            &ca.issue_server(&["127.0.0.1"]).unwrap(),
            &ClientAuth::Optional(Arc::new(roots)),
        );
        let mitm = PgMitm::start(PgAnswer::Tls(Box::new(tls.unwrap()))).unwrap();
        let (_, seen) = connect(
            &mitm,
            dir.path(),
            &format!(
                "&sslcert={}&sslkey={}",
                client.join("cert.pem").display(),
                client.join("key.pem").display()
            ),
        );
        assert_eq!(
            seen,
            PgSeen::Handshake {
                client_certificates: 1
            }
        );
    }
}
