//! The Image Repository. Filled by issue 3; nothing is implemented yet.
