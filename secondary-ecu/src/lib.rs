//! The Secondary ECU agent.
//!
//! It serves `uptane.secondary.v2.Secondary` over gRPC ([`rpc`]), verifies what the
//! Primary sends (full or partial verification, [`verify`]), receives images through a
//! resumable transfer, installs them on a simulated A/B device with trial boot and rollback
//! ([`ab`]), and signs version reports with its key. Fault knobs on the simulated hardware
//! (power loss at a named phase, corrupted write, slow or stalled link, a new image that does
//! not boot, storage full) drive tests and hardware-in-loop rigs.

pub mod ab;
pub mod agent;
pub mod files;
pub mod rpc;
pub mod verify;
