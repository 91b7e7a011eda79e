//! Halving-doubling (Rabenseifner) all-reduce, for any number of ranks.
//!
//! Steps (p ranks, n bytes; q the largest power of two not above p, e = p - q):
//! 1. Fold: of the first 2e ranks, each even rank sends its vector to the odd rank above
//!    it, which reduces it in and stands for both. q virtual ranks remain.
//! 2. Reduce-scatter by recursive halving over q blocks of n/q (see `halving_doubling.rs`):
//!    lg q steps, each sending half of what is left, until virtual rank v holds block v.
//! 3. All-gather by recursive doubling: lg q steps, each swapping everything held with the
//!    partner whose index differs in that bit.
//! 4. Unfold: each odd rank of the first 2e sends the result to the even rank below.
//!
//! Bytes on the wire per rank: 2(q-1)/q · n (plus 2n for folded pairs).
//!
//! Cost: 2 lg q·α + 2(q-1)/q·n·β + (q-1)/q·n·γ, plus 2(α + n·β) + n·γ when p is not a
//! power of two: the ring's bytes with lg p instead of p-1 latency terms.

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};
use crate::fold::Fold;
use crate::op::ReduceOp;
use crate::partition::{block, bytes};

use crate::cost::{Cost, Level, Model};
use crate::halving_doubling::UNFOLD;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let ((q, pow2), n) = (m.pow2(), m.n());
    let lg = q.log2();
    let part = (q - 1.0) / q * n;
    let mut c = m.steps(Level::Flat, 2.0 * lg, 1.0, part / lg) + m.reduce(part);
    if !pow2 {
        c += m.steps(Level::Flat, 2.0, 1.0, n) + m.reduce(n);
    }
    c
}

/// Runs halving-doubling all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let f = Fold::new(p);
    let range = move |vs: std::ops::Range<usize>| block(count, f.q, vs.start).start..block(count, f.q, vs.end - 1).end;
    // In place, the halving steps work in the user's buffer: each step writes only the half
    // it keeps, never the half it is sending.
    let v = crate::halving_doubling::reduce_scatter(ctx, f, a.dtype, a.op, &range, a.send, a.recv, None)?;
    let Some((v, _)) = v else {
        let q = ctx.recv(r + 1, UNFOLD, a.recv)?;
        return ctx.wait(q);
    };
    let own = bytes(&range(v..v + 1), es);
    if a.op == ReduceOp::Avg {
        ctx.reducer.divide(a.dtype, a.recv.slice(own), p)?;
    }
    let region = |vs: std::ops::Range<usize>| a.recv.slice(bytes(&range(vs), es));
    let first = crate::halving_doubling::FIRST_STEP + f.steps();
    crate::halving_doubling::all_gather_unfold(ctx, f, v, first, &region, a.recv, None)
}
