//! Recursive-halving reduce-scatter (the first half of Rabenseifner's all-reduce), for any
//! number of ranks.
//!
//! Steps (p ranks, n bytes of input, blocks of n/p; q the largest power of two not above p,
//! e = p - q):
//! 1. Fold: of the first 2e ranks, each even rank sends its whole input to the odd rank
//!    above it, which reduces it in; virtual rank v then stands for ranks 2v and 2v+1
//!    (v < e) or v + e.
//! 2. lg q halving steps (see `halving_doubling.rs`): each sends half of what it holds to a
//!    partner and reduces the other half, until virtual rank v holds its ranks' blocks.
//! 3. Unfold: an odd rank of the first 2e sends block r-1 to rank r-1.
//!
//! Bytes on the wire per rank: (q-1)/q · n (plus n and n/p for folded pairs).
//!
//! Cost: lg q·α + (q-1)/q·n·(β + γ), plus 2α + (1 + 1/p)·n·β + n·γ when p is not a power
//! of two. Latency lg p instead of the ring's p-1, with the same bytes: the choice for
//! small and medium blocks.

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};
use crate::fold::Fold;
use crate::op::ReduceOp;
use crate::partition::bytes;

use crate::cost::{Cost, Level, Model};
use crate::halving_doubling::UNFOLD;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let ((q, pow2), n, p) = (m.pow2(), m.n(), m.p() as f64);
    let lg = q.log2();
    let part = (q - 1.0) / q * n;
    let mut c = m.steps(Level::Flat, lg, 1.0, part / lg) + m.reduce(part);
    if !pow2 {
        c += m.steps(Level::Flat, 2.0, 1.0, (1.0 + 1.0 / p) * n / 2.0) + m.reduce(n);
    }
    c
}

/// Runs recursive-halving reduce-scatter.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let blk = |j: usize| bytes(&(j * count..(j + 1) * count), es);
    let f = Fold::new(p);
    let range = move |vs: std::ops::Range<usize>| {
        let rs = f.real_ranks(vs);
        rs.start * count..rs.end * count
    };
    let scratch = ctx.reducer.scratch(a.send.len())?;
    let work = scratch.region().slice(0..a.send.len());
    let v = crate::halving_doubling::reduce_scatter(ctx, f, a.dtype, a.op, &range, a.send, work, Some(a.recv))?;
    match v {
        None => {
            let q = ctx.recv(r + 1, UNFOLD, a.recv)?;
            ctx.wait(q)?;
        }
        Some((_, into_out)) => {
            if r < 2 * f.e {
                let s = ctx.send(r - 1, UNFOLD, work.slice(blk(r - 1)).as_region())?;
                ctx.wait(s)?;
            }
            if !into_out {
                ctx.reducer.copy(a.recv, work.slice(blk(r)).as_region())?;
            }
        }
    }
    if a.op == ReduceOp::Avg {
        ctx.reducer.divide(a.dtype, a.recv, p)?;
    }
    Ok(())
}
