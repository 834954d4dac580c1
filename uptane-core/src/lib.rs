//! `uptane-core`: the I/O-free heart of the Uptane fleet update system.
//!
//! It implements TUF 1.0.31 client verification (§5.3–5.6) and the Uptane 2.1.0 checks
//! on top (§5.4.4: full and partial verification, Director/Image repository matching,
//! version reports). It takes bytes and `now` in and returns values or typed errors out:
//! it never reads the clock, files or sockets, and has no async code (documents of a
//! megabyte or more are checked on two scoped threads, see `both.rs`). Every refusal names
//! the attack it stopped ([`error::AttackKind`]).
//!
//! Layout:
//! - [`cjson`]: OLPC canonical JSON, what signatures cover;
//! - [`crypto`]: keys, key ids, signatures (ed25519 signing; ed25519, ECDSA P-256 and
//!   RSA-PSS verification);
//! - [`hash`]: hashes and streaming length/hash checks;
//! - [`ids`]: `Vin`, `EcuSerial`, `HardwareId`, validated once;
//! - [`metadata`]: the role types;
//! - [`verify`]: `Raw<R>` to `Verified<R>`, the only place signatures are checked;
//! - [`trusted`]: `TrustedSet<Repo>` and the checks that admit metadata into it,
//!   [`trusted::RootChain`], and delegation search;
//! - [`refresh`]: `Refresh<Repo>`, the one sans-I/O driver of the TUF client workflow that
//!   every repository client uses;
//! - [`uptane`]: Director checks, matching, partial verification, image verification;
//! - [`manifest`]: ECU version reports and vehicle version manifests, and the Director's
//!   checks of a manifest against its inventory;
//! - [`sign`]: builders that create and sign metadata.

#![warn(missing_docs)]

mod both;
pub mod cjson;
pub mod crypto;
pub mod error;
pub mod hash;
pub mod ids;
pub mod manifest;
pub mod metadata;
pub mod refresh;
pub mod sign;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod time;
pub mod trusted;
pub mod uptane;
pub mod verify;
