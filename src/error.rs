//! Errors: one [`Error`] enum for the whole library, shared with the transports.

pub use oxccl_transport::{Context, Error, ErrorKind, Result};
