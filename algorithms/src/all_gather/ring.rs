//! Ring all-gather, pipelined in chunks.
//!
//! Steps (p ranks, blocks of n/p bytes, n the gathered size): each rank first places its own
//! block (a local copy when out of place). In `p-1` steps it sends to its right neighbour the
//! block it received last (its own at step 0) and receives the next one from its left,
//! straight into place.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received.
//!
//! Cost: (p-1)·α + (p-1)/p·n·β.

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};
use crate::partition::bytes;
use crate::ring::all_gather_phase;

/// Runs ring all-gather.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let seg = move |j: usize| j * count..(j + 1) * count;
    if !a.in_place {
        ctx.reducer.copy(a.recv.slice(bytes(&seg(r), a.dtype.size())), a.send)?;
    }
    if count == 0 || p == 1 {
        return Ok(());
    }
    all_gather_phase(ctx, a.dtype, &seg, a.recv, r, 0, false, Vec::new())
}
