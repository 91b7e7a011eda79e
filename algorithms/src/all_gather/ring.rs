//! Ring all-gather, pipelined in chunks.
//!
//! Steps (p ranks, blocks of n/p bytes, n the gathered size): each rank first places its own
//! block (out of place: a local copy, made while the first send of it goes out; streaming
//! stores over 32 MiB of outputs on the host, [`Ctx::place`]). In `p-1` steps it sends to
//! its right neighbour the block it received last (its own at step 0) and receives the next
//! one from its left, straight into place.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received.
//!
//! Cost: (p-1)·α + (p-1)/p·n·β + n/p·β_copy. The own block's copy (out of place) runs while
//! the first send goes out: in cache it hides behind it, out of cache both draw on memory.
//! The formula charges it in full and calibration fitted the factors to that; in place it
//! saves the copy's out-of-cache share ([`Model::out_of_cache_share`]) only. (Measured on 2
//! ranks over shm: in place took 0.84-0.97x out of place's time from 64 KiB to 1 MiB, 0.6-0.74x
//! from 16 MiB.)

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, chunks, ring_index};
use crate::ring::{all_gather_phase, SegmentSends};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let block = n / p;
    let saved = if m.in_place { m.out_of_cache_share() } else { 0.0 };
    m.steps(Level::Flat, p - 1.0, m.chunks(block), block) + m.copy(block) * (1.0 - saved)
}

/// Runs ring all-gather.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let seg = move |j: usize| j * count..(j + 1) * count;
    if count == 0 || p == 1 {
        return if a.in_place || count == 0 { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    if a.in_place {
        return all_gather_phase(ctx, a.dtype, &seg, a.recv, r, 0, false, Vec::new());
    }
    // Out of place, the own block goes out straight from the input, so the right neighbour
    // can start reading it while this rank copies it into place.
    let mut first: SegmentSends = Vec::new();
    for c in chunks(0..count, ctx.chunk_elems(a.dtype)) {
        first.push((r, ctx.send(ring_index(r, 1, p), 0, a.send.slice(bytes(&c, es)))?));
    }
    ctx.place(a.recv.slice(bytes(&seg(r), es)), a.send, a.recv.len())?;
    all_gather_phase(ctx, a.dtype, &seg, a.recv, r, 0, true, first)
}
