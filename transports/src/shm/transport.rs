//! [`ShmTransport`]: ranks of one host exchange messages through FIFOs in shared memory.
//!
//! Each rank owns a segment holding its control block (doorbell, failure flag) and one
//! inbound FIFO per peer. A sender writes into the receiver's FIFO and rings the receiver's
//! doorbell; a receiver drains its FIFOs straight into the posted buffers and rings the
//! sender's doorbell so a sender waiting for space goes on. Waiters spin briefly, then sleep
//! on their own doorbell (see [`super::doorbell`]), so oversubscribed ranks yield their core.
//! Where every rank has a core, a waiter that finds the peer it waits for on its own CPU
//! moves itself to a CPU no rank uses ([`crate::placement`]; each rank publishes its CPU in
//! its control block).
//!
//! Slot format: `sequence u64 | tag u128 | message length u64 | offset u64 | chunk length
//! u32 | flags u32 | data` (the sequence word is the FIFO's; up to 16 bytes of data share
//! the first cache line with it, so a small message costs the receiver one line transfer).
//! The receiver checks tag, length and offset against the receive it posted; a difference
//! fails both sides (mismatched calls). A rank that fails raises the flag in its control
//! block and rings every peer, so peers blocked on it report it at once; a rank that dies
//! is noticed through a pidfd.

use std::collections::VecDeque;

use crate::ids::IdMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use super::doorbell::Doorbell;
use super::fifo::{Fifo, FifoHeader, RawSlots, SEQ_BYTES};
use super::segment::Segment;
use super::sync::{fence, AtomicU32, AtomicU64, Ordering};
use crate::error::{Error, Result};
use crate::placement::{CpuBoard, CpuCell};
use crate::region::{MemoryKind, Region, RegionMut};
use crate::sink::Sink;
use crate::store::Store;
use crate::transport::{Capabilities, ReqId, SendHints, Tag, Transport};

const SLOT_HEADER: usize = 40;

/// Settings of the shared-memory transport.
#[derive(Debug, Clone)]
pub struct ShmOptions {
    /// Slots per FIFO (per ordered pair of ranks).
    pub slots: usize,
    /// Bytes per slot, header included (a multiple of 64).
    pub slot_bytes: usize,
    /// How long a waiter spins before it sleeps.
    pub spin: Duration,
    /// After spinning, how long a waiter keeps yielding its core before it sleeps.
    pub yield_for: Duration,
    /// Messages of at least this many bytes are copied once, by the receiver reading the
    /// sender's buffer with `process_vm_readv` (CMA), where the kernel allows it; `None`
    /// always uses the FIFO. Default 1 MiB: below it the FIFO's extra copy, made by the
    /// sender from lines in its own cache, costs less than what a read of the sender's buffer
    /// costs it when it writes that buffer again (each line the peer read has to be won
    /// back) and less than pinning the buffer's pages.
    pub single_copy_min: Option<usize>,
    /// Whether a receiver times its single-copy reads of 256 KiB up to 8 MiB and, after a
    /// run of slow ones (below [`SLOW_READ_GBS`] over [`READ_PROBES`] reads, twice in a row:
    /// [`SLOW_READ_RUNS`]; reads between buffers not read before do not count), has the sender
    /// send messages of those sizes through the FIFO for [`FIFO_AFTER_SLOW_READS`] before
    /// single copy is timed again. Default on. On the 2-vCPU AMD EPYC VM of the
    /// cost-model sessions, with the vCPUs on core complexes that share no cache (the VM's
    /// host moves them there for minutes at a stretch), a 2-rank halving-doubling
    /// all-reduce of 4 MiB (2 MiB messages) took 1433 us by single copy and 489 us through
    /// the FIFO, whose slots are then written with streaming stores ([`SlotStores::Auto`]);
    /// with the vCPUs sharing a cache, 489 and 579 us.
    pub single_copy_timed: bool,
    /// How a sender writes message bytes into its peers' FIFO slots (see [`SlotStores`]).
    pub slot_stores: SlotStores,
    /// Whether this host's ranks outnumber its cores. [`SlotStores::Auto`] then times its
    /// copies by the thread's CPU clock, which does not run while the rank waits for a core
    /// (see [`CPU_CLOCK_EVERY`]).
    pub cores_shared: bool,
}

/// How a sender writes message bytes into a peer's FIFO slots.
///
/// An ordinary store into a slot must first take the line from the cache of the core that
/// read it last time round. Where the two cores share a cache that is cheap; where they do
/// not, each line is a remote invalidation. A VM's host may place its vCPUs either way, and
/// moves them: on the 2-vCPU AMD EPYC VM of the cost-model sessions, a cache line's round
/// trip between the two cores measured 55-80 ns most of the time and 320-360 ns for minutes
/// at a stretch, and then the 2-rank ring all-reduce of 4 MiB took 3.3 ms instead of 0.6
/// (its 64 KiB slot copies ran at 3.5 GB/s). Streaming (non-temporal) stores write whole
/// lines without taking them first: in the far placement the same call took 0.4 ms; in the
/// near one they cost up to a quarter more from 256 KiB to 1 MiB (the slot's lines no longer
/// pass through the shared cache) and gained a little from 4 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotStores {
    /// Ordinary stores, timed; after a run of slow copies (below [`SLOW_SLOT_COPY_GBS`]),
    /// streaming stores for the next [`STREAMING_SLOTS`] slots to that peer, then ordinary
    /// stores timed again. Where ranks share cores ([`ShmOptions::cores_shared`]) a copy
    /// timed by the wall clock reads as slow whenever its rank loses the core meanwhile (4
    /// ranks on 2 cores streamed and ran the 256 KiB ring all-reduce 1.7x slower), so there
    /// copies are timed by the thread's CPU clock instead, one in [`CPU_CLOCK_EVERY`].
    #[default]
    Auto,
    /// Always ordinary stores.
    Cached,
    /// Always streaming stores (where the CPU has AVX2; elsewhere ordinary ones).
    Streaming,
}

/// Below this speed (GB/s) a timed ordinary copy into a slot counts as slow: far below what
/// a copy from memory reaches (10-20 GB/s on the machines measured), above the far
/// placement's 3.5.
pub const SLOW_SLOT_COPY_GBS: f64 = 6.0;

/// Slots written with streaming stores after a run of slow ordinary copies (64 MiB of
/// 64 KiB slots), before ordinary stores are timed again.
pub const STREAMING_SLOTS: u32 = 1024;

/// Below this speed (GB/s, over a run of [`READ_PROBES`] reads) single-copy reads count as
/// slow. On the development VM, with its two vCPUs sharing a cache, the 2 MiB reads of a
/// 2-rank halving-doubling all-reduce ran at 8-13 GB/s (now and then one at 3-4); with them
/// apart, at about 3, where the FIFO moved the same bytes 2.9x faster. Reads of 8 MiB and
/// more, out of cache, ran at 2-5 GB/s either way, as the FIFO did.
pub const SLOW_READ_GBS: f64 = 6.0;

/// After a run of slow single-copy reads, how long a sender sends through the FIFO before
/// single copy is timed again: a VM's vCPUs stay where they were put for minutes, and the
/// few slow reads that find out whether they moved back cost well under 1% of this.
pub const FIFO_AFTER_SLOW_READS: Duration = Duration::from_millis(500);

/// Timed single-copy reads per verdict, judged by their bytes over their time together: an
/// algorithm's reads differ (a halving-doubling all-reduce reads its peer's input, which may
/// sit in memory, then its peer's freshly reduced half, in that core's cache), and with the
/// cores apart only every other read was slow.
pub const READ_PROBES: u8 = 8;

/// Shorter single-copy reads are not timed: the system call's own cost (1-2 us) would
/// make them all slow.
const READ_PROBE_MIN_BYTES: usize = 256 << 10;

/// Longer single-copy reads are neither timed nor sent through the FIFO when a receiver
/// asks: out of cache, reads run at the memory's speed wherever the cores sit (2-5 GB/s on
/// the development VM, both placements), and the FIFO, two copies, was no faster for the
/// 2-rank all-reduces, all-gathers and reduce-scatters of 64-256 MiB (single copy took
/// 0.91-0.99 of its time).
const READ_JUDGED_MAX: usize = 8 << 20;

/// Whether the single-copy read of a message of `len` bytes sent with `hints` is timed and
/// judged, and so whether its sender sends it through the FIFO while the receiver asks it
/// to: from [`READ_PROBE_MIN_BYTES`] up to [`READ_JUDGED_MAX`], and not where it belongs to
/// a call of [`READ_JUDGED_MAX`] or more ([`SendHints::call_bytes`]), whose pieces are out
/// of cache as a long message is. The sender decides, and flags the messages it leaves
/// unjudged ([`FLAG_UNJUDGED`]), so the receiver follows one verdict. (The 2-rank all-to-all
/// of 16 MiB sends its 8 MiB blocks in 512 KiB pieces: they read at 3-3.6 GB/s, below
/// [`SLOW_READ_GBS`], and through the FIFO the call took 2056-2149 us against 1615-1720 by
/// single copy.)
fn send_judged(len: usize, hints: SendHints) -> bool {
    (READ_PROBE_MIN_BYTES..READ_JUDGED_MAX).contains(&len) && hints.call_bytes < READ_JUDGED_MAX
}

/// Cold reads are not judged: a read between buffers not read before pins the sender's pages
/// for the first time and faults in the receiver's (3-6 GB/s with the cores near, where the
/// same reads ran at 10-16 once warm). A read counts as cold unless the same pair of buffer
/// addresses (the sender's, the receiver's) was read among the last this many from the peer:
/// enough for the pieces of one call's largest messages (a 2-rank 16 MiB all-to-all reads
/// 16 pieces of 512 KiB), so every call after a program's first on its buffers is judged. (A
/// count of cold reads per peer, 4 over the transport's life, judged the first reads of
/// every later buffer: the 2-rank all-to-all of 4 MiB, its buffers new after 1 MiB, read at
/// 4.2-4.4 GB/s in its first call and sent through the FIFO for 500 ms, 1.3x slower.)
const WARM_READS: usize = 64;

/// Slow runs of warm reads in a row that send a peer through the FIFO. The first run after
/// new buffers can read slow while both ranks still fault in the pages of their other
/// buffers (2-rank all-to-all of 4 MiB, single copy of 512 KiB pieces: its first run 5.9-6.4
/// GB/s, every later one 9.0-10.7); with the cores far apart every run is slow.
pub const SLOW_READ_RUNS: u8 = 2;

/// Per peer: the receiver's verdict on single-copy reads from it
/// ([`ShmOptions::single_copy_timed`]).
#[derive(Debug, Default, Clone)]
struct ReadProbes {
    /// The (sender's, receiver's) buffer addresses of the last [`WARM_READS`] reads, the
    /// oldest overwritten next (at `next`).
    recent: Vec<(u64, u64)>,
    next: usize,
    probes: u8,
    bytes: f64,
    secs: f64,
    /// Slow runs in a row, up to [`SLOW_READ_RUNS`] (kept while the peer sends through the
    /// FIFO, so that one slow run after it sends it there again).
    slow_runs: u8,
}

impl ReadProbes {
    /// Accounts one read of `bytes` in `secs` between the buffers at `addrs` (the sender's,
    /// the receiver's); `true` when a run of warm ones was slow, and the one before it too
    /// ([`SLOW_READ_RUNS`]).
    fn read(&mut self, addrs: (u64, u64), bytes: usize, secs: f64) -> bool {
        if !self.recent.contains(&addrs) {
            if self.recent.len() < WARM_READS {
                self.recent.push(addrs);
            } else {
                self.recent[self.next] = addrs;
                self.next = (self.next + 1) % WARM_READS;
            }
            return false;
        }
        self.probes += 1;
        self.bytes += bytes as f64;
        self.secs += secs;
        if self.probes < READ_PROBES {
            return false;
        }
        let slow = self.bytes < SLOW_READ_GBS * 1e9 * self.secs;
        (self.probes, self.bytes, self.secs) = (0, 0.0, 0.0);
        self.slow_runs = if slow { (self.slow_runs + 1).min(SLOW_READ_RUNS) } else { 0 };
        slow && self.slow_runs == SLOW_READ_RUNS
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host.
fn monotonic_ns() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

/// Timed ordinary copies per verdict, and how many of them must be slow to switch.
const SLOT_PROBES: u8 = 8;
const SLOW_PROBES_TO_STREAM: u8 = 6;

/// Copies shorter than this are neither timed nor streamed (too short to tell, and a
/// streamed line would be half empty). With the cores far apart, messages of 4-16 KiB pay
/// the far placement as larger ones do: there, 2-rank all-reduces of 8 and 16 KiB ran
/// 2.6-2.8x faster with copies from 4 KiB timed and streamed than from 16 KiB.
const SLOT_PROBE_MIN_BYTES: usize = 4 << 10;

/// Where ranks share cores, one ordinary copy in this many is timed, by the thread's CPU
/// clock: reading it is a system call (0.5 us on the development VM, against 20 ns for the
/// wall clock), two of which would add a fifth to a 64 KiB copy.
pub const CPU_CLOCK_EVERY: u8 = 16;

/// Copies shorter than this, timed by the wall clock, are timed one in
/// [`SMALL_COPY_CLOCK_EVERY`]: two clock reads cost about 55 ns on the development VM, 3% of
/// a 2-rank all-reduce of 16 KiB (two 8 KiB messages) were every copy timed.
const SMALL_COPY_BYTES: usize = 16 << 10;
const SMALL_COPY_CLOCK_EVERY: u8 = 8;

/// A timed copy's start, on the clock its writer uses.
#[derive(Debug, Clone, Copy)]
enum CopyClock {
    Wall(Instant),
    /// The calling thread's CPU time in seconds.
    ThreadCpu(f64),
}

/// The calling thread's CPU time in seconds (0 where the clock cannot be read, which times
/// every copy as instant: never slow).
fn thread_cpu_secs() -> f64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(0.0, |t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
}

impl CopyClock {
    fn start(cpu: bool) -> CopyClock {
        if cpu {
            CopyClock::ThreadCpu(thread_cpu_secs())
        } else {
            CopyClock::Wall(Instant::now())
        }
    }

    /// Seconds since `start`, on the same clock, less what reading that clock costs by
    /// itself ([`clock_cost`]).
    fn elapsed(self) -> f64 {
        let cpu = matches!(self, CopyClock::ThreadCpu(_));
        (self.raw_elapsed() - clock_cost(cpu)).max(0.0)
    }

    /// Seconds since `start`, on the same clock, uncorrected.
    fn raw_elapsed(self) -> f64 {
        match self {
            CopyClock::Wall(t0) => t0.elapsed().as_secs_f64(),
            CopyClock::ThreadCpu(t0) => (thread_cpu_secs() - t0).max(0.0),
        }
    }
}

/// What a start and an end read of a copy's clock (`cpu`: the thread's CPU clock, else the
/// wall clock) add to its time by themselves: the least of 32 back-to-back pairs, measured
/// once per process. The thread's CPU clock is a system call (0.5 us on the development VM):
/// uncorrected it made a 4 KiB copy that ran at 15 GB/s read below 6, and 4 ranks on 2 cores
/// streamed their slots for no reason.
fn clock_cost(cpu: bool) -> f64 {
    static COST: [std::sync::OnceLock<f64>; 2] = [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    *COST[usize::from(cpu)]
        .get_or_init(|| (0..32).map(|_| CopyClock::start(cpu).raw_elapsed()).fold(f64::INFINITY, f64::min).max(0.0))
}

/// Per peer: how the sender writes its slots now ([`SlotStores::Auto`]).
#[derive(Debug, Default, Clone, Copy)]
struct SlotWriter {
    /// Slots still to write with streaming stores.
    streaming_left: u32,
    /// Ordinary copies timed since the last verdict, and how many of them were slow.
    probes: u8,
    slow: u8,
    /// Ordinary copies made untimed since the last timed one (where cores are shared).
    untimed: u8,
    /// Slots written with streaming stores so far (whatever chose them).
    streamed: u64,
}

impl SlotWriter {
    /// Whether the next copy of `bytes` streams.
    fn streams(&self, mode: SlotStores, bytes: usize) -> bool {
        match mode {
            SlotStores::Cached => false,
            SlotStores::Streaming => bytes >= 256,
            SlotStores::Auto => self.streaming_left > 0 && bytes >= SLOT_PROBE_MIN_BYTES,
        }
    }

    /// Whether the next copy of `bytes` (streamed or not) is timed, and on which clock:
    /// `Some(true)` the thread's CPU clock, `Some(false)` the wall clock. Only `Auto`'s
    /// ordinary copies are: where cores are shared one in [`CPU_CLOCK_EVERY`] of them, else
    /// every one of [`SMALL_COPY_BYTES`] or more and one in [`SMALL_COPY_CLOCK_EVERY`] of the
    /// shorter ones (counted by [`SlotWriter::copied`], so a push that found the FIFO full
    /// counts none).
    fn timed(&self, mode: SlotStores, bytes: usize, streamed: bool, cores_shared: bool) -> Option<bool> {
        if mode != SlotStores::Auto || bytes < SLOT_PROBE_MIN_BYTES || streamed {
            return None;
        }
        let every = match (cores_shared, bytes < SMALL_COPY_BYTES) {
            (true, _) => CPU_CLOCK_EVERY,
            (false, true) => SMALL_COPY_CLOCK_EVERY,
            (false, false) => 1,
        };
        (self.untimed + 1 >= every).then_some(cores_shared)
    }

    /// Accounts one copy of `bytes`, streamed or not, that took `secs` where it was timed.
    fn copied(&mut self, mode: SlotStores, bytes: usize, streamed: bool, secs: Option<f64>) {
        if mode != SlotStores::Auto || bytes < SLOT_PROBE_MIN_BYTES {
            return;
        }
        if streamed {
            self.streaming_left -= 1;
            return;
        }
        let Some(secs) = secs else {
            self.untimed = self.untimed.saturating_add(1);
            return;
        };
        self.untimed = 0;
        self.probes += 1;
        if (bytes as f64) < SLOW_SLOT_COPY_GBS * 1e9 * secs {
            self.slow += 1;
        }
        if self.probes == SLOT_PROBES {
            if self.slow >= SLOW_PROBES_TO_STREAM {
                self.streaming_left = STREAMING_SLOTS;
                tracing::debug!(
                    slow = self.slow,
                    of = SLOT_PROBES,
                    "slot copies ran below {SLOW_SLOT_COPY_GBS} GB/s: the next {STREAMING_SLOTS} slots to this peer \
                     stream"
                );
            }
            self.probes = 0;
            self.slow = 0;
        }
    }
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            slots: 8,
            slot_bytes: 64 << 10,
            spin: Duration::from_micros(50),
            yield_for: Duration::from_micros(200),
            single_copy_min: Some(1 << 20),
            single_copy_timed: true,
            slot_stores: SlotStores::Auto,
            cores_shared: false,
        }
    }
}

/// Bytes of a FIFO's header area: the counters, then the acknowledgement counter of
/// single-copy messages (written by the receiver), each on its own cache lines.
fn fifo_header_bytes() -> usize {
    std::mem::size_of::<FifoHeader>().next_multiple_of(128) + 128
}

const FLAG_SINGLE_COPY: u32 = 1;
/// With [`FLAG_SINGLE_COPY`]: the receiver does not time this read (the sender's verdict,
/// [`send_judged`]: too short or too long to judge, or of a call too large for the caches).
const FLAG_UNJUDGED: u32 = 2;
const PROBE_MAGIC: u64 = 0x6f78_6363_6c5f_636d;

/// Writes a slot header.
///
/// # Safety
/// `slot` points at at least `SLOT_HEADER` writable bytes.
unsafe fn write_header(slot: *mut u8, tag: Tag, len: u64, off: u64, chunk: u32, flags: u32) {
    // SAFETY: as the caller promised; unaligned writes need no alignment.
    unsafe {
        (slot as *mut u128).write_unaligned(tag.0);
        (slot.add(16) as *mut u64).write_unaligned(len);
        (slot.add(24) as *mut u64).write_unaligned(off);
        (slot.add(32) as *mut u32).write_unaligned(chunk);
        (slot.add(36) as *mut u32).write_unaligned(flags);
    }
}

/// Reads a slot header: `(tag, len, off, chunk, flags)`.
///
/// # Safety
/// `slot` points at at least `SLOT_HEADER` readable bytes.
unsafe fn read_header(slot: *const u8) -> (Tag, u64, u64, u64, u32) {
    // SAFETY: as the caller promised; unaligned reads need no alignment.
    unsafe {
        (
            Tag((slot as *const u128).read_unaligned()),
            (slot.add(16) as *const u64).read_unaligned(),
            (slot.add(24) as *const u64).read_unaligned(),
            (slot.add(32) as *const u32).read_unaligned() as u64,
            (slot.add(36) as *const u32).read_unaligned(),
        )
    }
}

/// Fills a FIFO slot's payload with a header and `chunk` bytes of a message (from `src`,
/// which points at the message's first byte), with streaming stores when `streaming`.
///
/// # Safety
/// `slot` points at a payload of at least `SLOT_HEADER + chunk` writable bytes, not yet
/// published; `src + off .. src + off + chunk` is readable and does not overlap it.
unsafe fn write_slot(slot: *mut u8, tag: Tag, len: usize, off: usize, src: *const u8, chunk: usize, streaming: bool) {
    // SAFETY: as the caller promised.
    unsafe {
        write_header(slot, tag, len as u64, off as u64, chunk as u32, 0);
        if streaming {
            crate::copy::copy_streaming(slot.add(SLOT_HEADER), src.add(off), chunk);
        } else {
            std::ptr::copy_nonoverlapping(src.add(off), slot.add(SLOT_HEADER), chunk);
        }
    }
}

/// Reads `len` bytes at `remote` in process `pid` into `local`, with process_vm_readv.
fn cma_read(pid: u32, local: *mut u8, remote: u64, len: usize) -> std::io::Result<()> {
    let mut done = 0;
    while done < len {
        let l = libc::iovec { iov_base: local.wrapping_add(done).cast(), iov_len: len - done };
        let r = libc::iovec { iov_base: (remote as usize + done) as *mut libc::c_void, iov_len: len - done };
        // SAFETY: the local iovec lies in a posted, writable region; the kernel checks the
        // remote one against the other process's mappings and fails rather than fault.
        let n = unsafe { libc::process_vm_readv(pid as libc::pid_t, &l, 1, &r, 1, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::other("process_vm_readv read nothing"));
        }
        done += n as usize;
    }
    Ok(())
}

#[repr(C)]
struct Control {
    doorbell: Doorbell,
    failed: CachePadded<AtomicU32>,
    /// When this rank failed because a peer died: that peer's rank + 1 (0: no such peer).
    /// Survivors that see this rank fail name the dead rank, not the messenger.
    culprit: CachePadded<AtomicU32>,
    /// The caller's progress marker (see `Transport::set_progress`).
    progress: CachePadded<AtomicU64>,
    /// 1 while this rank may be touching peers' mapped memory (`Transport::begin_peer_access`).
    access: CachePadded<AtomicU32>,
    /// The CPU this rank ran on when it last waited (this rank's cell of the host's
    /// [`CpuBoard`]).
    cpu: CpuCell,
}

struct SendOp {
    req: u64,
    tag: Tag,
    ptr: *const u8,
    len: usize,
    off: usize,
    /// Announced for a single-copy read, decided when it was posted (see
    /// [`ShmTransport::single_copy_send`]); else through the FIFO.
    single: bool,
    /// Sent through the FIFO while the receiver asks for it, and its single-copy read timed
    /// by the receiver ([`send_judged`]).
    judged: bool,
}

struct RecvOp {
    req: u64,
    tag: Tag,
    /// Where the message goes: a posted buffer (`ptr`), or a sink (then `ptr` is null).
    ptr: *mut u8,
    sink: Option<Sink>,
    len: usize,
    off: usize,
}

/// Bytes a single-copy message for a sink is read in (through the bounce buffer, which
/// stays in cache); a multiple of 8, so no piece splits an element.
const BOUNCE_BYTES: usize = 256 << 10;

struct ReqInfo {
    peer: usize,
    tag: Tag,
    is_send: bool,
}

struct State {
    sendq: Vec<VecDeque<SendOp>>,
    /// Single-copy sends announced to each peer, waiting for its acknowledgement, in order.
    acks_due: Vec<VecDeque<u64>>,
    /// Acknowledgements seen from each peer so far.
    acks_seen: Vec<u64>,
    recvq: Vec<VecDeque<RecvOp>>,
    /// Per peer: this rank's single-copy reads from it, timed.
    reads: Vec<ReadProbes>,
    /// Single-copy messages for sinks land here first, a piece at a time.
    bounce: Vec<u8>,
    /// How this rank writes each peer's slots now.
    writers: Vec<SlotWriter>,
    reqs: IdMap<ReqInfo>,
    next_id: u64,
    failed: Option<Error>,
    last_liveness: Instant,
}

// SAFETY: the raw pointers in queued operations point into regions whose creators promised
// they stay valid, from any thread, until the request completes or the transport fails.
unsafe impl Send for State {}

/// One rank's endpoint of a shared-memory world (every rank on this host).
pub struct ShmTransport {
    rank: usize,
    size: usize,
    opts: ShmOptions,
    /// The ranks this transport reaches (this rank's host), ascending, this rank included.
    members: Vec<usize>,
    /// `pos[r]`: rank r's index in `members` (its FIFO's place in each segment); usize::MAX
    /// for ranks outside.
    pos: Vec<usize>,
    /// Where this host's ranks last waited: the `cpu` cells of their control blocks. Declared
    /// before `segments`, so dropped before the mappings it points into.
    board: CpuBoard,
    /// `segments[r]`: rank r's segment (this rank's own at `rank`), for members.
    segments: Vec<Option<Segment>>,
    pidfds: Vec<Option<std::os::fd::OwnedFd>>,
    fifo_stride: usize,
    /// `pids[r]`: rank r's process.
    pids: Vec<u32>,
    /// The word peers probe (kept alive while they may still read it).
    _probe: Box<u64>,
    /// `single_copy[r]`: this rank may read rank r's memory with process_vm_readv.
    single_copy: Vec<bool>,
    /// `send_single[r]`: rank r may read this rank's memory, so large sends to it go single-copy.
    send_single: Vec<bool>,
    state: Mutex<State>,
    aborted: AtomicBool,
    /// Peers' shared buffers mapped here.
    mapped: super::shared::PeerMappings,
}

fn control_bytes() -> usize {
    std::mem::size_of::<Control>().next_multiple_of(128)
}

fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; on success it returns a new descriptor we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: `fd` is a fresh descriptor.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl ShmTransport {
    /// Builds this rank's segment, publishes it through `store`, and maps every peer's.
    /// Every rank of the world must be on this host.
    pub fn connect(
        rank: usize,
        size: usize,
        store: &dyn Store,
        opts: ShmOptions,
        deadline: Instant,
    ) -> Result<ShmTransport> {
        let all: Vec<usize> = (0..size).collect();
        ShmTransport::connect_members(rank, size, &all, store, opts, deadline)
    }

    /// As [`ShmTransport::connect`], for the ranks `members` of a larger world (those on
    /// this host; ascending, this rank among them): it reaches exactly those peers, by their
    /// world ranks, and refuses the others. Every member must pass the same list.
    pub fn connect_members(
        rank: usize,
        size: usize,
        members: &[usize],
        store: &dyn Store,
        opts: ShmOptions,
        deadline: Instant,
    ) -> Result<ShmTransport> {
        if size == 0 || rank >= size {
            return Err(Error::invalid_argument(format!("rank {rank} is not in a world of {size}")));
        }
        if !members.contains(&rank) || members.windows(2).any(|w| w[0] >= w[1]) || members.iter().any(|&m| m >= size) {
            return Err(Error::invalid_argument(format!(
                "shm members {members:?} must be ascending ranks of the world of {size}, {rank} among them"
            )));
        }
        let mut pos = vec![usize::MAX; size];
        for (i, &m) in members.iter().enumerate() {
            pos[m] = i;
        }
        if opts.slots == 0 || opts.slot_bytes < 128 || !opts.slot_bytes.is_multiple_of(64) {
            return Err(Error::invalid_argument("shm: need at least one slot of at least 128 bytes, a multiple of 64"));
        }
        if opts.slot_stores == SlotStores::Auto {
            // Measured now rather than inside the first timed copy, which holds a slot.
            clock_cost(opts.cores_shared);
        }
        let fifo_stride = fifo_header_bytes() + opts.slots * opts.slot_bytes;
        let len = control_bytes() + members.len() * fifo_stride;
        let mine = Segment::create(len)?;
        let pid = std::process::id();
        // A word peers try to read with process_vm_readv, to learn whether single-copy
        // transfers are allowed (ptrace rules in containers often forbid them).
        let probe = Box::new(PROBE_MAGIC);
        let probe_addr = &*probe as *const u64 as u64;
        store.set(&format!("shm/{rank}"), format!("{pid}:{}:{len}:{probe_addr}", mine.raw_fd()).as_bytes())?;
        let mut pids = vec![pid; size];
        let mut single_copy = vec![false; size];
        let mut segments: Vec<Option<Segment>> = (0..size).map(|_| None).collect();
        let mut pidfds: Vec<Option<std::os::fd::OwnedFd>> = (0..size).map(|_| None).collect();
        segments[rank] = Some(mine);
        for &peer in members.iter().filter(|&&p| p != rank) {
            let v = store.get(&format!("shm/{peer}"), deadline).map_err(|e| e.on_rank(rank).with_peer(peer))?;
            let text = String::from_utf8_lossy(&v).into_owned();
            let parts: Vec<&str> = text.split(':').collect();
            let parsed = match parts.as_slice() {
                [p, f, l, a] => p
                    .parse::<u32>()
                    .ok()
                    .zip(f.parse::<i32>().ok())
                    .zip(l.parse::<usize>().ok())
                    .zip(a.parse::<u64>().ok()),
                _ => None,
            };
            let (((ppid, pfd), plen), paddr) =
                parsed.ok_or_else(|| Error::invalid_usage(format!("shm: rank {peer} published '{text}'")))?;
            pids[peer] = ppid;
            if opts.single_copy_min.is_some() {
                let mut word = 0u64;
                single_copy[peer] =
                    cma_read(ppid, (&mut word as *mut u64).cast(), paddr, 8).is_ok() && word == PROBE_MAGIC;
                if !single_copy[peer] {
                    tracing::info!(
                        rank,
                        peer,
                        "shm: single-copy reads (process_vm_readv) refused; using the FIFO only"
                    );
                }
            }
            if plen != len {
                return Err(Error::invalid_usage(format!(
                    "shm: rank {peer}'s segment is {plen} bytes, this rank's {len} (different settings?)"
                ))
                .with_peer(peer));
            }
            segments[peer] = Some(Segment::open(ppid, pfd, len).map_err(|e| e.on_rank(rank).with_peer(peer))?);
            pidfds[peer] = if ppid == pid { None } else { pidfd_open(ppid) };
        }
        if opts.single_copy_min.is_some() && members.iter().all(|&p| single_copy[p] || p == rank) {
            tracing::info!(rank, min_bytes = opts.single_copy_min, "shm: single-copy reads (process_vm_readv) in use");
        }
        // Single copy from r to q needs q allowed to read r: publish what this rank may read,
        // and send single-copy to a peer only if that peer may read this rank.
        let mine: String = single_copy.iter().map(|&b| if b { '1' } else { '0' }).collect();
        store.set(&format!("shmread/{rank}"), mine.as_bytes())?;
        let mut send_single = vec![false; size];
        for &peer in members.iter().filter(|&&p| p != rank) {
            let v = store.get(&format!("shmread/{peer}"), deadline).map_err(|e| e.on_rank(rank).with_peer(peer))?;
            send_single[peer] = v.get(rank) == Some(&b'1');
        }
        // Each member's cell is the `cpu` field of the Control its segment starts with.
        let cells = segments
            .iter()
            .map(|s| {
                s.as_ref().map_or(std::ptr::null(), |s| {
                    s.ptr().wrapping_add(std::mem::offset_of!(Control, cpu)) as *const CpuCell
                })
            })
            .collect();
        // SAFETY: the segments, whose Controls hold the cells, move into the transport with
        // the board, which is dropped first (field order) and nothing else unmaps them;
        // Control's fields are only touched atomically.
        let board = unsafe { CpuBoard::over(rank, cells) };
        Ok(ShmTransport {
            rank,
            size,
            members: members.to_vec(),
            pos,
            opts,
            segments,
            pidfds,
            fifo_stride,
            pids,
            _probe: probe,
            single_copy,
            send_single,
            state: Mutex::new(State {
                sendq: (0..size).map(|_| VecDeque::new()).collect(),
                acks_due: (0..size).map(|_| VecDeque::new()).collect(),
                acks_seen: vec![0; size],
                recvq: (0..size).map(|_| VecDeque::new()).collect(),
                reads: vec![ReadProbes::default(); size],
                bounce: Vec::new(),
                writers: vec![SlotWriter::default(); size],
                reqs: IdMap::default(),
                next_id: 1,
                failed: None,
                last_liveness: Instant::now(),
            }),
            aborted: AtomicBool::new(false),
            mapped: Default::default(),
            board,
        })
    }

    /// Queues a receive (into `ptr`, or for `sink`) and makes what progress it can.
    fn enqueue_recv(&self, peer: usize, tag: Tag, ptr: *mut u8, sink: Option<Sink>, len: usize) -> Result<ReqId> {
        let mut st = self.lock();
        self.check(&mut st)?;
        let id = st.next_id;
        st.next_id += 1;
        st.reqs.insert(id, ReqInfo { peer, tag, is_send: false });
        st.recvq[peer].push_back(RecvOp { req: id, tag, ptr, sink, len, off: 0 });
        self.advance(&mut st).map_err(|e| self.fail_state(&mut st, e))?;
        Ok(ReqId(id))
    }

    /// Member `r`'s segment.
    fn segment(&self, r: usize) -> &Segment {
        self.segments[r].as_ref().expect("a member's segment (peers are checked to be members)")
    }

    /// The other members.
    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().copied().filter(move |&p| p != self.rank)
    }

    /// Checks `peer` is another member.
    fn check_member(&self, peer: usize) -> Result<()> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        if self.pos[peer] == usize::MAX {
            return Err(Error::invalid_argument(format!(
                "peer {peer} is not on this host (the shared-memory transport reaches ranks {:?})",
                self.members
            ))
            .on_rank(self.rank));
        }
        Ok(())
    }

    fn control(&self, r: usize) -> &Control {
        // SAFETY: every segment starts with a Control (all zero is its initial state, and it
        // holds only atomics); the mapping lives as long as `self`.
        unsafe { &*(self.segment(r).ptr() as *const Control) }
    }

    /// The FIFO from `src` into `dst`'s segment.
    fn fifo(&self, src: usize, dst: usize) -> Fifo<'_, RawSlots> {
        let base = self.segment(dst).ptr().wrapping_add(control_bytes() + self.pos[src] * self.fifo_stride);
        // SAFETY: the FIFO header is the first part of the FIFO's stride within `dst`'s
        // mapping, which lives as long as `self`; it holds only atomics.
        let hdr = unsafe { &*(base as *const FifoHeader) };
        let slots = RawSlots {
            base: base.wrapping_add(fifo_header_bytes()),
            bytes: self.opts.slot_bytes,
            count: self.opts.slots as u64,
        };
        Fifo::new(hdr, slots)
    }

    /// The acknowledgement counter of single-copy messages from `src` into `dst`'s segment
    /// (written by `dst`, read by `src`).
    fn acks(&self, src: usize, dst: usize) -> &AtomicU64 {
        let base = self.segment(dst).ptr().wrapping_add(
            control_bytes()
                + self.pos[src] * self.fifo_stride
                + std::mem::size_of::<FifoHeader>().next_multiple_of(128),
        );
        // SAFETY: a 128-byte area reserved for this counter in the FIFO's header, in a
        // mapping that lives as long as `self`; all zero initially.
        unsafe { &*(base as *const AtomicU64) }
    }

    /// Until when (CLOCK_MONOTONIC ns) `dst` asks `src` to send through the FIFO rather than
    /// by single copy: the word after [`ShmTransport::acks`] (written by `dst`, read by `src`).
    fn fifo_until(&self, src: usize, dst: usize) -> &AtomicU64 {
        let acks: *const AtomicU64 = self.acks(src, dst);
        // SAFETY: the second word of the same 128-byte area, which nothing else uses; all
        // zero initially (no request).
        unsafe { &*acks.add(1) }
    }

    /// Accounts a single-copy read of `bytes` from `peer` that took `secs`; after a run of
    /// slow ones, asks `peer` to send through the FIFO for [`FIFO_AFTER_SLOW_READS`].
    fn judge_read(&self, probes: &mut ReadProbes, peer: usize, addrs: (u64, u64), bytes: usize, secs: f64) {
        if probes.read(addrs, bytes, secs) {
            let until = monotonic_ns() + FIFO_AFTER_SLOW_READS.as_nanos() as u64;
            self.fifo_until(peer, self.rank).store(until, Ordering::Relaxed);
            tracing::debug!(
                peer,
                "shm: single-copy reads from this peer ran below {SLOW_READ_GBS} GB/s: it sends through the FIFO \
                 for {FIFO_AFTER_SLOW_READS:?}"
            );
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail_state(&self, st: &mut State, err: Error) -> Error {
        let err = err.on_rank(self.rank);
        if st.failed.is_none() {
            if err.kind() == crate::ErrorKind::PeerLost {
                if let Some(dead) = err.peer() {
                    // Published before the failure flag, whose release makes it visible.
                    self.control(self.rank).culprit.store(dead as u32 + 1, Ordering::Relaxed);
                }
            }
            st.failed = Some(err);
            self.control(self.rank).failed.store(1, Ordering::Release);
            for p in self.peers() {
                self.control(p).doorbell.ring();
            }
        }
        st.reqs.clear();
        st.sendq.iter_mut().for_each(VecDeque::clear);
        st.acks_due.iter_mut().for_each(VecDeque::clear);
        st.recvq.iter_mut().for_each(VecDeque::clear);
        st.failed.clone().expect("set above")
    }

    fn check(&self, st: &mut State) -> Result<()> {
        if self.aborted.load(Ordering::Acquire) && st.failed.is_none() {
            return Err(self.fail_state(st, Error::aborted("the communicator was aborted")));
        }
        match &st.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Pushes bytes `off .. off + chunk` of the `len`-byte message at `src` into the next
    /// slot of `fifo` (to the peer `writer` writes for), with the stores `writer` chooses
    /// ([`SlotStores`]); `false` if the FIFO is full.
    ///
    /// # Safety
    /// `chunk` is at most a slot's data bytes, and `src + off .. src + off + chunk` is readable
    /// and lies outside the FIFO.
    #[allow(clippy::too_many_arguments)]
    unsafe fn push_slot(
        &self,
        writer: &mut SlotWriter,
        fifo: &Fifo<'_, RawSlots>,
        tag: Tag,
        src: *const u8,
        len: usize,
        off: usize,
        chunk: usize,
    ) -> bool {
        let mode = self.opts.slot_stores;
        let streaming = writer.streams(mode, chunk);
        // Only the copies `Auto` accounts for read a clock (a small message's push takes a
        // few hundred nanoseconds). The clock is read inside the push: a full FIFO reads none.
        let clock = writer.timed(mode, chunk, streaming, self.opts.cores_shared);
        let mut secs = None;
        let ok = fifo.try_push(|slot| {
            let t0 = clock.map(CopyClock::start);
            // SAFETY: the slot has room for `chunk` bytes (the caller's promise); the source,
            // readable, lies outside the FIFO.
            unsafe { write_slot(slot, tag, len, off, src, chunk, streaming) };
            secs = t0.map(CopyClock::elapsed);
        });
        if ok {
            writer.streamed += u64::from(streaming);
            writer.copied(mode, chunk, streaming, secs);
        }
        ok
    }

    /// Whether a message of `len` bytes to `peer` is announced for a single-copy read: where
    /// the peer may read this process and the message reaches the threshold, this
    /// transport's own ([`ShmOptions::single_copy_min`]) or the sender's lower one
    /// ([`SendHints::single_copy_min`]).
    fn single_copy_send(&self, peer: usize, len: usize, hints: SendHints) -> bool {
        let Some(own) = self.opts.single_copy_min else { return false };
        // Never below 1 byte: an empty message has nothing to read.
        let min = hints.single_copy_min.map_or(own, |h| h.max(1).min(own));
        self.send_single[peer] && len >= min
    }

    /// How many slots to `peer` this rank has written with streaming stores.
    #[cfg(test)]
    fn streamed_slots(&self, peer: usize) -> u64 {
        self.lock().writers[peer].streamed
    }

    /// One pass over every queue; `Ok(true)` if anything moved.
    fn advance(&self, st: &mut State) -> Result<bool> {
        let data = self.opts.slot_bytes - SEQ_BYTES - SLOT_HEADER;
        let mut moved = false;
        let mut done = Vec::new();
        for &peer in &self.members {
            if st.sendq[peer].is_empty() {
                continue;
            }
            let fifo = self.fifo(self.rank, peer);
            // Whether the peer asks for the messages it judges through the FIFO now (read
            // only for such a message: the clock is not read on every pass).
            let fifo_asked = || {
                let until = self.fifo_until(self.rank, peer).load(Ordering::Relaxed);
                until != 0 && monotonic_ns() < until
            };
            let mut pushed = false;
            while let Some(op) = st.sendq[peer].front_mut() {
                if op.off == 0 && op.single && !(op.judged && fifo_asked()) {
                    // Announce the buffer; the receiver copies it with process_vm_readv and
                    // acknowledges, which completes the send.
                    let (tag, len, addr) = (op.tag, op.len as u64, op.ptr as u64);
                    let flags = if op.judged { FLAG_SINGLE_COPY } else { FLAG_SINGLE_COPY | FLAG_UNJUDGED };
                    let ok = fifo.try_push(|slot| {
                        // SAFETY: the slot has `slot_bytes` (at least 128) bytes in the peer's
                        // mapping and is ours until published.
                        unsafe {
                            write_header(slot, tag, len, 0, 0, flags);
                            (slot.add(SLOT_HEADER) as *mut u64).write_unaligned(addr);
                        }
                    });
                    if !ok {
                        break;
                    }
                    pushed = true;
                    let req = op.req;
                    st.sendq[peer].pop_front();
                    st.acks_due[peer].push_back(req);
                    continue;
                }
                let chunk = (op.len - op.off).min(data);
                // SAFETY: `chunk <= data` bytes at `op.off` lie in the posted region.
                if !unsafe { self.push_slot(&mut st.writers[peer], &fifo, op.tag, op.ptr, op.len, op.off, chunk) } {
                    break;
                }
                pushed = true;
                op.off += chunk;
                if op.off == op.len {
                    done.push(op.req);
                    st.sendq[peer].pop_front();
                }
            }
            if pushed {
                moved = true;
                self.control(peer).doorbell.ring();
            }
        }
        for &peer in &self.members {
            if st.acks_due[peer].is_empty() {
                continue;
            }
            let acked = self.acks(self.rank, peer).load(Ordering::Acquire);
            while st.acks_seen[peer] < acked {
                let Some(req) = st.acks_due[peer].pop_front() else {
                    return Err(
                        Error::invalid_usage(format!("peer {peer} acknowledged a message never sent")).with_peer(peer)
                    );
                };
                st.acks_seen[peer] += 1;
                done.push(req);
                moved = true;
            }
        }
        for &peer in &self.members {
            if st.recvq[peer].is_empty() {
                continue;
            }
            let fifo = self.fifo(peer, self.rank);
            let mut popped = false;
            let mut bounce = std::mem::take(&mut st.bounce);
            // At most one FIFO's worth of slots per pass: a peer that refills the FIFO as fast
            // as it is drained would otherwise keep this loop going while this rank's own
            // sends wait, and the two ranks take turns instead of moving both ways at once
            // (a 2-rank ring reduce-scatter of 256 MiB ran 1.15x slower for it).
            let mut budget = self.opts.slots;
            while let Some(op) = st.recvq[peer].front_mut() {
                if budget == 0 {
                    break;
                }
                budget -= 1;
                let pid = self.pids[peer];
                let may_read = self.single_copy[peer];
                let timed = self.opts.single_copy_timed;
                let r = fifo.peek(|slot| {
                    // SAFETY: a published slot of `slot_bytes` bytes in our own mapping.
                    let (tag, len, off, chunk, flags) = unsafe { read_header(slot) };
                    if tag != op.tag || len != op.len as u64 || off != op.off as u64 || chunk as usize > data || off + chunk > len {
                        return Err(Error::invalid_usage(format!(
                            "mismatched calls: message with tag {} of {len} bytes (part at {off}) arrived where tag {} of {} bytes (at {}) was expected",
                            tag, op.tag, op.len, op.off
                        ))
                        .with_peer(peer));
                    }
                    if flags & FLAG_SINGLE_COPY != 0 {
                        if !may_read {
                            return Err(Error::internal(format!("peer {peer} sent a single-copy message this rank cannot read")));
                        }
                        // SAFETY: the slot's data starts with the sender's buffer address.
                        let addr = unsafe { (slot.add(SLOT_HEADER) as *const u64).read_unaligned() };
                        let (tag, len) = (op.tag, op.len);
                        let read = |local: *mut u8, at: usize, n: usize| -> Result<()> {
                            let r = cma_read(pid, local, addr + at as u64, n);
                            // A sender that failed may have abandoned its buffer while it was
                            // read: trust the bytes only if it had not failed once they were
                            // read (it raises its flag before it lets go of any buffer).
                            if let Some(e) = self.peer_failure(peer, "receive from", tag) {
                                return Err(e);
                            }
                            r.map_err(|e| {
                                if e.raw_os_error() == Some(libc::ESRCH) {
                                    // The process is going: its memory is gone before its pidfd says so.
                                    Error::peer_lost(peer, format!("peer {peer} exited during a single-copy read from it"))
                                } else {
                                    Error::io(format!("single-copy read of {len} bytes from peer {peer}"), e)
                                        .with_peer(peer)
                                }
                            })
                        };
                        // The sender's verdict ([`send_judged`]), which covers the length too.
                        let clock = (timed && op.sink.is_none() && flags & FLAG_UNJUDGED == 0)
                            .then(|| (CopyClock::start(self.opts.cores_shared), (addr, op.ptr as u64)));
                        match op.sink.as_mut() {
                            None => read(op.ptr, 0, len)?,
                            Some(sink) => {
                                bounce.resize(len.min(BOUNCE_BYTES), 0);
                                let mut at = 0;
                                while at < len {
                                    let n = (len - at).min(BOUNCE_BYTES);
                                    read(bounce.as_mut_ptr(), at, n)?;
                                    sink.consume(at, &bounce[..n])?;
                                    at += n;
                                }
                            }
                        }
                        return Ok((len, true, clock.map(|(c, addrs)| (c.elapsed(), addrs))));
                    }
                    match op.sink.as_mut() {
                        // SAFETY: `chunk` bytes after the header, into the posted region,
                        // which has room for them (checked above).
                        None => unsafe {
                            std::ptr::copy_nonoverlapping(slot.add(SLOT_HEADER), op.ptr.add(op.off), chunk as usize)
                        },
                        Some(sink) => {
                            // SAFETY: `chunk` bytes after the header, in the published slot
                            // (checked above), which stays ours until popped.
                            let piece = unsafe { std::slice::from_raw_parts(slot.add(SLOT_HEADER), chunk as usize) };
                            sink.consume(off as usize, piece)?;
                        }
                    }
                    Ok((chunk as usize, false, None))
                });
                let Some(r) = r else { break };
                let (chunk, single, read_secs) = match r {
                    Ok(v) => v,
                    Err(e) => {
                        st.bounce = bounce;
                        return Err(e);
                    }
                };
                fifo.pop();
                if single {
                    // The copy is done: the sender may reuse its buffer.
                    self.acks(peer, self.rank).fetch_add(1, Ordering::Release);
                }
                if let Some((secs, addrs)) = read_secs {
                    self.judge_read(&mut st.reads[peer], peer, addrs, chunk, secs);
                }
                popped = true;
                op.off += chunk;
                if op.off == op.len {
                    done.push(op.req);
                    st.recvq[peer].pop_front();
                }
            }
            st.bounce = bounce;
            if popped {
                moved = true;
                self.control(peer).doorbell.ring();
            }
        }
        for id in done {
            st.reqs.remove(&id);
        }
        Ok(moved)
    }

    /// Whether a pass could move something now (checked after announcing a sleep).
    fn could_move(&self, st: &State) -> bool {
        if self.aborted.load(Ordering::Acquire) {
            return true;
        }
        self.members.iter().any(|&p| {
            (!st.acks_due[p].is_empty() && self.acks(self.rank, p).load(Ordering::Acquire) > st.acks_seen[p])
                || (!st.sendq[p].is_empty() && self.fifo(self.rank, p).has_space())
                || (!st.recvq[p].is_empty() && self.fifo(p, self.rank).has_data())
                || (st.reqs.values().any(|r| r.peer == p) && self.control(p).failed.load(Ordering::Acquire) != 0)
        })
    }

    /// Whether `peer`'s process has exited (its pidfd is readable).
    fn peer_exited(&self, peer: usize) -> bool {
        use std::os::fd::AsRawFd;
        self.pidfds[peer].as_ref().is_some_and(|fd| {
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, no waiting.
            unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
        })
    }

    /// Why `p` can no longer be waited on, if it cannot: it failed (then, if it failed because
    /// a rank died, that rank is named) or it exited.
    fn peer_failure(&self, p: usize, dir: &str, tag: Tag) -> Option<Error> {
        self.peer_gone(p, &format!("our {dir} (tag {tag}) completed"))
    }

    /// Why `p` can no longer be counted on, if it cannot, saying what it happened `before`.
    fn peer_gone(&self, p: usize, before: &str) -> Option<Error> {
        if self.control(p).failed.load(Ordering::Acquire) != 0 {
            let culprit = self.control(p).culprit.load(Ordering::Relaxed) as usize;
            return Some(if culprit != 0 && culprit - 1 != self.rank {
                let dead = culprit - 1;
                Error::peer_lost(dead, format!("peer {dead} died (peer {p} saw it first) before {before}"))
            } else {
                Error::remote(p, format!("peer {p} failed before {before}"))
            });
        }
        if self.peer_exited(p) {
            return Some(Error::peer_lost(p, format!("peer {p} exited before {before}")));
        }
        None
    }

    /// Fails with PeerLost or Remote if a peer this rank waits on died or failed.
    fn check_peers(&self, st: &mut State) -> Result<()> {
        let find = |st: &State| {
            st.reqs.values().find_map(|info| {
                self.peer_failure(info.peer, if info.is_send { "send to" } else { "receive from" }, info.tag)
            })
        };
        if find(st).is_none() {
            return Ok(());
        }
        // A peer that sent what this rank waits for and then left (its transport dropped,
        // its process exited) may have done both since this rank's last pass: its failure
        // flag is released after its last push, and its exit comes after it, so one more
        // pass, after seeing the flag, finds everything it sent. Only what is still missing
        // then is its failure's fault (a barrier's last message, otherwise lost about one
        // run in a hundred of 4 ranks under load).
        self.advance(st).map_err(|e| self.fail_state(st, e))?;
        match find(st) {
            Some(e) => Err(self.fail_state(st, e)),
            None => Ok(()),
        }
    }
}

impl Transport for ShmTransport {
    fn name(&self) -> &'static str {
        "shm"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        let single_copy =
            self.opts.single_copy_min.is_some() && self.peers().all(|p| self.single_copy[p] && self.send_single[p]);
        Capabilities {
            peer_memory_mappable: true,
            device_memory: false,
            eager_sends: true,
            inter_host: false,
            single_copy,
            single_copy_min: if single_copy { self.opts.single_copy_min.unwrap_or(0) } else { 0 },
            recv_sink: true,
        }
    }

    fn memory_key(&self, buf: Region) -> Option<super::MemoryKey> {
        if buf.kind() != MemoryKind::Host {
            // Device memory: its CUDA IPC handle, which every process on this host can open.
            return super::MemoryKey::device_memory(buf);
        }
        // Any address serves peers that are threads of this process.
        Some(super::shared::registered_key(buf).unwrap_or_else(|| super::MemoryKey::process_address(buf)))
    }

    fn map_peer_memory(&self, peer: usize, key: &super::MemoryKey) -> Result<RegionMut> {
        self.check_member(peer)?;
        // Only the peer's own process: a key may not make this rank open another one's files.
        if key.pid != self.pids[peer] {
            return Err(Error::invalid_usage(format!(
                "rank {peer} named memory of process {}, not its own ({})",
                key.pid, self.pids[peer]
            ))
            .on_rank(self.rank)
            .with_peer(peer));
        }
        self.mapped.map(key).map_err(|e| e.on_rank(self.rank).with_peer(peer))
    }

    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId> {
        self.post_send_hinted(peer, tag, buf, SendHints::default())
    }

    fn post_send_hinted(&self, peer: usize, tag: Tag, buf: Region, hints: SendHints) -> Result<ReqId> {
        self.check_member(peer)?;
        if buf.kind() != MemoryKind::Host {
            return Err(Error::unsupported("the shm transport moves host memory only"));
        }
        let mut st = self.lock();
        self.check(&mut st)?;
        let id = st.next_id;
        st.next_id += 1;
        let len = buf.len();
        let single = self.single_copy_send(peer, len, hints);
        if st.sendq[peer].is_empty() && len <= self.opts.slot_bytes - SEQ_BYTES - SLOT_HEADER && !single {
            // Fast path: nothing queued before it and it fits one slot, so it goes out now
            // and completes without ever being queued (a request never queued is complete).
            // Written as queued messages are ([`SlotStores`]): with the cores far apart, a
            // 2-rank ring all-reduce of 64 KiB, whose 32 KiB messages all took this path with
            // ordinary stores, ran 3.7x slower than with streaming ones.
            let fifo = self.fifo(self.rank, peer);
            // SAFETY: `len` fits one slot (checked); `buf` is readable, a posted region.
            let ok = unsafe { self.push_slot(&mut st.writers[peer], &fifo, tag, buf.as_ptr(), len, 0, len) };
            if ok {
                self.control(peer).doorbell.ring();
                return Ok(ReqId(id));
            }
        }
        st.reqs.insert(id, ReqInfo { peer, tag, is_send: true });
        let judged = send_judged(len, hints);
        st.sendq[peer].push_back(SendOp { req: id, tag, ptr: buf.as_ptr(), len, off: 0, single, judged });
        self.advance(&mut st).map_err(|e| self.fail_state(&mut st, e))?;
        Ok(ReqId(id))
    }

    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId> {
        self.check_member(peer)?;
        if buf.kind() != MemoryKind::Host {
            return Err(Error::unsupported("the shm transport moves host memory only"));
        }
        self.enqueue_recv(peer, tag, buf.as_mut_ptr(), None, buf.len())
    }

    fn post_recv_sink(&self, peer: usize, tag: Tag, len: usize, sink: Sink) -> Result<ReqId> {
        self.check_member(peer)?;
        self.enqueue_recv(peer, tag, std::ptr::null_mut(), Some(sink), len)
    }

    fn test(&self, req: ReqId) -> Result<bool> {
        let mut st = self.lock();
        self.check(&mut st)?;
        if req.0 == 0 || req.0 >= st.next_id {
            return Err(Error::internal(format!("unknown request {}", req.0)));
        }
        if !st.reqs.contains_key(&req.0) {
            return Ok(true);
        }
        self.advance(&mut st).map_err(|e| self.fail_state(&mut st, e))?;
        Ok(!st.reqs.contains_key(&req.0))
    }

    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()> {
        // The clock is read only once the first 32 rounds found nothing (most small
        // messages have arrived by then): reading it costs as much as a pass over the queues.
        let mut start: Option<Instant> = None;
        let mut spins = 0u32;
        let mut st = self.lock();
        if req.0 == 0 || req.0 >= st.next_id {
            return Err(Error::internal(format!("unknown request {}", req.0)));
        }
        loop {
            self.check(&mut st)?;
            if !st.reqs.contains_key(&req.0) {
                return Ok(());
            }
            let moved = self.advance(&mut st).map_err(|e| self.fail_state(&mut st, e))?;
            if !st.reqs.contains_key(&req.0) {
                return Ok(());
            }
            if moved {
                continue;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(32) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            let start = *start.get_or_insert(now);
            let spin_until = start + self.opts.spin;
            let yield_until = spin_until + self.opts.yield_for;
            // Past the deadline nothing else is done (no move, no spin): a waiter preempted
            // for longer than its deadline's margin fails at its next look at the clock.
            if now >= deadline {
                let info = &st.reqs[&req.0];
                let dir = if info.is_send { "send to" } else { "receive from" };
                let e = Error::timeout(
                    format!("{dir} peer {} (tag {}) did not complete", info.peer, info.tag),
                    now - start,
                )
                .with_peer(info.peer);
                return Err(self.fail_state(&mut st, e));
            }
            // With a core for every rank, a waiter whose peer runs on its own CPU moves to a
            // free one (see `crate::placement`). Sleeping instead took 300 futex round trips
            // of ~20 us before the kernel parted such a pair.
            if !self.opts.cores_shared && self.board.on_wait(st.reqs[&req.0].peer, now) {
                continue;
            }
            if now < spin_until {
                // Every 128 passes (a couple of microseconds), let a rank that shares this
                // core run: when the scheduler puts the two ranks of a pair on one core
                // (another process holds the other), a spin that never yields holds the
                // peer off for the whole spin, and every message costs the spin (53 us per
                // 8-byte all-reduce at a 50 us spin, against 0.4 us).
                if spins.is_multiple_of(128) {
                    std::thread::yield_now();
                }
                continue;
            }
            if now.duration_since(st.last_liveness) > Duration::from_millis(20) {
                st.last_liveness = now;
                self.check_peers(&mut st)?;
            }
            if now < yield_until {
                // Give the core to a runnable rank (likely the one this rank waits for) instead
                // of sleeping: a futex wake-up costs tens of microseconds on a busy machine.
                std::thread::yield_now();
                continue;
            }
            let slice = (deadline - now).min(Duration::from_millis(50));
            self.control(self.rank).doorbell.sleep(|| self.could_move(&st), Some(slice));
        }
    }

    fn pending(&self) -> usize {
        self.lock().reqs.len()
    }

    fn progress(&self, max_wait: Duration) -> Result<()> {
        let mut st = self.lock();
        self.check(&mut st)?;
        let moved = self.advance(&mut st).map_err(|e| self.fail_state(&mut st, e))?;
        if !moved && !max_wait.is_zero() && !st.reqs.is_empty() {
            self.check_peers(&mut st)?;
            self.control(self.rank).doorbell.sleep(|| self.could_move(&st), Some(max_wait));
        }
        Ok(())
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.control(self.rank).failed.store(1, Ordering::Release);
        self.control(self.rank).doorbell.ring();
        for p in self.peers() {
            self.control(p).doorbell.ring();
        }
    }

    fn fail(&self, err: Error) {
        let mut st = self.lock();
        self.fail_state(&mut st, err);
    }

    fn begin_peer_access(&self) -> Result<()> {
        self.control(self.rank).access.store(1, Ordering::SeqCst);
        // Store, fence, then look at the peers' failure flags: a peer failing at once
        // publishes its flag, fences and looks at ours (`wait_peer_access_ended`), so one of
        // the two sees the other.
        fence(Ordering::SeqCst);
        self.check_peer_access()
    }

    fn check_peer_access(&self) -> Result<()> {
        if let Some(e) = self.lock().failed.clone() {
            return Err(e);
        }
        match self.peers().find_map(|p| self.peer_gone(p, "this rank's access to peers' mapped memory ended")) {
            Some(e) => {
                let mut st = self.lock();
                Err(self.fail_state(&mut st, e))
            }
            None => Ok(()),
        }
    }

    fn end_peer_access(&self) {
        self.control(self.rank).access.store(0, Ordering::Release);
    }

    fn wait_peer_access_ended(&self, deadline: Instant) -> Result<()> {
        fence(Ordering::SeqCst);
        let start = Instant::now();
        loop {
            let busy =
                self.peers().find(|&p| self.control(p).access.load(Ordering::Acquire) != 0 && !self.peer_exited(p));
            let Some(p) = busy else { return Ok(()) };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(
                    format!(
                    "peer {p} still touches this rank's mapped buffers (it has not noticed the failure, or is stopped)"
                ),
                    now - start,
                )
                .on_rank(self.rank)
                .with_peer(p));
            }
            // Peers notice a failure within a piece of their work: yield at first, then nap.
            if now - start < self.opts.yield_for {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(50).min(deadline - now));
            }
        }
    }

    fn set_progress(&self, marker: u64) {
        self.control(self.rank).progress.store(marker, Ordering::Relaxed);
    }

    fn peer_progress(&self, peer: usize) -> Option<u64> {
        self.check_member(peer).ok()?;
        Some(self.control(peer).progress.load(Ordering::Relaxed))
    }
}

impl Drop for ShmTransport {
    fn drop(&mut self) {
        // Leaving is failing as far as peers still waiting on this rank are concerned.
        self.control(self.rank).failed.store(1, Ordering::Release);
        for p in self.peers() {
            self.control(p).doorbell.ring();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::placement::pin::{allowed_cpus, run_on, this_cpu};
    use crate::placement::MOVE_INTERVAL;
    use crate::store::MemoryStore;
    use crate::ErrorKind;
    use std::sync::Arc;

    fn world(p: usize, opts: ShmOptions) -> Vec<ShmTransport> {
        let store = Arc::new(MemoryStore::new());
        let hs: Vec<_> = (0..p)
            .map(|r| {
                let (s, o) = (store.clone(), opts.clone());
                std::thread::spawn(move || {
                    ShmTransport::connect(r, p, &*s, o, Instant::now() + Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn a_peer_that_sent_then_left_is_not_a_failure() {
        // Rank 1 waits for a message; rank 0 sends it and drops its transport (a rank
        // finishing its last call and leaving) between rank 1's last pass over the queues and
        // its liveness check. The check must see the message, not the departure.
        let mut ts = world(2, ShmOptions::default());
        let mut got = [0u8; 5];
        // SAFETY: `got` outlives the wait.
        let req = ts[1].post_recv(0, Tag(9), unsafe { RegionMut::from_slice(&mut got) }).unwrap();
        let sent = *b"hello";
        // SAFETY: `sent` outlives the send, which completes at once (one slot).
        ts[0].post_send(1, Tag(9), unsafe { Region::from_slice(&sent) }).unwrap();
        drop(ts.remove(0));
        let t = &ts[0];
        t.check_peers(&mut t.lock()).unwrap();
        t.wait(req, Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(&got, b"hello");
        // What it did not send is still its failure's fault.
        let mut more = [0u8; 1];
        // SAFETY: `more` outlives the request.
        t.post_recv(0, Tag(10), unsafe { RegionMut::from_slice(&mut more) }).unwrap();
        let e = t.check_peers(&mut t.lock()).unwrap_err();
        assert!(e.to_string().contains("peer 0 failed before our receive from"), "{e}");
    }

    #[test]
    fn exchanges_messages_larger_than_the_fifo_in_order() {
        for single_copy_min in [None, Some(100)] {
            let opts = ShmOptions {
                slots: 2,
                slot_bytes: 256,
                spin: Duration::from_micros(5),
                yield_for: Duration::from_micros(20),
                single_copy_min,
                single_copy_timed: true,
                slot_stores: SlotStores::Auto,
                cores_shared: false,
            };
            exchange_all(&world(3, opts));
        }
    }

    /// Every byte arrives whichever stores fill the slots: streaming copies start at any
    /// alignment of source and slot, and end with a tail shorter than their 128-byte step.
    #[test]
    fn streamed_slot_copies_deliver_every_byte() {
        for slot_stores in [SlotStores::Cached, SlotStores::Streaming, SlotStores::Auto] {
            let opts = ShmOptions { slots: 3, single_copy_min: None, slot_stores, ..ShmOptions::default() };
            let ts = world(2, opts);
            let data = (64 << 10) - SEQ_BYTES - SLOT_HEADER;
            for len in [255usize, 256, 300, 4103, data - 1, data, data + 1, 200_003] {
                for shift in 0..3 {
                    let send: Vec<u8> = (0..len + shift).map(|i| (i * 7 + len) as u8).collect();
                    let mut got = vec![0u8; len];
                    // SAFETY: `got` and `send` outlive the waits.
                    let reqs = unsafe {
                        [
                            ts[1].post_recv(0, Tag(1), RegionMut::from_slice(&mut got)).unwrap(),
                            ts[0].post_send(1, Tag(1), Region::from_slice(&send[shift..])).unwrap(),
                        ]
                    };
                    std::thread::scope(|s| {
                        s.spawn(|| ts[0].wait(reqs[1], Instant::now() + Duration::from_secs(10)).unwrap());
                        ts[1].wait(reqs[0], Instant::now() + Duration::from_secs(10)).unwrap();
                    });
                    assert!(got == send[shift..], "{slot_stores:?}: {len} bytes from offset {shift}");
                }
            }
        }
    }

    /// A rank that waits for a peer last seen on its own CPU moves to a CPU no rank uses,
    /// once, keeping its own CPU mask; where ranks outnumber cores it stays. Both ranks'
    /// figures are published from one thread: pinned to one CPU (both ranks "on" it), then
    /// allowed every CPU again, still running there until something moves it. (The
    /// scheduler may move it first, between widening the mask and the wait's check: then
    /// the attempt is made again, with a fresh world, as a timed-out wait fails its own.)
    #[test]
    fn a_rank_waiting_on_its_peers_cpu_moves_to_a_free_one() {
        let all = allowed_cpus();
        for cores_shared in [false, true] {
            let expect_move = all.len() > 1 && !cores_shared;
            let opts = ShmOptions { spin: Duration::from_micros(5), cores_shared, ..ShmOptions::default() };
            let mut moved = false;
            for _attempt in 0..5 {
                let ts = world(2, opts.clone());
                run_on(&all[..1]);
                let first = this_cpu() as u32;
                assert!(!ts[1].board.shares_cpu_with(0), "rank 0 has published nothing yet");
                assert!(ts[0].board.shares_cpu_with(1), "both ranks published CPU {first}");
                assert!(!ts[0].board.move_to_free_cpu(), "one CPU allowed: nowhere to go");
                run_on(&all);
                let mut got = [0u8; 1];
                // SAFETY: `got` outlives the request, which the failed wait drops.
                let req = unsafe { ts[0].post_recv(1, Tag(3), RegionMut::from_slice(&mut got)).unwrap() };
                // Shorter than MOVE_INTERVAL: one move at most.
                let e = ts[0].wait(req, Instant::now() + MOVE_INTERVAL / 2).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
                let moves = ts[0].board.moves();
                if !expect_move {
                    assert_eq!(moves, 0, "{} CPUs, cores shared: {cores_shared}", all.len());
                    break;
                }
                assert!(moves <= 1, "{moves} moves");
                if moves == 1 {
                    let now = ts[0].board.published(0);
                    assert!(
                        now != first + 1 && all.contains(&(now as usize - 1)),
                        "moved from CPU {first} to {now} - 1"
                    );
                    // Once more, by hand: the move itself publishes the new CPU (else the
                    // peer, still reading the old one, would move onto it).
                    run_on(&all[..1]);
                    assert!(ts[0].board.shares_cpu_with(1));
                    run_on(&all);
                    assert!(ts[0].board.move_to_free_cpu());
                    assert_ne!(ts[0].board.published(0), first + 1, "the move is published");
                    moved = true;
                    break;
                }
            }
            assert_eq!(moved, expect_move, "{} CPUs, cores shared: {cores_shared}", all.len());
            assert_eq!(allowed_cpus(), all, "the thread's own mask is given back");
        }
    }

    /// A wait whose deadline has passed fails at its first look at the clock without acting
    /// on it: no move to a free CPU even where its peer was last seen on its own CPU. (It
    /// moved first and looked at the deadline after; a waiter preempted past its deadline
    /// then moved twice in a wait meant to allow one.)
    #[test]
    fn a_wait_past_its_deadline_does_not_move() {
        let all = allowed_cpus();
        let opts = ShmOptions { spin: Duration::from_micros(5), cores_shared: false, ..ShmOptions::default() };
        let ts = world(2, opts);
        run_on(&all[..1]);
        assert!(!ts[1].board.shares_cpu_with(0));
        assert!(ts[0].board.shares_cpu_with(1), "both ranks published one CPU");
        run_on(&all);
        let mut got = [0u8; 1];
        // SAFETY: `got` outlives the request, which the failed wait drops.
        let req = unsafe { ts[0].post_recv(1, Tag(3), RegionMut::from_slice(&mut got)).unwrap() };
        let e = ts[0].wait(req, Instant::now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert_eq!(ts[0].board.moves(), 0, "{} CPUs: moved past the deadline", all.len());
        assert_eq!(allowed_cpus(), all);
    }

    /// A message that fits one slot and finds nothing queued goes out at once (the fast path),
    /// written with the stores the slot-store mode chooses, as a queued one is. (It was
    /// always written with ordinary stores: with the cores far apart, every message of up to
    /// 64 KiB missed the streaming that Auto had switched to.)
    #[test]
    fn messages_sent_at_once_use_the_chosen_slot_stores() {
        for (slot_stores, streamed) in [(SlotStores::Cached, 0), (SlotStores::Streaming, 1)] {
            let opts = ShmOptions { slot_stores, ..ShmOptions::default() };
            let ts = world(2, opts);
            for (i, len) in [32 << 10, (64 << 10) - SEQ_BYTES - SLOT_HEADER, 4096].into_iter().enumerate() {
                let send: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
                let mut got = vec![0u8; len];
                // Nothing queued and one slot's worth: sent by the post itself.
                // SAFETY: `send` outlives the send, which completes at the post.
                let sent = unsafe { ts[0].post_send(1, Tag(7), Region::from_slice(&send)).unwrap() };
                assert!(ts[0].test(sent).unwrap(), "{len} bytes: not sent at once");
                // SAFETY: `got` outlives the wait.
                let req = unsafe { ts[1].post_recv(0, Tag(7), RegionMut::from_slice(&mut got)).unwrap() };
                ts[1].wait(req, Instant::now() + Duration::from_secs(10)).unwrap();
                assert!(got == send, "{slot_stores:?}: {len} bytes");
                assert_eq!(ts[0].streamed_slots(1), streamed * (i as u64 + 1), "{slot_stores:?}: {len} bytes");
            }
        }
    }

    /// Auto stores: a run of slow ordinary copies switches a peer to streaming for
    /// STREAMING_SLOTS slots, then ordinary copies are timed again; fast ones, short ones and
    /// a minority of slow ones switch nothing.
    #[test]
    fn slot_writer_streams_after_slow_copies_then_tries_again() {
        let (auto, big) = (SlotStores::Auto, 64 << 10);
        let slow = big as f64 / (SLOW_SLOT_COPY_GBS * 0.5 * 1e9);
        let fast = big as f64 / (SLOW_SLOT_COPY_GBS * 2.0 * 1e9);
        let mut w = SlotWriter::default();
        for i in 0..10 * SLOT_PROBES as usize {
            // Fast copies, with a slow one in every four: not enough.
            w.copied(auto, big, false, Some(if i % 4 == 0 { slow } else { fast }));
            // Short copies are neither timed nor streamed.
            assert_eq!(w.timed(auto, 1000, false, false), None);
            w.copied(auto, 1000, false, Some(1.0));
            assert!(!w.streams(auto, big) && !w.streams(auto, 1000));
        }
        for _ in 0..SLOT_PROBES {
            assert!(!w.streams(auto, big));
            assert_eq!(w.timed(auto, big, false, false), Some(false), "every ordinary copy, by the wall clock");
            w.copied(auto, big, false, Some(slow));
        }
        for _ in 0..STREAMING_SLOTS {
            assert!(w.streams(auto, big) && !w.streams(auto, 1000));
            assert_eq!(w.timed(auto, big, true, false), None, "streamed copies are not timed");
            w.copied(auto, big, true, None);
        }
        assert!(!w.streams(auto, big), "ordinary stores are tried again");
        // The fixed modes ignore the timing.
        let mut w = SlotWriter::default();
        for _ in 0..SLOT_PROBES {
            assert_eq!(w.timed(SlotStores::Cached, big, false, false), None);
            w.copied(SlotStores::Cached, big, false, Some(slow));
        }
        assert!(!w.streams(SlotStores::Cached, big) && w.streams(SlotStores::Streaming, 256));
        assert!(!w.streams(SlotStores::Streaming, 255));
        // Where cores are shared, one ordinary copy in CPU_CLOCK_EVERY is timed, by the CPU
        // clock; the untimed ones count for nothing, so switching takes that many more.
        let mut w = SlotWriter::default();
        let mut copies = 0;
        while !w.streams(auto, big) {
            let t = w.timed(auto, big, false, true);
            // Asking again without a copy in between (a full FIFO) changes nothing.
            assert_eq!(w.timed(auto, big, false, true), t);
            copies += 1;
            assert_eq!(t, (copies % CPU_CLOCK_EVERY as usize == 0).then_some(true), "copy {copies}");
            w.copied(auto, big, false, t.map(|_| slow));
            assert!(copies <= SLOT_PROBES as usize * CPU_CLOCK_EVERY as usize, "never switched");
        }
        assert_eq!(copies, SLOT_PROBES as usize * CPU_CLOCK_EVERY as usize);
        // Cores to themselves: copies shorter than SMALL_COPY_BYTES (but not shorter than
        // SLOT_PROBE_MIN_BYTES) are timed one in SMALL_COPY_CLOCK_EVERY, by the wall clock, and
        // switch to streaming after that many more; then they stream too.
        let small = SLOT_PROBE_MIN_BYTES;
        let slow = small as f64 / (SLOW_SLOT_COPY_GBS * 0.5 * 1e9);
        let mut w = SlotWriter::default();
        let mut copies = 0;
        while !w.streams(auto, small) {
            let t = w.timed(auto, small, false, false);
            copies += 1;
            assert_eq!(t, (copies % SMALL_COPY_CLOCK_EVERY as usize == 0).then_some(false), "copy {copies}");
            w.copied(auto, small, false, t.map(|_| slow));
            assert!(copies <= SLOT_PROBES as usize * SMALL_COPY_CLOCK_EVERY as usize, "never switched");
        }
        assert_eq!(copies, SLOT_PROBES as usize * SMALL_COPY_CLOCK_EVERY as usize);
        assert!(w.streams(auto, big) && !w.streams(auto, small - 1));
    }

    /// A copy's time has the clock's own cost taken off: the thread's CPU clock is a system
    /// call, so two reads back to back, corrected, read well below the same reads uncorrected
    /// (0.03-0.1 us against 0.5-0.6 on the development VM).
    #[test]
    fn timed_copies_leave_out_the_clocks_own_cost() {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for cpu in [false, true] {
            let cost = clock_cost(cpu);
            assert!((0.0..1e-3).contains(&cost), "cpu {cpu}: {cost} s");
            // Raw and corrected readings taken in turn, so that both see the same machine.
            let (mut raw, mut corrected) = (Vec::new(), Vec::new());
            for _ in 0..64 {
                raw.push(CopyClock::start(cpu).raw_elapsed());
                corrected.push(CopyClock::start(cpu).elapsed());
            }
            let (raw, corrected) = (median(raw), median(corrected));
            assert!(corrected <= raw, "cpu {cpu}: {corrected} s corrected, {raw} s not");
            if cpu {
                assert!(corrected < 0.5 * raw, "cpu clock: {corrected} s corrected, {raw} s not");
            }
        }
    }

    /// The CPU clock does not run while the thread sleeps, the wall clock does.
    #[test]
    fn the_cpu_clock_skips_time_off_the_core() {
        let (cpu, wall) = (CopyClock::start(true), CopyClock::start(false));
        std::thread::sleep(Duration::from_millis(30));
        assert!(wall.elapsed() >= 0.03);
        assert!(cpu.elapsed() < 0.01, "{}", cpu.elapsed());
        // ... and does run while it works.
        let cpu = CopyClock::start(true);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        assert!(cpu.elapsed() > 0.005, "{}", cpu.elapsed());
    }

    fn exchange_all(ts: &[ShmTransport]) {
        std::thread::scope(|s| {
            for t in ts {
                s.spawn(move || {
                    let r = t.rank();
                    for len in [0usize, 1, 99, 100, 224, 225, 10_000] {
                        let send: Vec<u8> = (0..len).map(|i| (i * 3 + r) as u8).collect();
                        let mut got = vec![vec![0u8; len]; 3];
                        let mut reqs = vec![];
                        for (p, g) in got.iter_mut().enumerate().filter(|(p, _)| *p != r) {
                            // SAFETY: `got` outlives the waits.
                            reqs.push(t.post_recv(p, Tag(len as u128), unsafe { RegionMut::from_slice(g) }).unwrap());
                        }
                        for p in (0..3).filter(|&p| p != r) {
                            // SAFETY: `send` outlives the waits.
                            reqs.push(t.post_send(p, Tag(len as u128), unsafe { Region::from_slice(&send) }).unwrap());
                        }
                        t.wait_all(&reqs, Instant::now() + Duration::from_secs(10)).unwrap();
                        for (p, g) in got.iter().enumerate().filter(|(p, _)| *p != r) {
                            assert!(g.iter().enumerate().all(|(i, &b)| b == (i * 3 + p) as u8), "len {len} from {p}");
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn a_run_of_slow_reads_is_judged_after_the_cold_ones() {
        let (slow, fast) = (1.0 / (SLOW_READ_GBS * 0.5 * 1e9), 1.0 / (SLOW_READ_GBS * 2.0 * 1e9));
        let mut p = ReadProbes::default();
        // Reads between buffers not read before, however slow and however many, count for
        // nothing (a program's calls on new buffers, one after the other).
        let fresh = |i: usize| (0x1000 * i as u64 + 0x1000, 0x7000_0000 + 0x1000 * i as u64);
        assert!((0..4 * WARM_READS).all(|i| !p.read(fresh(i), 1, slow)));
        // Runs at half the threshold's speed and twice it, alternately, between buffers read
        // before: 1.25x the threshold's time per byte, slow; the verdict comes with the last
        // read of the second such run in a row. Cold reads in between, slow as they are,
        // neither count towards a run nor end it.
        let warm = fresh(4 * WARM_READS - 1);
        let mut verdicts = Vec::new();
        for i in 0..2 * READ_PROBES {
            verdicts.push(p.read(warm, 1, if i % 2 == 0 { slow } else { fast }));
            assert!(!p.read(fresh(10_000 + usize::from(i)), 1, slow), "a cold read in the run");
        }
        assert_eq!(verdicts.iter().filter(|&&v| v).count(), 1);
        assert!(verdicts[2 * usize::from(READ_PROBES) - 1], "{verdicts:?}");
        // While the streak lasts one more slow run is enough (the peer went through the FIFO
        // and single copy is timed again).
        let verdicts: Vec<bool> = (0..READ_PROBES).map(|_| p.read(warm, 1, slow)).collect();
        assert!(verdicts[usize::from(READ_PROBES) - 1], "{verdicts:?}");
        // One slow read among fast ones: 0.69x the threshold's time per byte, not slow; it
        // ends the streak.
        let verdicts: Vec<bool> = (0..READ_PROBES).map(|i| p.read(warm, 1, if i == 0 { slow } else { fast })).collect();
        assert!(verdicts.iter().all(|&v| !v), "{verdicts:?}");
        // So one slow run alone is no verdict: the first run on new buffers may be slow.
        assert!((0..READ_PROBES).all(|_| !p.read(warm, 1, slow)));
        assert!((0..READ_PROBES).all(|_| !p.read(warm, 1, fast)));
        assert!((0..READ_PROBES).all(|_| !p.read(warm, 1, slow)));
        // The same sender's buffer read into another receiver's buffer is cold too.
        assert!(!p.read((warm.0, warm.1 + 0x1000), 1, slow));
        // Every buffer pair among the last WARM_READS read is warm: a run over them is judged.
        let mut p = ReadProbes::default();
        assert!((0..WARM_READS).all(|i| !p.read(fresh(i), 1, slow)));
        let verdicts: Vec<bool> = (0..2 * usize::from(READ_PROBES)).map(|i| p.read(fresh(i), 1, slow)).collect();
        assert!(verdicts[2 * usize::from(READ_PROBES) - 1], "{verdicts:?}");
        // One more pair pushes the oldest out, and it is cold again.
        assert!(!p.read(fresh(WARM_READS), 1, slow));
        assert!(!p.recent.contains(&fresh(0)), "the oldest pair is forgotten");
        let probes = p.probes;
        assert!(!p.read(fresh(0), 1, slow));
        assert_eq!(p.probes, probes, "a forgotten pair is cold again");
        assert!(p.read(fresh(2), 1, slow) || p.probes == probes + 1, "a remembered pair is warm");
    }

    /// A receiver that judged its single-copy reads from a peer slow has the peer send
    /// through the FIFO until the time it set, then by single copy again.
    #[test]
    fn slow_single_copy_reads_send_the_peer_through_the_fifo_for_a_while() {
        let opts = ShmOptions { single_copy_min: Some(100), ..ShmOptions::default() };
        let ts = world(2, opts);
        let len = 1 << 20;
        let slow = len as f64 / (SLOW_READ_GBS * 0.5 * 1e9);
        let mut probes = ReadProbes::default();
        // The first read between the two buffers is cold; the verdict follows two runs of warm
        // ones.
        for i in 0..1 + 2 * READ_PROBES {
            assert_eq!(ts[1].fifo_until(0, 1).load(Ordering::Relaxed), 0, "read {i}: no verdict yet");
            ts[1].judge_read(&mut probes, 0, (0x1000, 0x2000), len, slow);
        }
        let until = ts[1].fifo_until(0, 1).load(Ordering::Relaxed);
        assert!(until > monotonic_ns(), "FIFO until {until}");
        // Sends one message of `len` bytes from rank 0 to rank 1; how many single-copy sends
        // rank 1 has acknowledged by then.
        let send_hinted = |m: u8, len: usize, hints: SendHints| -> u64 {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(3).wrapping_add(m)).collect();
            let mut got = vec![0u8; len];
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: `data` outlives the wait.
                    let r = ts[0]
                        .post_send_hinted(1, Tag(u128::from(m)), unsafe { Region::from_slice(&data) }, hints)
                        .unwrap();
                    ts[0].wait(r, Instant::now() + Duration::from_secs(10)).unwrap();
                });
                // SAFETY: `got` outlives the wait.
                let r = ts[1].post_recv(0, Tag(u128::from(m)), unsafe { RegionMut::from_slice(&mut got) }).unwrap();
                ts[1].wait(r, Instant::now() + Duration::from_secs(10)).unwrap();
            });
            assert!(got == data, "message {m}");
            ts[0].lock().acks_seen[1]
        };
        let send = |m: u8, len: usize| send_hinted(m, len, SendHints::default());
        assert_eq!(send(1, len), 0, "through the FIFO while asked to");
        // A message of a call too large for the caches is not judged: by single copy while
        // the receiver asks for the FIFO, and its read not timed.
        let large_call = SendHints { call_bytes: READ_JUDGED_MAX, ..SendHints::default() };
        assert_eq!(send_hinted(4, len, large_call), 1, "a message of a large call: by single copy");
        assert!(ts[1].lock().reads[0].recent.is_empty(), "its read was not timed");
        let small_call = SendHints { call_bytes: READ_JUDGED_MAX - 1, ..SendHints::default() };
        assert_eq!(send_hinted(5, len, small_call), 1, "a message of a smaller call: through the FIFO");
        assert_eq!(send(2, READ_JUDGED_MAX), 2, "a message too long to be judged: by single copy");
        assert!(ts[1].lock().reads[0].recent.is_empty(), "the 8 MiB read was not timed");
        ts[1].fifo_until(0, 1).store(monotonic_ns() - 1, Ordering::Relaxed);
        assert_eq!(send(3, len), 3, "by single copy once the time passed");
        // The receive loop timed that read and counted it (cold: its buffers' first).
        assert_eq!(ts[1].lock().reads[0].recent.len(), 1, "the 1 MiB read was timed");
    }

    #[test]
    fn a_send_hint_lowers_the_single_copy_threshold_and_never_turns_it_on() {
        // (the transport's threshold, the hint, message bytes, single copy expected)
        let cases = [
            (Some(1 << 20), None, 4096, false),
            (Some(1 << 20), Some(1024), 4096, true),
            (Some(1 << 20), Some(1024), 1000, false),
            (Some(1000), Some(1 << 20), 4096, true),
            (None, Some(1024), 4096, false),
            (Some(1 << 20), Some(0), 0, false),
        ];
        for (own, hint, len, single) in cases {
            let ts = world(2, ShmOptions { single_copy_min: own, ..ShmOptions::default() });
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut got = vec![0u8; len];
            std::thread::scope(|s| {
                s.spawn(|| {
                    let hints = SendHints { single_copy_min: hint, ..SendHints::default() };
                    // SAFETY: `data` outlives the wait.
                    let r = ts[0].post_send_hinted(1, Tag(5), unsafe { Region::from_slice(&data) }, hints).unwrap();
                    ts[0].wait(r, Instant::now() + Duration::from_secs(10)).unwrap();
                });
                // SAFETY: `got` outlives the wait.
                let r = ts[1].post_recv(0, Tag(5), unsafe { RegionMut::from_slice(&mut got) }).unwrap();
                ts[1].wait(r, Instant::now() + Duration::from_secs(10)).unwrap();
            });
            assert!(got == data, "{own:?} {hint:?} {len}: the bytes");
            let acked = ts[0].lock().acks_seen[1];
            assert_eq!(acked, u64::from(single), "{own:?} {hint:?} {len}: single-copy sends acknowledged");
        }
    }

    #[test]
    fn sinks_see_every_byte_once_in_order_over_slots_and_single_copy() {
        // 2 slots of 256 bytes: a 10 000-byte message spans many slots; with single copy it
        // is read through the bounce buffer in pieces.
        for single_copy_min in [None, Some(100)] {
            let opts = ShmOptions { slots: 2, slot_bytes: 256, single_copy_min, ..ShmOptions::default() };
            let ts = world(2, opts);
            for len in [0usize, 1, 216, 217, 10_000, 600_000] {
                let send: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
                let got = Arc::new(Mutex::new((Vec::new(), Vec::new())));
                let g = got.clone();
                // SAFETY: the closure owns everything it uses.
                let sink = unsafe {
                    Sink::new(move |off, bytes: &[u8]| {
                        let mut g = g.lock().unwrap();
                        g.0.push((off, bytes.len()));
                        g.1.extend_from_slice(bytes);
                        Ok(())
                    })
                };
                let r = ts[1].post_recv_sink(0, Tag(3), len, sink).unwrap();
                // SAFETY: `send` outlives the waits.
                let q = ts[0].post_send(1, Tag(3), unsafe { Region::from_slice(&send) }).unwrap();
                std::thread::scope(|s| {
                    s.spawn(|| ts[0].wait(q, Instant::now() + Duration::from_secs(10)).unwrap());
                    ts[1].wait(r, Instant::now() + Duration::from_secs(10)).unwrap();
                });
                let g = got.lock().unwrap();
                assert_eq!(g.1, send, "len {len}: the bytes, in order, once");
                let mut at = 0;
                for &(off, n) in &g.0 {
                    assert_eq!(off, at, "len {len}: pieces are consecutive");
                    assert!(n % 8 == 0 || off + n == len, "len {len}: a piece of {n} splits an element");
                    at += n;
                }
                assert_eq!(at, len);
            }
        }
    }

    #[test]
    fn a_failing_sink_fails_both_sides() {
        let ts = world(2, ShmOptions::default());
        // SAFETY: the closure borrows nothing.
        let sink = unsafe { Sink::new(|_, _: &[u8]| Err(Error::internal("sink refused"))) };
        let r = ts[1].post_recv_sink(0, Tag(1), 8, sink).unwrap();
        let a = [1u8; 8];
        // SAFETY: `a` outlives the waits.
        let q = ts[0].post_send(1, Tag(1), unsafe { Region::from_slice(&a) }).unwrap();
        let e = ts[1].wait(r, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("sink refused"), "{e}");
        let mut b = [0u8; 8];
        // SAFETY: `b` outlives the wait.
        let r0 = ts[0].post_recv(1, Tag(2), unsafe { RegionMut::from_slice(&mut b) });
        let e0 = r0.and_then(|r0| ts[0].wait(r0, Instant::now() + Duration::from_secs(5))).unwrap_err();
        assert_eq!(e0.kind(), ErrorKind::Remote, "{e0}");
        let _ = ts[0].wait(q, Instant::now());
    }

    #[test]
    fn mismatch_timeout_and_abort() {
        let ts = world(2, ShmOptions::default());
        let a = [1u8; 8];
        let mut b = [0u8; 8];
        // SAFETY: buffers outlive the waits.
        let s = ts[0].post_send(1, Tag(1), unsafe { Region::from_slice(&a) }).unwrap();
        // SAFETY: as above. The mismatch shows at posting (the message is already there) or
        // at the wait.
        let e = match ts[1].post_recv(0, Tag(2), unsafe { RegionMut::from_slice(&mut b) }) {
            Err(e) => e,
            Ok(r) => ts[1].wait(r, Instant::now() + Duration::from_secs(5)).unwrap_err(),
        };
        assert_eq!(e.kind(), ErrorKind::InvalidUsage, "{e}");
        assert_eq!(b, [0u8; 8], "nothing of a mismatched message is delivered");
        let _ = ts[0].wait(s, Instant::now() + Duration::from_secs(5));
        let ts = world(2, ShmOptions::default());
        let mut c = [0u8; 8];
        // SAFETY: as above.
        let r = ts[0].post_recv(1, Tag(1), unsafe { RegionMut::from_slice(&mut c) }).unwrap();
        let e = ts[0].wait(r, Instant::now() + Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.peer(), Some(1));
        // Rank 1 sees rank 0's failure at once.
        let mut d = [0u8; 8];
        // SAFETY: as above.
        let r = ts[1].post_recv(0, Tag(1), unsafe { RegionMut::from_slice(&mut d) }).unwrap();
        let t0 = Instant::now();
        let e = ts[1].wait(r, Instant::now() + Duration::from_secs(10)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Remote, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1));
    }
}
