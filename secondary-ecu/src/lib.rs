//! The Secondary ECU agent. Filled by issue 5; nothing is implemented yet.
