//! The two ring phases that ring all-reduce, reduce-scatter and all-gather are built from.
//!
//! Ranks form a ring `r -> r+1`. The vector is cut into `p` segments; a rank that will end
//! up owning segment `o`:
//!
//! * **reduce-scatter phase**, steps `s = 0..p-2`: sends segment `o-1-s` to the right and
//!   receives segment `o-2-s` from the left, which it reduces with its own contribution. The
//!   partial it just made is what it sends at step `s+1`; after `p-1` steps segment `o` holds
//!   the reduction of every rank's contribution.
//! * **all-gather phase**, steps `s = 0..p-2`: sends segment `o-s` to the right and receives
//!   segment `o-1-s` from the left, straight into place; what arrived is forwarded next step.
//!
//! Each segment is cut into chunks of `chunk_bytes` and the chunks flow independently:
//! while chunk `k` is being reduced, chunk `k+1` is already arriving into another of
//! `pipeline_depth` scratch slots, and the result of chunk `k` is sent on as soon as it is
//! reduced. Sends go out of the user's buffers directly; only incoming partials use scratch.
//!
//! The final value of every segment is computed by its owner alone and then copied to the
//! other ranks, so every rank ends with bitwise identical results.

use std::ops::Range;

use oxccl_transport::{Region, RegionMut, ReqId, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::op::ReduceOp;
use crate::partition::{bytes, chunks, ring_index};
use crate::pipeline::{recv_stream, PacedSends};

/// Sends of the reduce-scatter phase, by the segment they read, so the all-gather phase can
/// wait for them before it overwrites that segment.
pub(crate) type SegmentSends = Vec<(usize, ReqId)>;

/// Runs the reduce-scatter phase. `seg(j)` is the element range of segment `j` in `input`
/// and `work` (both full-size; they may be the same memory). The owned segment's result goes
/// to `out` (exactly that segment's length; it may be `work`'s own segment). When
/// `forward_owned` is set, each finished chunk of the owned segment is sent on at once as
/// step 0 of the all-gather phase; those sends are returned second.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reduce_scatter_phase(
    ctx: &Ctx<'_>,
    dtype: DataType,
    op: ReduceOp,
    seg: &dyn Fn(usize) -> Range<usize>,
    input: Region,
    work: RegionMut,
    out: RegionMut,
    owned: usize,
    forward_owned: bool,
) -> Result<(SegmentSends, Vec<ReqId>)> {
    let p = ctx.size;
    let es = dtype.size();
    let left = ring_index(ctx.rank, -1, p);
    let right = ring_index(ctx.rank, 1, p);
    let send_seg = |s: usize| ring_index(owned, -1 - s as isize, p);
    let recv_seg = |s: usize| ring_index(owned, -2 - s as isize, p);
    let ce = ctx.chunk_elems(dtype);

    let items: Vec<(usize, Range<usize>)> =
        (0..p - 1).flat_map(|s| chunks(seg(recv_seg(s)), ce).map(move |c| (s, c))).collect();
    let mut sends: SegmentSends = Vec::new();
    let s0 = send_seg(0);
    if items.is_empty() || ctx.recv_sink {
        for c in chunks(seg(s0), ce) {
            sends.push((s0, ctx.send(right, 0, input.slice(bytes(&c, es)))?));
        }
    }
    if items.is_empty() {
        return Ok((sends, Vec::new()));
    }

    let owned_start = seg(owned).start;
    let mut forwarded = Vec::new();
    if ctx.recv_sink {
        // Each chunk is reduced where it lands (a shared-memory slot) straight into its
        // destination: one pass over the bytes, no scratch. Sends of a finished chunk go out
        // as soon as its receive completes, in order.
        let dst_of = |s: usize, c: &Range<usize>| {
            if s == p - 2 {
                out.slice(bytes(&(c.start - owned_start..c.end - owned_start), es))
            } else {
                work.slice(bytes(c, es))
            }
        };
        let mut run = || -> Result<()> {
            let mut reqs = Vec::with_capacity(items.len());
            for (s, c) in &items {
                reqs.push(ctx.recv_reduce(left, *s, dtype, op, dst_of(*s, c), input.slice(bytes(c, es)))?);
            }
            for ((s, c), req) in items.iter().zip(reqs) {
                ctx.wait(req)?;
                let dst = dst_of(*s, c);
                if *s == p - 2 {
                    if op == ReduceOp::Avg {
                        ctx.reducer.divide(dtype, dst, p)?;
                    }
                    if forward_owned {
                        forwarded.push(ctx.send(right, p - 1, dst.as_region())?);
                    }
                } else {
                    sends.push((recv_seg(*s), ctx.send(right, s + 1, dst.as_region())?));
                }
            }
            Ok(())
        };
        // Sinks still posted may write into `work`, which may be scratch the caller drops on
        // error: fail the transport (which drops them unused) first.
        run().inspect_err(|e| ctx.net.fail(e.clone()))?;
        return Ok((sends, forwarded));
    }
    // Without receive sinks (TCP), sends to the right go out paced by arrivals from the
    // left, in the order the right neighbour expects them (step 0's chunks, then each chunk
    // to forward). Labelled with the segment they read; the owned segment's forwards with
    // `None`.
    let mut paced = PacedSends::new(ctx, right);
    for c in chunks(seg(s0), ce) {
        paced.push(0, input.slice(bytes(&c, es)), Some(s0))?;
    }
    recv_stream(ctx, left, dtype, &items, |(s, c), incoming| {
        let b = bytes(c, es);
        if *s == p - 2 {
            let dst = out.slice(bytes(&(c.start - owned_start..c.end - owned_start), es));
            ctx.reducer.reduce(dtype, op, dst, incoming, input.slice(b))?;
            if op == ReduceOp::Avg {
                ctx.reducer.divide(dtype, dst, p)?;
            }
            if forward_owned {
                paced.push(p - 1, dst.as_region(), None)?;
            }
        } else {
            let dst = work.slice(b.clone());
            ctx.reducer.reduce(dtype, op, dst, incoming, input.slice(b))?;
            paced.push(s + 1, dst.as_region(), Some(recv_seg(*s)))?;
        }
        paced.arrived()
    })?;
    for (label, q) in paced.finish()? {
        match label {
            Some(j) => sends.push((j, q)),
            None => forwarded.push(q),
        }
    }
    Ok((sends, forwarded))
}

/// Runs the all-gather phase over `buf` (full size), in which this rank holds segment
/// `owned` complete. Tags start at `step_base`. When `step0_posted` the sends of the owned
/// segment were already posted (by `reduce_scatter_phase`); `earlier` are sends still reading
/// segments of `buf`, waited for before anything is received into those segments. Returns
/// once every send and receive of this phase, and every send in `earlier`, has completed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn all_gather_phase(
    ctx: &Ctx<'_>,
    dtype: DataType,
    seg: &dyn Fn(usize) -> Range<usize>,
    buf: RegionMut,
    owned: usize,
    step_base: usize,
    step0_posted: bool,
    earlier: SegmentSends,
) -> Result<()> {
    let p = ctx.size;
    let es = dtype.size();
    let left = ring_index(ctx.rank, -1, p);
    let right = ring_index(ctx.rank, 1, p);
    let recv_seg = |s: usize| ring_index(owned, -1 - s as isize, p);
    let ce = ctx.chunk_elems(dtype);

    let mut sends = Vec::new();
    if !step0_posted {
        for c in chunks(seg(owned), ce) {
            sends.push(ctx.send(right, step_base, buf.slice(bytes(&c, es)).as_region())?);
        }
    }
    let mut recvs = Vec::new();
    for s in 0..p - 1 {
        let j = recv_seg(s);
        for (_, req) in earlier.iter().filter(|(sj, _)| *sj == j) {
            ctx.wait(*req)?;
        }
        for c in chunks(seg(j), ce) {
            let region = buf.slice(bytes(&c, es));
            recvs.push((s, region, ctx.recv(left, step_base + s, region)?));
        }
    }
    for (s, region, req) in recvs {
        ctx.wait(req)?;
        if s + 2 < p {
            sends.push(ctx.send(right, step_base + s + 1, region.as_region())?);
        }
    }
    let rest: Vec<ReqId> = earlier.iter().map(|(_, r)| *r).collect();
    ctx.wait_all(&rest)?;
    ctx.wait_all(&sends)
}
