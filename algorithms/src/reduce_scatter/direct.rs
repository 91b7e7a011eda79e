//! Direct reduce-scatter: every rank receives its block from each peer and reduces them all
//! with its own at once (the schedule lives in `direct.rs` at the crate root).
//!
//! Steps (p ranks, n bytes of input, blocks of n/p), per chunk of the block: receive the
//! chunk from the p-1 peers (each sends the chunk of its input that the receiver owns),
//! reduce them with the local one into the output. One message step per chunk.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received (as the ring).
//!
//! Cost: α_concurrent(p-1) + (p-1)/p·n·(β + γ). Unlike the ring, nothing is reduced twice
//! in scratch and forwarded: each input byte is read once, by its block's owner.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let part = (p - 1.0) / p * n;
    m.steps(Level::Flat, 1.0, (p - 1.0) * m.chunks(n / p), part) + m.reduce(part)
}

/// Runs direct reduce-scatter.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let count = a.count;
    let seg = move |j: usize| j * count..(j + 1) * count;
    crate::direct::run(ctx, a.dtype, a.op, &seg, a.send, a.recv, None, a.in_place)
}
