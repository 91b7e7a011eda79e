//! Hierarchical (two-level) reduce-scatter: each block is summed within every host first,
//! so it crosses each host boundary once, as one partial sum.
//!
//! Steps (p ranks on H hosts, host h with ranks G_h[0..L_h], blocks of n/p bytes): block b
//! belongs to rank `G_g[j]`; on host h its aggregator is `G_g[j]` itself when h = g, else the
//! rank at local index j mod L_h (as in hierarchical all-gather).
//! 1. Within the host: every rank sends each block to that block's aggregator on its host,
//!    which reduces the L_h contributions (its own first, then by local index).
//! 2. Across hosts: each aggregator of another host's block sends its partial sum to the
//!    block's owner, which reduces its own host's sum with the H-1 partials (host order).
//!
//! Bytes per rank: within the host about (L_h-1)/L_h · n each way; across hosts about
//! (p - L_h)/L_h · n/p sent and (H-1) · n/p received.
//!
//! Cost: (p-1)·α_intra + n·(β_intra + γ) + (H-1)·α_inter + (H-1)·n/p·(β_inter + γ).

use oxccl_transport::{Region, ReqId, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::hier::Topology;
use crate::op::ReduceOp;

const STEP_INTRA: usize = 0;
const STEP_INTER: usize = 1;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let (l, h) = (m.max_local() as f64, m.num_hosts() as f64);
    let mut c = m.steps(Level::Intra, 1.0, l - 1.0, (l - 1.0) / l * n) + m.reduce((l - 1.0) / l * n);
    if h > 1.0 {
        c += m.steps(Level::Inter, 1.0, h - 1.0, (h - 1.0) * n / p) + m.reduce((h - 1.0) * n / p);
    }
    c
}

/// Runs hierarchical reduce-scatter.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let bb = count * es;
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let input = |j: usize| a.send.slice(j * bb..(j + 1) * bb);
    let topo = Topology::of(ctx)?;
    let h = topo.host;
    let locals = topo.local_group().to_vec();
    let l = locals.len();
    // (host, local index) of every rank.
    let mut place = vec![(0, 0); p];
    for (g, members) in topo.groups.iter().enumerate() {
        for (j, &m) in members.iter().enumerate() {
            place[m] = (g, j);
        }
    }
    let aggregator_here = |b: usize| {
        let (g, j) = place[b];
        if g == h {
            b
        } else {
            locals[j % l]
        }
    };
    // The blocks this rank aggregates: its own, then other hosts' in rank order.
    let mine: Vec<usize> = (0..p).filter(|&b| aggregator_here(b) == r).collect();
    let others: Vec<usize> = locals.iter().copied().filter(|&q| q != r).collect();
    let foreign_hosts = topo.groups.len() - 1;
    // Scratch: per aggregated block, its sum and a slot per local peer; per other host, a
    // slot for the partial sum of this rank's own block.
    let per_block = (1 + others.len()) * bb;
    let scratch = ctx.reducer.scratch(mine.len() * per_block + foreign_hosts * bb)?;
    let sum = |i: usize| scratch.region().slice(i * per_block..i * per_block + bb);
    let slot = |i: usize, k: usize| {
        let at = i * per_block + (1 + k) * bb;
        scratch.region().slice(at..at + bb)
    };
    let inter_slot = |k: usize| {
        let at = mine.len() * per_block + k * bb;
        scratch.region().slice(at..at + bb)
    };
    let mut sends: Vec<ReqId> = Vec::new();
    let mut run = || -> Result<()> {
        // Step 1: contributions to aggregators on this host, in block order per peer.
        for b in 0..p {
            let agg = aggregator_here(b);
            if agg != r {
                sends.push(ctx.send(agg, STEP_INTRA, input(b))?);
            }
        }
        let mut recvs = Vec::new();
        for (i, _) in mine.iter().enumerate() {
            for (k, &q) in others.iter().enumerate() {
                recvs.push((i, k, ctx.recv(q, STEP_INTRA, slot(i, k))?));
            }
        }
        // Step 2's receives: partial sums of this rank's own block, host order.
        let mut inter = Vec::new();
        for (k, members) in topo.groups.iter().enumerate().filter(|(g, _)| *g != h).map(|(_, m)| m).enumerate() {
            let src = members[place[r].1 % members.len()];
            inter.push((k, ctx.recv(src, STEP_INTER, inter_slot(k))?));
        }
        let mut recvs = recvs.into_iter().peekable();
        for (i, &b) in mine.iter().enumerate() {
            let acc = sum(i);
            let mut first = true;
            while let Some((_, k, req)) = recvs.next_if(|(bi, _, _)| *bi == i) {
                ctx.wait(req)?;
                let lhs: Region = if first { input(b) } else { acc.as_region() };
                ctx.reducer.reduce(a.dtype, op_of(a), acc, lhs, slot(i, k).as_region())?;
                first = false;
            }
            if first {
                ctx.reducer.copy(acc, input(b))?;
            }
            if b != r {
                sends.push(ctx.send(b, STEP_INTER, acc.as_region())?);
            }
        }
        // This rank's own block: its host's sum, then the other hosts' partials.
        let own = mine.iter().position(|&b| b == r).expect("a rank aggregates its own block");
        let acc = sum(own);
        for (k, req) in inter {
            ctx.wait(req)?;
            ctx.reducer.reduce(a.dtype, op_of(a), acc, acc.as_region(), inter_slot(k).as_region())?;
        }
        if a.op == ReduceOp::Avg {
            ctx.reducer.divide(a.dtype, acc, p)?;
        }
        ctx.wait_all(&sends)?;
        ctx.reducer.copy(a.recv, acc.as_region())
    };
    run().inspect_err(|e| {
        // Requests on scratch may still be posted: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}

/// Averages are sums until the final division.
fn op_of(a: &CollArgs) -> ReduceOp {
    if a.op == ReduceOp::Avg {
        ReduceOp::Sum
    } else {
        a.op
    }
}
