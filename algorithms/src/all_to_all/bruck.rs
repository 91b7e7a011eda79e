//! Bruck all-to-all: ceil(lg p) steps instead of p-1, for small blocks.
//!
//! Steps (p ranks, n bytes sent per rank, blocks of n/p):
//! 1. Rotate: slot i of a working copy takes the block for rank r+i (mod p).
//! 2. For k = 0.. while 2^k < p: send every slot whose index has bit k set, packed into one
//!    message, to rank r+2^k; receive the same slots from rank r-2^k in their place. A
//!    block for rank r+i thus travels i's binary digits, one hop per set bit.
//! 3. Unrotate: slot i now holds the block from rank r-i, which goes to place r-i.
//!
//! Bytes on the wire per rank: about n/2 per step, ceil(lg p)·n/2 in all (more than
//! pairwise's (p-1)/p·n) in ceil(lg p) messages instead of p-1.
//!
//! Cost: ceil(lg p)·(α + n/2·β) plus local copies of about 2n per step: for small blocks,
//! where latency dominates; pairwise wins for large ones. In place the same, through the same
//! scratch copy: priced as out of place (`registry::predict`).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::ring_index;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let n = m.n();
    let lg = m.log2_ceil();
    // Per step: pack the outgoing slots, send about half the blocks, unpack what arrived.
    m.steps(Level::Flat, lg, 1.0, n / 2.0) + m.copy(lg * n + 2.0 * n)
}

/// Runs Bruck all-to-all.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    if count == 0 {
        return Ok(());
    }
    let bb = count * es;
    let blk = |j: usize| j * bb..(j + 1) * bb;
    if p == 1 {
        return if a.in_place { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    // Working copy, then a packing buffer and an unpacking buffer of up to p/2+1 blocks each.
    let half = p.div_ceil(2);
    let scratch = ctx.reducer.scratch((p + 2 * half) * bb)?;
    let w = scratch.region().slice(0..p * bb);
    let out_buf = scratch.region().slice(p * bb..(p + half) * bb);
    let in_buf = scratch.region().slice((p + half) * bb..(p + 2 * half) * bb);
    let src = if a.in_place { a.recv.as_region() } else { a.send };
    for i in 0..p {
        ctx.reducer.copy(w.slice(blk(i)), src.slice(blk(ring_index(r, i as isize, p))))?;
    }
    let mut d = 1;
    let mut k = 0;
    while d < p {
        let moving: Vec<usize> = (0..p).filter(|i| i & d != 0).collect();
        for (j, &i) in moving.iter().enumerate() {
            ctx.reducer.copy(out_buf.slice(blk(j)), w.slice(blk(i)).as_region())?;
        }
        let len = moving.len() * bb;
        let sq = ctx.send(ring_index(r, d as isize, p), k, out_buf.slice(0..len).as_region())?;
        let rq = ctx.recv(ring_index(r, -(d as isize), p), k, in_buf.slice(0..len))?;
        let waited = ctx.wait(rq).and_then(|_| ctx.wait(sq));
        if let Err(e) = waited {
            // Requests on the scratch may still be posted: fail the transport before it goes.
            ctx.net.fail(e.clone());
            return Err(e);
        }
        for (j, &i) in moving.iter().enumerate() {
            ctx.reducer.copy(w.slice(blk(i)), in_buf.slice(blk(j)).as_region())?;
        }
        d *= 2;
        k += 1;
    }
    for i in 0..p {
        ctx.place(a.recv.slice(blk(ring_index(r, -(i as isize), p))), w.slice(blk(i)).as_region(), a.recv.len())?;
    }
    Ok(())
}
