//! Pipelined chain ("ring") broadcast.
//!
//! Steps (p ranks, n bytes): ranks form a chain root, root+1, ..., root+p-1. The root cuts
//! the vector into chunks and sends them down the chain; every other rank receives each
//! chunk straight into place and forwards it at once, so after the pipeline fills every
//! link carries a chunk at the same time.
//!
//! Bytes on the wire per rank: n received and n sent (none received at the root, none sent
//! at the chain's end).
//!
//! Cost: (p-1 + k-1)·α + (1 + (p-2)/k)·n·β with k chunks: close to n·β for large n.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, chunks, ring_index};

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    m.pipeline(Level::Flat, m.p() as f64 - 1.0, 1.0, m.n())
}

/// Runs chain broadcast.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = a.dtype.size();
    let pos = ring_index(r, -(a.root as isize), p);
    if r == a.root && !a.in_place {
        ctx.reducer.copy(a.recv, a.send)?;
    }
    if a.count == 0 || p == 1 {
        return Ok(());
    }
    let next = (pos + 1 < p).then(|| ring_index(r, 1, p));
    let prev = ring_index(r, -1, p);
    let ce = ctx.chunk_elems(a.dtype);
    let mut sends = Vec::new();
    if r == a.root {
        let next = next.expect("the root has a successor when p > 1");
        for c in chunks(0..a.count, ce) {
            sends.push(ctx.send(next, 0, a.send.slice(bytes(&c, es)))?);
        }
    } else {
        let mut recvs = Vec::new();
        for c in chunks(0..a.count, ce) {
            let region = a.recv.slice(bytes(&c, es));
            recvs.push((region, ctx.recv(prev, 0, region)?));
        }
        for (region, req) in recvs {
            ctx.wait(req)?;
            if let Some(n) = next {
                sends.push(ctx.send(n, 0, region.as_region())?);
            }
        }
    }
    ctx.wait_all(&sends)
}
