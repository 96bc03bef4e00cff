//! SenseGate's data plane.
#![warn(missing_docs)]

pub mod access;
pub mod token;
