//! The Uptane Image repository: a TUF 1.0 repository of signed images that python-tuf,
//! go-tuf, tough and our Primary can all read.
//!
//! Root and targets keys are offline (a key directory the server never reads); snapshot and
//! timestamp keys are online (`DIR/keys`). Publishing verifies everything it is handed
//! against the published trust chain and the stored image bytes, and writes in an order that
//! keeps the served repository consistent through a crash ([`repo`]). The server ([`server`])
//! serves metadata and images, accepts authenticated uploads, and re-signs timestamp and
//! snapshot before they expire.

pub mod cli;
pub mod error;
pub mod fsutil;
pub mod keys;
pub mod metadata_cache;
pub mod remote;
pub mod repo;
pub mod serve_targets;
pub mod server;
pub mod tokens;
