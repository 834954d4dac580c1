//! Certificates made here (rcgen): a device's self-signed identity, pinned by its peers,
//! and a small CA for test fleets and walkthroughs that issues server and client
//! certificates. Production fleets bring their own CA for the servers; device identities
//! are always made on the device.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::tls::{Fingerprint, Identity, TlsError};

/// A certificate and its private key, as PEM text.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl CertifiedKey {
    /// As a TLS identity.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> Result<Fingerprint, TlsError> {
        Ok(self.identity()?.fingerprint())
    }

    /// Writes `cert.pem` (0644) and `key.pem` (0600) into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        crate::files::write_atomic_with_mode(
            &dir.join("cert.pem"),
            self.cert_pem.as_bytes(),
            0o644,
        )?;
        crate::files::write_atomic(&dir.join("key.pem"), self.key_pem.as_bytes())
    }
}

fn error(e: rcgen::Error) -> TlsError {
    TlsError::Pem {
        what: "certificate generation".into(),
        reason: e.to_string(),
    }
}

fn named(common_name: &str, names: &[&str]) -> Result<CertificateParams, TlsError> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).map_err(error)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params)
}

/// A self-signed identity for a device (a Primary, a Secondary): its peers pin its
/// fingerprint, so no CA is involved. `names` are the names it answers to (a Secondary's
/// client connects to [`DEVICE_NAME`]).
pub fn self_signed(common_name: &str, names: &[&str]) -> Result<CertifiedKey, TlsError> {
    let key = KeyPair::generate().map_err(error)?;
    let mut params = named(common_name, names)?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.self_signed(&key).map_err(error)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The name a device's identity carries and its clients connect to (pinned certificates
/// make the name carry no trust).
pub const DEVICE_NAME: &str = "device.uptane.invalid";

/// A certificate authority held in memory.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(error)?;
        let mut params = named(common_name, &[])?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(error)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (host names or IP addresses).
    pub fn issue_server(&self, names: &[&str]) -> Result<CertifiedKey, TlsError> {
        self.issue(
            names.first().copied().unwrap_or("server"),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate for `common_name` (a supplier uploading images).
    pub fn issue_client(&self, common_name: &str) -> Result<CertifiedKey, TlsError> {
        self.issue(common_name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertifiedKey, TlsError> {
        let key = KeyPair::generate().map_err(error)?;
        let mut params = named(common_name, names)?;
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(error)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
