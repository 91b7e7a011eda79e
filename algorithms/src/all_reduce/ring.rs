//! Ring all-reduce: a ring reduce-scatter followed by a ring all-gather, pipelined in chunks.
//!
//! Steps (p ranks, n bytes): the vector is cut into p segments of about n/p bytes. In
//! `p-1` reduce-scatter steps each rank sends one segment to its right neighbour and reduces
//! the one arriving from its left; rank r then owns the full reduction of segment r+1. In
//! `p-1` all-gather steps the owned segments travel round the ring into place. The first
//! owned chunk starts its all-gather journey as soon as it is reduced, so the two phases
//! overlap.
//!
//! Bytes on the wire per rank: 2(p-1)/p · n sent and as many received.
//!
//! Cost: 2(p-1)·α + 2(p-1)/p·n·β + (p-1)/p·n·γ (plus one α per extra chunk of pipelining).
//! Bandwidth-optimal; latency grows linearly in p, so small vectors go to recursive doubling.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{block, bytes, ring_index};
use crate::ring::{all_gather_phase, reduce_scatter_phase};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let seg = n / p;
    m.steps(Level::Flat, 2.0 * (p - 1.0), m.chunks(seg), seg) + m.reduce((p - 1.0) / p * n)
}

/// Runs ring all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let p = ctx.size;
    let count = a.count;
    let seg = move |j: usize| block(count, p, j);
    let owned = ring_index(ctx.rank, 1, p);
    let out = a.recv.slice(bytes(&seg(owned), a.dtype.size()));
    let (rs_sends, forwarded) = reduce_scatter_phase(ctx, a.dtype, a.op, &seg, a.send, a.recv, out, owned, true)?;
    all_gather_phase(ctx, a.dtype, &seg, a.recv, owned, p - 1, true, rs_sends)?;
    ctx.wait_all(&forwarded)
}
