//! The [`Transport`] trait and the small types around it. The contract is in the crate docs.

use std::fmt;
use std::time::Instant;

use crate::error::Result;
use crate::region::{Region, RegionMut};

/// A message tag. Transports match the tag of each arriving message against the tag of the
/// receive it lands in and fail both sides when they differ, so mismatched collectives become
/// an error instead of corrupted data. The layout of the 128 bits is the caller's business;
/// oxccl's algorithms put the collective's sequence number, kind and step in the low 64 and
/// a fingerprint of the call (element type, count, operator, root) in the high 64, so ranks
/// that disagree on any of them fail instead of exchanging bytes that happen to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tag(pub u128);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A handle to a posted send or receive, returned by [`Transport::post_send`] and
/// [`Transport::post_recv`]. It means nothing to another transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReqId(pub u64);

/// What a transport can do beyond the contract, so algorithms can ask instead of guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Peers' buffers can be mapped and read or written directly (shared memory, CUDA IPC).
    pub peer_memory_mappable: bool,
    /// Device (GPU) regions can be posted.
    pub device_memory: bool,
    /// A send may complete before its receive is posted (the transport buffers). Algorithms
    /// must not rely on it; it only informs cost estimates.
    pub eager_sends: bool,
    /// Reaches peers on other hosts.
    pub inter_host: bool,
    /// Large messages move with one copy: the receiver reads the sender's buffer directly
    /// (shared memory with `process_vm_readv`), so a chunk a peer just wrote is read from
    /// cache and many concurrent messages cost about what one does.
    pub single_copy: bool,
    /// The smallest message that moves by a single copy (0 where none does). Smaller ones
    /// go through the transport's own buffers.
    pub single_copy_min: usize,
    /// [`Transport::post_recv_sink`] is supported: a message can be consumed where it lands.
    pub recv_sink: bool,
}

/// How the caller would like a send moved: hints a transport follows where it can and
/// ignores where it cannot (the default, no hints, leaves every choice to the transport).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendHints {
    /// Move the message by a single copy (the receiver reading this buffer) if it has at
    /// least this many bytes, where the transport has single copy to that peer and its own
    /// threshold ([`Capabilities::single_copy_min`]) is higher. A lower threshold never
    /// turns single copy on where the transport has it off.
    pub single_copy_min: Option<usize>,
    /// The bytes of the collective call the message belongs to, as the cost model counts
    /// them (0: not known). A transport that judges its paths by their speed may leave the
    /// messages of calls too large for the caches unjudged, whatever their own length: their
    /// pieces run at the memory's speed on every path.
    pub call_bytes: usize,
}

/// Rank-addressed, tagged, non-blocking point-to-point transfer of byte regions.
///
/// See the crate documentation for the contract every implementation meets.
pub trait Transport: Send + Sync {
    /// A short name for logs and errors, such as `tcp`.
    fn name(&self) -> &'static str;
    /// This endpoint's rank.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// What the transport offers beyond the contract.
    fn capabilities(&self) -> Capabilities;

    /// Posts a send of `buf` to `peer`. The region must stay valid until the request completes
    /// (the promise made when it was created).
    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId>;

    /// [`Transport::post_send`] with hints on how to move the message ([`SendHints`]). The
    /// default ignores them.
    fn post_send_hinted(&self, peer: usize, tag: Tag, buf: Region, hints: SendHints) -> Result<ReqId> {
        let _ = hints;
        self.post_send(peer, tag, buf)
    }

    /// Posts a receive of exactly `buf.len()` bytes from `peer` into `buf`.
    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId>;

    /// Posts a receive of exactly `len` bytes from `peer`, handed to `sink` piece by piece as
    /// it arrives (see [`Sink`](crate::Sink)). Matching, completion and failure are those of
    /// [`Transport::post_recv`]. Transports without [`Capabilities::recv_sink`] return
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    fn post_recv_sink(&self, peer: usize, tag: Tag, len: usize, sink: crate::Sink) -> Result<ReqId> {
        let _ = (peer, tag, len, sink);
        Err(crate::Error::unsupported(format!("the {} transport does not take receive sinks", self.name())))
    }

    /// Makes progress without blocking; `Ok(true)` once `req` has completed. Testing a
    /// completed request again also gives `Ok(true)`.
    fn test(&self, req: ReqId) -> Result<bool>;

    /// Blocks until `req` completes or `deadline` passes (then [`Error::Timeout`] naming the
    /// peer). Progresses every other posted request meanwhile.
    ///
    /// [`Error::Timeout`]: crate::Error::Timeout
    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()>;

    /// Blocks until every request in `reqs` completes, or the deadline passes.
    fn wait_all(&self, reqs: &[ReqId], deadline: Instant) -> Result<()> {
        for &r in reqs {
            self.wait(r, deadline)?;
        }
        Ok(())
    }

    /// The number of requests posted and not yet completed.
    fn pending(&self) -> usize;

    /// Progresses posted requests, blocking up to `max_wait` while nothing moves. Unlike
    /// [`Transport::wait`], running out of time is not an error: a caller that drives several
    /// transports at once (see [`Router`](crate::Router)) uses it to sleep on one while the
    /// others still get their turn.
    fn progress(&self, max_wait: std::time::Duration) -> Result<()>;

    /// Fails the transport with `Error::Aborted` and wakes every waiter, from any thread.
    /// Pending requests are dropped without touching their regions again.
    fn abort(&self);

    /// Fails the transport with `err` (if it has not failed yet): every later call returns
    /// that error, and pending requests are dropped without touching their regions again.
    fn fail(&self, err: crate::Error);

    /// A key that lets peers map `buf` ([`Transport::map_peer_memory`]), or `None` when this
    /// transport cannot share it (then peers cannot map it whatever they try).
    fn memory_key(&self, buf: Region) -> Option<crate::MemoryKey> {
        let _ = buf;
        None
    }

    /// Maps the region `peer` named with `key` into this process. The region is valid while
    /// `peer` keeps its buffer alive, which callers ensure by using it only inside a call in
    /// which the peer holds it (and synchronising with messages). A key this transport cannot
    /// map gives [`Error::Unsupported`](crate::Error::Unsupported) or an error saying why.
    fn map_peer_memory(&self, peer: usize, key: &crate::MemoryKey) -> Result<RegionMut> {
        let _ = (peer, key);
        Err(crate::Error::unsupported(format!("the {} transport does not map peer memory", self.name())))
    }

    /// Publishes that this rank may read or write peers' mapped memory from now on, then
    /// fails if some peer has already failed or exited (contract item 12), so no access
    /// starts that a failed peer did not wait for. Transports that map nothing: `Ok(())`.
    fn begin_peer_access(&self) -> Result<()> {
        Ok(())
    }

    /// Fails if some peer has failed or exited: what a rank touching peers' mapped memory
    /// checks between pieces of its work, as no message tells it. Transports that map
    /// nothing: `Ok(())`.
    fn check_peer_access(&self) -> Result<()> {
        Ok(())
    }

    /// Publishes that this rank no longer touches peers' mapped memory (every store it made
    /// there complete). Idempotent.
    fn end_peer_access(&self) {}

    /// Waits until no peer may still be touching this rank's mapped memory: each has ended its
    /// access ([`Transport::end_peer_access`]) or exited. A timeout error names a peer still
    /// at it when `deadline` passes. A rank whose call failed after it gave peers its buffers
    /// calls this before returning, so its caller may free them.
    fn wait_peer_access_ended(&self, deadline: Instant) -> Result<()> {
        let _ = deadline;
        Ok(())
    }

    /// Records the caller's progress marker (oxccl: the sequence number of the last call this
    /// rank completed), which peers can read with [`Transport::peer_progress`] to tell a
    /// stuck rank from a slow one. Transports that cannot carry it ignore it.
    fn set_progress(&self, marker: u64) {
        let _ = marker;
    }

    /// The last progress marker `peer` recorded, as far as this rank knows (over TCP: as of
    /// its last frame here, low 32 bits); `None` when the transport does not carry them.
    fn peer_progress(&self, peer: usize) -> Option<u64> {
        let _ = peer;
        None
    }
}

/// The check every transport makes of a peer argument: another rank of the world.
pub(crate) fn check_peer(rank: usize, size: usize, peer: usize) -> Result<()> {
    if peer >= size || peer == rank {
        return Err(crate::Error::invalid_argument(format!("peer {peer} is not another rank of this world of {size}"))
            .on_rank(rank));
    }
    Ok(())
}
