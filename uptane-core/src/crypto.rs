//! Keys and signatures as TUF writes them.
//!
//! We sign with ed25519 only: aws-lc computes the signatures (about 9.5 µs each against
//! ed25519-dalek's 16.7 µs on our machines, docs/BENCHMARKS.md), ed25519-dalek reads and
//! writes the keys. Ed25519 signatures are deterministic (RFC 8032 §5.1.6), so both write the
//! same bytes for the same key and message; tests hold them to it (RFC 8032's vectors, and
//! ed25519-dalek's own signature for any key and message).
//!
//! We verify ed25519 (ed25519-dalek's `verify_strict`), ECDSA P-256 over SHA-256 (PEM
//! SubjectPublicKeyInfo keys, DER signatures) and RSASSA-PSS over SHA-256, because every TUF
//! client must read repositories made by other tools.

use std::fmt;

use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use zeroize::Zeroize;

use crate::cjson;
use crate::hash::sha256_hex;

/// Hex SHA-256 of the canonical JSON of a public key object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// Wraps a key id string as it appears in metadata.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key cannot be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key object lacks `keytype`, `scheme` or `keyval.public`.
    #[error("malformed key object: {0}")]
    Malformed(String),
    /// A private key file could not be decoded.
    #[error("invalid private key: {0}")]
    PrivateKey(String),
}

#[derive(Clone)]
enum Verifier {
    Ed25519(ed25519_dalek::VerifyingKey),
    EcdsaP256(p256::ecdsa::VerifyingKey),
    RsaPss(rsa::RsaPublicKey),
    /// A key type we cannot verify, or key material that does not decode: it counts toward
    /// no threshold, but does not make the whole metadata unreadable.
    Unusable(String),
}

/// A public key from metadata, with the JSON it was read from (unknown fields included, as
/// the key id covers them).
#[derive(Clone)]
pub struct PublicKey {
    json: Value,
    keytype: String,
    scheme: String,
    public: String,
    verifier: Verifier,
    /// Worked out at first use: a key signs, or is looked up by id, many times (a Director
    /// request that signs a vehicle's metadata asked three times, each a canonical form and
    /// a digest, `docs/BENCHMARKS.md`).
    key_id: std::sync::OnceLock<KeyId>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("keytype", &self.keytype)
            .field("scheme", &self.scheme)
            .field("public", &self.public)
            .finish()
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    /// Reads a TUF key object.
    pub fn from_json(json: Value) -> Result<Self, KeyError> {
        let field = |name: &str| {
            json.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| KeyError::Malformed(format!("missing string field {name:?}")))
        };
        let keytype = field("keytype")?;
        let scheme = field("scheme")?;
        let public = json
            .get("keyval")
            .and_then(|kv| kv.get("public"))
            .and_then(Value::as_str)
            .ok_or_else(|| KeyError::Malformed("missing keyval.public".into()))?
            .to_string();
        let verifier = make_verifier(&keytype, &scheme, &public);
        Ok(Self {
            json,
            keytype,
            scheme,
            public,
            verifier,
            key_id: std::sync::OnceLock::new(),
        })
    }

    /// The key object as JSON.
    pub fn to_json(&self) -> &Value {
        &self.json
    }

    /// `keytype` as written in metadata.
    pub fn keytype(&self) -> &str {
        &self.keytype
    }

    /// `scheme` as written in metadata.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// `keyval.public` as written in metadata.
    pub fn public(&self) -> &str {
        &self.public
    }

    /// The decoded key material (the same key however its text is encoded), for counting
    /// distinct keys toward a threshold; `None` for a key that cannot verify.
    pub fn material(&self) -> Option<Vec<u8>> {
        match &self.verifier {
            Verifier::Ed25519(key) => Some([b"ed25519:".as_slice(), key.as_bytes()].concat()),
            Verifier::EcdsaP256(key) => {
                Some([b"p256:".as_slice(), key.to_encoded_point(true).as_bytes()].concat())
            }
            // The modulus alone: whoever holds the factors signs for any public exponent, so
            // (n, 3) and (n, 65537) are one key.
            Verifier::RsaPss(key) => {
                use rsa::traits::PublicKeyParts;
                Some([b"rsa:".as_slice(), &key.n().to_bytes_be()].concat())
            }
            Verifier::Unusable(_) => None,
        }
    }

    /// Why signatures by this key can never verify here (unsupported type or bad key
    /// material), or `None` for a usable key.
    pub fn unusable_reason(&self) -> Option<&str> {
        match &self.verifier {
            Verifier::Unusable(why) => Some(why),
            _ => None,
        }
    }

    /// The key id: hex SHA-256 of the canonical JSON of the key object.
    pub fn key_id(&self) -> KeyId {
        self.key_id
            .get_or_init(|| {
                // A `Value` built by serde_json from JSON text has no floats unless the text
                // had one; such a key cannot be canonicalized and gets an id nobody can match.
                match cjson::canonicalize(&self.json) {
                    Ok(bytes) => KeyId(sha256_hex(&bytes)),
                    Err(_) => KeyId(String::new()),
                }
            })
            .clone()
    }

    /// Whether `sig` (as hex text from metadata) is a valid signature of `message`.
    pub fn verify(&self, message: &[u8], sig_hex: &str) -> bool {
        let Ok(sig) = hex::decode(sig_hex) else {
            return false;
        };
        match &self.verifier {
            Verifier::Ed25519(key) => ed25519_dalek::Signature::from_slice(&sig)
                .is_ok_and(|s| key.verify_strict(message, &s).is_ok()),
            Verifier::EcdsaP256(key) => p256::ecdsa::Signature::from_der(&sig)
                .is_ok_and(|s| p256::ecdsa::signature::Verifier::verify(key, message, &s).is_ok()),
            Verifier::RsaPss(key) => verify_rsa_pss(key, message, &sig),
            Verifier::Unusable(_) => false,
        }
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let json = Value::deserialize(d)?;
        PublicKey::from_json(json).map_err(serde::de::Error::custom)
    }
}

/// The smallest RSA modulus accepted (NIST SP 800-57: 2048 bits for 112-bit security).
pub const MIN_RSA_BITS: usize = 2048;

fn make_verifier(keytype: &str, scheme: &str, public: &str) -> Verifier {
    use p256::pkcs8::DecodePublicKey;
    let unusable = |why: &str| Verifier::Unusable(format!("{keytype}/{scheme}: {why}"));
    match (keytype, scheme) {
        ("ed25519", "ed25519") => {
            let Ok(bytes) = hex::decode(public) else {
                return unusable("public key is not hex");
            };
            let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                return unusable("public key is not 32 bytes");
            };
            ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map_or_else(|_| unusable("not a curve point"), Verifier::Ed25519)
        }
        ("ecdsa" | "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256") => {
            if public.trim_start().starts_with("-----BEGIN") {
                p256::ecdsa::VerifyingKey::from_public_key_pem(public)
                    .map_or_else(|_| unusable("bad PEM key"), Verifier::EcdsaP256)
            } else {
                // Older sigstore roots carry the SEC1 point as hex.
                hex::decode(public)
                    .ok()
                    .and_then(|b| p256::ecdsa::VerifyingKey::from_sec1_bytes(&b).ok())
                    .map_or_else(|| unusable("bad SEC1 key"), Verifier::EcdsaP256)
            }
        }
        ("rsa", "rsassa-pss-sha256") => match rsa::RsaPublicKey::from_public_key_pem(public) {
            Err(_) => unusable("bad PEM key"),
            Ok(key) if rsa::traits::PublicKeyParts::n(&key).bits() < MIN_RSA_BITS => {
                unusable(&format!(
                    "an RSA key of {} bits (at least {MIN_RSA_BITS} required)",
                    rsa::traits::PublicKeyParts::n(&key).bits()
                ))
            }
            Ok(key) => Verifier::RsaPss(key),
        },
        _ => unusable("unsupported key type or scheme"),
    }
}

fn verify_rsa_pss(key: &rsa::RsaPublicKey, message: &[u8], sig: &[u8]) -> bool {
    use rsa::signature::Verifier as _;
    use rsa::traits::PublicKeyParts;
    let Ok(signature) = rsa::pss::Signature::try_from(sig) else {
        return false;
    };
    // securesystemslib verifies with automatic salt length; signers use the digest length
    // (32) or the maximum, so try both.
    let max_salt = (key.n().bits() - 1).div_ceil(8).saturating_sub(32 + 2);
    [32, max_salt].into_iter().any(|salt| {
        rsa::pss::VerifyingKey::<sha2::Sha256>::new_with_salt_len(key.clone(), salt)
            .verify(message, &signature)
            .is_ok()
    })
}

/// An ed25519 private key: the only kind this system signs with.
pub struct SigningKey {
    inner: ed25519_dalek::SigningKey,
    /// The same key in aws-lc, which signs: a Director signs three documents for each vehicle
    /// whose metadata changed, and aws-lc's field arithmetic takes little more than half
    /// ed25519-dalek's time. `None` only if aws-lc refused the key (it checks the public half
    /// it derives against ed25519-dalek's), and then ed25519-dalek signs: the same bytes.
    signer: Option<aws_lc_rs::signature::Ed25519KeyPair>,
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

impl Clone for SigningKey {
    fn clone(&self) -> Self {
        Self::from_inner(self.inner.clone())
    }
}

impl SigningKey {
    /// A key from 32 secret bytes. The core has no randomness: callers supply the seed
    /// from the operating system's generator.
    pub fn from_seed(mut seed: [u8; 32]) -> Self {
        let key = Self::from_inner(ed25519_dalek::SigningKey::from_bytes(&seed));
        seed.zeroize();
        key
    }

    /// A new key from 32 bytes that `fill` draws from the operating system's generator
    /// (the core has no randomness of its own). The seed is wiped once the key holds it,
    /// also when `fill` fails.
    pub fn generate_with<E>(fill: impl FnOnce(&mut [u8]) -> Result<(), E>) -> Result<Self, E> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        fill(&mut seed[..])?;
        Ok(Self::from_inner(ed25519_dalek::SigningKey::from_bytes(
            &seed,
        )))
    }

    /// The key (which wipes its secret when dropped; aws-lc wipes its copy when freed) with
    /// its public half.
    fn from_inner(inner: ed25519_dalek::SigningKey) -> Self {
        let public = PublicKey::from_json(json!({
            "keytype": "ed25519",
            "scheme": "ed25519",
            "keyval": {"public": hex::encode(inner.verifying_key().as_bytes())},
        }))
        .expect("a key object built here has every field");
        let seed = zeroize::Zeroizing::new(inner.to_bytes());
        let signer = aws_lc_rs::signature::Ed25519KeyPair::from_seed_and_public_key(
            &seed[..],
            inner.verifying_key().as_bytes(),
        )
        .ok();
        // aws-lc refuses only a seed whose public half it derives differently from
        // ed25519-dalek: the two would disagree, and ed25519-dalek, which verifies, signs.
        debug_assert!(
            signer.is_some(),
            "aws-lc and ed25519-dalek disagree on a key"
        );
        Self {
            inner,
            signer,
            public,
        }
    }

    /// Reads a PKCS#8 private key in DER form.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let inner = ed25519_dalek::SigningKey::from_pkcs8_der(der)
            .map_err(|e| KeyError::PrivateKey(e.to_string()))?;
        Ok(Self::from_inner(inner))
    }

    /// Reads a PKCS#8 private key in PEM form (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let inner = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map_err(|e| KeyError::PrivateKey(e.to_string()))?;
        Ok(Self::from_inner(inner))
    }

    /// Writes the key as PKCS#8 PEM. Whoever stores it must keep it private.
    pub fn to_pkcs8_pem(&self) -> String {
        self.inner
            .to_pkcs8_pem(Default::default())
            .expect("ed25519 keys always encode")
            .to_string()
    }

    /// Writes the key as PKCS#8 DER.
    pub fn to_pkcs8_der(&self) -> Vec<u8> {
        self.inner
            .to_pkcs8_der()
            .expect("ed25519 keys always encode")
            .as_bytes()
            .to_vec()
    }

    /// The public half, as a TUF key object.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The key id of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public.key_id()
    }

    /// Signs `message`, returning the hex signature TUF metadata carries.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        match &self.signer {
            Some(signer) => crate::hash::to_hex(signer.sign(message).as_ref()),
            None => crate::hash::to_hex(&self.inner.sign(message).to_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_id_is_sha256_of_canonical_key() {
        let key = SigningKey::from_seed([1; 32]);
        let canonical = cjson::canonicalize(key.public_key().to_json()).unwrap();
        assert_eq!(key.key_id().as_str(), sha256_hex(&canonical));
    }

    #[test]
    fn pkcs8_round_trips() {
        let key = SigningKey::from_seed([2; 32]);
        let back = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        let back = SigningKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(back.key_id(), key.key_id());
        assert!(matches!(
            SigningKey::from_pkcs8_pem("not a key"),
            Err(KeyError::PrivateKey(_))
        ));
    }

    #[test]
    fn malformed_signatures_do_not_verify() {
        let key = SigningKey::from_seed([3; 32]);
        let sig = key.sign_hex(b"msg");
        assert!(key.public_key().verify(b"msg", &sig));
        assert!(!key.public_key().verify(b"msg", ""));
        assert!(!key.public_key().verify(b"msg", "zz"));
        assert!(!key.public_key().verify(b"msg", &sig[..64]));
        assert!(!key.public_key().verify(b"other", &sig));
    }

    #[test]
    fn unsupported_key_type_is_unusable_not_an_error() {
        let key = PublicKey::from_json(json!({
            "keytype": "dsa", "scheme": "dsa-sha1", "keyval": {"public": "00"}
        }))
        .unwrap();
        assert!(key.unusable_reason().is_some());
        assert!(!key.verify(b"m", "00"));
    }

    #[test]
    fn missing_fields_are_malformed() {
        assert!(matches!(
            PublicKey::from_json(json!({"keytype": "ed25519", "scheme": "ed25519"})),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn verifies_ecdsa_p256_pem_and_der() {
        use p256::ecdsa::signature::Signer as _;
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[5; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let key = PublicKey::from_json(json!({
            "keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": pem}
        }))
        .unwrap();
        let sig: p256::ecdsa::Signature = sk.sign(b"hello");
        let der = hex::encode(sig.to_der().as_bytes());
        assert!(key.verify(b"hello", &der));
        assert!(!key.verify(b"hellO", &der));
    }

    #[test]
    fn verifies_rsa_pss_sha256() {
        // Made with `openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32`.
        let pem = include_str!("../tests/data/keys/rsa-pss.pub.pem");
        let sig = include_str!("../tests/data/keys/rsa-pss-hello.sig.hex").trim();
        let key = PublicKey::from_json(json!({
            "keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": pem}
        }))
        .unwrap();
        assert!(key.unusable_reason().is_none());
        assert!(key.verify(b"hello", sig));
        assert!(!key.verify(b"hello!", sig));
    }

    #[test]
    fn an_rsa_key_below_2048_bits_verifies_nothing() {
        // A 1024-bit key and a valid PSS signature by it (openssl, as above).
        let pem = include_str!("../tests/data/keys/rsa-1024.pub.pem");
        let sig = include_str!("../tests/data/keys/rsa-1024-hello.sig.hex").trim();
        let key = PublicKey::from_json(json!({
            "keytype": "rsa", "scheme": "rsassa-pss-sha256", "keyval": {"public": pem}
        }))
        .unwrap();
        let why = key.unusable_reason().unwrap();
        assert!(why.contains("1024 bits (at least 2048 required)"), "{why}");
        assert!(!key.verify(b"hello", sig));
        assert_eq!(key.material(), None);
    }

    #[test]
    fn one_key_in_two_encodings_is_one_key_material() {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::ecdsa::SigningKey::from_slice(&[6; 32]).unwrap();
        let pem = sk
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let sec1 = hex::encode(sk.verifying_key().to_encoded_point(false).as_bytes());
        let as_pem = PublicKey::from_json(json!({
            "keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": pem}
        }))
        .unwrap();
        let as_hex = PublicKey::from_json(json!({
            "keytype": "ecdsa", "scheme": "ecdsa-sha2-nistp256", "keyval": {"public": sec1}
        }))
        .unwrap();
        assert_ne!(as_pem.key_id(), as_hex.key_id());
        assert_eq!(as_pem.material(), as_hex.material());
        assert!(as_pem.material().is_some());
    }

    #[test]
    fn a_generated_seed_is_wiped_and_a_failed_draw_makes_no_key() {
        let mut seen = [0u8; 32];
        let key = SigningKey::generate_with(|seed: &mut [u8]| {
            seed.fill(7);
            seen.copy_from_slice(seed);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(key.key_id(), SigningKey::from_seed(seen).key_id());
        assert_eq!(
            SigningKey::generate_with(|_: &mut [u8]| Err("no entropy")).map(|k| k.key_id()),
            Err("no entropy")
        );
    }

    /// RFC 8032 §7.1, TEST 1 and TEST 2: the exact signatures, from the seeds.
    #[test]
    fn signs_the_rfc_8032_test_vectors() {
        let vectors = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (seed, message, signature) in vectors {
            let seed: [u8; 32] = hex::decode(seed).unwrap().try_into().unwrap();
            let key = SigningKey::from_seed(seed);
            assert!(key.signer.is_some());
            assert_eq!(key.sign_hex(&hex::decode(message).unwrap()), signature);
        }
    }

    proptest! {
        /// The rule behind signing with aws-lc: for any key and message it writes exactly the
        /// signature ed25519-dalek writes (RFC 8032's deterministic ed25519), which
        /// ed25519-dalek's `verify_strict` accepts.
        #[test]
        fn aws_lc_signs_exactly_as_ed25519_dalek(seed in any::<[u8; 32]>(), msg in prop::collection::vec(any::<u8>(), 0..2048)) {
            let key = SigningKey::from_seed(seed);
            prop_assert!(key.signer.is_some());
            let signed = key.sign_hex(&msg);
            prop_assert_eq!(&signed, &hex::encode(key.inner.sign(&msg).to_bytes()));
            prop_assert!(key.public_key().verify(&msg, &signed));
            let copy = key.clone();
            prop_assert_eq!(copy.sign_hex(&msg), signed);
        }

        #[test]
        fn any_flipped_byte_fails(msg in prop::collection::vec(any::<u8>(), 1..256), idx in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = SigningKey::from_seed([9; 32]);
            let sig = key.sign_hex(&msg);
            prop_assert!(key.public_key().verify(&msg, &sig));
            let mut tampered = msg.clone();
            let i = idx.index(tampered.len());
            tampered[i] ^= 1 << bit;
            prop_assert!(!key.public_key().verify(&tampered, &sig));
            let mut sig_bytes = hex::decode(&sig).unwrap();
            let j = idx.index(sig_bytes.len());
            sig_bytes[j] ^= 1 << bit;
            prop_assert!(!key.public_key().verify(&msg, &hex::encode(sig_bytes)));
        }
    }
}
