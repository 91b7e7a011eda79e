//! Ring reduce-scatter, pipelined in chunks.
//!
//! Steps (p ranks, n bytes of input, blocks of n/p): in `p-1` steps each rank sends a partial
//! block to its right neighbour and reduces the one arriving from its left with its own
//! contribution; the block it finishes last is its own, written straight to the output.
//! Partials live in scratch, so the input is never modified, in place or not.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received.
//!
//! Cost: (p-1)·α + (p-1)/p·n·(β + γ).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::ring::reduce_scatter_phase;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let block = n / p;
    m.steps(Level::Flat, p - 1.0, m.chunks(block), block) + m.reduce((p - 1.0) * block)
}

/// Runs ring reduce-scatter.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (r, count) = (ctx.rank, a.count);
    let seg = move |j: usize| j * count..(j + 1) * count;
    let scratch = ctx.reducer.scratch(a.send.len())?;
    let work = scratch.region().slice(0..a.send.len());
    let (sends, _) = reduce_scatter_phase(ctx, a.dtype, a.op, &seg, a.send, work, a.recv, r, false)?;
    let reqs: Vec<_> = sends.into_iter().map(|(_, q)| q).collect();
    ctx.wait_all(&reqs)
}
