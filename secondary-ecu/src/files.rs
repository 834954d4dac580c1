//! Atomic file writes and JSON state files, shared with the other programs.

pub use service_runtime::files::{load_json as load, save_json as save, write_atomic};
