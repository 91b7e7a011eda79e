//! Ring all-gather over mapped buffers (CUDA IPC on device buffers): the ring's schedule, with
//! each step a read of the left neighbour's buffer instead of a message, and a one-byte
//! message to the right neighbour when a step's copy is done. Each rank reads one peer only,
//! so where ranks sit on separate GPUs every link carries the same load.
//!
//! Steps (p ranks, blocks of n/p bytes): keys and ready rounds; out of place, rank r copies
//! its input into block r of its output; then steps t = 0..p-2: rank r copies block r-t-1
//! (mod p) from the left neighbour (its input at t = 0, its output after, once its message
//! for step t-1 says the block is there) into its own output; then a done round.
//!
//! Memory traffic per rank: (p-1)·n/p read from the left neighbour and as much written (n/p
//! more of each out of place). Messages: p-2 one-byte messages to the right, in order.
//!
//! Cost: (p-1 + 3) rounds (p-1 of one message) + n·β_copy ((p-1)/p·n·β_copy in place).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, RingSignals};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0)
        + m.steps(Level::Flat, p - 1.0, 1.0, 0.0)
        + m.copy((p - 1.0) / p * n)
        + m.place_own(n / p)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let left = (r + p - 1) % p;
    let block = a.count * a.dtype.size();
    let at = |j: usize| j * block..(j + 1) * block;
    if !a.in_place && block > 0 {
        ctx.reducer.copy(bufs.recv[r].slice(at(r)), a.send)?;
    }
    let mut signals = RingSignals::new(ctx);
    for t in 0..p - 1 {
        let j = (r + 2 * p - t - 1) % p;
        signals.wait_left(t)?;
        crate::mapped::still_on(ctx)?;
        if block > 0 {
            let theirs = if t == 0 { bufs.send[left] } else { bufs.recv[left].as_region().slice(at(j)) };
            ctx.reducer.copy(bufs.recv[r].slice(at(j)), theirs)?;
        }
        signals.done(t, p - 1)?;
    }
    signals.finish()
}
