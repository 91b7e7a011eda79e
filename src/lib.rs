//! # oxccl
//!
//! Collective communication for Rust programs: all-reduce, all-gather, reduce-scatter,
//! all-to-all, broadcast, reduce, barrier and send/recv among processes on one or many
//! hosts, with the algorithms of NCCL, Gloo and MPI underneath, and errors instead of hangs.
//!
//! ```no_run
//! use oxccl::{Communicator, ReduceOp};
//!
//! fn main() -> oxccl::Result<()> {
//!     // Under oxrun, torchrun, mpirun or srun: rank, size and rendezvous come from the
//!     // launcher's environment.
//!     let comm = Communicator::from_env()?;
//!     let mut grads = vec![1.0f32; 1 << 20];
//!     comm.all_reduce(&mut grads, ReduceOp::Avg)?;
//!     Ok(())
//! }
//! ```
//!
//! Without a launcher, one rank creates a [`UniqueId`], hands it to the others, and each
//! calls [`Communicator::init`]. Every blocking call has a deadline ([`Config::timeout`],
//! `OXCCL_TIMEOUT_MS`); errors name the collective, its sequence number, the rank and the
//! peer. See [`config`] for every `OXCCL_*` variable.
//!
//! Layering: [`oxccl_transport`] moves bytes, [`oxccl_algorithms`] schedules them, this crate
//! chooses and runs; the C ABI builds on this crate.

#![warn(missing_docs)]

pub mod bootstrap;
pub mod check;
mod communicator;
pub mod config;
pub mod cost;
pub mod device;
pub mod error;
pub mod launch;
pub mod probe;
pub mod select;
pub mod shared;

pub use bootstrap::file_store::FileStore;
pub use bootstrap::tcp_store::{TcpStore, TcpStoreServer};
pub use bootstrap::unique_id::UniqueId;
pub use communicator::{Communicator, RawP2p};
pub use config::{Config, TransportKind};
pub use device::DeviceBuffer;
pub use error::{Error, ErrorKind, Result};
pub use oxccl_algorithms::{Algorithm, Collective, DataType, Element, ReduceOp};
pub use shared::SharedBuffer;

/// The algorithms this build has for `coll`: what `--algo`, `OXCCL_ALGO` and
/// [`Communicator::set_algorithms`] accept for it.
///
/// ```
/// use oxccl::{algorithms_of, Algorithm, Collective};
/// assert!(algorithms_of(Collective::AllGather).contains(&Algorithm::Bruck));
/// ```
pub fn algorithms_of(coll: Collective) -> &'static [Algorithm] {
    oxccl_algorithms::registry::algorithms(coll)
}

/// Turns on `tracing` output as `OXCCL_DEBUG` asks: `WARN` (the default), `INFO`, `DEBUG`,
/// `TRACE`, or a full `tracing` filter. Call once at start-up; later calls do nothing.
pub fn init_logging() {
    let level = std::env::var("OXCCL_DEBUG").unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(level.to_ascii_lowercase())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
