//! Pairwise-exchange all-to-all.
//!
//! Steps (p ranks, n bytes sent per rank, blocks of n/p): out of place, the own block is
//! copied locally, then every receive (from rank r-k for k = 1..p-1) and every send (to rank
//! r+k) is posted at once, in that order, so the transport moves all p-1 exchanges side by
//! side. In place, ranks pair up instead: at step k rank r swaps block j = (k - r) mod p
//! with rank j (who at the same step pairs with r), sending from a one-block scratch copy
//! and receiving into the block itself, so no block is overwritten before it is sent and
//! the scratch is one block, not the whole buffer.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received.
//!
//! Cost: (p-1)·α + (p-1)/p·n·β.

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, ring_index};

/// Runs pairwise all-to-all.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    if count == 0 {
        return Ok(());
    }
    let blk = |j: usize| bytes(&(j * count..(j + 1) * count), es);
    if a.in_place {
        if p == 1 {
            return Ok(());
        }
        let scratch = ctx.reducer.scratch(blk(0).len())?;
        let tmp = scratch.region().slice(0..blk(0).len());
        for k in 0..p {
            let j = ring_index(k, -(r as isize), p);
            if j == r {
                continue;
            }
            ctx.reducer.copy(tmp, a.recv.slice(blk(j)).as_region())?;
            let rq = ctx.recv(j, k, a.recv.slice(blk(j)))?;
            let sq = ctx.send(j, k, tmp.as_region())?;
            ctx.wait(rq)?;
            ctx.wait(sq)?;
        }
        return Ok(());
    }
    ctx.reducer.copy(a.recv.slice(blk(r)), a.send.slice(blk(r)))?;
    let mut reqs = Vec::with_capacity(2 * (p - 1));
    for k in 1..p {
        let from = ring_index(r, -(k as isize), p);
        reqs.push(ctx.recv(from, 0, a.recv.slice(blk(from)))?);
    }
    for k in 1..p {
        let to = ring_index(r, k as isize, p);
        reqs.push(ctx.send(to, 0, a.send.slice(blk(to)))?);
    }
    ctx.wait_all(&reqs)
}
