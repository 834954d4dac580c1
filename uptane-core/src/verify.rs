//! Signature verification: the only place a [`Verified`] value is made.
//!
//! ```
//! use uptane_core::metadata::Root;
//! use uptane_core::sign::RootBuilder;
//! use uptane_core::verify::{Raw, verify_root_self_signed};
//! use uptane_core::crypto::SigningKey;
//!
//! let key = SigningKey::from_seed([1; 32]);
//! let expires = uptane_core::time::parse_expires("2030-01-01T00:00:00Z").unwrap();
//! let bytes = RootBuilder::new(1, expires).all_roles(&key).sign(&[&key]).unwrap();
//! let root = verify_root_self_signed(&Raw::<Root>::new(bytes.clone())).unwrap();
//! assert_eq!(root.common.version, 1);
//!
//! // Signed by another key: refused as arbitrary software.
//! let other = SigningKey::from_seed([2; 32]);
//! let forged = RootBuilder::new(1, expires).all_roles(&key).sign(&[&other]).unwrap();
//! assert!(verify_root_self_signed(&Raw::<Root>::new(forged)).is_err());
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::cjson;
use crate::crypto::{KeyId, PublicKey};
use crate::error::VerifyError;
use crate::metadata::{RoleKeys, Root, Signed};

/// Signed metadata exactly as received. Untrusted: the only useful thing to do with it is
/// to verify it.
pub struct Raw<R> {
    bytes: Arc<[u8]>,
    _role: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for Raw<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("len", &self.bytes.len())
            .finish()
    }
}

impl<R> Clone for Raw<R> {
    fn clone(&self) -> Self {
        Self {
            bytes: Arc::clone(&self.bytes),
            _role: PhantomData,
        }
    }
}

impl<R> Raw<R> {
    /// Wraps received bytes.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self {
            bytes: bytes.into(),
            _role: PhantomData,
        }
    }

    /// The bytes as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same untrusted bytes, to be read as another role.
    pub(crate) fn cast<S>(&self) -> Raw<S> {
        Raw {
            bytes: Arc::clone(&self.bytes),
            _role: PhantomData,
        }
    }
}

/// Metadata whose signatures met the threshold of the keys that were asked for. Only this
/// module builds one; it keeps the exact bytes that were verified, for storage and forwarding.
pub struct Verified<R> {
    value: R,
    bytes: Arc<[u8]>,
}

impl<R: std::fmt::Debug> std::fmt::Debug for Verified<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl<R: Clone> Clone for Verified<R> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            bytes: Arc::clone(&self.bytes),
        }
    }
}

impl<R> Deref for Verified<R> {
    type Target = R;
    fn deref(&self) -> &R {
        &self.value
    }
}

impl<R> Verified<R> {
    /// The exact bytes that were verified.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same bytes, shared.
    pub fn bytes(&self) -> Arc<[u8]> {
        Arc::clone(&self.bytes)
    }

    /// Back to untrusted bytes, e.g. to verify them again against another delegator.
    pub fn to_raw(&self) -> Raw<R> {
        Raw {
            bytes: Arc::clone(&self.bytes),
            _role: PhantomData,
        }
    }
}

/// A parsed envelope: the typed `signed` value, its canonical bytes, and the signatures.
pub(crate) struct Envelope<R> {
    pub(crate) value: R,
    canonical: Vec<u8>,
    signatures: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct EnvelopeText<'a> {
    #[serde(borrow)]
    signed: &'a RawValue,
    signatures: Vec<SignatureText>,
}

#[derive(serde::Deserialize)]
struct SignatureText {
    keyid: String,
    sig: String,
}

#[derive(serde::Deserialize)]
struct TypeProbe {
    #[serde(rename = "_type", default)]
    role_type: Option<String>,
}

/// Parses `{"signed", "signatures"}` and the document's schema, without checking signatures.
///
/// The canonical bytes (what signatures cover) and the typed value are both read from the
/// same `signed` text; the canonicalizer refuses duplicate keys and non-integers, the two
/// things that could let those two readings differ.
pub(crate) fn parse_envelope<R: Signed>(
    bytes: &[u8],
    role: &str,
) -> Result<Envelope<R>, VerifyError> {
    parse_envelope_checked(bytes, role, |_, _| Ok(()))
}

/// [`parse_envelope`], with `check` run on the canonical bytes and the signatures as soon as
/// they exist: for a large document, the signature check then runs beside the typed reading
/// instead of after it. Errors are reported as in sequence: the typed reading's first, then
/// the canonical form's, then `check`'s.
fn parse_envelope_checked<R: Signed>(
    bytes: &[u8],
    role: &str,
    check: impl FnOnce(&[u8], &BTreeMap<String, String>) -> Result<(), VerifyError> + Send,
) -> Result<Envelope<R>, VerifyError> {
    let malformed = |reason: String| VerifyError::Malformed {
        role: role.to_string(),
        reason,
    };
    let doc: EnvelopeText<'_> = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("not a signed envelope: {e}")))?;
    let mut signatures = BTreeMap::new();
    for sig in doc.signatures {
        if signatures.insert(sig.keyid.clone(), sig.sig).is_some() {
            return Err(VerifyError::DuplicateSignature {
                role: role.to_string(),
                keyid: sig.keyid,
            });
        }
    }
    let text = doc.signed.get();
    if !text.starts_with('{') {
        return Err(malformed("signed is not an object".into()));
    }
    // The typed reading, and the canonical form (what signatures cover) with the signature
    // check, need nothing from each other: on two cores for a large document. A small one is
    // read first and its signatures are checked only if it reads (no signature work on a
    // malformed document).
    let (value, canonical) = crate::both::check_then(
        text.len(),
        || read_signed::<R>(text, role),
        || {
            let canonical = cjson::canonicalize_json_text(text.as_bytes())
                .map_err(|e| malformed(e.to_string()))?;
            check(&canonical, &signatures).map(|()| canonical)
        },
    )?;
    let canonical = canonical?;
    Ok(Envelope {
        value,
        canonical,
        signatures,
    })
}

/// Reads the typed `signed` value and checks its schema.
fn read_signed<R: Signed>(text: &str, role: &str) -> Result<R, VerifyError> {
    let malformed = |reason: String| VerifyError::Malformed {
        role: role.to_string(),
        reason,
    };
    let value = match serde_json::from_str::<R>(text) {
        Ok(value) if value.type_field() == R::TYPE => value,
        result => {
            let found = serde_json::from_str::<TypeProbe>(text)
                .ok()
                .and_then(|p| p.role_type)
                .unwrap_or_default();
            if found != R::TYPE {
                return Err(VerifyError::WrongType {
                    role: role.to_string(),
                    found,
                });
            }
            return Err(malformed(match result {
                Err(e) => e.to_string(),
                Ok(_) => "wrong _type".into(),
            }));
        }
    };
    value.validate().map_err(malformed)?;
    Ok(value)
}

impl<R> Envelope<R> {
    /// Checks that at least `threshold` distinct keys among `authorized` signed.
    pub(crate) fn check_threshold(
        &self,
        role: &str,
        keys: &BTreeMap<KeyId, PublicKey>,
        authorized: &RoleKeys,
    ) -> Result<(), VerifyError> {
        check_threshold(role, &self.canonical, &self.signatures, keys, authorized)
    }

    pub(crate) fn into_verified(self, raw: &Raw<R>) -> Verified<R> {
        Verified {
            value: self.value,
            bytes: Arc::clone(&raw.bytes),
        }
    }
}

/// Checks that at least `threshold` distinct keys among `authorized` signed `canonical`.
fn check_threshold(
    role: &str,
    canonical: &[u8],
    signatures: &BTreeMap<String, String>,
    keys: &BTreeMap<KeyId, PublicKey>,
    authorized: &RoleKeys,
) -> Result<(), VerifyError> {
    // Count distinct decoded key material, so one key listed under several ids counts
    // once, however its text is encoded (PEM line breaks, hex case, compressed points).
    let mut counted: BTreeSet<Vec<u8>> = BTreeSet::new();
    for keyid in &authorized.keyids {
        let (Some(key), Some(sig)) = (keys.get(keyid), signatures.get(keyid.as_str())) else {
            continue;
        };
        if let Some(material) = key.material()
            && key.verify(canonical, sig)
        {
            counted.insert(material);
        }
    }
    let valid = u32::try_from(counted.len()).unwrap_or(u32::MAX);
    if authorized.threshold == 0 || valid < authorized.threshold {
        return Err(VerifyError::Threshold {
            role: role.to_string(),
            valid,
            threshold: authorized.threshold,
        });
    }
    Ok(())
}

/// Verifies `raw` as role `role` against `keys` and the role's `authorized` key ids and
/// threshold. Fails if the schema is wrong, a key id signs twice, or fewer than the
/// threshold of distinct authorized keys made valid signatures; invalid extra signatures are
/// ignored.
pub fn verify_role<R: Signed>(
    raw: &Raw<R>,
    role: &str,
    keys: &BTreeMap<KeyId, PublicKey>,
    authorized: &RoleKeys,
) -> Result<Verified<R>, VerifyError> {
    let envelope = parse_envelope_checked::<R>(raw.as_bytes(), role, |canonical, signatures| {
        check_threshold(role, canonical, signatures, keys, authorized)
    })?;
    Ok(envelope.into_verified(raw))
}

/// Verifies a root against its own root keys: the check for an initial, pinned root.
pub fn verify_root_self_signed(raw: &Raw<Root>) -> Result<Verified<Root>, VerifyError> {
    let envelope = parse_envelope::<Root>(raw.as_bytes(), "root")?;
    let authorized =
        envelope
            .value
            .roles
            .get("root")
            .cloned()
            .ok_or_else(|| VerifyError::Malformed {
                role: "root".into(),
                reason: "no root role".into(),
            })?;
    envelope.check_threshold("root", &envelope.value.keys.clone(), &authorized)?;
    Ok(envelope.into_verified(raw))
}

/// Verifies a new root version against both the trusted root's root keys and its own
/// (TUF 1.0.31 §5.3.4, Uptane §5.4.4.3 step 2.3). Version order is not checked here: only
/// [`crate::trusted::RootChain`] calls this, and it checks that the version is exactly N+1.
pub(crate) fn verify_root_rotation(
    trusted: &Root,
    raw: &Raw<Root>,
) -> Result<Verified<Root>, VerifyError> {
    let envelope = parse_envelope::<Root>(raw.as_bytes(), "root")?;
    let old = trusted
        .roles
        .get("root")
        .ok_or_else(|| VerifyError::Malformed {
            role: "root".into(),
            reason: "trusted root has no root role".into(),
        })?;
    envelope.check_threshold("root", &trusted.keys, old)?;
    let new = envelope
        .value
        .roles
        .get("root")
        .cloned()
        .ok_or_else(|| VerifyError::Malformed {
            role: "root".into(),
            reason: "no root role".into(),
        })?;
    envelope.check_threshold("root", &envelope.value.keys.clone(), &new)?;
    Ok(envelope.into_verified(raw))
}

/// Verifies a document signed by one known key (ECU version reports, vehicle manifests):
/// `signed._type` must be the document's type and `key` must have signed it.
pub fn verify_signed_by<T: Signed>(
    raw: &Raw<T>,
    key: &PublicKey,
) -> Result<Verified<T>, VerifyError> {
    let keyid = key.key_id();
    let keys = BTreeMap::from([(keyid.clone(), key.clone())]);
    let authorized = RoleKeys {
        keyids: vec![keyid],
        threshold: 1,
    };
    verify_role(raw, T::TYPE, &keys, &authorized)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::crypto::SigningKey;
    use crate::metadata::{Targets, Timestamp};
    use crate::sign::{RootBuilder, TargetsBuilder, delegated_role, sign_value};
    use crate::testing::{key, later};

    fn root_doc() -> Value {
        let k = key(1);
        let bytes = RootBuilder::new(1, later())
            .all_roles(&k)
            .sign(&[&k])
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["signed"].clone()
    }

    fn self_signed(signed: &Value) -> Result<Verified<Root>, VerifyError> {
        verify_root_self_signed(&Raw::new(sign_value(signed, &[&key(1)]).unwrap()))
    }

    fn malformed<T>(r: Result<T, VerifyError>) -> bool {
        matches!(r, Err(VerifyError::Malformed { .. }))
    }

    #[test]
    fn one_key_under_two_encodings_counts_once_toward_a_threshold() {
        let k = key(1);
        let bytes = TargetsBuilder::new(1, later()).sign(&[&k]).unwrap();
        let mut doc: Value = serde_json::from_slice(&bytes).unwrap();
        // The same ed25519 key with its hex in capitals: another key id, the same key.
        let mut upper = k.public_key().to_json().clone();
        upper["keyval"]["public"] = json!(k.public_key().public().to_uppercase());
        let upper = PublicKey::from_json(upper).unwrap();
        assert_ne!(upper.key_id(), k.key_id());
        let sig = doc["signatures"][0]["sig"].clone();
        doc["signatures"]
            .as_array_mut()
            .unwrap()
            .push(json!({"keyid": upper.key_id().as_str(), "sig": sig}));
        let raw = Raw::<Targets>::new(serde_json::to_vec(&doc).unwrap());
        let keys = BTreeMap::from([
            (k.key_id(), k.public_key().clone()),
            (upper.key_id(), upper.clone()),
        ]);
        let authorized = RoleKeys {
            keyids: vec![k.key_id(), upper.key_id()],
            threshold: 2,
        };
        let refused = verify_role(&raw, "targets", &keys, &authorized);
        assert!(
            matches!(
                refused,
                Err(VerifyError::Threshold {
                    valid: 1,
                    threshold: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
    }

    #[test]
    fn rejects_envelopes_that_are_not_envelopes() {
        let k = key(1);
        let good = RootBuilder::new(1, later())
            .all_roles(&k)
            .sign(&[&k])
            .unwrap();
        let mut doc: Value = serde_json::from_slice(&good).unwrap();
        for broken in [
            json!([]),
            json!({"signed": doc["signed"].clone()}),
            json!({"signatures": doc["signatures"].clone()}),
            json!({"signed": "x", "signatures": []}),
            json!({"signed": doc["signed"].clone(), "signatures": [{"sig": "00"}]}),
            json!({"signed": doc["signed"].clone(), "signatures": [{"keyid": "00"}]}),
        ] {
            let bytes = serde_json::to_vec(&broken).unwrap();
            assert!(
                malformed(verify_root_self_signed(&Raw::new(bytes))),
                "{broken}"
            );
        }
        assert!(malformed(verify_root_self_signed(&Raw::new(
            b"not json".to_vec()
        ))));
        doc["signed"]["expires"] = json!(1.5);
        assert!(malformed(verify_root_self_signed(&Raw::new(
            serde_json::to_vec(&doc).unwrap()
        ))));
    }

    #[test]
    fn rejects_floats_and_duplicate_keys_in_signed() {
        let k = key(1);
        let good = String::from_utf8(
            RootBuilder::new(1, later())
                .all_roles(&k)
                .sign(&[&k])
                .unwrap(),
        )
        .unwrap();
        let duplicated = good.replacen("\"version\":1", "\"version\":1,\"version\":1", 1);
        assert!(malformed(verify_root_self_signed(&Raw::new(
            duplicated.into_bytes()
        ))));
        let float = good.replacen("\"signed\":{", "\"signed\":{\"x\":0.5,", 1);
        assert!(malformed(verify_root_self_signed(&Raw::new(
            float.into_bytes()
        ))));
    }

    #[test]
    fn rejects_root_with_missing_or_extra_roles() {
        let mut doc = root_doc();
        doc["roles"].as_object_mut().unwrap().remove("snapshot");
        assert!(malformed(self_signed(&doc)));
        let mut doc = root_doc();
        doc["roles"]["mirror"] = doc["roles"]["root"].clone();
        assert!(malformed(self_signed(&doc)));
    }

    #[test]
    fn rejects_zero_threshold() {
        let mut doc = root_doc();
        doc["roles"]["timestamp"]["threshold"] = json!(0);
        assert!(malformed(self_signed(&doc)));
    }

    #[test]
    fn rejects_key_listed_under_a_foreign_id() {
        let mut doc = root_doc();
        let keys = doc["keys"].as_object_mut().unwrap();
        let (id, key_json) = keys
            .iter()
            .next()
            .map(|(a, b)| (a.clone(), b.clone()))
            .unwrap();
        keys.remove(&id);
        keys.insert("f".repeat(64), key_json);
        assert!(malformed(self_signed(&doc)));
    }

    #[test]
    fn rejects_timestamp_meta_other_than_snapshot() {
        let k = key(2);
        let signed = json!({
            "_type": "timestamp", "spec_version": "1.0.31", "version": 1,
            "expires": "2031-01-01T00:00:00Z",
            "meta": {"snapshot.json": {"version": 1}, "targets.json": {"version": 1}}
        });
        let raw = Raw::<Timestamp>::new(sign_value(&signed, &[&k]).unwrap());
        let keys = BTreeMap::from([(k.key_id(), k.public_key().clone())]);
        let authorized = RoleKeys {
            keyids: vec![k.key_id()],
            threshold: 1,
        };
        assert!(malformed(verify_role(
            &raw,
            "timestamp",
            &keys,
            &authorized
        )));
    }

    fn targets_with(edit: impl FnOnce(&mut Value)) -> Result<Verified<Targets>, VerifyError> {
        let k = key(3);
        let d = key(4);
        let bytes = TargetsBuilder::new(1, later())
            .delegate(
                delegated_role("a", &[d.public_key()], 1, &["*"], false),
                &[d.public_key()],
            )
            .sign(&[&k])
            .unwrap();
        let mut signed = serde_json::from_slice::<Value>(&bytes).unwrap()["signed"].clone();
        edit(&mut signed);
        let raw = Raw::<Targets>::new(sign_value(&signed, &[&k]).unwrap());
        let keys = BTreeMap::from([(k.key_id(), k.public_key().clone())]);
        let authorized = RoleKeys {
            keyids: vec![k.key_id()],
            threshold: 1,
        };
        verify_role(&raw, "targets", &keys, &authorized)
    }

    #[test]
    fn rejects_bad_delegations() {
        targets_with(|_| {}).unwrap();
        assert!(malformed(targets_with(|s| {
            let role = s["delegations"]["roles"][0].clone();
            s["delegations"]["roles"].as_array_mut().unwrap().push(role);
        })));
        assert!(malformed(targets_with(|s| s["delegations"]["roles"][0]
            ["name"] =
            json!("snapshot"))));
        assert!(malformed(targets_with(|s| s["delegations"]["roles"][0]
            ["path_hash_prefixes"] =
            json!(["ab"]))));
        assert!(malformed(targets_with(|s| {
            s["delegations"]["roles"][0]
                .as_object_mut()
                .unwrap()
                .remove("paths");
        })));
        assert!(malformed(targets_with(
            |s| s["delegations"]["roles"][0]["threshold"] = json!(0)
        )));
        assert!(malformed(targets_with(|s| {
            s["delegations"] = json!({"keys": {}, "succinct_roles": {"bit_length": 8}});
        })));
    }

    #[test]
    fn path_hash_prefixes_cover_by_hash() {
        let mut role = delegated_role("bins", &[], 1, &[], false);
        role.paths = None;
        let digest = crate::hash::sha256_hex(b"file.txt");
        role.path_hash_prefixes = Some(vec![digest[..2].to_string()]);
        assert!(role.covers("file.txt"));
        role.path_hash_prefixes = Some(vec![
            if digest.starts_with('0') { "1" } else { "0" }.to_string(),
        ]);
        assert!(!role.covers("file.txt"));
    }

    /// A document large enough that its signatures are checked beside its typed reading
    /// (`both::PARALLEL_BYTES`) reports what the sequential order would: a schema error
    /// before a bad signature, a bad signature when the schema holds, and a valid one is read.
    #[test]
    fn a_large_document_reports_errors_in_the_sequential_order() {
        let k = key(3);
        let other = key(4);
        let mut signed =
            serde_json::from_slice::<Value>(&TargetsBuilder::new(1, later()).sign(&[&k]).unwrap())
                .unwrap()["signed"]
                .clone();
        let padding = "p".repeat(crate::both::PARALLEL_BYTES);
        signed["custom"] = json!({ "padding": padding });
        let keys = BTreeMap::from([(k.key_id(), k.public_key().clone())]);
        let authorized = RoleKeys {
            keyids: vec![k.key_id()],
            threshold: 1,
        };
        let check = |signed: &Value, by: &SigningKey| {
            let raw = Raw::<Targets>::new(sign_value(signed, &[by]).unwrap());
            assert!(raw.as_bytes().len() > crate::both::PARALLEL_BYTES);
            verify_role(&raw, "targets", &keys, &authorized)
        };
        let read = check(&signed, &k).unwrap();
        assert_eq!(read.custom.as_ref().unwrap()["padding"], json!(padding));
        assert!(
            matches!(
                check(&signed, &other),
                Err(VerifyError::Threshold { valid: 0, .. })
            ),
            "a signature by a key not authorized"
        );
        let mut wrong_schema = signed.clone();
        wrong_schema["version"] = json!("one");
        assert!(malformed(check(&wrong_schema, &other)));
    }

    /// A small document that does not read as its type costs no signature check.
    #[test]
    fn a_small_malformed_document_is_not_checked_for_signatures() {
        let k = key(3);
        let mut signed =
            serde_json::from_slice::<Value>(&TargetsBuilder::new(1, later()).sign(&[&k]).unwrap())
                .unwrap()["signed"]
                .clone();
        signed["version"] = json!("one");
        let bytes = sign_value(&signed, &[&k]).unwrap();
        let checked = std::sync::atomic::AtomicBool::new(false);
        let read = parse_envelope_checked::<Targets>(&bytes, "targets", |_, _| {
            checked.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        assert!(malformed(read));
        assert!(!checked.load(std::sync::atomic::Ordering::Relaxed));
    }
}
