//! Mapped reduce-scatter: every rank reduces its block straight from every rank's input,
//! through peer memory the transport maps (the handshake around it is in `mapped.rs` at the
//! crate root).
//!
//! Steps (p ranks, n bytes of input, blocks of n/p): keys and ready rounds; then rank r, a
//! 64-byte line at a time, reads block r of the p inputs, reduces them in rank order in
//! registers and stores the line into its output (`Avg` divided by p on the way); then a
//! done round (peers read this rank's input).
//!
//! Memory traffic per rank: n/p read from each of the p inputs, n/p written.
//! Where some rank's buffers cannot be mapped, the automatic choice runs the next-best
//! algorithm instead; forced, it is an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n/p·β_copy + (p-1)/p·n·γ(f32) + n·γ_fused,
//! where γ_fused is what the fused kernel spends on the data type beyond f32 (see
//! `Profile::fused`).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::PeerBuffers;
use crate::partition::{bytes, chunks};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(n / p) + m.reduce_fused(p, n)
}

/// Runs mapped reduce-scatter; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (r, es) = (ctx.rank, a.dtype.size());
    let streaming = crate::mapped::streaming(ctx, a.count * es, a.in_place);
    let per = (crate::mapped::piece(ctx, crate::mapped::CHECK_BYTES) / es).max(1);
    let out = bufs.recv[r];
    for c in chunks(0..a.count, per) {
        crate::mapped::still_on(ctx)?;
        let at = bytes(&(r * a.count + c.start..r * a.count + c.end), es);
        // In place the output is this rank's input block: each line is read
        // before it is written.
        let inputs: Vec<_> = bufs.send.iter().map(|s| s.slice(at.clone())).collect();
        ctx.reducer.reduce_into_all(a.dtype, a.op, &[out.slice(bytes(&c, es))], &inputs, streaming)?;
    }
    Ok(())
}
