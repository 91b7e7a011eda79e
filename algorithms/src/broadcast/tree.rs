//! Binomial-tree broadcast, pipelined in chunks.
//!
//! Steps (p ranks, n bytes): ranks are numbered from the root (vr = r - root mod p). Rank
//! vr receives from vr with its lowest set bit cleared and sends to vr + 2^j for each 2^j
//! below that bit, largest subtree first; so the number of ranks holding the data doubles
//! each step. Each chunk is forwarded as soon as it has arrived.
//!
//! Bytes on the wire per rank: n received (not at the root), n sent per child (up to
//! lg p at the root).
//!
//! Cost: ceil(lg p)·(α + n·β) unpipelined: latency-optimal for small vectors; the chain
//! moves large ones at about n·β.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, chunks};
use crate::tree::binomial;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let lg = m.log2_ceil();
    m.pipeline(Level::Flat, lg, lg, m.n())
}

/// Runs binomial-tree broadcast.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = a.dtype.size();
    if r == a.root && !a.in_place {
        ctx.reducer.copy(a.recv, a.send)?;
    }
    if a.count == 0 || p == 1 {
        return Ok(());
    }
    let node = binomial(p, a.root, r);
    let ce = ctx.chunk_elems(a.dtype);
    let mut sends = Vec::new();
    let mut recvs = Vec::new();
    for c in chunks(0..a.count, ce) {
        let region = a.recv.slice(bytes(&c, es));
        let req = match node.parent {
            Some(parent) => Some(ctx.recv(parent, 0, region)?),
            None => None,
        };
        recvs.push((region, req));
    }
    for (region, req) in recvs {
        if let Some(q) = req {
            ctx.wait(q)?;
        }
        for &child in &node.children {
            sends.push(ctx.send(child, 0, region.as_region())?);
        }
    }
    ctx.wait_all(&sends)
}
