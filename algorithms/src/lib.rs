//! Collective algorithms for oxccl: schedules (who sends what to whom at each step),
//! reduction kernels, and the arithmetic of chunks.
//!
//! Every algorithm of every collective has the signature [`AlgoFn`]: it takes a [`Ctx`] (the
//! transport, a reducer for the buffers' memory kind, this rank, the deadline, chunking) and
//! the call's [`CollArgs`]. Algorithms never touch buffer bytes themselves: they post sends
//! and receives on the transport and ask the [`Reducer`] to reduce and copy,
//! so the same schedule runs on host or device memory.
//!
//! Each algorithm lives in its own file, which opens with its steps, the bytes it puts on the
//! wire and its cost in the alpha-beta-gamma model (alpha: latency per message, beta: time per
//! byte, gamma: time per byte reduced).

#![warn(missing_docs)]

pub mod all_gather;
pub mod all_reduce;
pub mod all_to_all;
pub mod barrier;
pub mod broadcast;
pub mod cost;
pub mod ctx;
mod direct;
pub mod dtype;
pub mod exchange;
mod fold;
mod group;
mod halving_doubling;
mod hier;
pub mod kernels;
pub mod mapped;
pub mod op;
pub mod partition;
mod pipeline;
pub mod reduce;
pub mod reduce_scatter;
pub mod registry;
mod ring;
mod tree;
pub mod verify;

pub use cost::{Cost, Link, Model, Profile};
pub use ctx::{AlgoFn, CollArgs, Collective, Ctx};
pub use dtype::{DataType, Element};
pub use kernels::{HostReducer, Reducer, Scratch};
pub use op::ReduceOp;
pub use registry::Algorithm;
