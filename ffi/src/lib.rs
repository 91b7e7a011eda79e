//! C ABI for oxccl.
//!
//! This crate will export the NCCL-shaped C interface (`oxcclAllReduce` and friends) declared in
//! `include/oxccl.h`. It is empty until the C ABI work lands; it exists now so that the
//! workspace layout (transports <- algorithms <- oxccl <- ffi) is fixed from the start.

pub use oxccl;
