//! The Director repository. Filled by issue 4; nothing is implemented yet.
