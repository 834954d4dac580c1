//! primary-ecu
