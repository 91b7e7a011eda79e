//! Mapped broadcast: every rank copies the root's vector straight into its own output,
//! through peer memory the transport maps (the handshake around it is in `mapped.rs` at the
//! crate root).
//!
//! Steps (p ranks, n bytes): keys and ready rounds; then each rank but the root copies the
//! root's input into its output, all at once (the root copies its own when out of place);
//! then a done round (the root keeps its buffer until every rank has read it). Where the
//! host's outputs total over 32 MiB they are written with streaming stores.
//!
//! Memory traffic: n read from the root's buffer and n written, per rank, in parallel: no
//! chain or tree of hops. Where some rank's buffers cannot be mapped, the automatic choice
//! runs the next-best algorithm instead; forced, it is an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n·β_copy.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, CHECK_BYTES};
use crate::partition::chunks;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let p = m.p() as f64;
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(m.n())
}

/// Runs mapped broadcast; an InvalidUsage error on every rank when some rank's buffers cannot
/// be mapped (a forced algorithm that cannot run is an error; the automatic choice falls
/// back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    if ctx.rank == a.root && a.in_place {
        return Ok(());
    }
    let src = bufs.send[a.root];
    let streaming = crate::mapped::streaming(ctx, a.recv.len(), false);
    for c in chunks(0..a.recv.len(), crate::mapped::piece(ctx, CHECK_BYTES)) {
        crate::mapped::still_on(ctx)?;
        crate::mapped::copy(ctx, streaming, a.recv.slice(c.clone()), src.slice(c))?;
    }
    Ok(())
}
