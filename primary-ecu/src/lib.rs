//! The Primary ECU agent.
//!
//! So far this crate holds the repository client the Primary uses for both repositories
//! ([`repo`]) and atomic file storage ([`store`]); the update cycle, the Secondary links and
//! the `primary-ecu` binary come with issue 6. The `tuf-conformance-client` binary drives
//! the repository client through the public TUF conformance suite's client protocol.

pub mod repo;
pub mod store;
