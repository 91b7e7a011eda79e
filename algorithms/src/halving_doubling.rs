//! Recursive halving (a reduce-scatter over virtual ranks), shared by halving-doubling
//! reduce-scatter and all-reduce; see `fold.rs` for how any world size folds onto a power
//! of two.
//!
//! The vector is cut into q virtual blocks (`range(vs)` gives the element range of a run of
//! them). At step k = 0..lg q, a virtual rank holding the partial sums of 2^(lg q - k)
//! blocks keeps the half its own index falls in, sends the other half to the partner whose
//! index differs in that bit, and reduces the partner's copy of the kept half into its
//! work buffer, chunk by chunk as it arrives (the step's messages are cut into the call's
//! pipeline chunks). After lg q steps virtual rank v holds block v reduced over every rank.

use std::ops::Range;

use oxccl_transport::{Region, RegionMut, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::fold::Fold;
use crate::op::ReduceOp;
use crate::partition::{bytes, chunks};
use crate::pipeline::PacedSends;

/// The first step tag of the halving steps (step 0 is the fold).
pub(crate) const FIRST_STEP: usize = 1;

/// Runs the fold and the halving steps. `input` is this rank's full vector, `work` a
/// full-size buffer (it may be `input`'s memory) that ends holding, in virtual block
/// `v`'s range, that block reduced over every rank; or, when `out` is given and the last
/// halving step's block is `out`'s length, `out` holds it instead (one pass less: the
/// reduce-scatter passes its output). Returns this rank's virtual rank and whether `out`
/// took the result, or `None` for a rank that folded (it sent its vector and holds
/// nothing).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_scatter(
    ctx: &Ctx<'_>,
    f: Fold,
    dtype: DataType,
    op: ReduceOp,
    range: &dyn Fn(Range<usize>) -> Range<usize>,
    input: Region,
    work: RegionMut,
    out: Option<RegionMut>,
) -> Result<Option<(usize, bool)>> {
    let r = ctx.rank;
    let es = dtype.size();
    let all = 0..input.len() / es;
    let Some(v) = f.virtual_rank(r) else {
        exchange_reduce(ctx, r + 1, 0, dtype, op, input, all, 0..0, (work, 0))?;
        return Ok(None);
    };
    let mut cur = input;
    if r < 2 * f.e {
        exchange_reduce(ctx, r - 1, 0, dtype, op, input, 0..0, all, (work, 0))?;
        cur = work.as_region();
    }
    let mut lo = 0;
    let mut width = f.q;
    let mut into_out = false;
    for k in 0..f.steps() {
        let half = width / 2;
        let upper = v - lo >= half;
        let (keep, give) =
            if upper { (lo + half..lo + width, lo..lo + half) } else { (lo..lo + half, lo + half..lo + width) };
        let peer = f.real(v ^ half);
        let kept = range(keep.clone());
        // The last step's block straight into `out` where it fits.
        let dst = match out {
            Some(o) if k + 1 == f.steps() && o.len() == kept.len() * es => {
                into_out = true;
                (o, kept.start)
            }
            _ => (work, 0),
        };
        // The send reads `give`, disjoint from `keep`: writing `work[keep]` is safe even when
        // `work` is `cur`.
        exchange_reduce(ctx, peer, FIRST_STEP + k, dtype, op, cur, range(give), kept, dst)?;
        cur = work.as_region();
        lo = keep.start;
        width = half;
    }
    Ok(Some((v, into_out)))
}

/// One exchange of the fold or a halving step with `peer` at `step`, pipelined in chunks of
/// the call's chunk size: the elements `give` of `cur` go out, and the partner's `keep`
/// comes in chunk by chunk, each reduced as it lands with `cur[keep]` into `dst.0` at
/// element `keep - dst.1` (`work[keep]`, or the caller's output for the last block) (in
/// the transport's receive sink where it takes one, else from a few rotating scratch
/// slots). Landing whole in scratch and then reduced, a step's bytes went through memory
/// three times, and once the step outgrew the cache the halving reduce-scatter ran 5-7x the
/// direct one (2 ranks, 1-16 MiB). Either range may be empty (the fold only sends or only
/// receives); both ends cut one element range the same way, so their chunks match. Two
/// operands: either order gives the same result (every operator commutes), and each block
/// is reduced by one rank only.
#[allow(clippy::too_many_arguments)]
fn exchange_reduce(
    ctx: &Ctx<'_>,
    peer: usize,
    step: usize,
    dtype: DataType,
    op: ReduceOp,
    cur: Region,
    give: Range<usize>,
    keep: Range<usize>,
    dst: (RegionMut, usize),
) -> Result<()> {
    let es = dtype.size();
    let (dst, base) = dst;
    let at = |c: &Range<usize>| bytes(&(c.start - base..c.end - base), es);
    let ce = ctx.chunk_elems(dtype).max(1);
    let run = || -> Result<()> {
        let mut reqs = Vec::new();
        let gives = chunks(give.clone(), ce);
        if ctx.recv_sink {
            for c in gives {
                reqs.push(ctx.send(peer, step, cur.slice(bytes(&c, es)))?);
            }
            for c in chunks(keep.clone(), ce) {
                reqs.push(ctx.recv_reduce(peer, step, dtype, op, dst.slice(at(&c)), cur.slice(bytes(&c, es)))?);
            }
        } else {
            let mut paced = PacedSends::new(ctx, peer);
            for c in gives {
                paced.push(step, cur.slice(bytes(&c, es)), ())?;
            }
            let items: Vec<(usize, Range<usize>)> = chunks(keep.clone(), ce).map(|c| (step, c)).collect();
            crate::pipeline::recv_stream(ctx, peer, dtype, &items, |(_, c), incoming| {
                ctx.reducer.reduce(dtype, op, dst.slice(at(c)), incoming, cur.slice(bytes(c, es)))?;
                paced.arrived()
            })?;
            reqs.extend(paced.finish()?.into_iter().map(|(_, q)| q));
        }
        ctx.wait_all(&reqs)
    };
    // Receives into `dst` may still be posted: fail the transport (which drops them
    // untouched) before the caller's scratch goes out of scope.
    run().inspect_err(|e| ctx.net.fail(e.clone()))
}

/// The recursive-doubling all-gather over virtual ranks, then the unfold: at step k virtual
/// rank `v` swaps everything it holds (2^k virtual ranks' pieces, `region(range)` for a run
/// of virtual ranks) with the partner whose index differs in bit k, tagged `first_step + k`;
/// afterwards each odd rank of the first 2e sends `whole` to the even rank below it, which
/// waits for it with the same `UNFOLD` tag.
///
/// With `first`, the first step sends its region (the one virtual rank `v`'s piece) from
/// there instead, and calls the function once both messages are posted and before waiting:
/// an out-of-place all-gather copies its own block into place while it travels.
pub(crate) fn all_gather_unfold(
    ctx: &Ctx<'_>,
    f: Fold,
    v: usize,
    first_step: usize,
    region: &dyn Fn(Range<usize>) -> RegionMut,
    whole: RegionMut,
    mut first: Option<(Region, &dyn Fn() -> Result<()>)>,
) -> Result<()> {
    for k in 0..f.steps() {
        let m = 1 << k;
        let mine = v & !(m - 1);
        let theirs = (v ^ m) & !(m - 1);
        let peer = f.real(v ^ m);
        let (out, meanwhile) = match first.take() {
            Some((src, then)) => (src, Some(then)),
            None => (region(mine..mine + m).as_region(), None),
        };
        let sq = ctx.send(peer, first_step + k, out)?;
        let rq = ctx.recv(peer, first_step + k, region(theirs..theirs + m))?;
        if let Some(then) = meanwhile {
            then()?;
        }
        ctx.wait(rq)?;
        ctx.wait(sq)?;
    }
    // Two ranks or more make at least one step, which took `first`.
    debug_assert!(first.is_none(), "the first step's copy was never made");
    if ctx.rank < 2 * f.e {
        let s = ctx.send(ctx.rank - 1, UNFOLD, whole.as_region())?;
        ctx.wait(s)?;
    }
    Ok(())
}

/// The tag step of the unfold (the fold is step 0).
pub(crate) const UNFOLD: usize = 0xffff;
