//! Mapped all-reduce: every rank reduces its own slice straight from every rank's input and
//! writes the result straight into every rank's output, through peer memory the transport
//! maps (the handshake around it is in `mapped.rs` at the crate root).
//!
//! Steps (p ranks, n bytes): keys and ready rounds; then rank r, a 64-byte line at a time,
//! reads slice r of the p inputs, reduces them in rank order in registers and stores the
//! line into slice r of the p outputs (`Avg` goes through a 16 KiB piece, to divide); then a
//! done round. Outputs over 16 MiB
//! are written with streaming stores out of place.
//!
//! Memory traffic per rank: n read (n/p from each input) and n written (n/p into each
//! output): the least any all-reduce can move, and no bytes through a FIFO or the kernel.
//! Where some rank's buffers cannot be mapped (processes whose buffers are not
//! `SharedBuffer`s), the automatic choice runs the next-best algorithm instead; forced, it is
//! an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n·β_copy + (p-1)/p·n·γ.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, PIECE_BYTES};
use crate::op::ReduceOp;
use crate::partition::{block, bytes, chunks};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(n) + m.reduce((p - 1.0) / p * n)
}

/// Runs mapped all-reduce; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, es) = (ctx.size, a.dtype.size());
    let streaming = crate::mapped::streaming(a.count * es, a.in_place);
    let piece = ctx.reducer.scratch(PIECE_BYTES)?;
    // Pieces: in cache for `Avg`, which divides a reduced piece before copying it out;
    // otherwise large, as the kernel works a line at a time anyway.
    let piece_bytes = if a.op == ReduceOp::Avg { PIECE_BYTES } else { crate::mapped::CHECK_BYTES };
    let per = (piece_bytes / es).max(1);
    let mut outs = bufs.recv.clone();
    for c in chunks(block(a.count, p, ctx.rank), per) {
        crate::mapped::still_on(ctx)?;
        let b = bytes(&c, es);
        for (o, r) in outs.iter_mut().zip(&bufs.recv) {
            *o = r.slice(b.clone());
        }
        let input = |j: usize| bufs.send[j].slice(b.clone());
        if a.op == ReduceOp::Avg {
            // Reduce, divide, then copy out.
            let acc = piece.region().slice(0..b.len());
            ctx.reducer.reduce(a.dtype, a.op, acc, input(0), input(1))?;
            for j in 2..p {
                ctx.reducer.reduce(a.dtype, a.op, acc, acc.as_region(), input(j))?;
            }
            ctx.reducer.divide(a.dtype, acc, p)?;
            for out in &outs {
                crate::mapped::copy(ctx, streaming, *out, acc.as_region())?;
            }
            continue;
        }
        // Every input read once and every output written once, a line at a time.
        let inputs: Vec<_> = (0..p).map(input).collect();
        ctx.reducer.reduce_into_all(a.dtype, a.op, &outs, &inputs, streaming)?;
    }
    Ok(())
}
