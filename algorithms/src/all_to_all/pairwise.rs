//! Pairwise-exchange all-to-all.
//!
//! Steps (p ranks, n bytes sent per rank, blocks of n/p): the own block is copied locally;
//! then every receive (from rank r-k for k = 1..p-1) and every send (to rank r+k) is posted
//! at once, in that order, so the transport moves all p-1 exchanges side by side. In place,
//! the input is first copied to scratch so no block is overwritten before it is sent.
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
    let scratch;
    let src = if a.in_place && p > 1 {
        scratch = ctx.reducer.scratch(a.send.len())?;
        let s = scratch.region().slice(0..a.send.len());
        ctx.reducer.copy(s, a.send)?;
        s.as_region()
    } else {
        a.send
    };
    if !a.in_place {
        ctx.reducer.copy(a.recv.slice(blk(r)), src.slice(blk(r)))?;
    }
    let mut reqs = Vec::with_capacity(2 * (p - 1));
    for k in 1..p {
        let from = ring_index(r, -(k as isize), p);
        reqs.push(ctx.recv(from, 0, a.recv.slice(blk(from)))?);
    }
    for k in 1..p {
        let to = ring_index(r, k as isize, p);
        reqs.push(ctx.send(to, 0, src.slice(blk(to)))?);
    }
    ctx.wait_all(&reqs)
}
