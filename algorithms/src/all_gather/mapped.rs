//! Mapped all-gather: every rank writes its block straight into every rank's output, through
//! peer memory the transport maps (the handshake around it is in `mapped.rs` at the crate
//! root).
//!
//! Steps (p ranks, n bytes gathered, blocks of n/p): keys and ready rounds; then rank r,
//! piece by piece (64 KiB, so a piece read once stays in cache for its p copies), copies its
//! input into block r of every output; then a done round. Out of place, where the host's outputs total
//! over 32 MiB, they are written with streaming stores.
//!
//! Memory traffic per rank: n/p read, n written (the receivers' reads are gone: the sender
//! pushes). Where some rank's buffers cannot be mapped, the automatic choice runs the next-best
//! algorithm instead; forced, it is an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n·β_copy ((p-1)/p·n·β_copy in place, where the
//! own block is already in place).

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::PeerBuffers;
use crate::partition::chunks;

/// Bytes per piece.
const PIECE: usize = 64 << 10;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy((p - 1.0) / p * n) + m.place_own(n / p)
}

/// Runs mapped all-gather; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (r, es) = (ctx.rank, a.dtype.size());
    let block = a.count * es;
    // In place, the inputs are blocks of the outputs: no other memory for cached stores to
    // evict, and they measured faster (4 ranks, 16 MiB: 1479-1683 us against 1700-1885).
    let streaming = crate::mapped::streaming(ctx, block * ctx.size, a.in_place);
    let piece = crate::mapped::piece(ctx, PIECE);
    for (i, c) in chunks(0..block, piece).enumerate() {
        if i % crate::mapped::pieces_per_check(piece) == 0 {
            crate::mapped::still_on(ctx)?;
        }
        let src = a.send.slice(c.clone());
        let at = r * block + c.start..r * block + c.end;
        for (j, out) in bufs.recv.iter().enumerate() {
            if j == r && a.in_place {
                continue;
            }
            crate::mapped::copy(ctx, streaming, out.slice(at.clone()), src)?;
        }
    }
    Ok(())
}
