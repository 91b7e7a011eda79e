//! The C types: result codes, data types and reduction operators (NCCL's numbering), the
//! unique id, the versioned config struct, and the opaque communicator handle.
//!
//! The three enums are written out in `cbindgen.toml` (so C sees real enums with NCCL's
//! member names and aliases); Rust receives them as plain `int`, so a value outside the
//! enum is an `oxcclInvalidArgument`, never undefined behaviour.

use std::os::raw::{c_char, c_int, c_uint};

/// `oxcclResult_t` (an enum in C).
pub type oxcclResult_t = c_int;
/// `oxcclDataType_t` (an enum in C).
pub type oxcclDataType_t = c_int;
/// `oxcclRedOp_t` (an enum in C).
pub type oxcclRedOp_t = c_int;

pub(crate) const SUCCESS: oxcclResult_t = 0;
pub(crate) const SYSTEM_ERROR: oxcclResult_t = 2;
pub(crate) const INTERNAL_ERROR: oxcclResult_t = 3;
pub(crate) const INVALID_ARGUMENT: oxcclResult_t = 4;
pub(crate) const INVALID_USAGE: oxcclResult_t = 5;
pub(crate) const REMOTE_ERROR: oxcclResult_t = 6;
#[allow(dead_code)] // NCCL's code, never returned by this build
pub(crate) const IN_PROGRESS: oxcclResult_t = 7;
pub(crate) const TIMEOUT: oxcclResult_t = 8;
pub(crate) const ABORTED: oxcclResult_t = 9;
#[allow(dead_code)] // the count, for C callers
pub(crate) const NUM_RESULTS: oxcclResult_t = 10;

/// An opaque communicator.
pub struct oxcclComm {
    _private: [u8; 0],
}

/// A communicator handle, as NCCL's `ncclComm_t`.
pub type oxcclComm_t = *mut oxcclComm;

/// What ranks need to find each other (NCCL's `ncclUniqueId`): 128 opaque bytes, created by
/// `oxcclGetUniqueId` on one rank and sent to the others by any means.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct oxcclUniqueId {
    /// Opaque.
    pub internal: [c_char; 128],
}

/// Versioned settings for `oxcclCommInitRankConfig` and `oxcclCommSplit`. Always start from
/// `OXCCL_CONFIG_INITIALIZER`, then set what you need; fields left at their initial value
/// keep the `OXCCL_*` environment's (or the built-in) defaults.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct oxcclConfig_t {
    /// `sizeof(oxcclConfig_t)`, set by the initializer.
    pub size: usize,
    /// `OXCCL_CONFIG_MAGIC`, set by the initializer.
    pub magic: c_uint,
    /// `OXCCL_VERSION_CODE` of the header the caller compiled against.
    pub version: c_uint,
    /// Deadline of every blocking wait, in milliseconds; -1: default.
    pub timeoutMs: c_int,
    /// Pipeline chunk size in bytes; 0: default.
    pub chunkBytes: usize,
    /// TCP connections per pair of ranks; -1: default.
    pub tcpConnsPerPeer: c_int,
    /// Algorithms to force, as `OXCCL_ALGO`; NULL: default.
    pub algo: *const c_char,
    /// "tcp" or "auto"; NULL: default.
    pub transport: *const c_char,
}
