//! Pipelined chain ("ring") reduce.
//!
//! Steps (p ranks, n bytes): ranks form a chain root, root+1, ..., root+p-1, and data flows
//! toward the root. The chain's far end sends its vector chunk by chunk; every other rank
//! receives each chunk into a scratch slot, reduces it with its own contribution (into
//! scratch, or into the output at the root) and forwards the result at once.
//!
//! Bytes on the wire per rank: n received and n sent (none sent at the root, none received
//! at the far end).
//!
//! Cost: (p-1 + k-1)·α + (1 + (p-2)/k)·n·(β + γ) with k chunks.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::op::ReduceOp;
use crate::partition::{bytes, chunks, ring_index};
use crate::pipeline::recv_stream;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    m.pipeline(Level::Flat, m.p() as f64 - 1.0, 1.0, m.n()) + m.reduce(m.n())
}

/// Runs chain reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = a.dtype.size();
    let is_root = r == a.root;
    if a.count == 0 {
        return Ok(());
    }
    if p == 1 {
        return if a.in_place { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    let pos = ring_index(r, -(a.root as isize), p);
    let toward_root = ring_index(r, -1, p);
    let from_far = ring_index(r, 1, p);
    let ce = ctx.chunk_elems(a.dtype);
    let items: Vec<(usize, std::ops::Range<usize>)> = chunks(0..a.count, ce).map(|c| (0, c)).collect();
    let mut sends = Vec::new();
    if pos == p - 1 {
        for (_, c) in &items {
            sends.push(ctx.send(toward_root, 0, a.send.slice(bytes(c, es)))?);
        }
        return ctx.wait_all(&sends);
    }
    let scratch;
    let acc = if is_root {
        a.recv
    } else {
        scratch = ctx.reducer.scratch(a.send.len())?;
        scratch.region().slice(0..a.send.len())
    };
    recv_stream(ctx, from_far, a.dtype, &items, |(_, c), incoming| {
        let b = bytes(c, es);
        let dst = acc.slice(b.clone());
        ctx.reducer.reduce(a.dtype, a.op, dst, incoming, a.send.slice(b))?;
        if is_root {
            if a.op == ReduceOp::Avg {
                ctx.reducer.divide(a.dtype, dst, p)?;
            }
        } else {
            sends.push(ctx.send(toward_root, 0, dst.as_region())?);
        }
        Ok(())
    })?;
    ctx.wait_all(&sends)
}
