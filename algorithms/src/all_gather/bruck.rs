//! Bruck all-gather: ceil(lg p) steps for any number of ranks.
//!
//! Steps (p ranks, blocks of n/p bytes, n the gathered size): a rank keeps a working copy
//! whose slot i holds the block of rank r+i (mod p), starting with its own in slot 0. At
//! step k (distance d = 2^k) it sends its first min(d, p-d) slots to rank r-d and receives
//! as many from rank r+d into slots d.., so after ceil(lg p) steps it holds all p blocks;
//! a final local rotation puts them in rank order.
//!
//! Bytes on the wire per rank: (p-1)/p · n, in ceil(lg p) messages.
//!
//! Cost: ceil(lg p)·α + (p-1)/p·n·β, plus a local copy of n: latency-optimal for any p
//! (recursive doubling needs two extra steps when p is not a power of two). In place the same,
//! through the same scratch copy: priced as out of place (`registry::predict`).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, ring_index};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let lg = m.log2_ceil();
    m.steps(Level::Flat, lg, 1.0, (p - 1.0) / p * n / lg) + m.copy(2.0 * n)
}

/// Runs Bruck all-gather.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let blk = |j: usize| bytes(&(j * count..(j + 1) * count), es);
    if count == 0 || p == 1 {
        return if a.in_place || count == 0 { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    let scratch = ctx.reducer.scratch(a.recv.len())?;
    let w = scratch.region().slice(0..a.recv.len());
    let slots = |s: std::ops::Range<usize>| w.slice(blk(s.start).start..blk(s.end - 1).end);
    let own = if a.in_place { a.recv.slice(blk(r)).as_region() } else { a.send };
    ctx.reducer.copy(slots(0..1), own)?;
    let mut d = 1;
    let mut k = 0;
    while d < p {
        let n = d.min(p - d);
        let sq = ctx.send(ring_index(r, -(d as isize), p), k, slots(0..n).as_region())?;
        let rq = ctx.recv(ring_index(r, d as isize, p), k, slots(d..d + n))?;
        let waited = ctx.wait(rq).and_then(|_| ctx.wait(sq));
        if let Err(e) = waited {
            // Requests on the scratch may still be posted: fail the transport before it goes.
            ctx.net.fail(e.clone());
            return Err(e);
        }
        d *= 2;
        k += 1;
    }
    // Slot i holds rank r+i's block.
    ctx.place(a.recv.slice(blk(r).start..a.recv.len()), slots(0..p - r).as_region(), a.recv.len())?;
    if r > 0 {
        ctx.place(a.recv.slice(0..blk(r).start), slots(p - r..p).as_region(), a.recv.len())?;
    }
    Ok(())
}
