//! Ring reduce-scatter over mapped buffers (CUDA IPC on device buffers): the ring's p-1
//! steps, each adding one rank's share into a block's running sum, chained by one-byte
//! messages to the right neighbour.
//!
//! Steps (p ranks, blocks of n/p bytes): keys and ready rounds; then
//! - step 0: out of place, rank r copies block r of its input into its output (in place, its
//!   output is that block already): each owner's output starts as its own share;
//! - steps s = 1..p-1: rank r adds block k = r-s (mod p) of its input into rank k's output,
//!   after the left neighbour's message for step s-1 (the left neighbour wrote that output
//!   last, or started it at step 0). After step p-1 every output holds its block's
//!   reduction (divided by p for `Avg` by its last writer).
//!
//! Then a done round. Each output is read and written by one rank per step, in ring order;
//! inputs are only read, and an in-place rank's own block is its output's starting value, so
//! ranks may mix the in-place and out-of-place forms.
//!
//! Memory traffic per rank: (p-1)·(2n/p read + n/p written) (+ n/p copied out of place).
//! Messages: p-1 one-byte messages to the right, in order.
//!
//! Cost: (p-1 + 3) rounds (p-1 of one message) + (p-1)/p·n·γ, plus n/p·β_copy out of place.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, RingSignals};
use crate::op::ReduceOp;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0)
        + m.steps(Level::Flat, p - 1.0, 1.0, 0.0)
        + m.place_own(n / p)
        + m.reduce((p - 1.0) / p * n)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let block = a.count * a.dtype.size();
    let at = |k: usize| k * block..(k + 1) * block;
    let op = if a.op == ReduceOp::Avg { ReduceOp::Sum } else { a.op };
    let mut signals = RingSignals::new(ctx);
    if !a.in_place && block > 0 {
        ctx.reducer.copy(bufs.recv[r], bufs.send[r].slice(at(r)))?;
    }
    signals.done(0, p)?;
    for s in 1..p {
        let k = (r + p - s) % p;
        signals.wait_left(s)?;
        crate::mapped::still_on(ctx)?;
        if block > 0 {
            let sum = bufs.recv[k];
            ctx.reducer.reduce(a.dtype, op, sum, sum.as_region(), bufs.send[r].slice(at(k)))?;
            if s == p - 1 && a.op == ReduceOp::Avg {
                ctx.reducer.divide(a.dtype, sum, p)?;
            }
        }
        signals.done(s, p)?;
    }
    signals.finish()
}
