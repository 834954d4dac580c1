//! Signed envelopes around text the fuzzer wrote: the harness signs what the fuzzer chose,
//! so that mutations reach past the signature check into the typed reading and the checks
//! after it (random bytes almost never carry a valid signature).

use uptane_core::crypto::SigningKey;

/// `{"signatures": [...], "signed": <text>}`, signed by each of `keys` over the canonical
/// form of `text` (over `text` itself when it has none, which no check accepts).
pub fn sign(text: &[u8], keys: &[&SigningKey]) -> Vec<u8> {
    let canonical =
        uptane_core::cjson::canonicalize_json_text(text).unwrap_or_else(|_| text.to_vec());
    let mut out = Vec::with_capacity(text.len() + 160 * keys.len() + 32);
    out.extend_from_slice(b"{\"signatures\":[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(
            format!(
                "{{\"keyid\":\"{}\",\"sig\":\"{}\"}}",
                key.key_id().as_str(),
                key.sign_hex(&canonical)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(b"],\"signed\":");
    out.extend_from_slice(text);
    out.push(b'}');
    out
}

/// The text of `signed` in a signed document (for seeds built from real files).
pub fn signed_text(document: &[u8]) -> Vec<u8> {
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        signed: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<Doc<'_>>(document)
        .map(|d| d.signed.get().as_bytes().to_vec())
        .unwrap_or_default()
}
