//! Recursive-doubling all-gather, for any number of ranks.
//!
//! Steps (p ranks, blocks of n/p bytes, n the gathered size; q the largest power of two not
//! above p, e = p - q; see `fold.rs`):
//! 1. Fold: of the first 2e ranks, each even rank sends its block to the odd rank above it,
//!    which then holds both.
//!    Out of place, a rank's own block is copied into place while its first message travels
//!    (sent straight from the input where it holds only its own block); over 32 MiB of
//!    outputs on the host, with streaming stores ([`Ctx::place`]).
//! 2. lg q exchange steps: at step k a virtual rank swaps everything it holds (2^k virtual
//!    ranks' blocks, one contiguous range) with the partner whose index differs in bit k.
//! 3. Unfold: each odd rank of the first 2e sends the whole result to the even rank below.
//!
//! Bytes on the wire per rank: (q-1)/q · n (plus n/p and n for folded pairs).
//!
//! Cost: lg q·α + (q-1)/q·n·β, plus 2α + (1/p + 1)·n·β when p is not a power of two.
//! Latency-optimal: for small blocks; the ring wins for large ones.

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};
use crate::fold::Fold;
use crate::partition::bytes;

use crate::cost::{Cost, Level, Model};
use crate::halving_doubling::UNFOLD;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let ((q, pow2), n, p) = (m.pow2(), m.n(), m.p() as f64);
    let lg = q.log2();
    let mut c = m.steps(Level::Flat, lg, 1.0, (q - 1.0) / q * n / lg);
    if !pow2 {
        c += m.steps(Level::Flat, 2.0, 1.0, (1.0 / p + 1.0) * n / 2.0);
    }
    c
}

/// Runs recursive-doubling all-gather.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let blocks = |rs: std::ops::Range<usize>| a.recv.slice(bytes(&(rs.start * count..rs.end * count), es));
    if count == 0 || p == 1 {
        return if a.in_place || count == 0 { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    // Out of place, the own block goes out straight from the input and is copied into place
    // while the first message is in flight, as the ring does: copied first, the 2-rank
    // all-gather of 64 MiB over shm took 13.6-13.9 ms against the ring's 9.6-9.7.
    let own = if a.in_place { blocks(r..r + 1).as_region() } else { a.send };
    let place = || if a.in_place { Ok(()) } else { ctx.place(blocks(r..r + 1), a.send, a.recv.len()) };
    let f = Fold::new(p);
    let Some(v) = f.virtual_rank(r) else {
        // The result lands on the block being sent: the send completes first.
        let s = ctx.send(r + 1, 0, own)?;
        place()?;
        ctx.wait(s)?;
        let q = ctx.recv(r + 1, UNFOLD, a.recv)?;
        return ctx.wait(q);
    };
    let first = if r < 2 * f.e {
        let q = ctx.recv(r - 1, 0, blocks(r - 1..r))?;
        place()?;
        ctx.wait(q)?;
        None
    } else {
        // This virtual rank stands for this rank alone: its first message is the own block.
        Some((own, &place as &dyn Fn() -> Result<()>))
    };
    let region = |vs: std::ops::Range<usize>| blocks(f.real_ranks(vs));
    crate::halving_doubling::all_gather_unfold(ctx, f, v, 1, &region, a.recv, first)
}
