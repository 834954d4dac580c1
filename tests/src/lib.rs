//! End-to-end tests, the attack suite and fleet-sim. Filled by issues 7 and 8; nothing is implemented yet.
