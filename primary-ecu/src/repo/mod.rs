//! The TUF repository client the Primary uses for both repositories: exact TUF request
//! order, every download streamed under a hard byte limit, trusted metadata persisted as the
//! exact bytes received, and local metadata reused while it is still current.
//!
//! Verification is [`uptane_core::trusted::TrustedSet`]'s; this module only decides what to
//! fetch, fetches it, and persists what the trusted set accepted.

mod fetch;
mod updater;

pub use fetch::{Credential, FetchError, Fetcher, HttpClientError};
pub use updater::{
    ClientError, MetadataDir, RefreshOutcome, Updater, download_verified, is_cached, quote_role,
};
