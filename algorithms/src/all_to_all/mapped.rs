//! Mapped all-to-all: every rank writes each block of its input straight into its place in
//! the receiver's output, through peer memory the transport maps (the handshake around it is
//! in `mapped.rs` at the crate root).
//!
//! Steps (p ranks, n bytes per rank, blocks of n/p): keys and ready rounds; then, for each
//! pair of ranks that both call out of place, rank r copies its block j into block r of
//! rank j's output (and its own block into place); for each pair where either calls in place
//! (ranks may differ; the keys tell every rank which), the pair's two blocks (block j of
//! rank r, block r of rank j) are exchanged through a 16 KiB piece, the lower rank of the
//! pair moving the first half of them and the upper rank the second, at once; then a done
//! round. Out of place, where the host's outputs total over 32 MiB, they are written with
//! streaming stores.
//!
//! Memory traffic per rank: n read, n written. Where some rank's buffers cannot be mapped, the
//! automatic choice runs the next-best algorithm instead; forced, it is an error.
//!
//! Cost: 3 rounds of p-1 concurrent messages + n·β_copy; in place, each pair's two blocks
//! pass through a scratch piece, each rank moving half of them in three copies:
//! 3/2·(p-1)/p·n·β_copy.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::mapped::{PeerBuffers, PIECE_BYTES};
use crate::partition::chunks;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let copied = if m.in_place { 1.5 * (p - 1.0) / p * n } else { n };
    m.steps(Level::Flat, 3.0, p - 1.0, 0.0) + m.copy(copied)
}

/// Runs mapped all-to-all; an InvalidUsage error on every rank when some rank's buffers cannot be
/// mapped (a forced algorithm that cannot run is an error; the automatic choice falls back).
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    crate::mapped::run_forced(ctx, a, schedule)
}

/// The part of a pair's blocks (of `block` bytes, elements of `es` bytes) that rank `r`
/// exchanges with rank `q` when either is in place: the lower rank the first half, the upper
/// the rest, split on an element and, where the blocks are large enough, on a cache line (so
/// the two ranks never write one line). Both work at once: with one rank per pair moving
/// both blocks, as before, 2 ranks in place ran on one core.
fn swap_half(r: usize, q: usize, block: usize, es: usize) -> std::ops::Range<usize> {
    let half = block / es / 2 * es;
    let mid = if half >= 64 && es <= 64 { half / 64 * 64 } else { half };
    if r < q {
        0..mid
    } else {
        mid..block
    }
}

/// The schedule over mapped buffers.
pub(crate) fn schedule(ctx: &Ctx<'_>, a: &CollArgs, bufs: &PeerBuffers) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let block = a.count * a.dtype.size();
    let streaming = crate::mapped::streaming(ctx, block * p, a.in_place);
    let at = |j: usize, c: &std::ops::Range<usize>| j * block + c.start..j * block + c.end;
    let piece = crate::mapped::piece(ctx, crate::mapped::CHECK_BYTES);
    // Out of place, every block is read once and written once, in large pieces: the own
    // block, then this rank's block for each peer that is not in place either, starting with
    // the next rank so ranks do not all write into one output at once.
    for d in 0..p {
        let j = (r + d) % p;
        if bufs.same[r] || (j != r && bufs.same[j]) {
            continue;
        }
        for c in chunks(0..block, piece) {
            crate::mapped::still_on(ctx)?;
            crate::mapped::copy(ctx, streaming, bufs.recv[j].slice(at(r, &c)), a.send.slice(at(j, &c)))?;
        }
    }
    // A pair where either rank is in place: each rank of the pair moves its half of both
    // blocks, piece by piece through a scratch piece, reading each before its place is
    // written. (Both in place: a swap. One in place: its block goes out before the other's
    // comes in.)
    let size = crate::mapped::piece(ctx, PIECE_BYTES).min(block);
    let pairs: Vec<usize> = (0..p).filter(|&q| q != r && (bufs.same[r] || bufs.same[q])).collect();
    if pairs.is_empty() || size == 0 {
        return Ok(());
    }
    let tmp_buf = ctx.reducer.scratch(size)?;
    for q in pairs {
        for (i, c) in chunks(swap_half(r, q, block, a.dtype.size()), size).enumerate() {
            if i % crate::mapped::pieces_per_check(size) == 0 {
                crate::mapped::still_on(ctx)?;
            }
            let tmp = tmp_buf.region().slice(0..c.len());
            ctx.reducer.copy(tmp, bufs.send[r].slice(at(q, &c)))?;
            ctx.reducer.copy(bufs.recv[r].slice(at(q, &c)), bufs.send[q].slice(at(r, &c)))?;
            ctx.reducer.copy(bufs.recv[q].slice(at(r, &c)), tmp.as_region())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::swap_half;

    #[test]
    fn swap_halves_split_a_pair_on_elements_and_lines() {
        for es in [1, 2, 4, 8] {
            for count in [0, 1, 2, 3, 15, 16, 17, 1000, 4099, 1 << 20] {
                let block = count * es;
                let (lo, hi) = (swap_half(2, 5, block, es), swap_half(5, 2, block, es));
                assert_eq!((lo.start, lo.end, hi.end), (0, hi.start, block), "{count} x {es}");
                assert_eq!(lo.end % es, 0, "{count} x {es}: split inside an element");
                if block >= 128 {
                    assert_eq!(lo.end % 64, 0, "{count} x {es}: the ranks share a line");
                    assert!(lo.len().abs_diff(hi.len()) <= 128, "{count} x {es}: uneven halves");
                }
            }
        }
    }
}
