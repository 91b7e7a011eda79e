//! Hierarchical (two-level) all-to-all: blocks bound for another host are gathered at one
//! rank of the sending host, cross as one message, and are scattered at the other end.
//!
//! Steps (p ranks on H hosts, host h with ranks G_h[0..L_h], blocks of b bytes): for each
//! pair of hosts (h, g) one gateway rank on each side, G_h[g mod L_h] and G_g[h mod L_g],
//! carries all traffic between them.
//! 0. Blocks for ranks of the same host go straight to them.
//! 1. Gather: each rank packs its L_g blocks for host g into one message to its gateway for
//!    g, which arranges them by destination.
//! 2. Across hosts: each gateway sends one message of L_h·L_g blocks to its peer gateway.
//! 3. Scatter: each gateway sends every rank of its host the L_h blocks for it, one message.
//!
//! Bytes per rank: about the flat algorithm's n·(p-1)/p, plus two hops within the host for
//! the inter-host share; messages across hosts: H-1 per gateway instead of p-L_h per rank.
//!
//! Cost: (L-1)·α_intra + 2·α_intra + (H-1)·α_inter + n·β_intra·(1 + 2(p-L)/p) +
//! n·(p-L)/p·β_inter (gateways carry L ranks' share): for many ranks per host and small
//! blocks, where the number of inter-host messages dominates.

use oxccl_transport::{RegionMut, ReqId, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::hier::Topology;

const STEP_DIRECT: usize = 0;
const STEP_GATHER: usize = 1;
const STEP_ACROSS: usize = 2;
const STEP_SCATTER: usize = 3;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let (l, h) = (m.max_local() as f64, m.num_hosts() as f64);
    let away = (p - l) / p * n;
    // Blocks for the own host directly; the rest gathered at gateways, across, scattered.
    let mut c = m.steps(Level::Intra, 1.0, (l - 1.0).max(1.0), (l - 1.0) / p * n);
    if h > 1.0 {
        c += m.steps(Level::Intra, 2.0, (h - 1.0).max(1.0), away);
        c += m.steps(Level::Inter, 1.0, (h - 1.0).max(1.0), away);
    }
    c
}

/// Runs hierarchical all-to-all.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let bb = count * a.dtype.size();
    if count == 0 {
        return Ok(());
    }
    if p == 1 {
        return if a.in_place { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    let topo = Topology::of(ctx)?;
    let (h, li) = (topo.host, topo.local);
    let groups = &topo.groups;
    let locals = &groups[h];
    let l = locals.len();
    let lg = |g: usize| groups[g].len();
    // The gateway on host `on` for traffic with host `with`.
    let gateway = |on: usize, with: usize| groups[on][with % groups[on].len()];
    let foreign: Vec<usize> = (0..groups.len()).filter(|&g| g != h).collect();
    let mine: Vec<usize> = foreign.iter().copied().filter(|&g| gateway(h, g) == r).collect();

    // Scratch: the input when in place (its blocks are overwritten before all are sent);
    // per foreign host g, the pack of this rank's L_g blocks for it and the pack of L_g
    // blocks from it; per host g this rank is the gateway for, the gathered blocks
    // (by source, then destination), the message to g (by destination, then source) and
    // the message from g (by destination here, then source there).
    let in_place_bytes = if a.in_place { p * bb } else { 0 };
    let packs: usize = foreign.iter().map(|&g| lg(g) * bb).sum();
    let agg: usize = mine.iter().map(|&g| l * lg(g) * bb).sum();
    let scratch = ctx.reducer.scratch(in_place_bytes + 2 * packs + 3 * agg)?;
    let mut at = 0;
    let mut take = |len: usize| {
        let reg = scratch.region().slice(at..at + len);
        at += len;
        reg
    };
    let saved = take(in_place_bytes);
    if a.in_place {
        ctx.reducer.copy(saved, a.recv.as_region())?;
    }
    let src = if a.in_place { saved.as_region() } else { a.send };
    let input = |d: usize| src.slice(d * bb..(d + 1) * bb);
    let output = |d: usize| a.recv.slice(d * bb..(d + 1) * bb);
    let blk = |reg: RegionMut, i: usize| reg.slice(i * bb..(i + 1) * bb);
    let pack_out: Vec<RegionMut> = foreign.iter().map(|&g| take(lg(g) * bb)).collect();
    let pack_in: Vec<RegionMut> = foreign.iter().map(|&g| take(lg(g) * bb)).collect();
    let stage: Vec<RegionMut> = mine.iter().map(|&g| take(l * lg(g) * bb)).collect();
    let msg_out: Vec<RegionMut> = mine.iter().map(|&g| take(l * lg(g) * bb)).collect();
    let msg_in: Vec<RegionMut> = mine.iter().map(|&g| take(l * lg(g) * bb)).collect();
    let fi = |g: usize| foreign.iter().position(|&x| x == g).expect("a foreign host");

    let mut sends: Vec<ReqId> = Vec::new();
    let mut run = || -> Result<()> {
        ctx.reducer.copy(output(r), input(r))?;
        for &g in &foreign {
            for (m, &d) in groups[g].iter().enumerate() {
                ctx.reducer.copy(blk(pack_out[fi(g)], m), input(d))?;
            }
        }
        // Per local peer, one order on both sides: the direct block, gather packs (host
        // order), scatter packs (host order).
        let mut direct = Vec::new();
        let mut gathered = Vec::new();
        let mut scattered = Vec::new();
        for (k, &q) in locals.iter().enumerate() {
            if q == r {
                continue;
            }
            sends.push(ctx.send(q, STEP_DIRECT, input(q))?);
            direct.push(ctx.recv(q, STEP_DIRECT, output(q))?);
            for &g in foreign.iter().filter(|&&g| gateway(h, g) == q) {
                sends.push(ctx.send(q, STEP_GATHER, pack_out[fi(g)].as_region())?);
            }
            for (i, &g) in mine.iter().enumerate() {
                let from_k = stage[i].slice(k * lg(g) * bb..(k + 1) * lg(g) * bb);
                gathered.push(ctx.recv(q, STEP_GATHER, from_k)?);
            }
            for &g in foreign.iter().filter(|&&g| gateway(h, g) == q) {
                scattered.push((g, ctx.recv(q, STEP_SCATTER, pack_in[fi(g)])?));
            }
        }
        let mut across = Vec::new();
        for (i, &g) in mine.iter().enumerate() {
            across.push((i, g, ctx.recv(gateway(g, h), STEP_ACROSS, msg_in[i])?));
            let own = stage[i].slice(li * lg(g) * bb..(li + 1) * lg(g) * bb);
            ctx.reducer.copy(own, pack_out[fi(g)].as_region())?;
        }
        ctx.wait_all(&gathered)?;
        for (i, &g) in mine.iter().enumerate() {
            // stage: [source k here][destination m there] -> message: [m][k].
            for k in 0..l {
                for m in 0..lg(g) {
                    ctx.reducer.copy(blk(msg_out[i], m * l + k), blk(stage[i], k * lg(g) + m).as_region())?;
                }
            }
            sends.push(ctx.send(gateway(g, h), STEP_ACROSS, msg_out[i].as_region())?);
        }
        // The message from g: [destination m here][source k there]; slice m goes to rank m.
        for (i, g, req) in across {
            ctx.wait(req)?;
            for (m, &d) in locals.iter().enumerate() {
                let part = msg_in[i].slice(m * lg(g) * bb..(m + 1) * lg(g) * bb);
                if d == r {
                    for (k, &s) in groups[g].iter().enumerate() {
                        ctx.reducer.copy(output(s), blk(part, k).as_region())?;
                    }
                } else {
                    sends.push(ctx.send(d, STEP_SCATTER, part.as_region())?);
                }
            }
        }
        ctx.wait_all(&direct)?;
        for (g, req) in scattered {
            ctx.wait(req)?;
            for (k, &s) in groups[g].iter().enumerate() {
                ctx.reducer.copy(output(s), blk(pack_in[fi(g)], k).as_region())?;
            }
        }
        ctx.wait_all(&sends)
    };
    run().inspect_err(|e| {
        // Requests on scratch may still be posted: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}
