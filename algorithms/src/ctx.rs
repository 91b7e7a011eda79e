//! What every algorithm receives: the context of one collective call ([`Ctx`]) and its
//! arguments ([`CollArgs`]). All algorithms of all collectives share the signature
//! [`AlgoFn`], so choosing an algorithm is a table lookup.

use std::fmt;
use std::time::Instant;

use oxccl_transport::{Error, Region, RegionMut, ReqId, Result, SendHints, Sink, Tag, Transport};

use crate::dtype::DataType;
use crate::kernels::Reducer;
use crate::op::ReduceOp;

/// The collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Collective {
    /// Every rank ends with the reduction of every rank's vector.
    AllReduce = 1,
    /// Every rank ends with every rank's block, in rank order.
    AllGather = 2,
    /// Rank `r` ends with block `r` of the reduction.
    ReduceScatter = 3,
    /// Rank `r` sends block `j` to rank `j` and receives block `j` from rank `j`.
    AllToAll = 4,
    /// Every rank ends with the root's vector.
    Broadcast = 5,
    /// The root ends with the reduction.
    Reduce = 6,
    /// No rank leaves before every rank has entered.
    Barrier = 7,
    /// Point-to-point send or receive.
    SendRecv = 8,
    /// All-to-all with per-peer counts.
    AllToAllV = 9,
    /// Splitting a communicator (its exchange of colors and keys).
    Split = 10,
}

impl Collective {
    /// Every collective that has algorithms to choose from.
    pub const ALL: [Collective; 7] = [
        Collective::AllReduce,
        Collective::AllGather,
        Collective::ReduceScatter,
        Collective::AllToAll,
        Collective::Broadcast,
        Collective::Reduce,
        Collective::Barrier,
    ];

    /// The snake_case name used in errors, logs and overrides.
    pub const fn name(self) -> &'static str {
        match self {
            Collective::AllReduce => "all_reduce",
            Collective::AllGather => "all_gather",
            Collective::ReduceScatter => "reduce_scatter",
            Collective::AllToAll => "all_to_all",
            Collective::Broadcast => "broadcast",
            Collective::Reduce => "reduce",
            Collective::Barrier => "barrier",
            Collective::SendRecv => "send_recv",
            Collective::AllToAllV => "all_to_allv",
            Collective::Split => "split",
        }
    }

    /// Parses a name (`all_reduce`, `allreduce`, `all-reduce` are all accepted).
    pub fn parse(s: &str) -> Option<Collective> {
        let norm: String = s.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase();
        Collective::ALL
            .iter()
            .copied()
            .find(|c| c.name().replace('_', "") == norm || (norm == "alltoall" && *c == Collective::AllToAll))
    }
}

impl fmt::Display for Collective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The buffers and parameters of one call, with NCCL's conventions:
///
/// | collective | `count` | `send` | `recv` | in place when |
/// | --- | --- | --- | --- | --- |
/// | all-reduce | elements | `count` | `count` | `send` is `recv` |
/// | all-gather | elements per rank | `count` | `count * size` | `send` is block `rank` of `recv` |
/// | reduce-scatter | elements per rank | `count * size` | `count` | `recv` is block `rank` of `send` |
/// | all-to-all | elements per peer | `count * size` | `count * size` | `send` is `recv` |
/// | broadcast | elements | `count` (root only) | `count` | `send` is `recv` |
/// | reduce | elements | `count` | `count` (root only) | `send` is `recv` |
///
/// `in_place` records which form the caller used; algorithms then read `send` and write
/// `recv` knowing they are the same memory as that table says.
#[derive(Debug, Clone, Copy)]
pub struct CollArgs {
    /// The input region.
    pub send: Region,
    /// The output region.
    pub recv: RegionMut,
    /// Whether the call is in place (see the table).
    pub in_place: bool,
    /// The element count, as the table says.
    pub count: usize,
    /// The element type.
    pub dtype: DataType,
    /// The reduction (ignored by collectives that do not reduce).
    pub op: ReduceOp,
    /// The root (broadcast and reduce).
    pub root: usize,
}

/// The signature every algorithm of every collective has.
pub type AlgoFn = fn(&Ctx<'_>, &CollArgs) -> Result<()>;

/// The context of one collective call.
pub struct Ctx<'a> {
    /// Reaches every peer (per-peer routing happens below this trait).
    pub net: &'a dyn Transport,
    /// Reduces, copies and allocates scratch in the buffers' memory kind.
    pub reducer: &'a dyn Reducer,
    /// This rank.
    pub rank: usize,
    /// World size.
    pub size: usize,
    /// The communicator's sequence number of this call.
    pub seq: u64,
    /// Which collective (part of every tag).
    pub collective: Collective,
    /// Every wait of this call ends by then.
    pub deadline: Instant,
    /// Pipeline chunk size in bytes.
    pub chunk_bytes: usize,
    /// Receive buffers in flight per pipelined stream.
    pub pipeline_depth: usize,
    /// The transport takes receive sinks ([`Transport::post_recv_sink`]), so incoming chunks
    /// can be reduced where they land.
    pub recv_sink: bool,
    /// The smallest message the transport moves by a single copy, the receiver reading the
    /// sender's buffer ([`oxccl_transport::Capabilities::single_copy_min`]); 0 where it never
    /// does. [`Ctx::send`] passes it on as a hint ([`SendHints::single_copy_min`]), so a
    /// context with a lower one ([`Ctx::with_single_copy_min`]) has the transport move its
    /// messages from that size by single copy.
    pub single_copy_min: usize,
    /// The bytes of this call as the cost model counts them ([`SendHints::call_bytes`]; 0
    /// where not known), passed on with every send.
    pub call_bytes: usize,
    /// The host of every rank (`hosts[r]`, numbered from 0 in order of first appearance);
    /// empty when unknown. Hierarchical algorithms group ranks by it.
    pub hosts: &'a [usize],
    /// What every rank must agree on besides the collective and its sequence number (see
    /// [`fingerprint`]); part of every tag.
    pub fingerprint: u64,
}

thread_local! {
    static STREAMED_PLACEMENTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many copies [`Ctx::place`] made with streaming stores on this thread (a rank's calls
/// run on its caller's thread): for diagnostics and for tests that must know which path a
/// rank took, undisturbed by other worlds in the process.
pub fn streamed_placements() -> u64 {
    STREAMED_PLACEMENTS.with(std::cell::Cell::get)
}

/// The fingerprint of a call: the low 32 bits of the element count, the element type, the
/// operator (reducing collectives) and the root (rooted ones), packed in 64 bits. It rides
/// in the high half of every tag, so ranks that disagree on any of them fail with a
/// mismatch naming both calls (`describe_tag` spells a fingerprint out) instead of
/// exchanging bytes of the right length and the wrong meaning.
pub fn fingerprint(coll: Collective, count: usize, dtype: DataType, op: ReduceOp, root: usize) -> u64 {
    let reduces = matches!(coll, Collective::AllReduce | Collective::ReduceScatter | Collective::Reduce);
    let rooted = matches!(coll, Collective::Broadcast | Collective::Reduce);
    let op = if reduces { ReduceOp::ALL.iter().position(|&o| o == op).map_or(0, |i| i as u64 + 1) } else { 0 };
    let root = if rooted { (root as u64 & 0xffff) + 1 } else { 0 };
    (count as u64 & 0xffff_ffff) | ((dtype as u64 & 0xff) << 32) | (op << 40) | (root << 48)
}

impl<'a> Ctx<'a> {
    /// This context with another pipeline chunk size (for a call that runs an algorithm
    /// other than the one it was set up for).
    pub fn with_chunk_bytes(&self, chunk_bytes: usize) -> Ctx<'a> {
        Ctx {
            net: self.net,
            reducer: self.reducer,
            rank: self.rank,
            size: self.size,
            seq: self.seq,
            collective: self.collective,
            deadline: self.deadline,
            chunk_bytes,
            pipeline_depth: self.pipeline_depth,
            recv_sink: self.recv_sink,
            single_copy_min: self.single_copy_min,
            call_bytes: self.call_bytes,
            hosts: self.hosts,
            fingerprint: self.fingerprint,
        }
    }

    /// This context with single copy from `min` bytes (see [`Ctx::single_copy_min`]): where
    /// the transport moves messages by single copy at all, from that size on, below its own
    /// threshold too; unchanged where it never does (`single_copy_min` 0).
    pub fn with_single_copy_min(&self, min: usize) -> Ctx<'a> {
        let mut c = self.with_chunk_bytes(self.chunk_bytes);
        if c.single_copy_min != 0 && min != 0 {
            c.single_copy_min = min;
        }
        c
    }

    /// The tag of step `step` of this call: 40 bits of sequence number, 8 of collective, 16 of
    /// step, and above them the call's fingerprint, so a message of another call, collective
    /// or signature fails the receiver's tag check.
    pub fn tag(&self, step: usize) -> Tag {
        // Layout known to `describe_tag`.
        let low = ((self.seq & ((1 << 40) - 1)) << 24) | ((self.collective as u64) << 16) | (step as u64 & 0xffff);
        Tag(((self.fingerprint as u128) << 64) | low as u128)
    }

    /// Posts a send of `buf` to `peer` at `step`.
    pub fn send(&self, peer: usize, step: usize, buf: Region) -> Result<ReqId> {
        let hints = SendHints {
            single_copy_min: (self.single_copy_min != 0).then_some(self.single_copy_min),
            call_bytes: self.call_bytes,
        };
        self.net.post_send_hinted(peer, self.tag(step), buf, hints)
    }

    /// Posts a receive into `buf` from `peer` at `step`.
    pub fn recv(&self, peer: usize, step: usize, buf: RegionMut) -> Result<ReqId> {
        self.net.post_recv(peer, self.tag(step), buf)
    }

    /// Posts a receive from `peer` at `step` of `dst.len()` bytes that are reduced as they
    /// land: `dst = incoming (op) local`, element by element, with no copy of the incoming
    /// bytes. Only where [`Ctx::recv_sink`] holds. `dst` may be `local`'s memory.
    #[allow(clippy::too_many_arguments)]
    pub fn recv_reduce(
        &self,
        peer: usize,
        step: usize,
        dtype: DataType,
        op: ReduceOp,
        dst: RegionMut,
        local: Region,
    ) -> Result<ReqId> {
        let reducer = self.reducer;
        let kind = dst.kind();
        let sink = move |off: usize, bytes: &[u8]| {
            let r = off..off + bytes.len();
            // SAFETY: `bytes` is valid for this call, which is as long as the region is used.
            let incoming = unsafe { Region::from_raw_parts(bytes.as_ptr(), bytes.len(), kind) };
            reducer.reduce(dtype, op, dst.slice(r.clone()), incoming, local.slice(r))
        };
        // SAFETY: the sink borrows the reducer, which outlives the call, and regions whose
        // owners promised they stay valid until the receive completes or the transport fails.
        let sink = unsafe { Sink::new(sink) };
        self.net.post_recv_sink(peer, self.tag(step), dst.len(), sink)
    }

    /// Waits for `req` until the call's deadline.
    pub fn wait(&self, req: ReqId) -> Result<()> {
        self.net.wait(req, self.deadline)
    }

    /// Waits for every request until the call's deadline.
    pub fn wait_all(&self, reqs: &[ReqId]) -> Result<()> {
        self.net.wait_all(reqs, self.deadline)
    }

    /// How many ranks share this rank's host (the world size where the hosts are unknown).
    pub fn ranks_here(&self) -> usize {
        match self.hosts.get(self.rank) {
            Some(&h) => self.hosts.iter().filter(|&&x| x == h).count(),
            None => self.size,
        }
    }

    /// Whether a call writing `output` bytes into each rank's output writes more than
    /// [`crate::mapped::STREAMING_MIN_HOST_BYTES`] on this host, so that its outputs would not
    /// stay in cache and are better written with streaming stores.
    pub(crate) fn outputs_stream(&self, output: usize) -> bool {
        output.saturating_mul(self.ranks_here()) > crate::mapped::STREAMING_MIN_HOST_BYTES
    }

    /// Copies `src` into `dst`, a part of an output of `output` bytes that this call writes
    /// and does not read again soon, with streaming stores where this host's outputs together
    /// exceed 32 MiB, the mapped algorithms' threshold (they would not stay in cache, and
    /// written through it they evict what the peers still read), else plainly.
    pub fn place(&self, dst: RegionMut, src: Region, output: usize) -> Result<()> {
        if self.outputs_stream(output) && !dst.overlaps(&src) {
            STREAMED_PLACEMENTS.with(|n| n.set(n.get() + 1));
            self.reducer.copy_streaming(dst, src)
        } else {
            self.reducer.copy(dst, src)
        }
    }

    /// Elements per pipeline chunk for `dtype`.
    pub fn chunk_elems(&self, dtype: DataType) -> usize {
        crate::partition::chunk_elems(self.chunk_bytes, dtype.size())
    }
}

/// What a tag made by [`Ctx::tag`] stands for, such as `all_reduce #17 step 2`.
pub fn describe_tag(tag: u128) -> String {
    let (fp, low) = ((tag >> 64) as u64, tag as u64);
    let (seq, kind, step) = (low >> 24, (low >> 16) & 0xff, low & 0xffff);
    describe(kind, seq, Some(step), fp)
}

/// A call as ranks compare it, such as `broadcast #3 step 0 (uint8, 64 elements, root 1)`:
/// collective (`kind`), sequence number, step (if any) and fingerprint spelled out.
pub(crate) fn describe(kind: u64, seq: u64, step: Option<u64>, fp: u64) -> String {
    let all = Collective::ALL.iter().chain(&[Collective::SendRecv, Collective::AllToAllV, Collective::Split]);
    let step = step.map(|s| format!(" step {s}")).unwrap_or_default();
    let call = match all.copied().find(|c| *c as u64 == kind) {
        Some(Collective::SendRecv) => format!("send/recv message #{seq} of this pair"),
        Some(c) => format!("{c} #{seq}{step}"),
        None => format!("unknown kind {kind} #{seq}{step}"),
    };
    if fp == 0 {
        return call;
    }
    if fp == crate::exchange::VERIFY_FINGERPRINT {
        return format!("{call} (call verification)");
    }
    if fp == crate::exchange::TUNE_FINGERPRINT {
        return format!("{call} (end of algorithm trials)");
    }
    let mut parts = Vec::new();
    let dtype = (fp >> 32) & 0xff;
    match DataType::ALL.iter().find(|d| **d as u64 == dtype) {
        Some(d) => parts.push(d.name().to_string()),
        None => parts.push(format!("type {dtype}")),
    }
    if let Some(op) = ((fp >> 40) & 0xff).checked_sub(1).and_then(|i| ReduceOp::ALL.get(i as usize)) {
        parts.push(op.name().to_string());
    }
    parts.push(format!("{} elements", fp & 0xffff_ffff));
    if let Some(root) = (fp >> 48).checked_sub(1) {
        parts.push(format!("root {root}"));
    }
    format!("{call} ({})", parts.join(", "))
}

/// Appends to a message what every `tag 0x...` in it stands for, so a mismatch reads as the
/// two calls that disagree.
pub fn explain_tags(msg: &str) -> String {
    let mut notes = Vec::new();
    for (i, _) in msg.match_indices("tag 0x") {
        let hex: String = msg[i + 6..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        if let Ok(t) = u128::from_str_radix(&hex, 16) {
            let note = format!("0x{hex} = {}", describe_tag(t));
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    if notes.is_empty() {
        msg.to_string()
    } else {
        format!("{msg} [{}]", notes.join("; "))
    }
}

/// Checks that `r` holds exactly `elems` elements of `dtype`.
pub fn expect_len(what: &str, len: usize, elems: usize, dtype: DataType) -> Result<()> {
    match elems.checked_mul(dtype.size()) {
        Some(b) if b == len => Ok(()),
        _ => Err(Error::internal(format!("{what} holds {len} bytes, not {elems} elements of {dtype}"))),
    }
}
