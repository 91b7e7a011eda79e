//! Mapped all-reduce: every rank reduces its own slice straight from every rank's input and
//! writes the result straight into every rank's output, through peer memory the transport
//! maps (the handshake around it is in `mapped.rs` at the crate root).
//!
//! Steps (p ranks, n bytes): keys and ready rounds; then rank r, a 64-byte line at a time,
//! reads slice r of the p inputs, reduces them in rank order in registers and stores the
//! line into slice r of the p outputs (`Avg` divided by p on the way); then a done round.
//! Out of place, where the host's outputs total over 32 MiB, they are written with streaming
//! stores.
//!
//! Memory traffic per rank: n read (n/p from each input) and n written (n/p into each
//! output): the least any all-reduce can move, and no bytes through a FIFO or the kernel.
//! Where some rank's buffers cannot be mapped (processes whose buffers are not
//! `SharedBuffer`s), the automatic choice runs the next-best algorithm instead; forced, it is
//! an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n·β_copy + (p-1)/p·n·γ(f32) + n·γ_fused,
//! where γ_fused is what the fused kernel spends on the data type beyond f32 (see
//! `Profile::fused`).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::PeerBuffers;
use crate::partition::{block, bytes, chunks};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(n) + m.reduce_fused(p, n)
}

/// Runs mapped all-reduce; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, es) = (ctx.size, a.dtype.size());
    // Every rank writes every output: streaming stores only where none is also an input
    // (a rank in place), whose lines the schedule just read (ranks may mix the forms).
    let any_in_place = bufs.same.iter().any(|&s| s);
    let streaming = crate::mapped::streaming(ctx, a.count * es, a.in_place || any_in_place);
    let per = (crate::mapped::piece(ctx, crate::mapped::CHECK_BYTES) / es).max(1);
    for c in chunks(block(a.count, p, ctx.rank), per) {
        crate::mapped::still_on(ctx)?;
        let b = bytes(&c, es);
        // Every input read once and every output written once.
        let outs: Vec<_> = bufs.recv.iter().map(|r| r.slice(b.clone())).collect();
        let inputs: Vec<_> = bufs.send.iter().map(|s| s.slice(b.clone())).collect();
        ctx.reducer.reduce_into_all(a.dtype, a.op, &outs, &inputs, streaming)?;
    }
    Ok(())
}
