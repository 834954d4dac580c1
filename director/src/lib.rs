//! The Uptane Director repository.
//!
//! It keeps the vehicle inventory in SQLite ([`db`]), decides what each ECU installs
//! (assignments), signs that decision for each vehicle alone with online keys
//! ([`service::refresh_vehicle_metadata`]), serves it only to that vehicle, and checks every
//! vehicle version manifest that comes back before recording it
//! ([`service::process_manifest`]). It reads the Image repository through its pinned root with
//! `uptane-core` ([`catalog`]), so it assigns only images the Image repository vouches for.

pub mod api;
pub mod catalog;
pub mod cli;
pub mod db;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod pg;
pub mod service;
pub mod sql;
pub mod transfer;
