//! Transports for oxccl: they move bytes between ranks and know nothing of data types,
//! reduction operators or algorithms.
//!
//! # The contract every transport meets
//!
//! A [`Transport`] is one rank's endpoint of a world of [`Transport::size`] ranks.
//!
//! 1. **Addressing.** Messages go to and come from ranks `0..size`, never this rank itself.
//!    A communicator may reach different peers through different transports; nothing in a
//!    transport assumes it reaches every peer of the world in the same way.
//! 2. **Posting is non-blocking.** [`Transport::post_send`] and [`Transport::post_recv`] return a
//!    [`ReqId`] at once. The region must stay valid until the request completes or the
//!    transport fails (the promise made by the `unsafe` constructors of [`Region`] and
//!    [`RegionMut`]).
//! 3. **Matching is FIFO per ordered pair.** The k-th message that rank A sends to rank B lands in
//!    the k-th receive that B posts for A. Its tag and length must equal the receive's; if
//!    they differ, both sides fail with [`Error::InvalidUsage`] (mismatched calls), and no byte
//!    of the message is delivered as if it matched. A transport may hold back later messages
//!    from a peer until earlier ones are matched, so a caller must post receives from one peer
//!    in the order that peer sends.
//! 4. **No buffering is promised.** A send may not complete until the peer posts the matching
//!    receive (the loopback transport always works that way). Algorithms therefore post the
//!    receives a step needs before they wait on its sends.
//! 5. **Completion.** [`Transport::test`] makes progress and reports completion without
//!    blocking; [`Transport::wait`] blocks until completion or a deadline. Every blocking wait has
//!    a deadline; passing it gives [`Error::Timeout`] naming the peer. Waiting progresses every
//!    posted request, not only the one waited for.
//! 6. **Failures are sticky and prompt.** The first error (timeout, lost peer, mismatch,
//!    [`Transport::abort`], [`Transport::fail`]) fails the whole transport: pending requests are
//!    dropped without their regions being touched again, every later call returns that first
//!    error, and peers blocked on this rank learn of it (a closed connection or a failed state)
//!    rather than waiting for their own deadline. A peer that dies gives
//!    [`Error::PeerLost`] naming it.
//! 7. **Abort from anywhere.** [`Transport::abort`] may be called from any thread while another
//!    thread waits; the waiter returns [`Error::Aborted`] promptly.
//! 8. **Zero-length messages** are valid and are matched like any other.
//! 9. **Sinks are optional.** A transport with [`Capabilities::recv_sink`] also takes
//!    [`Transport::post_recv_sink`]: the message is handed to a [`Sink`] piece by piece where
//!    it lands, under the same matching, completion and failure rules as a buffer receive.
//!    Others answer [`Error::Unsupported`], and callers fall back to a buffer.
//! 10. **Memory kinds.** A transport refuses regions of a [`MemoryKind`] it cannot move with
//!     [`Error::Unsupported`]; [`Capabilities`] says in advance what it moves.
//! 11. **Peer memory is optional.** A transport with [`Capabilities::peer_memory_mappable`]
//!     names a region of this rank to its peers with [`Transport::memory_key`] and maps a
//!     peer's named region with [`Transport::map_peer_memory`]; the caller then reads and
//!     writes it directly, and orders those accesses with messages of its own (a mapped
//!     region carries no completion). Others answer `None` and [`Error::Unsupported`].
//!     Device memory is named by its CUDA IPC handle ([`cuda::DeviceKey`]) where ranks share
//!     a host, and mapped into the CUDA context current on the mapping thread; such a region
//!     is [`MemoryKind::Device`] and only the device reducer touches it.
//! 12. **Peer access is published.** Such a transport also publishes, where every peer can
//!     read it without a message, whether its rank may be touching peers' mapped memory
//!     ([`Transport::begin_peer_access`], [`Transport::end_peer_access`]), so a rank whose
//!     call fails can wait until no live peer still writes into its buffers
//!     ([`Transport::wait_peer_access_ended`]) before its caller frees or reuses them: messages
//!     cannot tell it once the transport has failed. `begin_peer_access` publishes first and
//!     then fails if any peer has failed, and a failing rank publishes its failure before it
//!     looks at its peers' access (sequentially consistent on both sides): of a rank that
//!     begins and one that fails at once, one sees the other.
//! 13. **Send hints are hints.** [`Transport::post_send_hinted`] takes [`SendHints`] on how to
//!     move a message (single copy below the transport's threshold); a transport follows
//!     those it can and ignores the rest, and a receive matches either way.

#![warn(missing_docs)]

pub mod auth;
pub mod copy;
pub mod cuda;
pub mod error;
mod ids;
pub mod loopback;
pub mod placement;
pub mod region;
pub mod router;
pub mod shm;
pub mod sink;
pub mod store;
pub mod tcp;
pub mod transport;

pub use error::{Context, Error, ErrorKind, Result};
pub use loopback::LoopbackTransport;
pub use region::{MemoryKind, Region, RegionMut};
pub use router::Router;
pub use shm::{MemoryKey, SharedBuffer, ShmOptions, ShmTransport, SlotStores};
pub use sink::Sink;
pub use store::{MemoryStore, PrefixStore, Store};
pub use tcp::{TcpOptions, TcpTransport};
pub use transport::{Capabilities, ReqId, SendHints, Tag, Transport};
