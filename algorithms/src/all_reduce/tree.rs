//! Double binary tree all-reduce (as NCCL's), pipelined in chunks.
//!
//! Steps (p ranks, n bytes): two binary trees over the same ranks, built so that every
//! rank is interior (has children) in at most one of them (see `tree.rs`); each carries
//! half the vector. Per chunk of its half, each tree reduces toward its root (a rank
//! receives its children's partial sums, adds its own, sends the result up) and then
//! broadcasts the root's result back down, `pipeline_depth` chunks behind the one going up
//! (a rank sends chunk k + depth - 1 up before it waits for chunk k to come down), so that
//! the levels of the tree work on different chunks at once. Within a step a rank first posts
//! what waits on nothing (its sends up as a leaf, down as a root), then what waits on its
//! children or its parent; over shared memory each child's chunk is reduced as it lands
//! (a receive sink), with no scratch copy. The two trees run side by side,
//! so every rank sends and receives about n bytes each way, and leaves (half the ranks of
//! each tree) only send their input and receive the result. The busiest rank sends 4
//! chunks per chunk step (2 with 2 ranks, 3 with 3 or 4).
//!
//! Bytes on the wire per rank: about n sent and n received (2n for the interior ranks of
//! one tree's half).
//!
//! Cost: 2 lg p·α + 2n·β at an interior rank (per chunk of its tree's half it receives two
//! and sends one going up, receives one and sends two coming down, and moves one each way
//! as a leaf of the other tree; pipelined in k chunks: (2 lg p + k)·α) + n·γ: latency grows
//! with lg p like recursive doubling, bandwidth stays near the ring's. The root alone computes
//! each chunk's final value, so every rank ends with bitwise identical results.

use oxccl_transport::{ReqId, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::op::ReduceOp;
use crate::partition::{bytes, chunks};
use crate::tree::{double_binary, Node};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let n = m.n();
    // Depth of a binary tree over p ranks; up then down, each half pipelined.
    let depth = ((m.p() + 1) as f64).log2().ceil() - 1.0;
    m.pipeline(Level::Flat, 2.0 * depth.max(1.0), busiest_sends(m.p()), n / 2.0) + m.reduce(n)
}

/// The most chunks any rank sends per chunk step (one chunk of each tree's half going up and
/// coming down). From 5 ranks on, rank 1 has two children in tree 0 and sends one up and two
/// down, and one up as a leaf of tree 1: 4. With 3 or 4 ranks no rank has both a parent and
/// two children: 3 (a root of two children or an interior rank of one, and a leaf of the
/// other tree). With 2 each rank is the root of one tree and the leaf of the other: 2.
fn busiest_sends(p: usize) -> f64 {
    match p {
        0..=2 => 2.0,
        3 | 4 => 3.0,
        _ => 4.0,
    }
}

/// Runs double binary tree all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let trees: [Node; 2] = [double_binary(p, 0, r), double_binary(p, 1, r)];
    let halves = [0..count / 2, count / 2..count];
    let ce = ctx.chunk_elems(a.dtype);
    let per_tree: Vec<Vec<std::ops::Range<usize>>> = halves.iter().map(|h| chunks(h.clone(), ce).collect()).collect();
    let k_total = per_tree.iter().map(Vec::len).max().unwrap_or(0);
    // How many chunks go up before the first comes back down: the pipeline's depth.
    let lag = ctx.pipeline_depth.max(1);
    // Interior non-root ranks keep their partial sums (sent up, so kept whole) in scratch;
    // without receive sinks (TCP), children's chunks land in two slots.
    let acc_scratch = ctx.reducer.scratch(a.recv.len())?;
    let acc = acc_scratch.region().slice(0..a.recv.len());
    let slot_bytes = ce.min(count) * es;
    let tmp = if ctx.recv_sink { None } else { Some(ctx.reducer.scratch(2 * slot_bytes)?) };
    let input = a.send;
    let mut sends = Vec::new();
    // A leaf's send of each chunk of its input, per tree: in place, the result must not
    // overwrite the chunk before that send is done.
    let mut up_sent: [Vec<Option<ReqId>>; 2] = [vec![None; k_total], vec![None; k_total]];
    // Chunk k goes up at step k; it comes down at step k + lag - 1, after chunk k + lag - 1
    // went up. Every rank takes the steps in the same order and, within a step, the trees in
    // the same order, so the messages between any two ranks are sent in the order their
    // receives are posted (the transports match FIFO per pair). The waits form no cycle: going
    // up at step s needs only the children's step s, and coming down needs the parent's,
    // which follows every step the parent needed from this rank.
    // Within a step, each rank first posts what depends on nothing (a leaf's send up, a
    // root's send down), then waits: with the trees in a fixed order instead, at 2 ranks
    // each rank waited, as root of one tree, for the chunk the other would send only after
    // its own wait, so the two ranks took turns (2.5x the ring's time at 16 MiB over shm).
    // The order is free: between two ranks a phase carries at most one message each way
    // (no rank is the child of another in both trees).
    let mut up_order: [usize; 2] = [0, 1];
    up_order.sort_by_key(|&t| !trees[t].children.is_empty());
    let mut down_order: [usize; 2] = [0, 1];
    down_order.sort_by_key(|&t| (trees[t].parent.is_some(), trees[t].children.is_empty()));
    let up = |k: usize, up_sent: &mut [Vec<Option<ReqId>>; 2], sends: &mut Vec<ReqId>| -> Result<()> {
        for &t in &up_order {
            let node = &trees[t];
            let Some(c) = per_tree[t].get(k) else { continue };
            let b = bytes(c, es);
            let dst = if node.parent.is_none() { a.recv.slice(b.clone()) } else { acc.slice(b.clone()) };
            if ctx.recv_sink {
                // Each child's chunk is reduced where it lands, straight into `dst`: one pass,
                // no scratch. The second child's waits for the first's, whose sum it adds to.
                for (i, &child) in node.children.iter().enumerate() {
                    let mine = if i == 0 { input.slice(b.clone()) } else { dst.as_region() };
                    let q = ctx.recv_reduce(child, 2 * t, a.dtype, a.op, dst, mine)?;
                    ctx.wait(q)?;
                }
            } else {
                let tmp = tmp.as_ref().expect("scratch slots are taken without receive sinks");
                let mut reqs = Vec::with_capacity(2);
                for (i, &child) in node.children.iter().enumerate() {
                    let slot = tmp.region().slice(i * slot_bytes..i * slot_bytes + b.len());
                    reqs.push((slot, ctx.recv(child, 2 * t, slot)?));
                }
                for (i, (slot, req)) in reqs.into_iter().enumerate() {
                    ctx.wait(req)?;
                    let mine = if i == 0 { input.slice(b.clone()) } else { dst.as_region() };
                    ctx.reducer.reduce(a.dtype, a.op, dst, mine, slot.as_region())?;
                }
            }
            let from = if node.children.is_empty() { input.slice(b.clone()) } else { dst.as_region() };
            match node.parent {
                Some(parent) => {
                    let q = ctx.send(parent, 2 * t, from)?;
                    up_sent[t][k] = Some(q);
                    sends.push(q);
                }
                None if a.op == ReduceOp::Avg => ctx.reducer.divide(a.dtype, dst, p)?,
                None => {}
            }
        }
        Ok(())
    };
    let down = |k: usize, up_sent: &[Vec<Option<ReqId>>; 2], sends: &mut Vec<ReqId>| -> Result<()> {
        for &t in &down_order {
            let node = &trees[t];
            let Some(c) = per_tree[t].get(k) else { continue };
            let region = a.recv.slice(bytes(c, es));
            if let Some(parent) = node.parent {
                if node.children.is_empty() && a.in_place {
                    // A leaf sent this chunk of its input up: let that send finish before
                    // the result overwrites it.
                    if let Some(q) = up_sent[t][k] {
                        ctx.wait(q)?;
                    }
                }
                let q = ctx.recv(parent, 2 * t + 1, region)?;
                ctx.wait(q)?;
            }
            for &child in &node.children {
                sends.push(ctx.send(child, 2 * t + 1, region.as_region())?);
            }
        }
        Ok(())
    };
    let mut run = || -> Result<()> {
        for step in 0..k_total + lag - 1 {
            if step < k_total {
                up(step, &mut up_sent, &mut sends)?;
            }
            if step + 1 >= lag {
                down(step + 1 - lag, &up_sent, &mut sends)?;
            }
        }
        ctx.wait_all(&sends)
    };
    run().inspect_err(|e| {
        // Requests on scratch may still be posted: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_sends_counts_the_trees_sends() {
        for p in 2..70 {
            let most = (0..p)
                .map(|r| {
                    (0..2)
                        .map(|t| {
                            let node = double_binary(p, t, r);
                            node.children.len() + usize::from(node.parent.is_some())
                        })
                        .sum::<usize>()
                })
                .max()
                .unwrap();
            assert_eq!(busiest_sends(p), most as f64, "{p} ranks");
        }
    }
}
