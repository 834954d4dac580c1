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

/// Canonical bytes of JSON text, without building a [`Value`]: the fast path for verifying
/// large metadata. The text must already be valid JSON (callers parse it with serde_json
/// first); on top of JSON's rules this refuses duplicate object keys, numbers that are not
/// integers in the 64-bit range, `-0`, and nesting deeper than 128, so that the canonical
/// form and a serde_json reading of the same text cannot disagree.
pub fn canonicalize_json_text(text: &[u8]) -> Result<Vec<u8>, CanonicalError> {
    canonicalize_json_text_at(text, 0)
}

/// [`canonicalize_json_text`] of text that another document will carry `depth` levels down
/// (an ECU report in a vehicle manifest): the nesting limit counts from that document's
/// top, so text that canonicalizes on its own may not once carried.
pub fn canonicalize_json_text_at(text: &[u8], depth: usize) -> Result<Vec<u8>, CanonicalError> {
    let mut reader = TextReader { text, pos: 0 };
    let mut out = Vec::with_capacity(text.len());
    reader.value(&mut out, depth)?;
    reader.skip_ws();
    if reader.pos != text.len() {
        return Err(reader.error("trailing characters"));
    }
    Ok(out)
}

/// An object key as [`TextReader::sorted_object`] compares it: the text's own bytes when the
/// literal has no escape, else its decoded bytes.
enum Key<'t> {
    Plain(&'t [u8]),
    Decoded(Vec<u8>),
}

impl Key<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Key::Plain(bytes) => bytes,
            Key::Decoded(bytes) => bytes,
        }
    }
}

const MAX_DEPTH: usize = 128;
const OPTIMISTIC_DEPTH: usize = 6;

struct TextReader<'a> {
    text: &'a [u8],
    pos: usize,
}

impl TextReader<'_> {
    fn error(&self, what: &str) -> CanonicalError {
        CanonicalError::NotJson(format!("{what} at byte {}", self.pos))
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Result<(), CanonicalError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", byte as char)))
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(out, depth),
            Some(b'[') => {
                self.pos += 1;
                out.push(b'[');
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                } else {
                    loop {
                        self.value(out, depth + 1)?;
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => {
                                self.pos += 1;
                                out.push(b',');
                            }
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.error("expected , or ]")),
                        }
                    }
                }
                out.push(b']');
                Ok(())
            }
            Some(b'"') => {
                // Without an escape, the literal is already canonical: copied as it is (what
                // decoding and writing it again would give, without either).
                if let Some(end) = self.plain_string_end() {
                    out.extend_from_slice(&self.text[self.pos..end]);
                    self.pos = end;
                    return Ok(());
                }
                let mut decoded = Vec::new();
                self.string(&mut decoded)?;
                write_string_bytes(&decoded, out);
                Ok(())
            }
            Some(b't') => self.literal(b"true", out),
            Some(b'f') => self.literal(b"false", out),
            Some(b'n') => self.literal(b"null", out),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(self.error("expected a value")),
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        // Most signed metadata is written with sorted keys already: copy it straight through,
        // and only when a key is out of order start this object again with sorting. The
        // optimism stops at a small depth so that nested unsorted objects cannot make the
        // work grow with the depth of the document.
        if depth <= OPTIMISTIC_DEPTH {
            let (pos, len) = (self.pos, out.len());
            if self.sorted_object(out, depth)? {
                return Ok(());
            }
            self.pos = pos;
            out.truncate(len);
        }
        self.sorting_object(out, depth)
    }

    /// Writes an object whose keys arrive in order; returns `false` (having written a partial
    /// object the caller discards) at the first key that is not above the previous one. A key
    /// without escapes is compared where it lies in the text: no copy, no allocation, for
    /// the tens of thousands of objects of a large targets file.
    fn sorted_object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<bool, CanonicalError> {
        self.pos += 1;
        out.push(b'{');
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push(b'}');
            return Ok(true);
        }
        let mut previous: Option<Key<'_>> = None;
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a key"));
            }
            let literal = self.pos;
            let key = match self.plain_string_end() {
                Some(end) => {
                    self.pos = end;
                    Key::Plain(&self.text[literal + 1..end - 1])
                }
                None => {
                    let mut decoded = Vec::new();
                    self.string(&mut decoded)?;
                    Key::Decoded(decoded)
                }
            };
            match &previous {
                Some(previous) if key.bytes() <= previous.bytes() => return Ok(false),
                Some(_) => out.push(b','),
                None => {}
            }
            match &key {
                Key::Plain(_) => out.extend_from_slice(&self.text[literal..self.pos]),
                Key::Decoded(decoded) => write_string_bytes(decoded, out),
            }
            out.push(b':');
            self.expect(b':')?;
            self.value(out, depth + 1)?;
            previous = Some(key);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    out.push(b'}');
                    return Ok(true);
                }
                _ => return Err(self.error("expected , or }")),
            }
        }
    }

    fn sorting_object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        self.pos += 1;
        // Keys and canonical values go into one buffer; members are sorted by key after.
        let mut buf = Vec::new();
        let mut members: Vec<(usize, usize, usize)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
        } else {
            loop {
                self.skip_ws();
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a key"));
                }
                let key_start = buf.len();
                self.string(&mut buf)?;
                let key_end = buf.len();
                self.expect(b':')?;
                self.value(&mut buf, depth + 1)?;
                members.push((key_start, key_end, buf.len()));
                self.skip_ws();
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b'}') => {
                        self.pos += 1;
                        break;
                    }
                    _ => return Err(self.error("expected , or }")),
                }
            }
        }
        members.sort_by(|a, b| buf[a.0..a.1].cmp(&buf[b.0..b.1]));
        if members
            .windows(2)
            .any(|w| buf[w[0].0..w[0].1] == buf[w[1].0..w[1].1])
        {
            return Err(self.error("duplicate object key"));
        }
        out.push(b'{');
        for (i, (key_start, key_end, value_end)) in members.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_string_bytes(&buf[key_start..key_end], out);
            out.push(b':');
            out.extend_from_slice(&buf[key_end..value_end]);
        }
        out.push(b'}');
        Ok(())
    }

    /// The end (past the closing quote) of the string literal at `pos` if it holds neither an
    /// escape nor a control character.
    fn plain_string_end(&self) -> Option<usize> {
        let body = self.text.get(self.pos + 1..)?;
        let stop = plain_run(body);
        (*body.get(stop)? == b'"').then_some(self.pos + stop + 2)
    }

    /// Reads a string literal, appending its decoded UTF-8 bytes to `out`.
    fn string(&mut self, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        self.pos += 1;
        loop {
            let start = self.pos;
            self.pos += plain_run(&self.text[start..]);
            out.extend_from_slice(&self.text[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.peek().ok_or_else(|| self.error("bad escape"))?;
                    self.pos += 1;
                    match escaped {
                        b'"' | b'\\' | b'/' => out.push(escaped),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if !self.text[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("lone surrogate"));
                                }
                                self.pos += 2;
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return Err(self.error("lone surrogate"));
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else {
                                first
                            };
                            let c =
                                char::from_u32(code).ok_or_else(|| self.error("lone surrogate"))?;
                            let mut utf8 = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                        }
                        _ => return Err(self.error("bad escape")),
                    }
                }
                _ => return Err(self.error("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, CanonicalError> {
        let digits = self
            .text
            .get(self.pos..self.pos + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok())
            .ok_or_else(|| self.error("bad \\u escape"))?;
        self.pos += 4;
        Ok(digits)
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return Err(CanonicalError::NonInteger(format!(
                "number at byte {start}"
            )));
        }
        let digits = std::str::from_utf8(&self.text[start..self.pos])
            .map_err(|_| self.error("bad number"))?;
        let in_range = digits.parse::<i64>().is_ok() || digits.parse::<u64>().is_ok();
        // serde_json reads -0 as a float; refuse it rather than canonicalize it differently.
        if !in_range || digits == "-0" {
            return Err(CanonicalError::NonInteger(digits.to_string()));
        }
        out.extend_from_slice(digits.as_bytes());
        Ok(())
    }
}

/// How many bytes at the start of `bytes` a string literal holds as they are: the index of
/// the first quote, backslash or control character, or the length. Eight bytes at a time (most of a
/// targets file is hex digests inside string literals), then byte by byte in the eight that
/// hold the stop.
fn plain_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whole-word tests, exact as such: the result is non-zero iff some byte of `x` is zero, or
    // below `n` (n <= 0x80). Which bits are set says nothing reliable about which byte (a
    // borrow can mark the bytes above the first match), so only zero or not is used.
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let mut at = 0;
    for chunk in bytes.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word);
        let stop = zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            | below(x, 0x20);
        if stop != 0 {
            break;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(bytes.len() - at)
}

fn write_string_bytes(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    // Runs between the bytes that need a backslash are copied whole.
    let mut rest = s;
    while let Some(at) = rest.iter().position(|&b| b == b'"' || b == b'\\') {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\\');
        out.push(rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
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
    write_string_bytes(s.as_bytes(), out);
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

    #[test]
    fn text_path_refuses_what_the_value_path_could_read_differently() {
        for bad in [
            &br#"{"a":1,"a":2}"#[..],
            // The same key written plain and escaped, in both orders, and at the end of an
            // object whose other keys are sorted.
            br#"{"a":1,"\u0061":2}"#,
            br#"{"\u0061":1,"a":2}"#,
            br#"{"0":0,"b\"":1,"b\u0022":2}"#,
            b"1.0",
            b"1e3",
            b"-0",
            b"18446744073709551616",
            br#""\ud800""#,
        ] {
            assert!(
                canonicalize_json_text(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(canonicalize_json_text(deep.as_bytes()).is_err());
    }

    #[test]
    fn nesting_counts_from_the_top_of_the_carrying_document() {
        // 129 levels (depths 0 to 128) is the most a document may hold.
        let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(canonicalize_json_text(nested(129).as_bytes()).is_ok());
        assert!(canonicalize_json_text(nested(130).as_bytes()).is_err());
        assert!(canonicalize_json_text_at(nested(127).as_bytes(), 2).is_ok());
        let err = canonicalize_json_text_at(nested(128).as_bytes(), 2).unwrap_err();
        assert!(err.to_string().contains("nesting too deep"), "{err}");
    }

    #[test]
    fn text_path_sorts_objects_whatever_their_order() {
        for text in [
            &br#"{"a":1,"b":{"y":2,"x":[{"q":1,"p":2}]},"c":3}"#[..],
            br#"{"c":3,"b":{"x":[{"p":2,"q":1}],"y":2},"a":1}"#,
            br#"{"a":{"b":{"c":{"d":{"e":{"f":{"h":1,"g":2}}}}}}}"#,
        ] {
            let value: Value = serde_json::from_slice(text).unwrap();
            assert_eq!(
                canonicalize_json_text(text).unwrap(),
                canonicalize(&value).unwrap()
            );
        }
        // A duplicate after sorted keys is still refused.
        assert!(canonicalize_json_text(br#"{"a":1,"b":2,"b":3}"#).is_err());
    }

    #[test]
    fn text_path_decodes_escapes() {
        let text = br#" { "b" : "\u00e9\ud83d\ude00\n\/\"" , "a" : [ -5 , true , null ] } "#;
        let value: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(
            canonicalize_json_text(text).unwrap(),
            canonicalize(&value).unwrap()
        );
    }

    proptest! {
        #[test]
        fn text_path_matches_value_path(v in arb_json()) {
            for text in [serde_json::to_vec(&v).unwrap(), serde_json::to_vec_pretty(&v).unwrap()] {
                prop_assert_eq!(canonicalize_json_text(&text).unwrap(), canonicalize(&v).unwrap());
            }
        }

        #[test]
        fn the_text_path_sorts_keys_as_they_come(
            kv in prop::collection::btree_map(".*", arb_json(), 0..10),
            seed in any::<u64>(),
        ) {
            // Distinct keys (escapes and control characters included), in a shuffled order.
            let mut members: Vec<_> = kv.iter().collect();
            let len = members.len().max(1);
            members.rotate_left(usize::try_from(seed).unwrap_or(0) % len);
            if seed % 2 == 1 { members.reverse(); }
            let mut text = String::from("{");
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 { text.push(','); }
                text.push_str(&serde_json::to_string(k).unwrap());
                text.push(':');
                text.push_str(&serde_json::to_string(v).unwrap());
            }
            text.push('}');
            let value: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(canonicalize_json_text(text.as_bytes()).unwrap(), canonicalize(&value).unwrap());
        }

        #[test]
        fn a_plain_run_stops_where_a_byte_loop_would(bytes in prop::collection::vec(any::<u8>(), 0..40), fill in 0usize..40) {
            // Long plain stretches before the generated bytes exercise the eight-byte steps.
            let mut text = vec![b'a'; fill];
            text.extend_from_slice(&bytes);
            let expected = text
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .unwrap_or(text.len());
            prop_assert_eq!(plain_run(&text), expected);
        }

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
