//! What the `mapped` algorithms share: every rank maps every peer's input and output into its
//! own address space ([`Transport::map_peer_memory`](oxccl_transport::Transport::map_peer_memory)) and moves the bytes itself, with plain
//! loads and stores, instead of through messages. Each collective's schedule is in its own
//! file (`all_reduce/mapped.rs`, ...); this is the handshake around them.
//!
//! 1. **Keys** (one round, all peers at once): every rank sends every peer the keys of its
//!    input and output ([`Transport::memory_key`](oxccl_transport::Transport::memory_key)). With every key in hand, every rank knows
//!    the same thing: whether some key cannot be mapped by some rank (an address in another
//!    process: a buffer that is not an oxccl `SharedBuffer`, or no key at all). Then every
//!    rank runs the fallback algorithm (or, where `mapped` was forced, fails with the reason),
//!    having paid this one round.
//! 2. **Ready** (one round): each rank maps the peers' keys and tells them whether it could.
//!    Unless every rank could, every rank falls back (or fails) alike. Once a rank has seen every
//!    rank's keys, every rank is inside this call, so its buffers may be read and written.
//! 3. The collective's schedule: each rank reads and writes only the parts of the buffers it
//!    owns for this call, so no two ranks touch the same bytes and nothing waits in between.
//! 4. **Done** (one round of one-byte messages: whether this rank's part succeeded): a rank
//!    returns only when every rank has finished writing into its output and reading its
//!    input, even when its own part failed (its caller may free the buffers then), and fails
//!    if any rank's part did. Large outputs are written with streaming stores, fenced before
//!    this round's messages go out.
//! 5. **When the transport fails** (a peer died, an abort), no round can say who is done, so
//!    each rank also publishes whether it may be touching peers' buffers
//!    ([`Transport::begin_peer_access`](oxccl_transport::Transport::begin_peer_access), from
//!    just before the ready round until its stores are fenced), and checks its peers' failure
//!    flags between pieces of its schedule. A rank whose call fails after it said it was ready
//!    returns only once no live peer still touches its buffers, at most
//!    [`PEER_ACCESS_GRACE`] later (a running peer notices within a piece): its caller may free
//!    or reuse them then.
//!
//! Cost: 3 rounds of p-1 concurrent small messages, plus the memory traffic of the schedule
//! (each file gives its own), with no system call and no copy through a FIFO.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use oxccl_transport::{Error, MemoryKey, Region, RegionMut, ReqId, Result};

use crate::ctx::{CollArgs, Ctx};

const STEP_KEYS: usize = 0xfff0;
const STEP_READY: usize = 0xfff1;
const STEP_DONE: usize = 0xfff2;
const STEP_RING_BARRIER: usize = 0xfff3;
/// Steps of the rings over mapped buffers: `STEP_RING + phase * RING_PHASE + step`.
const STEP_RING: usize = 0xe000;
const RING_PHASE: usize = 0x800;
const KEYS_BYTES: usize = 8 + 2 * MemoryKey::BYTES;

/// Bytes an all-to-all swap or an all-gather takes at a time: small enough that a piece read
/// once is still in cache when it is written out.
pub(crate) const PIECE_BYTES: usize = 16 << 10;

/// Calls whose outputs on this host (every rank's output together) exceed this many bytes
/// use streaming stores where the destination was not just read (out of place): the outputs
/// would not stay in cache anyway, and written through the cache they would evict the inputs
/// the other ranks are still reading (measured, benches/RESULTS.md "seventh session": an
/// all-reduce of 16 MiB over 4 ranks on 2 cores ran 3766-6628 us with cached stores, 2812-2927
/// with streaming ones; at or under 32 MiB of outputs, streaming was 0-40% slower). In place,
/// the lines written are in cache already (the schedule read them), and streaming stores
/// would only evict them.
pub(crate) const STREAMING_MIN_HOST_BYTES: usize = 32 << 20;

/// Whether a call writing `bytes` into each rank's output streams its stores (see
/// [`STREAMING_MIN_HOST_BYTES`], [`Ctx::outputs_stream`]); the ranks of a mapped call share
/// one host.
pub(crate) fn streaming(ctx: &Ctx<'_>, bytes: usize, in_place: bool) -> bool {
    !in_place && ctx.outputs_stream(bytes)
}

static SCHEDULES_RUN: AtomicU64 = AtomicU64::new(0);
static FAIL_PART: AtomicUsize = AtomicUsize::new(0);

/// Testing: the next mapped schedule that rank `rank` of some world runs fails before it
/// moves a byte, as a bug in it would (an internal error); every rank of the call must then
/// fail too, and none may return while a peer still writes into its buffers. Threads of one
/// process share the setting; another process's ranks never see it.
#[doc(hidden)]
pub fn fail_next_part_of(rank: usize) {
    FAIL_PART.store(rank + 1, Ordering::Relaxed);
}
static STALL_PART: AtomicUsize = AtomicUsize::new(0);
static STALL_MS: AtomicU64 = AtomicU64::new(0);

/// Testing: the next time rank `rank` of some world looks at the transport inside a mapped
/// schedule and finds nothing wrong, it then stalls for `ms` milliseconds before it moves on,
/// as a descheduled process would: a peer that fails meanwhile must not return while this
/// rank may still write into its buffers. Threads of one process share the setting.
#[doc(hidden)]
pub fn stall_next_check_of(rank: usize, ms: u64) {
    STALL_MS.store(ms, Ordering::Relaxed);
    STALL_PART.store(rank + 1, Ordering::Release);
}

/// Testing: whether the stall set by [`stall_next_check_of`] has yet to begin (its rank has
/// not reached the check).
#[doc(hidden)]
pub fn stall_pending() -> bool {
    STALL_PART.load(Ordering::Acquire) != 0
}

static FALLBACKS: AtomicU64 = AtomicU64::new(0);
static LAST_MAP_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Why this process last failed to map a peer's buffer (the transport's error: for device
/// memory, the driver's answer to `cuIpcOpenMemHandle`), for diagnostics and tests: each
/// such call ran another way (staged, or the fallback algorithm).
pub fn last_map_error() -> Option<String> {
    LAST_MAP_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// How many calls in this process chose the mapped algorithm and ran its fallback because
/// some rank's buffers could not be mapped: for diagnostics and tests.
pub fn fallbacks() -> u64 {
    FALLBACKS.load(Ordering::Relaxed)
}

/// How many calls in this process ran a mapped schedule (rather than falling back): for
/// diagnostics and for tests that must know which path ran.
pub fn schedules_run() -> u64 {
    SCHEDULES_RUN.load(Ordering::Relaxed)
}

/// Every rank's input and output, mapped here (this rank's own are the call's regions).
pub(crate) struct PeerBuffers {
    /// `send[j]`: rank j's input.
    pub send: Vec<Region>,
    /// `recv[j]`: rank j's output.
    pub recv: Vec<RegionMut>,
    /// `same[j]`: rank j's input and output are one region (its call is in place, for the
    /// collectives whose in-place form passes one buffer). Ranks may differ in this, and
    /// every rank knows every rank's, from the keys.
    pub same: Vec<bool>,
}

/// Sends `mine` to every peer and receives each peer's message of the same length, at `step`.
/// Returns every rank's message (this rank's own too) in rank order, `mine.len()` bytes each,
/// in one buffer: one allocation per round, none for an empty round.
fn swap_all(ctx: &Ctx<'_>, step: usize, mine: &[u8]) -> Result<Vec<u8>> {
    let (p, r, n) = (ctx.size, ctx.rank, mine.len());
    let mut got = vec![0u8; p * n];
    let mut exchange = || -> Result<()> {
        let mut reqs: Vec<ReqId> = Vec::with_capacity(2 * p);
        for q in (0..p).filter(|&q| q != r) {
            // SAFETY: `got` outlives the waits below; on any error the transport is failed
            // (below), which drops the receive before `got` goes.
            let region = unsafe { RegionMut::from_slice(&mut got[q * n..(q + 1) * n]) };
            reqs.push(ctx.recv(q, step, region)?);
        }
        // SAFETY: as above, for `mine`.
        let src = unsafe { Region::from_slice(mine) };
        for q in (0..p).filter(|&q| q != r) {
            reqs.push(ctx.send(q, step, src)?);
        }
        ctx.wait_all(&reqs)
    };
    exchange().inspect_err(|e| ctx.net.fail(e.clone()))?;
    got[r * n..(r + 1) * n].copy_from_slice(mine);
    Ok(got)
}

/// Rounds 1 and 2 of the module docs: every rank's buffers mapped here, or (on every rank
/// alike) why some rank cannot map some other rank's.
///
/// Sets `exposed` once this rank has told its peers it is ready: from then on they may write
/// into its buffers.
fn exchange(ctx: &Ctx<'_>, a: &CollArgs, exposed: &mut bool) -> Result<std::result::Result<PeerBuffers, String>> {
    let (p, r) = (ctx.size, ctx.rank);
    let (send, recv) = (a.send, a.recv);
    // What each rank's regions must hold: the root alone reads a broadcast's input and
    // writes a reduction's output; the other collectives have the same shapes everywhere.
    let n = a.count * a.dtype.size();
    let expected = |q: usize| match ctx.collective {
        crate::ctx::Collective::Broadcast => (if q == a.root { n } else { 0 }, n),
        crate::ctx::Collective::Reduce => (n, if q == a.root { n } else { 0 }),
        _ => (send.len(), recv.len()),
    };
    // Host keys travel without their (empty) device part: the keys round is most of what a
    // small mapped call costs. Every rank must pass the same kind of memory, so the lengths
    // agree (a rank that does not fails the round as a mismatch).
    let key_len = if on_device(ctx) { MemoryKey::BYTES } else { MemoryKey::HOST_BYTES };
    let mut keys_buf = [0u8; KEYS_BYTES];
    let mine = &mut keys_buf[..8 + 2 * key_len];
    if let (Some(s), Some(d)) = (ctx.net.memory_key(send), ctx.net.memory_key(recv.as_region())) {
        mine[0] = 1;
        mine[8..8 + key_len].copy_from_slice(&s.to_bytes()[..key_len]);
        mine[8 + key_len..].copy_from_slice(&d.to_bytes()[..key_len]);
    }
    let stride = mine.len();
    let all = swap_all(ctx, STEP_KEYS, mine)?;
    let msg = |j: usize| &all[j * stride..(j + 1) * stride];
    let key = |j: usize, i: usize| {
        let at = 8 + i * key_len;
        let mut full = [0u8; MemoryKey::BYTES];
        full[..key_len].copy_from_slice(&msg(j)[at..at + key_len]);
        MemoryKey::from_bytes(&full)
    };
    let keyless: Vec<usize> = (0..p).filter(|&j| msg(j)[0] != 1).collect();
    if !keyless.is_empty() {
        return Ok(Err(format!("the transport of rank(s) {keyless:?} cannot share their buffers")));
    }
    let keys: Vec<(MemoryKey, MemoryKey)> = (0..p).map(|j| (key(j, 0), key(j, 1))).collect();
    // A plain address (fd < 0) is mappable only by ranks of the same process: every rank sees
    // every key, so every rank reaches the same answer here.
    // Empty regions (a broadcast's input off the root, a reduction's output) need no mapping.
    let pid = |j: usize| keys[j].0.pid;
    let plain = |k: &MemoryKey| k.fd < 0 && k.len > 0 && k.device.is_none();
    let unmappable: Vec<usize> = (0..p)
        .filter(|&j| (0..p).any(|i| i != j && (plain(&keys[j].0) || plain(&keys[j].1)) && pid(i) != pid(j)))
        .collect();
    if !unmappable.is_empty() {
        return Ok(Err(format!(
            "rank(s) {unmappable:?} passed ordinary memory, which ranks in other processes cannot map"
        )));
    }
    // Host memory on some ranks and GPU memory on others: no reducer touches both.
    let on_gpu = |j: usize| [keys[j].0, keys[j].1].iter().any(|k| k.device.is_some());
    let gpu: Vec<usize> = (0..p).filter(|&j| on_gpu(j)).collect();
    let sized = |j: usize| keys[j].0.len > 0 || keys[j].1.len > 0;
    if !gpu.is_empty() && (0..p).any(|j| sized(j) && !on_gpu(j)) {
        return Err(Error::invalid_usage(format!(
            "rank(s) {gpu:?} passed GPU memory and the others host memory: every rank must pass the same kind"
        )));
    }
    if !gpu.is_empty() {
        note_shared_gpu(&keys, r);
    }
    let same = keys.iter().map(|(s, d)| s == d && s.len > 0).collect();
    let mut bufs = PeerBuffers { send: vec![send; p], recv: vec![recv; p], same };
    let mut ok = true;
    for q in (0..p).filter(|&q| q != r) {
        let (ks, kr) = keys[q];
        let (want_s, want_r) = expected(q);
        if ks.len as usize != want_s || kr.len as usize != want_r {
            return Err(Error::invalid_usage(format!(
                "rank {q} passed buffers of {} and {} bytes where this rank expects {want_s} and {want_r}",
                ks.len, kr.len
            ))
            .with_peer(q));
        }
        let map = |k: &MemoryKey| {
            if k.len == 0 {
                Ok(RegionMut::empty())
            } else {
                ctx.net.map_peer_memory(q, k)
            }
        };
        match (map(&ks), map(&kr)) {
            (Ok(s), Ok(d)) => {
                bufs.send[q] = s.as_region();
                bufs.recv[q] = d;
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(rank = r, peer = q, error = %e, "mapped: cannot map a peer's buffer; falling back");
                *LAST_MAP_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("rank {r}, peer {q}: {e}"));
                ok = false;
            }
        }
    }
    // Published before the round: a peer that fails from here on waits for this rank to
    // stop touching its buffers (see `try_run`).
    ctx.net.begin_peer_access()?;
    *exposed = ok;
    let ready = swap_all(ctx, STEP_READY, &[u8::from(ok)])?;
    // One byte from every rank.
    let failed: Vec<usize> = (0..p).filter(|&j| ready[j] != 1).collect();
    if failed.is_empty() {
        Ok(Ok(bufs))
    } else {
        Ok(Err(format!(
            "rank(s) {failed:?} could not map every peer's shared buffers (same user, ptrace allowed? see their \
             OXCCL_DEBUG=DEBUG log)"
        )))
    }
}

/// Says once per process (at INFO) when ranks in other processes use this rank's GPU and no
/// MPS daemon is seen: the GPU then switches between the processes' contexts in every call,
/// about 200 us per small call on an H200 (benches/GPU.md), where under MPS a call takes
/// about 20 us.
fn note_shared_gpu(keys: &[(MemoryKey, MemoryKey)], r: usize) {
    static SAID: std::sync::Once = std::sync::Once::new();
    // Every call on device buffers passes here: once said, no look at the file system.
    if SAID.is_completed() {
        return;
    }
    let device = |j: usize| keys[j].0.device.or(keys[j].1.device).map(|d| d.ordinal);
    let Some(mine) = device(r) else { return };
    let sharing = (0..keys.len()).filter(|&j| device(j) == Some(mine) && keys[j].0.pid != keys[r].0.pid).count();
    if sharing == 0 {
        return;
    }
    let pipe = std::env::var_os("CUDA_MPS_PIPE_DIRECTORY").unwrap_or_else(|| "/tmp/nvidia-mps".into());
    if std::path::Path::new(&pipe).join("control").exists() {
        return;
    }
    SAID.call_once(|| {
        tracing::info!(
            rank = r,
            "{sharing} rank(s) in other processes share cuda:{mine} with this one and no MPS daemon is seen \
             ({}): the GPU switches between the processes' contexts in every call (about 200 us per small \
             call); `nvidia-cuda-mps-control -d` runs them in one",
            std::path::Path::new(&pipe).display()
        );
    });
}

/// Round 4 of the module docs, after this rank's part of the schedule ended with `part`:
/// returns once every rank has finished with every buffer (its own queued work on them
/// first). Peers write into this rank's buffers until they are done, so even a rank whose
/// part failed waits for the round before it returns (its caller may free the buffers); the
/// round carries each rank's outcome, and a failure anywhere fails the call on every rank
/// (the others' outputs lack that rank's share). Where the transport itself failed, the
/// round fails at once: peers see the failure within [`CHECK_BYTES`] of their schedule.
fn finish(ctx: &Ctx<'_>, part: Result<()>) -> Result<()> {
    // What this rank queued (a GPU's kernels and copies) touches peers' buffers too: it ends
    // before the round, whatever the part's outcome; if it cannot, the transport fails.
    let fenced = ctx.reducer.fence(ctx.deadline).inspect_err(|e| ctx.net.fail(e.clone()));
    if fenced.is_ok() {
        ctx.net.end_peer_access();
    }
    let part = part.and(fenced);
    let round = swap_all(ctx, STEP_DONE, &[u8::from(part.is_ok())]);
    part?;
    // One byte from every rank.
    let outcomes = round?;
    match (0..ctx.size).find(|&j| outcomes[j] != 1) {
        None => Ok(()),
        Some(j) => Err(Error::remote(
            j,
            format!(
                "rank {j} failed its part of the mapped {} (its own error says why): this rank's output lacks its share",
                ctx.collective
            ),
        )),
    }
}

/// Rounds 1 to 4 of the module docs: `Ok(Ok(()))` once `schedule` ran over the mapped
/// buffers, `Ok(Err(why))` (on every rank alike) when some rank cannot map another's.
///
/// A call that fails after this rank said it was ready returns only once no peer still
/// touches its buffers (each noticed the failure within a piece of its schedule, or exited;
/// at most [`PEER_ACCESS_GRACE`]): its caller may free or reuse them then.
fn try_run(ctx: &Ctx<'_>, a: &CollArgs, schedule: Schedule) -> Result<std::result::Result<(), String>> {
    /// Ends this rank's access on every way out, unwinding included.
    struct Access<'a>(&'a dyn oxccl_transport::Transport);
    impl Drop for Access<'_> {
        fn drop(&mut self) {
            self.0.end_peer_access();
        }
    }
    let mut exposed = false;
    let out = {
        let _access = Access(ctx.net);
        run_exposing(ctx, a, schedule, &mut exposed)
    };
    if let (Err(e), true) = (&out, exposed) {
        if let Err(stuck) = ctx.net.wait_peer_access_ended(std::time::Instant::now() + PEER_ACCESS_GRACE) {
            tracing::warn!(
                rank = ctx.rank,
                "{} #{} failed ({e}), and a peer may still write into this rank's buffers: {stuck}",
                ctx.collective,
                ctx.seq
            );
        }
    }
    out
}

/// How long a rank whose mapped call failed waits for its peers to stop touching its
/// buffers. A running peer notices within a piece of its schedule (1 MiB); only a
/// stopped one takes longer.
pub const PEER_ACCESS_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn run_exposing(
    ctx: &Ctx<'_>,
    a: &CollArgs,
    schedule: Schedule,
    exposed: &mut bool,
) -> Result<std::result::Result<(), String>> {
    match exchange(ctx, a, exposed)? {
        Ok(bufs) => {
            SCHEDULES_RUN.fetch_add(1, Ordering::Relaxed);
            let injected = FAIL_PART.compare_exchange(ctx.rank + 1, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok();
            let part = if injected {
                Err(Error::internal("injected failure of this rank's part (mapped::fail_next_part_of)"))
            } else {
                schedule(ctx, a, &bufs)
            };
            finish(ctx, part).map(Ok)
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Runs `schedule` over the mapped buffers, or fails with InvalidUsage (on every rank alike)
/// saying why they cannot be mapped: what a forced `mapped` does, as a forced algorithm that
/// cannot run a call is an error, never a silent switch.
pub(crate) fn run_forced(ctx: &Ctx<'_>, a: &CollArgs, schedule: Schedule) -> Result<()> {
    // Nothing to map in an empty call or a world of one: every collective's result there is
    // all-reduce's (nothing, or the input copied to the output).
    if crate::all_reduce::trivial(ctx, a)? {
        return Ok(());
    }
    try_run(ctx, a, schedule)?.map_err(|why| {
        if on_device(ctx) {
            return Error::invalid_usage(format!(
                "{} on device buffers moves them through CUDA IPC, but {why}: every rank must be on one host, \
                 over the shared-memory transport",
                ctx.collective
            ));
        }
        Error::invalid_usage(format!(
            "the mapped algorithm was forced for {}, but {why}: allocate the buffers with \
             oxccl::SharedBuffer (oxcclMemAlloc in C) on every rank, or let oxccl choose",
            ctx.collective
        ))
    })
}

/// Runs `schedule` over the mapped buffers when every rank can map every other's, else
/// `fallback` (the same on every rank), saying which ran: `Ok(Some(true))` the mapped
/// schedule, `Ok(Some(false))` the fallback because some rank's buffers could not be mapped
/// (the same answer on every rank), `Ok(None)` the fallback for a call with nothing to map
/// (empty, or a world of one).
fn run_or_fall_back(ctx: &Ctx<'_>, a: &CollArgs, schedule: Schedule, fallback: &Fallback<'_>) -> Result<Option<bool>> {
    if a.count == 0 || ctx.size == 1 {
        return fallback(ctx, a).map(|_| None);
    }
    match try_run(ctx, a, schedule)? {
        Ok(()) => Ok(Some(true)),
        Err(why) => {
            FALLBACKS.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(rank = ctx.rank, "{} #{}: mapped falls back: {why}", ctx.collective, ctx.seq);
            fallback(ctx, a).map(|_| Some(false))
        }
    }
}

/// The one-byte messages of a ring over mapped buffers (`*/mapped_ring.rs`): after each step
/// a rank fences its work and tells its right neighbour, which waits for that before it reads
/// what the step wrote. The transports match a pair's messages in posting order, and the
/// right neighbour receives every message but the last step's, which is not sent. Sends are
/// waited for only at the end of a phase: a rank waiting for its send to land while its
/// right neighbour waits for its own would close the ring into a deadlock.
pub(crate) struct RingSignals<'c, 'a> {
    ctx: &'c Ctx<'a>,
    left: usize,
    right: usize,
    phase: usize,
    sends: Vec<ReqId>,
}

/// What every signal carries.
static SIGNAL: [u8; 1] = [1];

impl<'c, 'a> RingSignals<'c, 'a> {
    pub(crate) fn new(ctx: &'c Ctx<'a>) -> Self {
        let p = ctx.size;
        RingSignals { ctx, left: (ctx.rank + p - 1) % p, right: (ctx.rank + 1) % p, phase: 0, sends: Vec::new() }
    }

    fn step(&self, s: usize) -> usize {
        STEP_RING + self.phase * RING_PHASE + (s % RING_PHASE)
    }

    /// Before step `s`: waits for the left neighbour's message that its step `s - 1` is
    /// done (nothing before step 0).
    pub(crate) fn wait_left(&mut self, s: usize) -> Result<()> {
        if s == 0 {
            return Ok(());
        }
        let mut byte = [0u8];
        // SAFETY: `byte` outlives the wait; on an error the transport is failed, which drops
        // the receive.
        let req = self.ctx.recv(self.left, self.step(s - 1), unsafe { RegionMut::from_slice(&mut byte) })?;
        self.ctx.wait(req).inspect_err(|e| self.ctx.net.fail(e.clone()))
    }

    /// After step `s` of `steps`: fences this rank's work (a GPU's queued kernels), then
    /// tells the right neighbour, unless it was the last step.
    pub(crate) fn done(&mut self, s: usize, steps: usize) -> Result<()> {
        self.ctx.reducer.fence(self.ctx.deadline)?;
        if s + 1 < steps {
            // SAFETY: a static byte.
            let req = self.ctx.send(self.right, self.step(s), unsafe { Region::from_slice(&SIGNAL) })?;
            self.sends.push(req);
        }
        Ok(())
    }

    /// Waits for this phase's signals to land.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let sends = std::mem::take(&mut self.sends);
        self.ctx.wait_all(&sends).inspect_err(|e| self.ctx.net.fail(e.clone()))
    }

    /// Between phases: every rank's work of the phase is done (each step's `done` fenced it)
    /// before any goes on; the next phase's messages have steps of their own.
    pub(crate) fn barrier(&mut self) -> Result<()> {
        self.finish()?;
        swap_all(self.ctx, STEP_RING_BARRIER, &[1])?;
        self.phase += 1;
        Ok(())
    }
}

/// Runs the ring over mapped buffers of `ctx.collective` (all-reduce, all-gather and
/// reduce-scatter have one) if every rank can map every other's buffers, as [`try_run_collective`] does the
/// direct one: `Ok(Ok(()))` once done, `Ok(Err(why))` on every rank alike when some rank
/// cannot map, having moved nothing; `None` for a collective without such a ring.
pub fn try_run_ring_collective(ctx: &Ctx<'_>, a: &CollArgs) -> Option<Result<std::result::Result<(), String>>> {
    use crate::ctx::Collective as C;
    let schedule: Schedule = match ctx.collective {
        C::AllReduce => crate::all_reduce::mapped_ring::schedule,
        C::AllGather => crate::all_gather::mapped_ring::schedule,
        C::ReduceScatter => crate::reduce_scatter::mapped_ring::schedule,
        _ => return None,
    };
    Some(try_run_unless_trivial(ctx, a, schedule))
}

/// Bytes a schedule moves between looks at the transport ([`still_on`]).
pub(crate) const CHECK_BYTES: usize = 1 << 20;

/// Whether this call's buffers are GPU memory (the reducer is the device's).
fn on_device(ctx: &Ctx<'_>) -> bool {
    ctx.reducer.memory_kind() != oxccl_transport::MemoryKind::Host
}

/// How many bytes a schedule hands the reducer at a time, where it would take `host` bytes
/// of host memory: GPU memory goes whole, as one kernel or copy is queued per piece and
/// the GPU runs them without looking at the transport (a kernel ends on its own: every
/// input is in place before the schedule starts).
pub(crate) fn piece(ctx: &Ctx<'_>, host: usize) -> usize {
    if on_device(ctx) {
        usize::MAX / 2
    } else {
        host
    }
}

/// Pieces of `piece` bytes between looks at the transport.
pub(crate) fn pieces_per_check(piece: usize) -> usize {
    (CHECK_BYTES / piece).max(1)
}

/// Fails if the transport has (an abort from another thread, a peer found dead): a schedule
/// moves bytes without waiting on any message, so it looks every [`CHECK_BYTES`], and an
/// abort ends even a call of gigabytes within a fraction of a millisecond.
pub(crate) fn still_on(ctx: &Ctx<'_>) -> Result<()> {
    ctx.net.progress(std::time::Duration::ZERO)?;
    ctx.net.check_peer_access()?;
    if STALL_PART.load(Ordering::Relaxed) == ctx.rank + 1
        && STALL_PART.compare_exchange(ctx.rank + 1, 0, Ordering::Acquire, Ordering::Relaxed).is_ok()
    {
        std::thread::sleep(std::time::Duration::from_millis(STALL_MS.load(Ordering::Relaxed)));
    }
    Ok(())
}

/// Copies with streaming stores when `streaming`, else plainly.
pub(crate) fn copy(ctx: &Ctx<'_>, streaming: bool, dst: RegionMut, src: Region) -> Result<()> {
    if streaming {
        ctx.reducer.copy_streaming(dst, src)
    } else {
        ctx.reducer.copy(dst, src)
    }
}

/// A collective's schedule over mapped buffers.
type Schedule = fn(&Ctx<'_>, &CollArgs, &PeerBuffers) -> Result<()>;

/// The schedule of `ctx.collective`'s mapped algorithm.
fn schedule_of(ctx: &Ctx<'_>) -> Result<Schedule> {
    use crate::ctx::Collective as C;
    Ok(match ctx.collective {
        C::AllReduce => crate::all_reduce::mapped::schedule,
        C::AllGather => crate::all_gather::mapped::schedule,
        C::ReduceScatter => crate::reduce_scatter::mapped::schedule,
        C::AllToAll => crate::all_to_all::mapped::schedule,
        C::Broadcast => crate::broadcast::mapped::schedule,
        C::Reduce => crate::reduce::mapped::schedule,
        c => return Err(Error::internal(format!("{c} has no mapped algorithm"))),
    })
}

/// Runs the mapped algorithm of `ctx.collective` if every rank can map every other's
/// buffers: `Ok(Ok(()))` once done (or for a call with nothing to map, after its trivial
/// copy), `Ok(Err(why))` on every rank alike when some rank cannot, having moved nothing, so
/// the caller may move the bytes another way (the communicator stages device buffers through
/// host memory then).
pub fn try_run_collective(ctx: &Ctx<'_>, a: &CollArgs) -> Result<std::result::Result<(), String>> {
    try_run_unless_trivial(ctx, a, schedule_of(ctx)?)
}

/// `schedule` through [`try_run`], except for a call with nothing to map (empty, or a world
/// of one), which gets its trivial copy.
fn try_run_unless_trivial(ctx: &Ctx<'_>, a: &CollArgs, schedule: Schedule) -> Result<std::result::Result<(), String>> {
    if crate::all_reduce::trivial(ctx, a)? {
        return Ok(Ok(()));
    }
    try_run(ctx, a, schedule)
}

/// What runs a call whose buffers cannot all be mapped: an algorithm ([`crate::AlgoFn`]
/// coerces to it), or the communicator's choice among several, made inside the call.
pub type Fallback<'a> = dyn Fn(&Ctx<'_>, &CollArgs) -> Result<()> + 'a;

/// Runs the mapped algorithm of `ctx.collective` with `fallback` for worlds whose buffers
/// cannot all be mapped (the communicator passes the best algorithm after `mapped`). Says
/// whether the mapped schedule ran (`Some(true)`), or the fallback because some rank's
/// buffers could not be mapped (`Some(false)`, the same on every rank, so callers may adapt
/// in step), or because there was nothing to map (`None`: an empty call, a world of one).
pub fn run_with_fallback(ctx: &Ctx<'_>, a: &CollArgs, fallback: &Fallback<'_>) -> Result<Option<bool>> {
    run_or_fall_back(ctx, a, schedule_of(ctx)?, fallback)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use oxccl_transport::{LoopbackTransport, Region, RegionMut};

    use crate::ctx::{CollArgs, Collective, Ctx};
    use crate::dtype::DataType;
    use crate::kernels::HostReducer;
    use crate::op::ReduceOp;

    /// Runs the ring over mapped buffers of `coll` on a world of `p` threads (host memory,
    /// mapped by address), each rank's `(send, recv)` given by `bufs(rank)`; returns the
    /// outputs.
    fn ring_world(
        coll: Collective,
        p: usize,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        in_place: impl Fn(usize) -> bool + Sync,
        bufs: impl Fn(usize) -> (Vec<u8>, Vec<u8>) + Sync,
    ) -> Vec<Vec<u8>> {
        let nets = LoopbackTransport::world(p);
        let hosts = vec![0; p];
        std::thread::scope(|s| {
            let hs: Vec<_> = nets
                .iter()
                .enumerate()
                .map(|(r, net)| {
                    let (bufs, hosts, in_place) = (&bufs, &hosts, &in_place);
                    s.spawn(move || {
                        let in_place = in_place(r);
                        let reducer = HostReducer::new();
                        let (mut send, mut recv) = bufs(r);
                        let ctx = Ctx {
                            net,
                            reducer: &reducer,
                            rank: r,
                            size: p,
                            seq: 1,
                            collective: coll,
                            deadline: Instant::now() + Duration::from_secs(20),
                            chunk_bytes: 1 << 16,
                            pipeline_depth: 2,
                            recv_sink: false,
                            single_copy_min: 0,
                            call_bytes: 0,
                            hosts,
                            fingerprint: 7,
                        };
                        let block = count * dtype.size();
                        // SAFETY: the vectors outlive the call; in place, the input is the
                        // output's block (all-gather) or the whole output (all-reduce), or the
                        // output is the input's block (reduce-scatter: the whole buffer is
                        // given as `recv`, and the output returned is its block).
                        let a = unsafe {
                            let whole = RegionMut::from_slice(&mut recv);
                            let own = r * block..(r + 1) * block;
                            let (send_region, recv_region) = match (in_place, coll) {
                                (false, _) => (Region::from_slice(&send), whole),
                                (true, Collective::AllGather) => (whole.as_region().slice(own), whole),
                                (true, Collective::ReduceScatter) => (whole.as_region(), whole.slice(own)),
                                (true, _) => (whole.as_region(), whole),
                            };
                            send.clear();
                            CollArgs { send: send_region, recv: recv_region, in_place, count, dtype, op, root: 0 }
                        };
                        let ran = super::try_run_ring_collective(&ctx, &a).expect("a ring for this collective");
                        assert_eq!(ran.expect("no error"), Ok(()), "rank {r}: the ring ran over mapped buffers");
                        if in_place && coll == Collective::ReduceScatter {
                            recv[r * block..(r + 1) * block].to_vec()
                        } else {
                            recv
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn f64s(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn from_f64s(b: &[u8]) -> Vec<f64> {
        b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn ring_all_reduce_over_mapped_buffers_gives_the_closed_form() {
        for p in [2, 3, 4, 5] {
            for count in [0, 1, 3, 7, 1000, 1009] {
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max] {
                    for in_place in [false, true] {
                        // Rank r holds (r + 1) * (i + 1) - 2r: sums, means and maxima are
                        // exact in f64.
                        let fill = |r: usize| {
                            let v: Vec<f64> = (0..count).map(|i| ((r + 1) * (i + 1)) as f64 - 2.0 * r as f64).collect();
                            let junk = vec![-77.0; count];
                            if in_place {
                                (Vec::new(), f64s(&v))
                            } else {
                                (f64s(&v), f64s(&junk))
                            }
                        };
                        let outs = ring_world(Collective::AllReduce, p, count, DataType::F64, op, |_| in_place, fill);
                        for (r, out) in outs.iter().enumerate() {
                            let got = from_f64s(out);
                            for (i, g) in got.iter().enumerate() {
                                let vals = (0..p).map(|q| ((q + 1) * (i + 1)) as f64 - 2.0 * q as f64);
                                let want = match op {
                                    ReduceOp::Sum => vals.sum::<f64>(),
                                    ReduceOp::Avg => vals.sum::<f64>() / p as f64,
                                    _ => vals.fold(f64::MIN, f64::max),
                                };
                                assert_eq!(*g, want, "p {p} count {count} {op:?} in place {in_place}: rank {r} [{i}]");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ring_all_gather_over_mapped_buffers_gives_every_block() {
        for p in [2, 3, 4, 5] {
            for count in [0, 1, 7, 1009] {
                for in_place in [false, true] {
                    let mine = |r: usize| (0..count).map(|i| (r * 100_000 + i) as f64).collect::<Vec<f64>>();
                    let fill = |r: usize| {
                        let mut out = vec![-1.0; count * p];
                        if in_place {
                            out[r * count..(r + 1) * count].copy_from_slice(&mine(r));
                            (Vec::new(), f64s(&out))
                        } else {
                            (f64s(&mine(r)), f64s(&out))
                        }
                    };
                    let outs =
                        ring_world(Collective::AllGather, p, count, DataType::F64, ReduceOp::Sum, |_| in_place, fill);
                    let want: Vec<f64> = (0..p).flat_map(mine).collect();
                    for (r, out) in outs.iter().enumerate() {
                        assert_eq!(from_f64s(out), want, "p {p} count {count} in place {in_place}: rank {r}");
                    }
                }
            }
        }
    }
    #[test]
    fn ring_reduce_scatter_over_mapped_buffers_gives_each_block_its_reduction() {
        // Every rank in place, none, and a mix (the form is each rank's own choice).
        type Form = fn(usize) -> bool;
        let forms: [(&str, Form); 3] = [("out of place", |_| false), ("in place", |_| true), ("mixed", |r| r % 2 == 1)];
        for p in [2, 3, 4, 5] {
            for count in [0, 1, 7, 1009] {
                for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Min] {
                    for (form, in_place) in forms {
                        // Rank r's input element i (of p blocks): (r + 1) * (i + 1) - 3r.
                        let value = |q: usize, i: usize| ((q + 1) * (i + 1)) as f64 - 3.0 * q as f64;
                        let fill = |r: usize| {
                            let v: Vec<f64> = (0..count * p).map(|i| value(r, i)).collect();
                            if in_place(r) {
                                (Vec::new(), f64s(&v))
                            } else {
                                (f64s(&v), f64s(&vec![-77.0; count]))
                            }
                        };
                        let outs = ring_world(Collective::ReduceScatter, p, count, DataType::F64, op, in_place, fill);
                        for (r, out) in outs.iter().enumerate() {
                            let got = from_f64s(out);
                            assert_eq!(got.len(), count, "{form}: rank {r}");
                            for (i, g) in got.iter().enumerate() {
                                let vals = (0..p).map(|q| value(q, r * count + i));
                                let want = match op {
                                    ReduceOp::Sum => vals.sum::<f64>(),
                                    ReduceOp::Avg => vals.sum::<f64>() / p as f64,
                                    _ => vals.fold(f64::MAX, f64::min),
                                };
                                assert_eq!(*g, want, "p {p} count {count} {op:?} {form}: rank {r} [{i}]");
                            }
                        }
                    }
                }
            }
        }
    }
}
