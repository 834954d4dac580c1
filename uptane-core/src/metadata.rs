//! The TUF 1.0 metadata model: root, timestamp, snapshot, targets and delegated targets.
//!
//! These types are read from JSON values whose signatures were already checked (see
//! [`crate::verify`]); they are also what the builders in [`crate::sign`] write. Fields the
//! model does not name are ignored when reading, and survive in the signed bytes, which are
//! what gets stored and forwarded.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{KeyId, PublicKey};
use crate::hash::Hashes;
use crate::time::UtcTime;

/// The spec version our builders write.
pub const SPEC_VERSION: &str = "1.0.31";

/// Behaviour every top-level and delegated role shares.
pub trait Role: serde::de::DeserializeOwned + Serialize + Send {
    /// The `_type` value of this role.
    const TYPE: &'static str;
    /// Version, expiry and spec version.
    fn common(&self) -> &Common;
    /// Role-specific structural checks.
    fn check_role(&self) -> Result<(), String>;
}

/// Fields every role's `signed` object has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Common {
    /// Role type (`root`, `timestamp`, `snapshot`, `targets`).
    #[serde(rename = "_type")]
    pub role_type: String,
    /// TUF spec version, major version 1.
    pub spec_version: String,
    /// Version of this metadata, at least 1.
    pub version: u64,
    /// When the metadata stops being trustworthy.
    #[serde(with = "crate::time")]
    pub expires: UtcTime,
}

impl Common {
    /// Common fields for a new role at `version` that expires at `expires`.
    pub fn new(role_type: &str, version: u64, expires: UtcTime) -> Self {
        Self {
            role_type: role_type.to_string(),
            spec_version: SPEC_VERSION.to_string(),
            version,
            expires,
        }
    }

    /// Whether the metadata has expired at `now` (expiry is exclusive: valid until `expires`).
    pub fn is_expired(&self, now: UtcTime) -> bool {
        now >= self.expires
    }
}

/// Keys and threshold that a role's signatures must meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleKeys {
    /// Key ids authorized for the role.
    pub keyids: Vec<KeyId>,
    /// Number of distinct authorized keys that must sign.
    pub threshold: u32,
}

/// Root metadata: the keys of every top-level role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Whether files are published under versioned and hash-prefixed names.
    #[serde(default)]
    pub consistent_snapshot: bool,
    /// Every key any top-level role uses.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// `root`, `timestamp`, `snapshot` and `targets`, with their keys and thresholds.
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Role for Root {
    const TYPE: &'static str = "root";
    fn common(&self) -> &Common {
        &self.common
    }
    fn check_role(&self) -> Result<(), String> {
        self.check()
    }
}

impl Root {
    /// The keys and threshold of top-level role `name`.
    pub fn role_keys(&self, name: &str) -> Option<&RoleKeys> {
        self.roles.get(name)
    }
}

/// Version, length and hashes of a metadata file, as snapshot and timestamp list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaFile {
    /// Version of the file.
    pub version: u64,
    /// Its length in bytes, when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Its hashes, when listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hashes: Option<Hashes>,
}

impl MetaFile {
    /// Whether the listing names a hash, and so says what the file's bytes are (a length
    /// alone does not).
    pub fn names_a_hash(&self) -> bool {
        self.hashes.as_ref().is_some_and(|h| !h.is_empty())
    }
}

/// Timestamp metadata: the current snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Exactly one entry, `snapshot.json`.
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Timestamp {
    const TYPE: &'static str = "timestamp";
    fn common(&self) -> &Common {
        &self.common
    }
    fn check_role(&self) -> Result<(), String> {
        self.check()
    }
}

impl Timestamp {
    /// The `snapshot.json` entry; verification guarantees it exists.
    pub fn snapshot_meta(&self) -> Option<&MetaFile> {
        self.meta.get("snapshot.json")
    }
}

/// Snapshot metadata: the version of every targets file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// `<role>.json` to its version (and optionally length and hashes).
    pub meta: BTreeMap<String, MetaFile>,
}

impl Role for Snapshot {
    const TYPE: &'static str = "snapshot";
    fn common(&self) -> &Common {
        &self.common
    }
    fn check_role(&self) -> Result<(), String> {
        Ok(())
    }
}

/// One target (image) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFile {
    /// Length in bytes.
    pub length: u64,
    /// Digests of the bytes.
    pub hashes: Hashes,
    /// Application fields; Uptane puts hardware ids and release counters here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Custom>,
}

impl TargetFile {
    /// The entry's `custom` object, if it has one.
    pub fn custom_value(&self) -> Option<&Value> {
        self.custom.as_ref().map(Custom::value)
    }
}

/// A target entry's `custom` field, kept as the JSON text it was read from and parsed on
/// first use. A client reads every entry of a targets file but looks at the custom fields of
/// the few entries meant for it; building a `Value` for each of 10,000 entries was about a
/// quarter of reading the file. Equality, serialization and `Debug` are those of the value.
///
/// Reading captures the text with serde_json's raw-value scanner, which accepts a little
/// that a `Value` does not (a lone surrogate escape, a number beyond `f64`, nesting deeper
/// than 128). A verified document never holds such text (the canonical form refuses all
/// three before the document is trusted); an unverified one that does is kept apart: its
/// value reads as `null` (every field the Uptane checks require is then missing, so the
/// entry is refused), it equals only the same text, and it does not serialize.
#[derive(Clone)]
pub struct Custom {
    /// The text it was read from (`None` when built from a value, which needs none).
    text: Option<Box<serde_json::value::RawValue>>,
    value: std::sync::OnceLock<Option<Value>>,
}

impl Custom {
    /// The value (`null` if the text does not parse; see the type's documentation).
    pub fn value(&self) -> &Value {
        static UNREADABLE: Value = Value::Null;
        self.parsed().unwrap_or(&UNREADABLE)
    }

    fn parsed(&self) -> Option<&Value> {
        self.value
            .get_or_init(|| {
                let text = self.text.as_ref()?;
                serde_json::from_str(text.get()).ok()
            })
            .as_ref()
    }

    fn text(&self) -> Option<&str> {
        self.text.as_deref().map(serde_json::value::RawValue::get)
    }
}

impl From<Value> for Custom {
    fn from(value: Value) -> Self {
        Self {
            text: None,
            value: std::sync::OnceLock::from(Some(value)),
        }
    }
}

impl PartialEq for Custom {
    fn eq(&self, other: &Self) -> bool {
        match (self.parsed(), other.parsed()) {
            (Some(a), Some(b)) => a == b,
            _ => self.text() == other.text(),
        }
    }
}

impl Eq for Custom {}

impl std::fmt::Debug for Custom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parsed() {
            Some(value) => value.fmt(f),
            None => write!(f, "unreadable custom {}", self.text().unwrap_or_default()),
        }
    }
}

impl Serialize for Custom {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.parsed()
            .ok_or_else(|| {
                serde::ser::Error::custom("a target's custom field is JSON no Value can hold")
            })?
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Custom {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            text: Some(Deserialize::deserialize(deserializer)?),
            value: std::sync::OnceLock::new(),
        })
    }
}

/// A role delegated by a targets role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DelegatedRole {
    /// Role name (any string; it is percent-encoded in URLs and file names).
    pub name: String,
    /// Keys that may sign for it.
    pub keyids: Vec<KeyId>,
    /// Distinct keys that must sign.
    pub threshold: u32,
    /// Whether a search that reaches this role stops after its subtree.
    #[serde(default)]
    pub terminating: bool,
    /// Shell-glob patterns of target paths this role may sign for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Hex prefixes of SHA-256(target path) this role may sign for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hash_prefixes: Option<Vec<String>>,
    /// Uptane: hardware ids the delegation covers (absent: any).
    #[serde(
        default,
        rename = "hardwareIds",
        skip_serializing_if = "Option::is_none"
    )]
    pub hardware_ids: Option<Vec<String>>,
}

impl DelegatedRole {
    /// Whether this delegation covers `target_path` (TUF §5.6.7.2: paths are matched per
    /// `/`-separated segment with shell globs; hash prefixes against SHA-256 of the path).
    pub fn covers(&self, target_path: &str) -> bool {
        if let Some(patterns) = &self.paths {
            return patterns.iter().any(|p| path_matches(p, target_path));
        }
        if let Some(prefixes) = &self.path_hash_prefixes {
            let digest = crate::hash::sha256_hex(target_path.as_bytes());
            return prefixes.iter().any(|p| digest.starts_with(p.as_str()));
        }
        false
    }

    /// Keys and threshold as a [`RoleKeys`].
    pub fn role_keys(&self) -> RoleKeys {
        RoleKeys {
            keyids: self.keyids.clone(),
            threshold: self.threshold,
        }
    }
}

/// The delegations block of a targets role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegations {
    /// Keys the delegated roles use.
    pub keys: BTreeMap<KeyId, PublicKey>,
    /// Delegated roles, in search order.
    pub roles: Vec<DelegatedRole>,
}

/// Targets metadata, top-level or delegated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Common fields.
    #[serde(flatten)]
    pub common: Common,
    /// Target path to its entry.
    #[serde(deserialize_with = "map_in_order")]
    pub targets: BTreeMap<String, TargetFile>,
    /// Roles this one delegates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegations: Option<Delegations>,
    /// Application fields; the Director puts the VIN and correlation id here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
}

impl Role for Targets {
    const TYPE: &'static str = "targets";
    fn common(&self) -> &Common {
        &self.common
    }
    fn check_role(&self) -> Result<(), String> {
        self.check()
    }
}

impl Targets {
    /// Delegated roles that cover `target_path`, in order, each with its terminating flag.
    pub fn roles_for_target<'a>(
        &'a self,
        target_path: &'a str,
    ) -> impl Iterator<Item = &'a DelegatedRole> + 'a {
        self.delegations
            .iter()
            .flat_map(|d| d.roles.iter())
            .filter(move |r| r.covers(target_path))
    }
}

/// Reads a JSON object into a map by collecting its entries first: signed metadata lists keys
/// in canonical (sorted) order, for which `BTreeMap::from_iter` checks the order in one pass
/// and builds the tree in bulk, where inserting key by key searches the tree each time (a
/// sixth of the instructions of reading a 10,000-target file, by callgrind). A repeated key
/// keeps its last value, as inserting does (and the canonical form, checked beside this
/// reading, refuses repeated keys).
fn map_in_order<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Entries<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
        type Value = BTreeMap<String, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry::<String, V>()? {
                entries.push(entry);
            }
            Ok(entries.into_iter().collect())
        }
    }
    deserializer.deserialize_map(Entries(std::marker::PhantomData))
}

/// A signed document type: what `_type` it carries and the checks serde cannot express.
pub trait Signed: serde::de::DeserializeOwned + Serialize + Send {
    /// The `_type` value of this document.
    const TYPE: &'static str;
    /// The `_type` the document carries.
    fn type_field(&self) -> &str;
    /// Structural checks beyond the schema; returns a description of the first problem.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl<R: Role> Signed for R {
    const TYPE: &'static str = <R as Role>::TYPE;
    fn type_field(&self) -> &str {
        &self.common().role_type
    }
    fn validate(&self) -> Result<(), String> {
        check_common(self.common())?;
        self.check_role()
    }
}

fn check_common(common: &Common) -> Result<(), String> {
    let spec = &common.spec_version;
    let mut parts = spec.split('.');
    let major = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if major != "1"
        || !(1..=2).contains(&rest.len())
        || rest
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("unsupported spec_version {spec:?}"));
    }
    if common.version < 1 {
        return Err("version must be at least 1".into());
    }
    Ok(())
}

fn check_threshold(threshold: u32) -> Result<(), String> {
    if threshold < 1 {
        return Err("threshold must be at least 1".into());
    }
    Ok(())
}

/// Every key must be listed under the id it hashes to, so one key cannot pose as several
/// and count more than once toward a threshold.
fn check_key_ids(keys: &BTreeMap<KeyId, PublicKey>) -> Result<(), String> {
    for (id, key) in keys {
        if key.key_id() != *id {
            return Err(format!("key id {id} is not the SHA-256 of its key"));
        }
    }
    Ok(())
}

impl Root {
    fn check(&self) -> Result<(), String> {
        let names: BTreeSet<&str> = self.roles.keys().map(String::as_str).collect();
        if names != BTreeSet::from(["root", "snapshot", "targets", "timestamp"]) {
            return Err("roles must be exactly root, snapshot, targets and timestamp".into());
        }
        for role in self.roles.values() {
            check_threshold(role.threshold)?;
        }
        check_key_ids(&self.keys)
    }
}

impl Timestamp {
    fn check(&self) -> Result<(), String> {
        if self.meta.len() != 1 || self.snapshot_meta().is_none() {
            return Err("timestamp meta must list exactly snapshot.json".into());
        }
        Ok(())
    }
}

impl Targets {
    fn check(&self) -> Result<(), String> {
        let Some(delegations) = &self.delegations else {
            return Ok(());
        };
        let mut names = BTreeSet::new();
        for role in &delegations.roles {
            let name = role.name.as_str();
            check_threshold(role.threshold)?;
            if !names.insert(name) {
                return Err(format!("delegated role {name:?} listed twice"));
            }
            if matches!(name, "root" | "snapshot" | "targets" | "timestamp") {
                return Err(format!("a delegated role cannot be named {name:?}"));
            }
            // Kept unversioned, such a role's file would be `N.root.json`: a root version.
            // Refused with any digits before `.root`, leading zeros included, as releases
            // before `root_version_of` read them: a name they refuse would stop their updates.
            if name
                .strip_suffix(".root")
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(format!(
                    "a delegated role cannot be named {name:?}, the file name of a root version"
                ));
            }
            if role.paths.is_some() == role.path_hash_prefixes.is_some() {
                return Err(format!(
                    "delegated role {name:?} needs exactly one of paths and path_hash_prefixes"
                ));
            }
        }
        check_key_ids(&delegations.keys)
    }
}

/// A role name as it appears in URLs and file names: every byte but `A-Z a-z 0-9 - . _ ~`
/// percent-encoded, as Python's `urllib.parse.quote(name, safe="")` does (`/x` becomes
/// `%2Fx`), so role names can never name another path.
pub fn quote_role(role: &str) -> String {
    percent_encode(role, b"-._~")
}

/// A target path as it goes into a URL: each segment percent-encoded as [`quote_role`]
/// encodes a role name, the `/` between them kept. A target name may hold `?`, `#`, `%`
/// or spaces (Uptane G-4 refuses only control and invisible characters), which written
/// as they are would end the path or be read as an escape, and fetch another file.
pub fn quote_target_path(path: &str) -> String {
    percent_encode(path, b"-._~/")
}

/// `text` with every byte but ASCII letters, digits and `keep` written `%XX`.
fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The file name of role `role`'s metadata: `V.<quoted role>.json` with a version
/// (consistent snapshots), `<quoted role>.json` without.
pub fn metadata_file_name(role: &str, version: Option<u64>) -> String {
    match version {
        Some(v) => format!("{v}.{}.json", quote_role(role)),
        None => format!("{}.json", quote_role(role)),
    }
}

/// The root version a file named `file` holds: `N.root.json`, N written as
/// [`metadata_file_name`] writes it (decimal digits, no sign, no leading zero), the one rule
/// for every repository and client that keeps root versions under that name. `None` for
/// any other name, `+1.root.json` and `01.root.json` included.
pub fn root_version_of(file: &str) -> Option<u64> {
    let digits = file.strip_suffix(".root.json")?;
    let plain = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    plain.then(|| digits.parse().ok()).flatten()
}

/// TUF target path pattern matching: the same number of `/`-separated segments, each
/// matched with a case-sensitive shell glob (`*`, `?`, `[seq]`, `[!seq]`) that never
/// crosses a `/`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern_parts: Vec<&str> = pattern.split('/').collect();
    let path_parts: Vec<&str> = path.split('/').collect();
    pattern_parts.len() == path_parts.len()
        && pattern_parts
            .iter()
            .zip(&path_parts)
            .all(|(p, s)| glob_segment(p.as_bytes(), s.as_bytes()))
}

fn glob_segment(pattern: &[u8], text: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking, as fnmatch translates to a regex.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(&pattern[p..], text[t]) {
                        if matched {
                            p += next;
                            t += 1;
                            continue;
                        }
                    } else if text[t] == b'[' {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp + 1;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `[...]` at the start of `pattern` against `c`; returns whether it matched and the
/// class's length, or `None` when the bracket is not closed (then it is a literal `[`).
fn match_class(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pattern.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    while i < pattern.len() {
        if pattern[i] == b']' && i > start {
            return Some((matched != negate, i + 1));
        }
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            if pattern[i] <= c && c <= pattern[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if pattern[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target's custom object is read as text and parsed when asked for: what it holds,
    /// how it compares and how it is written are those of the value; text that is not JSON is
    /// refused when the entry is read, not when the field is used.
    #[test]
    fn a_target_custom_object_reads_as_its_value() {
        let text = r#"{"length":3,"hashes":{"sha256":"ab"},"custom":{"hardwareIds":["hw-1"],"releaseCounter":2}}"#;
        let read: TargetFile = serde_json::from_str(text).unwrap();
        let value = serde_json::json!({"hardwareIds": ["hw-1"], "releaseCounter": 2});
        assert_eq!(read.custom_value(), Some(&value));
        let built = TargetFile {
            custom: Some(value.clone().into()),
            ..read.clone()
        };
        assert_eq!(read, built);
        assert_eq!(format!("{read:?}"), format!("{built:?}"));
        assert_eq!(serde_json::to_string(&read).unwrap(), text);
        let other = TargetFile {
            custom: Some(serde_json::json!({"releaseCounter": 3}).into()),
            ..read.clone()
        };
        assert_ne!(read, other);
        let from_value: TargetFile =
            serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
        assert_eq!(from_value, read);
        let broken = r#"{"length":3,"hashes":{"sha256":"ab"},"custom":{"hardwareIds":[}}"#;
        assert!(serde_json::from_str::<TargetFile>(broken).is_err());
        // Text the raw scanner takes but no Value holds (never in a verified document): read
        // as null, equal only to itself, and not written back as anything else.
        let odd = |n: &str| {
            serde_json::from_str::<TargetFile>(&format!(
                r#"{{"length":3,"hashes":{{"sha256":"ab"}},"custom":{{"x":"\ud800","n":{n}}}}}"#
            ))
            .unwrap()
        };
        assert_eq!(odd("1").custom_value(), Some(&Value::Null));
        assert_eq!(odd("1"), odd("1"));
        assert_ne!(odd("1"), odd("2"));
        assert!(serde_json::to_string(&odd("1")).is_err());
        let none: TargetFile =
            serde_json::from_str(r#"{"length":3,"hashes":{"sha256":"ab"},"custom":null}"#).unwrap();
        assert_eq!(none.custom_value(), None);
    }

    #[test]
    fn a_root_version_is_named_one_way() {
        assert_eq!(root_version_of("1.root.json"), Some(1));
        assert_eq!(root_version_of("0.root.json"), Some(0));
        assert_eq!(
            root_version_of(&metadata_file_name("root", Some(42))),
            Some(42)
        );
        assert_eq!(
            root_version_of("18446744073709551615.root.json"),
            Some(u64::MAX)
        );
        for other in [
            "root.json",
            ".root.json",
            "+1.root.json",
            "01.root.json",
            "-1.root.json",
            "1.root.json.tmp",
            "1.roots.json",
            "18446744073709551616.root.json",
            "1.timestamp.json",
        ] {
            assert_eq!(root_version_of(other), None, "{other}");
        }
    }

    /// A delegated role named like a root version would be kept (unversioned, as a client
    /// keeps delegated roles) as `N.root.json`, where root version N is kept.
    #[test]
    fn a_delegated_role_cannot_be_named_like_a_root_version() {
        let key = crate::testing::key(1);
        let with = |name: &str| {
            let role = crate::sign::delegated_role(name, &[key.public_key()], 1, &["x/*"], false);
            crate::sign::TargetsBuilder::new(1, crate::testing::later())
                .delegate(role, &[key.public_key()])
                .build()
                .check()
        };
        for refused in ["7.root", "12.root", "0.root", "07.root", "root"] {
            assert!(with(refused).is_err(), "{refused}");
        }
        for allowed in ["acme", "root7", "7.roots", ".root", "a.root", "7.root.x"] {
            assert_eq!(with(allowed), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn quotes_role_names_like_python() {
        assert_eq!(quote_role("targets"), "targets");
        assert_eq!(quote_role("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(quote_role("/delegatedrole"), "%2Fdelegatedrole");
        assert_eq!(quote_role("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(quote_role("?#é"), "%3F%23%C3%A9");
        assert_eq!(metadata_file_name("a/b", Some(3)), "3.a%2Fb.json");
        assert_eq!(metadata_file_name("timestamp", None), "timestamp.json");
    }

    #[test]
    fn glob_matches_per_segment() {
        assert!(path_matches("*", "file.txt"));
        assert!(!path_matches("*", "dir/file.txt"));
        assert!(path_matches("dir/*", "dir/file.txt"));
        assert!(path_matches("*/*.txt", "dir/file.txt"));
        assert!(!path_matches("*.txt", "dir/file.txt"));
        assert!(path_matches("file?.txt", "file1.txt"));
        assert!(!path_matches("file?.txt", "file12.txt"));
        assert!(!path_matches("File.txt", "file.txt"));
        assert!(path_matches("f[a-c]le", "fble"));
        assert!(!path_matches("f[!a-c]le", "fble"));
        assert!(path_matches("a*b*c", "aXbYbZc"));
        assert!(path_matches("[", "["));
        assert!(path_matches("", ""));
        assert!(!path_matches("a/", "a"));
    }

    #[test]
    fn rejects_other_spec_majors_and_bad_versions() {
        let ok = |spec: &str, version: u64| {
            let mut c = Common::new(
                "timestamp",
                version,
                crate::time::parse_expires("2030-01-01T00:00:00Z").unwrap(),
            );
            c.spec_version = spec.into();
            check_common(&c).is_ok()
        };
        assert!(ok("1.0.31", 1));
        assert!(ok("1.0", 1));
        for spec in ["2.0.0", "1", "1.x", "1..2", "1.0.0.0"] {
            assert!(!ok(spec, 1), "{spec}");
        }
        assert!(!ok("1.0.31", 0));
    }
}
