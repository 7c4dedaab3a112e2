//! Fault injection for Strom clusters (see docs/testing.md).

pub mod history;
