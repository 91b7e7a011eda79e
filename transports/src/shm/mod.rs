//! The shared-memory transport ([`ShmTransport`]) and its building blocks: the single-producer single-consumer FIFO of slots and the
//! doorbell that ranks sleep on. Both work on memory shared between processes (their state
//! is plain atomics, all zero initially) and are model-checked with `loom`
//! (`RUSTFLAGS="--cfg loom" cargo test -p oxccl-transport --release shm`).

pub mod doorbell;
pub mod fifo;
pub mod segment;
pub mod shared;
pub(crate) mod sync;
pub mod transport;

pub use shared::{MemoryKey, PeerMappings, SharedBuffer};
pub use transport::{ShmOptions, ShmTransport, SlotStores};
