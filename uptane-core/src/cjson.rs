//! OLPC canonical JSON, the encoding TUF and Uptane sign.
//!
//! Object keys are sorted by their UTF-8 bytes, there is no whitespace, strings escape only
//! `"` and `\` (everything else, control characters included, is written raw), and only
//! integers are allowed. This matches securesystemslib's `encode_canonical`, which is what
//! python-tuf, go-tuf and tough sign over.
//!
//! ```
//! use serde_json::json;
//! let value = json!({"b": [1, "x\"y"], "a": true});
//! assert_eq!(uptane_core::cjson::to_canonical_vec(&value).unwrap(), br#"{"a":true,"b":[1,"x\"y"]}"#);
//! assert!(uptane_core::cjson::to_canonical_vec(&json!(1.5)).is_err());
//! ```

use serde::Serialize;
use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// OLPC canonical JSON has no floating-point numbers.
    #[error("canonical JSON allows only integers, found {0}")]
    NonInteger(String),
    /// The value could not be turned into JSON at all.
    #[error("value is not representable as JSON: {0}")]
    NotJson(String),
}

/// Canonical bytes of an already parsed JSON value.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Canonical bytes of any serializable value.
pub fn to_canonical_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value).map_err(|e| CanonicalError::NotJson(e.to_string()))?;
    canonicalize(&value)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else {
                return Err(CanonicalError::NonInteger(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // serde_json's default map is a BTreeMap<String, _>: iteration is already in
            // byte order of the UTF-8 keys, which is the code-point order OLPC asks for.
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn escapes_only_quote_and_backslash() {
        let v = json!({"k": "a\"b\\c\nd\u{1}é"});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"k\":\"a\\\"b\\\\c\nd\u{1}é\"}".as_bytes()
        );
    }

    #[test]
    fn sorts_keys_by_code_point() {
        let v = json!({"b": 1, "a": {"z": null, "é": false, "Z": []}});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"a\":{\"Z\":[],\"z\":null,\"é\":false},\"b\":1}".as_bytes()
        );
    }

    #[test]
    fn rejects_floats() {
        assert!(matches!(
            canonicalize(&json!({"x": 0.5})),
            Err(CanonicalError::NonInteger(_))
        ));
    }

    #[test]
    fn writes_large_and_negative_integers() {
        assert_eq!(
            canonicalize(&json!([u64::MAX, i64::MIN])).unwrap(),
            format!("[{},{}]", u64::MAX, i64::MIN).as_bytes()
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((".*", inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_is_idempotent(v in arb_json()) {
            let once = canonicalize(&v).unwrap();
            // Canonical strings may hold raw control characters, which strict JSON parsers
            // refuse; re-parse through serde_json's own output instead.
            let reparsed: Value = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            prop_assert_eq!(&reparsed, &v);
            prop_assert_eq!(canonicalize(&reparsed).unwrap(), once);
        }

        #[test]
        fn canonical_form_ignores_key_order(kv in prop::collection::vec((".*", arb_json()), 0..10)) {
            let forward: String = {
                let mut s = String::from("{");
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 { s.push(','); }
                    s.push_str(&serde_json::to_string(k).unwrap());
                    s.push(':');
                    s.push_str(&serde_json::to_string(v).unwrap());
                }
                s.push('}');
                s
            };
            let backward: String = {
                let mut s = String::from("{");
                // Later duplicates win in serde_json, so reversing must keep each key's last value.
                let mut seen = std::collections::BTreeSet::new();
                let mut items = Vec::new();
                for (k, v) in kv.iter().rev() {
                    if seen.insert(k.clone()) { items.push((k, v)); }
                }
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 { s.push(','); }
                    s.push_str(&serde_json::to_string(k).unwrap());
                    s.push(':');
                    s.push_str(&serde_json::to_string(v).unwrap());
                }
                s.push('}');
                s
            };
            let a: Value = serde_json::from_str(&forward).unwrap();
            let b: Value = serde_json::from_str(&backward).unwrap();
            prop_assert_eq!(canonicalize(&a).unwrap(), canonicalize(&b).unwrap());
        }
    }
}
