//! The Primary/Secondary gRPC definitions. Filled by issue 5; nothing is defined yet.
