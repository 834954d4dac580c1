//! TLS for every link, with rustls only: identities read from PEM files, server
//! configurations whose certificate reloads on SIGHUP, what a connection's client proved
//! ([`PeerIdentity`]), client configurations that trust a CA or pin one exact certificate,
//! and the gRPC side of the Secondary link. The HTTP servers' accept loop is in
//! [`crate::http`].
//!
//! Two ways of authenticating a peer are used, each where it fits:
//! - a **CA**: the servers' certificates, and suppliers' upload certificates, chain to a root
//!   the client (or the Image repository) is given;
//! - a **pinned fingerprint** (SHA-256 of the certificate): a device's self-signed identity
//!   (a Primary, a Secondary) pinned by its peer at provisioning, as SSH pins host keys. The
//!   TLS handshake proves the peer holds the key; the fingerprint says which key.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A fingerprint is not 64 hex digits.
    #[error("{0:?} is not a certificate fingerprint (64 hex digits, SHA-256)")]
    Fingerprint(String),
}

/// The one cryptographic provider every TLS configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SHA-256 of a certificate (DER): what a pinned peer is known by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        Self(Sha256::digest(cert.as_ref()).into())
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = TlsError;
    fn from_str(text: &str) -> Result<Self, TlsError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes)
            .map_err(|_| TlsError::Fingerprint(text.chars().take(80).collect()))?;
        Ok(Self(bytes))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Certificates in PEM text.
pub fn certificates_from_pem(
    what: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_string(),
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// From PEM text: the certificate chain, and the key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = certificates_from_pem("certificate", cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            what: "private key".into(),
            reason: e.to_string(),
        })?;
        Ok(Self { certs, key })
    }

    /// From PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            TlsError::Pem { what, reason } => TlsError::Pem {
                what: format!(
                    "{} ({what})",
                    if what == "certificate" { cert } else { key }.display()
                ),
                reason,
            },
            other => other,
        })
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.certs[0])
    }

    /// The PEM text of the certificate chain and of the key, for clients that take PEM.
    pub fn to_pem(&self) -> (String, String) {
        let mut cert = String::new();
        for c in &self.certs {
            cert.push_str(&pem_block("CERTIFICATE", c.as_ref()));
        }
        let key = pem_block("PRIVATE KEY", self.key.secret_der());
        (cert, key)
    }
}

/// A PEM block.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use std::fmt::Write as _;
    let encoded = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Roots (CA certificates) from a PEM file.
pub fn roots_from_pem_file(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(&path.display().to_string(), &pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Whether, and how, a server asks clients for a certificate.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// It does not.
    None,
    /// Optional; a certificate presented must chain to these roots (suppliers' upload
    /// certificates).
    Optional(Arc<RootCertStore>),
    /// Optional; any certificate is accepted once the client proved it holds its key, and
    /// the application decides by its [`Fingerprint`] (vehicles pinned at registration, a
    /// Primary pinned by its Secondaries).
    Pinned,
}

/// A server's TLS configuration (TLS 1.2 and 1.3, the provider's safe defaults, ALPN h2 and
/// http/1.1).
pub fn server_config(identity: &Identity, auth: &ClientAuth) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::Pinned => builder.with_client_cert_verifier(Arc::new(ProofOfPossession {
            provider,
            hints: Vec::new(),
        })),
    };
    let mut config = builder.with_single_cert(identity.certs.clone(), identity.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts any client certificate whose key the client proves it holds (the handshake
/// signature); which certificate it is, the application checks by fingerprint.
#[derive(Debug)]
struct ProofOfPossession {
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for ProofOfPossession {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server certificate pinned by fingerprint: the one certificate a client accepts,
/// whatever name or chain it carries.
#[derive(Debug)]
struct PinnedServer {
    provider: Arc<CryptoProvider>,
    pinned: Fingerprint,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity) == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The operating system's roots, read at the first handshake that needs them rather than
/// when a client is built: a client that only talks plaintext (the conformance client and
/// the tests, with `--insecure`) never reads the system's ~140 certificates, which took
/// about a millisecond of every refresh the peer bench times. Each check is the platform
/// verifier's. If the system has no roots, the handshake fails with its error (logged) and
/// the next handshake reads the system's certificates again, so roots installed later are
/// found without a restart.
#[derive(Debug)]
struct SystemRoots {
    provider: Arc<CryptoProvider>,
    verifier: OnceLock<rustls_platform_verifier::Verifier>,
}

impl SystemRoots {
    fn verifier(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        if let Some(verifier) = self.verifier.get() {
            return Ok(verifier);
        }
        let built = rustls_platform_verifier::Verifier::new(Arc::clone(&self.provider))
            .inspect_err(
                |e| tracing::warn!(error = %e, "reading the operating system's CA certificates"),
            )?;
        Ok(self.verifier.get_or_init(|| built))
    }
}

impl ServerCertVerifier for SystemRoots {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // What the platform verifier answers, without reading the roots to answer it.
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Which server a client trusts.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Certificates that chain to the operating system's roots (a server with a public
    /// certificate), for the name connected to.
    System,
    /// Certificates that chain to these roots, for the name connected to.
    Roots(Arc<RootCertStore>),
    /// Exactly this certificate.
    Pinned(Fingerprint),
}

/// A client's TLS configuration, presenting `identity` when a server asks for one.
pub fn client_config(
    trust: &ServerTrust,
    identity: Option<&Identity>,
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        ServerTrust::System => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SystemRoots {
                provider,
                verifier: OnceLock::new(),
            })),
        ServerTrust::Roots(roots) => builder.with_root_certificates(Arc::clone(roots)),
        ServerTrust::Pinned(pinned) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServer {
                    provider,
                    pinned: *pinned,
                }))
        }
    };
    let mut config = match identity {
        Some(identity) => {
            builder.with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What a connection's client proved: the fingerprint of the certificate it presented and
/// showed it holds the key of (and which, for [`ClientAuth::Optional`], chains to the roots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The client certificate's fingerprint, if it presented one.
    pub fingerprint: Option<Fingerprint>,
}

impl PeerIdentity {
    /// The identity of the peer of a server-side connection.
    pub fn of(connection: &rustls::ServerConnection) -> Self {
        Self {
            fingerprint: connection
                .peer_certificates()
                .and_then(|c| c.first())
                .map(Fingerprint::of),
        }
    }
}

/// A server's TLS configuration kept current: the certificate and key are read again from
/// their files on SIGHUP, so a renewed certificate takes effect without a restart (a bad
/// file is logged and the current one kept).
#[derive(Debug, Clone)]
pub struct ServerTls {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// A fixed configuration.
    pub fn fixed(config: ServerConfig) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(config))),
        }
    }

    /// The configuration from `cert` and `key`, reloaded on SIGHUP (with `auth` unchanged).
    pub fn reloading(cert: &Path, key: &Path, auth: ClientAuth) -> Result<Self, TlsError> {
        let identity = Identity::from_pem_files(cert, key)?;
        let tls = Self::fixed(server_config(&identity, &auth)?);
        let (cert, key, handle) = (cert.to_path_buf(), key.to_path_buf(), tls.clone());
        tokio::spawn(async move {
            let Ok(mut hangups) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hangups.recv().await.is_some() {
                let reloaded = Identity::from_pem_files(&cert, &key)
                    .and_then(|identity| server_config(&identity, &auth));
                match reloaded {
                    Ok(config) => {
                        handle.replace(config);
                        tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded"),
                }
            }
        });
        Ok(tls)
    }

    /// Puts `config` in force for new connections.
    pub fn replace(&self, config: ServerConfig) {
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(config);
        }
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connector for HTTP/2 clients that take one (tonic's `Endpoint::connect_with_connector`):
/// every connection goes to `address` over TLS with `config`, whatever URI it is asked for.
pub fn connector(
    address: String,
    server_name: &'static str,
    config: Arc<ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<
        Output = std::io::Result<
            hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        >,
    > + Send,
> + Clone
+ Send {
    tower::service_fn(move |_: http::Uri| {
        let (address, config) = (address.clone(), Arc::clone(&config));
        async move {
            let stream = connect(&address, server_name, config).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// Connects to `address` over TLS with `config`, presenting `server_name` (what a
/// [`ServerTrust::Roots`] client checks the certificate against).
pub async fn connect(
    address: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = tokio::net::TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// A server-side TLS connection, telling tonic what its client proved (tonic puts the
/// [`PeerIdentity`] into every request's extensions).
#[derive(Debug)]
pub struct TlsConnection(
    tokio_rustls::server::TlsStream<crate::idle::Idle<tokio::net::TcpStream>>,
    /// The connection's slot under the server's connection cap, given back when it drops.
    #[allow(dead_code)]
    tokio::sync::OwnedSemaphorePermit,
);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        PeerIdentity::of(self.0.get_ref().1)
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// TLS connections accepted on `listener` for a gRPC server within the default
/// [`ServerLimits`](crate::http::ServerLimits)' connection cap and idle timeout (the gRPC
/// server serves the connections: the limits of `crate::http`'s loop on requests and
/// responses are not applied).
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl futures_util::Stream<Item = std::io::Result<TlsConnection>> {
    incoming_within(listener, config, crate::http::ServerLimits::default())
}

/// TLS connections accepted on `listener` for a gRPC server, each handshake in its own task
/// under [`HANDSHAKE_TIMEOUT`], so a client that never finishes one holds up nobody; at most
/// `limits.max_connections` at once (more wait in the kernel's backlog), each closed after
/// `limits.idle_timeout` without a byte either way.
pub fn incoming_within(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: crate::http::ServerLimits,
) -> impl futures_util::Stream<Item = std::io::Result<TlsConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                break;
            };
            let (tcp, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                break;
            }
            let tcp = crate::idle::Idle::new(tcp, limits.idle_timeout);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(TlsConnection(stream, slot))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake refused"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::pki::{Ca, DEVICE_NAME, self_signed};

    /// Serves one fixed answer naming the client's fingerprint; returns the address.
    async fn server(tls: ServerTls) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let service =
            tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                let peer = request.extensions().get::<PeerIdentity>().copied();
                let body = match peer.and_then(|p| p.fingerprint) {
                    Some(f) => f.to_string(),
                    None => "anonymous".to_string(),
                };
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
        let transport = crate::http::Transport::Tls(tls);
        tokio::spawn(crate::http::serve(
            listener,
            transport,
            service,
            std::future::pending(),
        ));
        address
    }

    /// One HTTP/1.1 GET over TLS; the body, or the error.
    async fn get(address: &str, name: &str, config: ClientConfig) -> std::io::Result<String> {
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut stream = connect(address, name, Arc::new(config)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        Ok(answer
            .rsplit("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string())
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for cert in certificates_from_pem("ca", ca.cert_pem().as_bytes()).unwrap() {
            roots.add(cert).unwrap();
        }
        Arc::new(roots)
    }

    #[tokio::test]
    async fn a_client_trusts_only_its_roots() {
        let ca = Ca::generate("test CA").unwrap();
        let identity = ca.issue_server(&["127.0.0.1"]).unwrap().identity().unwrap();
        let tls = ServerTls::fixed(server_config(&identity, &ClientAuth::None).unwrap());
        let address = server(tls).await;
        let trusted = client_config(&ServerTrust::Roots(roots(&ca)), None).unwrap();
        assert_eq!(
            get(&address, "127.0.0.1", trusted.clone()).await.unwrap(),
            "anonymous"
        );
        // Another CA's client, or the right CA for another name, is refused.
        let other = Ca::generate("other CA").unwrap();
        let untrusting = client_config(&ServerTrust::Roots(roots(&other)), None).unwrap();
        assert!(get(&address, "127.0.0.1", untrusting).await.is_err());
        assert!(get(&address, "localhost", trusted).await.is_err());
    }

    #[tokio::test]
    async fn the_system_roots_read_at_the_handshake_still_refuse_a_private_ca() {
        let ca = Ca::generate("private CA").unwrap();
        let identity = ca.issue_server(&["127.0.0.1"]).unwrap().identity().unwrap();
        let tls = ServerTls::fixed(server_config(&identity, &ClientAuth::None).unwrap());
        let address = server(tls).await;
        let system = client_config(&ServerTrust::System, None).unwrap();
        // Twice: the second handshake uses the roots the first one read.
        for _ in 0..2 {
            let error = get(&address, "127.0.0.1", system.clone())
                .await
                .unwrap_err();
            // "invalid peer certificate: UnknownIssuer", or, on a machine without roots,
            // "No CA certificates were loaded from the system".
            assert!(error.to_string().contains("certificate"), "{error}");
        }
    }

    #[tokio::test]
    async fn pinned_peers_are_known_by_fingerprint() {
        let server_identity = self_signed("ecu", &[DEVICE_NAME])
            .unwrap()
            .identity()
            .unwrap();
        let client_identity = self_signed("primary", &[DEVICE_NAME])
            .unwrap()
            .identity()
            .unwrap();
        let tls = ServerTls::fixed(server_config(&server_identity, &ClientAuth::Pinned).unwrap());
        let address = server(tls).await;
        let pinned = ServerTrust::Pinned(server_identity.fingerprint());
        // The pinned certificate, with the client's own presented and reported.
        let config = client_config(&pinned, Some(&client_identity)).unwrap();
        assert_eq!(
            get(&address, DEVICE_NAME, config).await.unwrap(),
            client_identity.fingerprint().to_string()
        );
        // Without a client certificate the connection works, anonymously.
        let config = client_config(&pinned, None).unwrap();
        assert_eq!(
            get(&address, DEVICE_NAME, config).await.unwrap(),
            "anonymous"
        );
        // A server with another certificate is refused.
        let wrong = ServerTrust::Pinned(client_identity.fingerprint());
        assert!(
            get(&address, DEVICE_NAME, client_config(&wrong, None).unwrap())
                .await
                .is_err()
        );
    }

    #[test]
    fn identities_round_trip_through_pem_and_fingerprints_through_text() {
        let made = self_signed("x", &[DEVICE_NAME]).unwrap();
        let identity = made.identity().unwrap();
        let (cert, key) = identity.to_pem();
        let again = Identity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(again.fingerprint(), identity.fingerprint());
        assert_eq!(cert, made.cert_pem);
        let text = identity.fingerprint().to_string();
        assert_eq!(text.parse::<Fingerprint>().unwrap(), identity.fingerprint());
        assert!("abc".parse::<Fingerprint>().is_err());
        assert!(Identity::from_pem(b"junk", key.as_bytes()).is_err());
    }
}
