//! The Primary ECU agent: the only part of the vehicle that talks to the servers.
//!
//! [`agent::Primary`] runs the Uptane update cycle (§5.4.2): it collects the Secondaries'
//! signed reports and sends the vehicle version manifest, verifies the Director and the
//! Image repository with [`repo`] (a TUF client over `uptane_core::trusted`), downloads
//! each image once ([`download`]), and delivers it to every Secondary in parallel over
//! `uptane.secondary.v2` ([`secondary`]). [`provision`] creates the state directory and
//! registers the vehicle; [`config`] and [`state`] hold what it is told and what it keeps.
//! The `tuf-conformance-client` binary drives [`repo`] through the public TUF conformance
//! suite's client protocol.

pub mod agent;
pub mod config;
pub mod download;
pub mod install;
pub mod ports;
pub mod provision;
pub mod repo;
pub mod secondary;
pub mod state;
