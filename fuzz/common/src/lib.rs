//! The fuzz targets' bodies, as plain functions over bytes (libFuzzer calls them from
//! `fuzz/fuzz_targets`; `cargo test` replays the corpora through them), and the fixtures and
//! input formats they share.
//!
//! Each target states its oracle where it runs: beyond "no panic, no hang, no unbounded
//! allocation", the properties that would fail if a check were bypassed (a document
//! verified without its key's signature, a manifest accepted with a replayed counter, an
//! image file handed out that is not the approved bytes).

pub mod cjson;
pub mod envelope;
pub mod fixtures;
pub mod http;
pub mod manifest;
pub mod records;
pub mod refresh;
pub mod secondary;
pub mod seeds;
pub mod upload;
pub mod verify;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by name: what `cargo fuzz run <name>` runs and what the corpus folder of
/// that name seeds.
pub const TARGETS: &[(&str, Target)] = &[
    ("cjson", cjson::run),
    ("verify_roles", verify::run),
    ("refresh", refresh::run),
    ("manifest", manifest::run),
    ("secondary_grpc", secondary::run),
    ("image_upload", upload::run),
    ("primary_http", http::run),
];
