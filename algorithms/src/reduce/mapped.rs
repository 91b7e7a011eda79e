//! Mapped reduce: every rank reduces one slice of the vector straight from every rank's
//! input into the root's output, through peer memory the transport maps (the handshake
//! around it is in `mapped.rs` at the crate root), so the p ranks share the reduction.
//!
//! Steps (p ranks, n bytes): keys and ready rounds; then rank r, a 64-byte line at a time,
//! reads slice r of the p inputs, reduces them in rank order in registers and stores the
//! line into slice r of the root's output (`Avg` divided by p on the way); then a done
//! round.
//!
//! Memory traffic per rank: n read (n/p from each input), n/p written. Where some rank's
//! buffers cannot be mapped, the automatic choice runs the next-best algorithm instead;
//! forced, it is an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n/p·β_copy + (p-1)/p·n·γ(f32) + n·γ_fused,
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
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(n / p) + m.reduce_fused(p, n)
}

/// Runs mapped reduce; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, es) = (ctx.size, a.dtype.size());
    let out = bufs.recv[a.root];
    // In place at the root, its output is its input: each line is read before it is written
    // (plain stores); otherwise the output was not just read, and large ones stream.
    let in_place = std::ptr::eq(out.as_mut_ptr().cast_const(), bufs.send[a.root].as_ptr());
    let streaming = crate::mapped::streaming(ctx, a.count * es, in_place);
    let per = (crate::mapped::piece(ctx, crate::mapped::CHECK_BYTES) / es).max(1);
    for c in chunks(block(a.count, p, ctx.rank), per) {
        crate::mapped::still_on(ctx)?;
        let b = bytes(&c, es);
        let inputs: Vec<_> = bufs.send.iter().map(|s| s.slice(b.clone())).collect();
        ctx.reducer.reduce_into_all(a.dtype, a.op, &[out.slice(b)], &inputs, streaming)?;
    }
    Ok(())
}
