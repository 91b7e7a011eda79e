//! Ring all-reduce over mapped buffers (CUDA IPC on device buffers): the ring's schedule, with
//! each step a read of the left neighbour's buffer instead of a message, and a one-byte
//! message to the right neighbour when a step's work is done. Each rank reads one peer
//! only, so where ranks sit on separate GPUs every link carries the same load.
//!
//! Steps (p ranks, n bytes, chunk k = block k of p): keys and ready rounds; then
//! - reduce-scatter phase, steps s = 0..p-2: rank r writes `out_r[k] = in_r[k] + X` for
//!   k = r-s-1 (mod p), where X is the left neighbour's `in[k]` at s = 0 and its `out[k]`
//!   after (its partial sum of step s-1, which its message says is done); after step p-2,
//!   `out_r[r+1]` holds the whole reduction (divided by p for `Avg`);
//! - one round with every rank (a barrier): no rank overwrites a chunk in the next phase
//!   that its right neighbour may still read in this one;
//! - all-gather phase, steps t = 0..p-2: rank r copies `out_left[r-t]` into `out_r[r-t]`,
//!   after the left neighbour's message for its step t-1;
//!
//! then a done round. In place (in = out) is the same schedule: a rank's own chunk r is read
//! by its right neighbour at step 0 and written by the rank only after the barrier.
//!
//! Memory traffic per rank: (p-1)·(2n/p read + n/p written) reducing, (p-1)·(n/p read + n/p
//! written) copying. Messages: 2(p-2) one-byte messages to the right, in order, plus the
//! barrier's and the handshake's rounds.
//!
//! Cost: (2(p-1) + 4) rounds (2(p-1) of one message) + (p-1)/p·n·β_copy + (p-1)/p·n·γ.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, RingSignals};
use crate::op::ReduceOp;
use crate::partition::{block, bytes};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 4.0, p - 1.0, 0.0)
        + m.steps(Level::Flat, 2.0 * (p - 1.0), 1.0, 0.0)
        + m.copy((p - 1.0) / p * n)
        + m.reduce((p - 1.0) / p * n)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, r, es) = (ctx.size, ctx.rank, a.dtype.size());
    let left = (r + p - 1) % p;
    let chunk = |k: usize| bytes(&block(a.count, p, k % p), es);
    let op = if a.op == ReduceOp::Avg { ReduceOp::Sum } else { a.op };
    let mut signals = RingSignals::new(ctx);
    for s in 0..p - 1 {
        let k = (r + 2 * p - s - 1) % p;
        signals.wait_left(s)?;
        crate::mapped::still_on(ctx)?;
        let c = chunk(k);
        if !c.is_empty() {
            let theirs =
                if s == 0 { bufs.send[left].slice(c.clone()) } else { bufs.recv[left].as_region().slice(c.clone()) };
            ctx.reducer.reduce(a.dtype, op, bufs.recv[r].slice(c.clone()), bufs.send[r].slice(c), theirs)?;
        }
        if s == p - 2 && a.op == ReduceOp::Avg {
            let whole = chunk(r + 1);
            if !whole.is_empty() {
                ctx.reducer.divide(a.dtype, bufs.recv[r].slice(whole), p)?;
            }
        }
        signals.done(s, p - 1)?;
    }
    signals.barrier()?;
    for t in 0..p - 1 {
        let j = (r + p - t) % p;
        signals.wait_left(t)?;
        crate::mapped::still_on(ctx)?;
        let c = chunk(j);
        if !c.is_empty() {
            ctx.reducer.copy(bufs.recv[r].slice(c.clone()), bufs.recv[left].as_region().slice(c))?;
        }
        signals.done(t, p - 1)?;
    }
    signals.finish()
}
