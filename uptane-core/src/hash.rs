//! Hashes as TUF lists them (`{"sha256": "<hex>", ...}`) and an incremental checker.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256, Sha512};

/// Hash algorithm name to lowercase hex digest, as in TUF `hashes` objects.
pub type Hashes = BTreeMap<String, String>;

/// Whether two digest listings describe the same bytes: they list at least one algorithm in
/// common, and every algorithm both list has the same digest. (A listing with only sha512
/// and one with only sha256 share nothing and so prove nothing.)
pub fn same_digests(a: &Hashes, b: &Hashes) -> bool {
    let shared: Vec<bool> = a
        .iter()
        .filter_map(|(alg, digest)| b.get(alg).map(|other| digest == other))
        .collect();
    !shared.is_empty() && shared.iter().all(|equal| *equal)
}

/// Why bytes do not match the length and hashes that metadata lists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// More bytes arrived than the metadata allows (endless data attack).
    #[error("more than the {limit} bytes the metadata allows")]
    TooLong {
        /// The length the metadata lists.
        limit: u64,
    },
    /// The byte count differs from the metadata.
    #[error("length {actual} differs from the {expected} bytes the metadata lists")]
    LengthMismatch {
        /// Length in metadata.
        expected: u64,
        /// Length received.
        actual: u64,
    },
    /// A digest differs from the metadata.
    #[error("{algorithm} digest {actual} differs from {expected}")]
    HashMismatch {
        /// Algorithm name.
        algorithm: String,
        /// Digest in metadata.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// The metadata names a hash algorithm this implementation cannot compute; accepting it
    /// would mean trusting bytes nobody checked.
    #[error("unsupported hash algorithm {0:?}")]
    UnknownAlgorithm(String),
    /// The metadata lists no hash at all.
    #[error("no hashes listed")]
    NoHashes,
    /// Parts of a split check saw different bytes (see [`StreamVerifier::split`]); nothing can
    /// be concluded from them.
    #[error("the digests were computed over {digest} bytes, the length check saw {length}")]
    PartsDisagree {
        /// Bytes the length check saw.
        length: u64,
        /// Bytes a digest part saw.
        digest: u64,
    },
    /// A check handed back for other length or hashes than the image's own.
    #[error("the check handed back is not the one made for this image")]
    OtherCheck,
}

impl DigestError {
    /// Whether this is a fault of the checking code (parts of a split check put together
    /// wrongly), not of the bytes: not evidence of an attack.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            DigestError::PartsDisagree { .. } | DigestError::OtherCheck
        )
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Checks streamed bytes against an expected length and every listed hash.
///
/// ```
/// use uptane_core::hash::{Hashes, StreamVerifier, sha256_hex};
/// let data = b"image bytes";
/// let hashes = Hashes::from([("sha256".to_string(), sha256_hex(data))]);
/// let mut v = StreamVerifier::new(Some(data.len() as u64), &hashes).unwrap();
/// v.update(&data[..5]).unwrap();
/// v.update(&data[5..]).unwrap();
/// v.finish().unwrap();
/// ```
pub struct StreamVerifier {
    limit: Option<u64>,
    seen: u64,
    hashers: Vec<(String, String, Hasher)>,
}

impl std::fmt::Debug for StreamVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamVerifier")
            .field("limit", &self.limit)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl StreamVerifier {
    /// A verifier for `length` bytes (when known) with `hashes`; an unknown algorithm fails here.
    pub fn new(length: Option<u64>, hashes: &Hashes) -> Result<Self, DigestError> {
        let hashers = hashes
            .iter()
            .map(|(alg, hex)| {
                let hasher = match alg.as_str() {
                    "sha256" => Hasher::Sha256(Sha256::new()),
                    "sha512" => Hasher::Sha512(Sha512::new()),
                    other => return Err(DigestError::UnknownAlgorithm(other.to_string())),
                };
                Ok((alg.clone(), hex.to_ascii_lowercase(), hasher))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            limit: length,
            seen: 0,
            hashers,
        })
    }

    /// Feeds the next chunk; fails as soon as the total exceeds the expected length.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), DigestError> {
        self.seen += chunk.len() as u64;
        if let Some(limit) = self.limit
            && self.seen > limit
        {
            return Err(DigestError::TooLong { limit });
        }
        for (_, _, hasher) in &mut self.hashers {
            match hasher {
                Hasher::Sha256(h) => h.update(chunk),
                Hasher::Sha512(h) => h.update(chunk),
            }
        }
        Ok(())
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Splits the check into the length alone and one part per listed hash (each without a
    /// length), so that each digest can be computed apart from the others, on a thread of its
    /// own, over the same bytes. [`Self::join`] puts the parts back together; the comparison
    /// stays in [`Self::finish`].
    pub fn split(self) -> (StreamVerifier, Vec<StreamVerifier>) {
        let seen = self.seen;
        let digests = self
            .hashers
            .into_iter()
            .map(|hasher| StreamVerifier {
                limit: None,
                seen,
                hashers: vec![hasher],
            })
            .collect();
        let length = StreamVerifier {
            limit: self.limit,
            seen,
            hashers: Vec::new(),
        };
        (length, digests)
    }

    /// Puts parts from [`Self::split`] back together; fails when a part saw other bytes than
    /// the length check did.
    pub fn join(
        length: StreamVerifier,
        digests: impl IntoIterator<Item = StreamVerifier>,
    ) -> Result<StreamVerifier, DigestError> {
        let mut joined = length;
        for part in digests {
            if part.seen != joined.seen {
                return Err(DigestError::PartsDisagree {
                    length: joined.seen,
                    digest: part.seen,
                });
            }
            joined.hashers.extend(part.hashers);
        }
        Ok(joined)
    }

    /// Whether this checks exactly `length` bytes against exactly `hashes`.
    pub fn checks(&self, length: Option<u64>, hashes: &Hashes) -> bool {
        // Every listed hash checked, by exactly one hasher, against the listed digest.
        self.limit == length
            && self.hashers.len() == hashes.len()
            && hashes.iter().all(|(algorithm, listed)| {
                let mut of_it = self.hashers.iter().filter(|h| &h.0 == algorithm);
                of_it
                    .next()
                    .is_some_and(|h| listed.eq_ignore_ascii_case(&h.1))
                    && of_it.next().is_none()
            })
    }

    /// Checks the final length and every digest.
    pub fn finish(self) -> Result<(), DigestError> {
        if let Some(expected) = self.limit
            && self.seen != expected
        {
            return Err(DigestError::LengthMismatch {
                expected,
                actual: self.seen,
            });
        }
        for (algorithm, expected, hasher) in self.hashers {
            let actual = match hasher {
                Hasher::Sha256(h) => to_hex(&h.finalize()),
                Hasher::Sha512(h) => to_hex(&h.finalize()),
            };
            if actual != expected {
                return Err(DigestError::HashMismatch {
                    algorithm,
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// Checks a whole buffer against an optional length and optional hashes.
pub fn verify_bytes(
    bytes: &[u8],
    length: Option<u64>,
    hashes: Option<&Hashes>,
) -> Result<(), DigestError> {
    let empty = Hashes::new();
    let mut v = StreamVerifier::new(length, hashes.unwrap_or(&empty))?;
    v.update(bytes)?;
    v.finish()
}

/// Lowercase hex of `bytes`, as TUF writes hashes, key values and signatures. `hex::encode`
/// collects its string a `char` at a time: about 2% of the Director's CPU on a request that
/// signs a vehicle's metadata (three signatures and five digests), `docs/BENCHMARKS.md`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut out).expect("the output is twice the input's length");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// Lowercase hex SHA-512 of `bytes`.
pub fn sha512_hex(bytes: &[u8]) -> String {
    to_hex(&Sha512::digest(bytes))
}

/// sha256 and sha512 of `bytes`: what an image entry lists when `image-repo add --hash sha512`
/// asks for both (by default images and metadata list sha256 alone, `docs/POUF.md`).
pub fn standard_hashes(bytes: &[u8]) -> Hashes {
    Hashes::from([
        ("sha256".to_string(), sha256_hex(bytes)),
        ("sha512".to_string(), sha512_hex(bytes)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn to_hex_writes_what_hex_encode_writes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(to_hex(&bytes), hex::encode(&bytes));
        }
    }

    #[test]
    fn same_digests_needs_one_shared_algorithm_and_every_shared_one_equal() {
        let both = standard_hashes(b"image");
        let sha256 = Hashes::from([("sha256".to_string(), sha256_hex(b"image"))]);
        let sha512 = Hashes::from([("sha512".to_string(), sha512_hex(b"image"))]);
        assert!(same_digests(&both, &sha256) && same_digests(&sha256, &both));
        assert!(same_digests(&both, &both));
        // Nothing in common proves nothing.
        assert!(!same_digests(&sha256, &sha512));
        assert!(!same_digests(&Hashes::new(), &Hashes::new()));
        // One shared algorithm that disagrees is enough to differ.
        let mut other = both.clone();
        other.insert("sha512".into(), sha512_hex(b"other"));
        assert!(!same_digests(&both, &other));
        assert!(!same_digests(&standard_hashes(b"other"), &sha256));
    }

    #[test]
    fn accepts_matching_bytes_in_chunks() {
        let data = vec![7u8; 10_000];
        let hashes = standard_hashes(&data);
        let mut v = StreamVerifier::new(Some(10_000), &hashes).unwrap();
        for chunk in data.chunks(333) {
            v.update(chunk).unwrap();
        }
        v.finish().unwrap();
    }

    #[test]
    fn split_parts_fed_apart_check_as_one() {
        let data = vec![9u8; 5_000];
        let hashes = standard_hashes(&data);
        let mut whole = StreamVerifier::new(Some(5_000), &hashes).unwrap();
        whole.update(&data[..1_000]).unwrap();
        let (mut length, mut digests) = whole.split();
        assert_eq!(digests.len(), 2);
        assert!(!length.checks(Some(5_000), &hashes));
        length.update(&data[1_000..]).unwrap();
        for part in &mut digests {
            part.update(&data[1_000..]).unwrap();
        }
        let joined = StreamVerifier::join(length, digests).unwrap();
        assert!(joined.checks(Some(5_000), &hashes));
        joined.finish().unwrap();

        // Two sha256 parts do not check a listing of sha256 and sha512.
        let only_sha256 = Hashes::from([("sha256".to_string(), hashes["sha256"].clone())]);
        let (length, mut twice) = StreamVerifier::new(Some(5_000), &only_sha256)
            .unwrap()
            .split();
        twice.push(
            StreamVerifier::new(None, &only_sha256)
                .unwrap()
                .split()
                .1
                .remove(0),
        );
        let doubled = StreamVerifier::join(length, twice).unwrap();
        assert!(!doubled.checks(Some(5_000), &hashes));

        // A part that missed bytes cannot be joined; one fed other bytes fails its digest.
        let (mut length, mut digests) = StreamVerifier::new(Some(5_000), &hashes).unwrap().split();
        length.update(&data).unwrap();
        digests[0].update(&data[1..]).unwrap();
        assert_eq!(
            StreamVerifier::join(length, digests).err(),
            Some(DigestError::PartsDisagree {
                length: 5_000,
                digest: 4_999
            })
        );
        let (mut length, mut digests) = StreamVerifier::new(Some(5_000), &hashes).unwrap().split();
        length.update(&data).unwrap();
        digests[0].update(&data).unwrap();
        digests[1].update(&[0u8; 5_000]).unwrap();
        assert!(matches!(
            StreamVerifier::join(length, digests).unwrap().finish(),
            Err(DigestError::HashMismatch { algorithm, .. }) if algorithm == "sha512"
        ));
    }

    #[test]
    fn stops_at_the_length_limit() {
        let mut v = StreamVerifier::new(Some(4), &standard_hashes(b"abcd")).unwrap();
        v.update(b"abc").unwrap();
        assert_eq!(v.update(b"de"), Err(DigestError::TooLong { limit: 4 }));
    }

    #[test]
    fn rejects_short_data() {
        assert!(matches!(
            verify_bytes(b"abc", Some(4), None),
            Err(DigestError::LengthMismatch {
                expected: 4,
                actual: 3
            })
        ));
    }

    #[test]
    fn rejects_each_wrong_hash() {
        let mut hashes = standard_hashes(b"abcd");
        hashes.insert("sha512".into(), sha512_hex(b"abce"));
        assert!(matches!(
            verify_bytes(b"abcd", Some(4), Some(&hashes)),
            Err(DigestError::HashMismatch { algorithm, .. }) if algorithm == "sha512"
        ));
    }

    #[test]
    fn rejects_unknown_algorithm() {
        let hashes = Hashes::from([("unknown-hash".to_string(), "00".to_string())]);
        assert!(matches!(
            StreamVerifier::new(None, &hashes),
            Err(DigestError::UnknownAlgorithm(_))
        ));
    }
}
