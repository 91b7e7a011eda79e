//! The direct schedule that direct all-reduce and direct reduce-scatter are built from.
//!
//! Every rank owns one slice of the vector and computes it alone from every rank's
//! contribution, which the other ranks send it directly (no ring of partials). Each slice
//! is cut into the same number `K` of chunks; at chunk `k` a rank
//!
//! 1. receives chunk `k` of its slice from each of the `p-1` peers into scratch,
//! 2. reduces its own input with all of them into the output, in a fixed order, and
//! 3. (all-reduce) sends that finished chunk to every peer and receives each peer's
//!    finished chunk `k` of its slice straight into place.
//!
//! Sends and receives between each pair are posted in one order on both sides (the first
//! `L` reduce-scatter chunks, then per chunk `k`: its all-gather part, then reduce-scatter
//! chunk `k+L`), so message matching is FIFO per pair. With the shared-memory transport a
//! message is one `process_vm_readv` of the sender's buffer, so the chunk a peer just
//! reduced is read while still in cache: DRAM sees about the input read once and the output
//! written once per rank, instead of the ring's extra pass through memory per phase.
//!
//! Bytes on the wire per rank: (p-1)/p · n each way per phase (the ring's), in 1 step per
//! phase instead of p-1, at the price of p-1 messages per step.
//!
//! Cost (all-reduce): 2(p-1)·α + 2(p-1)/p·n·β + (p-1)/p·n·γ, but the α terms are
//! concurrent (all peers at once), so on a transport with one-sided reads it behaves like
//! 2·α; reduce-scatter: half the α and β terms.

use std::ops::Range;

use oxccl_transport::{Region, RegionMut, ReqId, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::op::ReduceOp;
use crate::partition::{block, bytes};

const STEP_RS: usize = 0;
const STEP_AG: usize = 1;

/// Scratch for incoming chunks is kept under this many bytes, so it stays in cache.
const SCRATCH_BUDGET: usize = 2 << 20;

/// Runs the direct schedule. `seg(j)` is the element range of slice `j` in `input` (and in
/// `all_gather`, when given). Slice `ctx.rank`'s result goes to `out` (exactly that slice's
/// length). With `all_gather` set, every finished slice is also exchanged into it
/// (all-reduce; `out` is then its own slice). `in_place`: `input` and the destination of
/// the exchange are the same memory.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    ctx: &Ctx<'_>,
    dtype: DataType,
    op: ReduceOp,
    seg: &dyn Fn(usize) -> Range<usize>,
    input: Region,
    out: RegionMut,
    all_gather: Option<RegionMut>,
    in_place: bool,
) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = dtype.size();
    let peers: Vec<usize> = (1..p).map(|d| (r + d) % p).collect();
    let max_len = (0..p).map(|j| seg(j).len()).max().unwrap_or(0);
    if max_len == 0 {
        return Ok(());
    }
    let depth = ctx.pipeline_depth.max(1);
    // Chunk size: the configured one, shrunk so the scratch of `depth` chunks from each peer
    // stays within the budget (but never below 4 KiB).
    let budget_elems = (SCRATCH_BUDGET / (depth * (p - 1) * es)).max(4096 / es);
    let ce = ctx.chunk_elems(dtype).min(budget_elems).max(1);
    let k_total = max_len.div_ceil(ce);
    let depth = depth.min(k_total);
    // Chunk `k` of slice `j`, in elements of the full vector.
    let chunk = |j: usize, k: usize| {
        let s = seg(j);
        let b = block(s.len(), k_total, k);
        s.start + b.start..s.start + b.end
    };
    let own = seg(r);
    // With one peer, its chunk is reduced with the local one where it lands (no scratch,
    // one pass); with more, chunks land in scratch so they are combined in a fixed order.
    let sink = ctx.recv_sink && p == 2;
    let slot_elems = if sink { 0 } else { max_len.div_ceil(k_total) };
    let scratch = ctx.reducer.scratch(depth * (p - 1) * slot_elems * es)?;
    let slot = |k: usize, i: usize, len: usize| {
        let at = ((k % depth) * (p - 1) + i) * slot_elems * es;
        scratch.region().slice(at..at + len * es)
    };

    let mut rs_sends: Vec<Vec<(usize, ReqId)>> = vec![Vec::new(); k_total];
    let mut rs_recvs: Vec<Vec<ReqId>> = vec![Vec::new(); k_total];
    let mut other = Vec::new();
    let post_rs = |k: usize, rs_sends: &mut Vec<Vec<(usize, ReqId)>>, rs_recvs: &mut Vec<Vec<ReqId>>| -> Result<()> {
        for &q in &peers {
            let c = chunk(q, k);
            if !c.is_empty() {
                rs_sends[k].push((q, ctx.send(q, STEP_RS, input.slice(bytes(&c, es)))?));
            }
        }
        let c = chunk(r, k);
        if c.is_empty() {
            return Ok(());
        }
        if sink {
            let local = c.start - own.start..c.end - own.start;
            let (dst, src) = (out.slice(bytes(&local, es)), input.slice(bytes(&c, es)));
            rs_recvs[k].push(ctx.recv_reduce(peers[0], STEP_RS, dtype, op, dst, src)?);
        } else {
            for (i, &q) in peers.iter().enumerate() {
                rs_recvs[k].push(ctx.recv(q, STEP_RS, slot(k, i, c.len()))?);
            }
        }
        Ok(())
    };
    let finish = |e: oxccl_transport::Error| {
        // Receives into scratch may still be posted: fail the transport (which drops them
        // untouched) before the scratch goes out of scope.
        ctx.net.fail(e.clone());
        e
    };
    for k in 0..depth {
        post_rs(k, &mut rs_sends, &mut rs_recvs).map_err(finish)?;
    }
    for k in 0..k_total {
        let mut step = || -> Result<()> {
            ctx.wait_all(&rs_recvs[k])?;
            let c = chunk(r, k);
            if !c.is_empty() {
                let local = c.start - own.start..c.end - own.start;
                let dst = out.slice(bytes(&local, es));
                let src = input.slice(bytes(&c, es));
                for i in (0..p - 1).filter(|_| !sink) {
                    let a = if i == 0 { src } else { dst.as_region() };
                    ctx.reducer.reduce(dtype, op, dst, a, slot(k, i, c.len()).as_region())?;
                }
                if op == ReduceOp::Avg {
                    ctx.reducer.divide(dtype, dst, p)?;
                }
                if all_gather.is_some() {
                    for &q in &peers {
                        other.push(ctx.send(q, STEP_AG, dst.as_region())?);
                    }
                }
            }
            if let Some(buf) = all_gather {
                for &q in &peers {
                    let c = chunk(q, k);
                    if c.is_empty() {
                        continue;
                    }
                    if in_place {
                        // This chunk of the input went to q, which may still be reading it
                        // (it cannot have finished its chunk k otherwise, but the send must
                        // complete before its buffer is written).
                        for (_, req) in rs_sends[k].iter().filter(|(to, _)| *to == q) {
                            ctx.wait(*req)?;
                        }
                    }
                    other.push(ctx.recv(q, STEP_AG, buf.slice(bytes(&c, es)))?);
                }
            }
            if k + depth < k_total {
                post_rs(k + depth, &mut rs_sends, &mut rs_recvs)?;
            }
            Ok(())
        };
        step().map_err(finish)?;
    }
    let sends: Vec<ReqId> = rs_sends.iter().flatten().map(|(_, r)| *r).collect();
    ctx.wait_all(&sends)?;
    ctx.wait_all(&other)
}
