//! Binomial-tree reduce, pipelined in chunks.
//!
//! Steps (p ranks, n bytes): the binomial tree of the broadcast (see `tree.rs`), traversed
//! toward the root. Per chunk, a rank receives its children's partial results, reduces them
//! into its own contribution (children in a fixed order, so the result does not depend on
//! timing) and sends the sum to its parent; the root ends with the full reduction.
//!
//! Bytes on the wire per rank: n sent (not at the root), n received per child (up to
//! lg p at the root).
//!
//! Cost: ceil(lg p)·(α + n·β + n·γ) unpipelined: latency-optimal for small vectors.

use oxccl_transport::Result;

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::op::ReduceOp;
use crate::partition::{bytes, chunks};
use crate::tree::binomial;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let lg = m.log2_ceil();
    m.pipeline(Level::Flat, lg, lg, m.n()) + m.reduce(lg * m.n())
}

/// Runs binomial-tree reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = a.dtype.size();
    if a.count == 0 {
        return Ok(());
    }
    if p == 1 {
        return if a.in_place { Ok(()) } else { ctx.reducer.copy(a.recv, a.send) };
    }
    let node = binomial(p, a.root, r);
    let ce = ctx.chunk_elems(a.dtype);
    let kids = node.children.len();
    let mut sends = Vec::new();
    if kids == 0 {
        let parent = node.parent.expect("a leaf has a parent when p > 1");
        for c in chunks(0..a.count, ce) {
            sends.push(ctx.send(parent, 0, a.send.slice(bytes(&c, es)))?);
        }
        return ctx.wait_all(&sends);
    }
    // Partial sums: the output at the root, scratch elsewhere (sent on, so kept whole).
    let acc_scratch;
    let acc = if node.parent.is_none() {
        a.recv
    } else {
        acc_scratch = ctx.reducer.scratch(a.send.len())?;
        acc_scratch.region().slice(0..a.send.len())
    };
    let slot_bytes = ce.min(a.count) * es;
    let tmp = ctx.reducer.scratch(kids * slot_bytes)?;
    let mut run = || -> Result<()> {
        for c in chunks(0..a.count, ce) {
            let b = bytes(&c, es);
            let mut reqs = Vec::with_capacity(kids);
            for (i, &child) in node.children.iter().enumerate() {
                let slot = tmp.region().slice(i * slot_bytes..i * slot_bytes + b.len());
                reqs.push((slot, ctx.recv(child, 0, slot)?));
            }
            let dst = acc.slice(b.clone());
            for (i, (slot, req)) in reqs.into_iter().enumerate() {
                ctx.wait(req)?;
                let mine = if i == 0 { a.send.slice(b.clone()) } else { dst.as_region() };
                ctx.reducer.reduce(a.dtype, a.op, dst, mine, slot.as_region())?;
            }
            match node.parent {
                Some(parent) => sends.push(ctx.send(parent, 0, dst.as_region())?),
                None if a.op == ReduceOp::Avg => ctx.reducer.divide(a.dtype, dst, p)?,
                None => {}
            }
        }
        ctx.wait_all(&sends)
    };
    run().inspect_err(|e| {
        // Requests on scratch may still be posted: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}
