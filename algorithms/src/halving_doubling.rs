//! Recursive halving (a reduce-scatter over virtual ranks), shared by halving-doubling
//! reduce-scatter and all-reduce; see `fold.rs` for how any world size folds onto a power
//! of two.
//!
//! The vector is cut into q virtual blocks (`range(vs)` gives the element range of a run of
//! them). At step k = 0..lg q, a virtual rank holding the partial sums of 2^(lg q - k)
//! blocks keeps the half its own index falls in, sends the other half to the partner whose
//! index differs in that bit, and reduces the partner's copy of the kept half into its
//! work buffer. After lg q steps virtual rank v holds block v reduced over every rank.

use std::ops::Range;

use oxccl_transport::{Region, RegionMut, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::fold::Fold;
use crate::op::ReduceOp;
use crate::partition::bytes;

/// The first step tag of the halving steps (step 0 is the fold).
pub(crate) const FIRST_STEP: usize = 1;

/// Runs the fold and the halving steps. `input` is this rank's full vector, `work` a
/// full-size buffer (it may be `input`'s memory) that ends holding, in virtual block
/// `v`'s range, that block reduced over every rank. Returns this rank's virtual rank, or
/// `None` for a rank that folded (it sent its vector and holds nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_scatter(
    ctx: &Ctx<'_>,
    f: Fold,
    dtype: DataType,
    op: ReduceOp,
    range: &dyn Fn(Range<usize>) -> Range<usize>,
    input: Region,
    work: RegionMut,
) -> Result<Option<usize>> {
    let r = ctx.rank;
    let es = dtype.size();
    let Some(v) = f.virtual_rank(r) else {
        let s = ctx.send(r + 1, 0, input)?;
        ctx.wait(s)?;
        return Ok(None);
    };
    // The largest message: half the vector (or all of it, folded in).
    let scratch = ctx.reducer.scratch(input.len())?;
    let tmp = |len: usize| scratch.region().slice(0..len);
    let mut cur = input;
    if r < 2 * f.e {
        let t = tmp(input.len());
        let q = ctx.recv(r - 1, 0, t)?;
        ctx.wait(q)?;
        ctx.reducer.reduce(dtype, op, work, t.as_region(), input)?;
        cur = work.as_region();
    }
    let mut lo = 0;
    let mut width = f.q;
    for k in 0..f.steps() {
        let half = width / 2;
        let upper = v - lo >= half;
        let (keep, give) =
            if upper { (lo + half..lo + width, lo..lo + half) } else { (lo..lo + half, lo + half..lo + width) };
        let peer = f.real(v ^ half);
        let (kb, gb) = (bytes(&range(keep.clone()), es), bytes(&range(give), es));
        let sq = ctx.send(peer, FIRST_STEP + k, cur.slice(gb))?;
        let t = tmp(kb.len());
        let rq = ctx.recv(peer, FIRST_STEP + k, t)?;
        ctx.wait(rq)?;
        // Lower virtual rank's operand first, so every rank reduces in one order.
        let (x, y) =
            if upper { (t.as_region(), cur.slice(kb.clone())) } else { (cur.slice(kb.clone()), t.as_region()) };
        // The send reads `give`, disjoint from `keep`: writing `work[keep]` is safe even when
        // `work` is `cur`.
        ctx.reducer.reduce(dtype, op, work.slice(kb), x, y)?;
        ctx.wait(sq)?;
        cur = work.as_region();
        lo = keep.start;
        width = half;
    }
    Ok(Some(v))
}

/// The recursive-doubling all-gather over virtual ranks, then the unfold: at step k virtual
/// rank `v` swaps everything it holds (2^k virtual ranks' pieces, `region(range)` for a run
/// of virtual ranks) with the partner whose index differs in bit k, tagged `first_step + k`;
/// afterwards each odd rank of the first 2e sends `whole` to the even rank below it, which
/// waits for it with the same `UNFOLD` tag.
pub(crate) fn all_gather_unfold(
    ctx: &Ctx<'_>,
    f: Fold,
    v: usize,
    first_step: usize,
    region: &dyn Fn(Range<usize>) -> RegionMut,
    whole: RegionMut,
) -> Result<()> {
    for k in 0..f.steps() {
        let m = 1 << k;
        let mine = v & !(m - 1);
        let theirs = (v ^ m) & !(m - 1);
        let peer = f.real(v ^ m);
        let sq = ctx.send(peer, first_step + k, region(mine..mine + m).as_region())?;
        let rq = ctx.recv(peer, first_step + k, region(theirs..theirs + m))?;
        ctx.wait(rq)?;
        ctx.wait(sq)?;
    }
    if ctx.rank < 2 * f.e {
        let s = ctx.send(ctx.rank - 1, UNFOLD, whole.as_region())?;
        ctx.wait(s)?;
    }
    Ok(())
}

/// The tag step of the unfold (the fold is step 0).
pub(crate) const UNFOLD: usize = 0xffff;
