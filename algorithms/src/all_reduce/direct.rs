//! Direct all-reduce: every rank reduces its own slice from every rank's input at once, then
//! every finished slice goes straight to every rank (the schedule lives in `direct.rs` at the crate root).
//!
//! Steps (p ranks, n bytes), per chunk of each slice: receive the chunk of this rank's slice
//! from the p-1 peers, reduce it with the local one, send the result to the p-1 peers and
//! receive theirs into place. Two message steps per chunk whatever p is.
//!
//! Bytes on the wire per rank: 2(p-1)/p · n sent and as many received (as the ring).
//!
//! Cost: 2·α_concurrent(p-1) + 2(p-1)/p·n·β + (p-1)/p·n·γ, where α_concurrent(p-1) is the
//! latency of p-1 messages posted at once (on shared memory, close to one α). Best where
//! peers' buffers are readable directly (shared memory with single-copy reads): each chunk
//! is read from its peer right after the peer wrote it, while it is still in cache.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{block, bytes};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let part = (p - 1.0) / p * n;
    m.steps(Level::Flat, 2.0, (p - 1.0) * m.chunks(n / p), part) + m.reduce(part)
}

/// Runs direct all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (p, count) = (ctx.size, a.count);
    let seg = move |j: usize| block(count, p, j);
    let out = a.recv.slice(bytes(&seg(ctx.rank), a.dtype.size()));
    crate::direct::run(ctx, a.dtype, a.op, &seg, a.send, out, Some(a.recv), a.in_place)
}
