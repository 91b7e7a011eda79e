//! Hierarchical (two-level) all-reduce: within each host, across hosts, within each host.
//!
//! Steps (p ranks on H hosts, host h with L_h ranks, n bytes):
//! 1. Intra-host reduce-scatter (direct): local rank i of host h ends with block i of n
//!    cut into L_h blocks, reduced over its host.
//! 2. Inter-host all-reduce (ring, or recursive doubling for small pieces): the vector is
//!    cut where any host's block boundaries fall; each piece is all-reduced among the H
//!    ranks (one per host) whose block holds it. With equal L_h these are the ranks of equal
//!    local index, L parallel rings over the hosts; unequal hosts just cut finer.
//! 3. Intra-host all-gather (ring) of the blocks.
//!
//! Bytes per rank: intra-host 2(L-1)/L · n (over shared memory where it can); inter-host
//! 2(H-1)/H · n/L, the hosts' links shared by L rings instead of carrying every rank's n.
//!
//! Cost: 2(L-1)·α_intra + 2(L-1)/L·n·β_intra + 2(H-1)·α_inter + 2(H-1)/H·(n/L)·β_inter +
//! ((L-1)/L + (H-1)/(HL))·n·γ. Every piece's final value is computed once and copied, so all
//! ranks end bitwise identical.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::group::GroupNet;
use crate::hier::Topology;
use crate::op::ReduceOp;
use crate::partition::{block, bytes};

/// Pieces up to this size go across hosts by recursive doubling, larger ones by the ring.
const SMALL_PIECE: usize = 32 << 10;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let n = m.n();
    let (l, h) = (m.max_local() as f64, m.num_hosts() as f64);
    let piece = n / l;
    // Intra-host direct reduce-scatter, inter-host ring over each local rank's piece,
    // intra-host ring all-gather.
    let mut c =
        m.steps(Level::Intra, 1.0, (l - 1.0) * m.chunks(piece), (l - 1.0) * piece) + m.reduce((l - 1.0) * piece);
    if h > 1.0 {
        c += m.steps(Level::Inter, 2.0 * (h - 1.0), m.chunks(piece / h), piece / h) + m.reduce((h - 1.0) / h * piece);
    }
    c + m.steps(Level::Intra, l - 1.0, m.chunks(piece), piece)
}

/// Runs hierarchical all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (p, count) = (ctx.size, a.count);
    let es = a.dtype.size();
    let topo = Topology::of(ctx)?;
    // Averages: sums all the way, one division by p at the end.
    let op = if a.op == ReduceOp::Avg { ReduceOp::Sum } else { a.op };
    let locals = topo.local_group().to_vec();
    let l = locals.len();
    let own = block(count, l, topo.local);
    let out = a.recv.slice(bytes(&own, es));

    let intra = GroupNet::new(ctx.net, locals)?;
    let ictx = intra.ctx(ctx);
    if l > 1 {
        crate::direct::run(&ictx, a.dtype, op, &|j| block(count, l, j), a.send, out, None, a.in_place)?;
    } else if !a.in_place {
        ctx.reducer.copy(a.recv, a.send)?;
    }

    if topo.groups.len() > 1 {
        // Cut wherever any host's block boundaries fall, within this rank's block.
        let mut cuts: Vec<usize> = topo
            .groups
            .iter()
            .flat_map(|g| (0..g.len()).map(move |j| block(count, g.len(), j).start))
            .filter(|&c| c > own.start && c < own.end)
            .collect();
        cuts.push(own.start);
        cuts.push(own.end);
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let piece = w[0]..w[1];
            if piece.is_empty() {
                continue;
            }
            // One rank per host: the one whose block holds this piece.
            let owners: Vec<usize> = topo
                .groups
                .iter()
                .map(|g| {
                    let j = (0..g.len()).find(|&j| block(count, g.len(), j).contains(&piece.start)).expect("covered");
                    g[j]
                })
                .collect();
            let inter = GroupNet::new(ctx.net, owners)?;
            let region = a.recv.slice(bytes(&piece, es));
            let args =
                CollArgs { send: region.as_region(), recv: region, in_place: true, count: piece.len(), op, ..*a };
            if region.len() <= SMALL_PIECE {
                super::recursive_doubling::run(&inter.ctx(ctx), &args)?;
            } else {
                super::ring::run(&inter.ctx(ctx), &args)?;
            }
        }
    }
    if a.op == ReduceOp::Avg {
        ctx.reducer.divide(a.dtype, out, p)?;
    }
    if l > 1 {
        crate::ring::all_gather_phase(
            &ictx,
            a.dtype,
            &|j| block(count, l, j),
            a.recv,
            topo.local,
            0x100,
            false,
            Vec::new(),
        )?;
    }
    Ok(())
}
