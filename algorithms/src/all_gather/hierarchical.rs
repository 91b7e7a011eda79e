//! Hierarchical (two-level) all-gather: each block crosses to every other host once, then
//! spreads within the host.
//!
//! Steps (p ranks on H hosts, host h with ranks G_h[0..L_h], blocks of n/p bytes):
//! 1. Across hosts: the rank at local index j of host g sends its block to one rank of each
//!    other host h, the one at local index j mod L_h. So each rank of h receives from each
//!    other host the blocks of the ranks whose local index is its own modulo L_h.
//! 2. Within the host: every rank sends each local peer its own block and every block it
//!    received in step 1, in one agreed order; then every rank has every block.
//!
//! Bytes per rank: across hosts n/p sent per other host and about (p - L_h)/L_h · n/p
//! received; within the host about (L_h-1)/L_h · n each way.
//!
//! Cost: α_inter + ~(n/L)·β_inter + (p-1)·α_intra + n·β_intra (the α_intra terms are
//! concurrent over shared memory). Every byte crosses each host boundary once, against
//! the flat ring's every-rank-forwards-everything.

use oxccl_transport::{ReqId, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::hier::Topology;
use crate::partition::bytes;

const STEP_INTER: usize = 0;
const STEP_INTRA: usize = 1;

/// The blocks local index `i` of a host of `l` ranks stands for after step 1: its own, then
/// those it received, host by host, ascending (the order of step 2's messages).
fn held(topo: &Topology, host: usize, i: usize) -> Vec<usize> {
    let l = topo.groups[host].len();
    let mut v = vec![topo.groups[host][i]];
    for (g, members) in topo.groups.iter().enumerate() {
        if g != host {
            v.extend(members.iter().enumerate().filter(|(j, _)| j % l == i).map(|(_, &r)| r));
        }
    }
    v
}

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    let (l, h) = (m.max_local() as f64, m.num_hosts() as f64);
    let mut c = m.steps(Level::Intra, 1.0, l - 1.0, (l - 1.0) / l * n);
    if h > 1.0 {
        c += m.steps(Level::Inter, 1.0, h - 1.0, (p - l) / l * n / p);
    }
    c
}

/// Runs hierarchical all-gather.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let blk = |j: usize| a.recv.slice(bytes(&(j * count..(j + 1) * count), es));
    if !a.in_place && count > 0 {
        ctx.place(blk(r), a.send, a.recv.len())?;
    }
    if count == 0 || p == 1 {
        return Ok(());
    }
    let topo = Topology::of(ctx)?;
    let (h, li) = (topo.host, topo.local);
    let mut sends: Vec<ReqId> = Vec::new();
    let mut recvs: Vec<ReqId> = Vec::new();
    // Step 1.
    for (g, members) in topo.groups.iter().enumerate() {
        if g == h {
            continue;
        }
        sends.push(ctx.send(members[li % members.len()], STEP_INTER, blk(r).as_region())?);
        let l = topo.groups[h].len();
        for (j, &src) in members.iter().enumerate() {
            if j % l == li {
                recvs.push(ctx.recv(src, STEP_INTER, blk(src))?);
            }
        }
    }
    ctx.wait_all(&recvs)?;
    recvs.clear();
    // Step 2.
    let locals = topo.local_group();
    let mine = held(&topo, h, li);
    for (k, &peer) in locals.iter().enumerate() {
        if k == li {
            continue;
        }
        for &b in &mine {
            sends.push(ctx.send(peer, STEP_INTRA, blk(b).as_region())?);
        }
        for b in held(&topo, h, k) {
            recvs.push(ctx.recv(peer, STEP_INTRA, blk(b))?);
        }
    }
    ctx.wait_all(&recvs)?;
    ctx.wait_all(&sends)
}
