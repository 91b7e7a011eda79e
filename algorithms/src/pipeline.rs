//! Pipelined receiving: a stream of chunks from one peer lands in a few scratch slots, and
//! each is handed to the caller as soon as it has arrived while the next ones keep arriving.

use std::collections::VecDeque;
use std::ops::Range;

use oxccl_transport::{Region, ReqId, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::partition::bytes;

/// Receives `items` (each a step, used for the tag, and an element range, which gives the
/// length) from `from`, in order, into `ctx.pipeline_depth` rotating scratch slots, calling
/// `on_arrival` with each chunk as soon as it is complete. A slot is reposted as soon as
/// `on_arrival` returns, so `on_arrival` must be done with the bytes by then.
pub(crate) fn recv_stream(
    ctx: &Ctx<'_>,
    from: usize,
    dtype: DataType,
    items: &[(usize, Range<usize>)],
    mut on_arrival: impl FnMut(&(usize, Range<usize>), Region) -> Result<()>,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let es = dtype.size();
    let depth = ctx.pipeline_depth.clamp(1, items.len());
    let slot_bytes = items.iter().map(|(_, c)| c.len()).max().unwrap_or(0) * es;
    let scratch = ctx.reducer.scratch(depth * slot_bytes)?;
    let slot = |i: usize, len: usize| scratch.region().slice(i * slot_bytes..i * slot_bytes + len);

    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut inflight: VecDeque<(usize, ReqId)> = VecDeque::with_capacity(depth);
    let mut next = 0;
    let mut post = |free: &mut Vec<usize>, inflight: &mut VecDeque<(usize, ReqId)>| -> Result<()> {
        while next < items.len() {
            let Some(sl) = free.pop() else { break };
            let (s, c) = &items[next];
            inflight.push_back((sl, ctx.recv(from, *s, slot(sl, bytes(c, es).len()))?));
            next += 1;
        }
        Ok(())
    };
    post(&mut free, &mut inflight)?;
    for item in items {
        let (sl, req) = inflight.pop_front().expect("a receive is posted for every item");
        ctx.wait(req)?;
        if let Err(e) = on_arrival(item, slot(sl, bytes(&item.1, es).len()).as_region()) {
            // Receives into the scratch slots may still be posted: fail the transport (which
            // drops them untouched) before the scratch goes out of scope.
            ctx.net.fail(e.clone());
            return Err(e);
        }
        free.push(sl);
        post(&mut free, &mut inflight)?;
    }
    Ok(())
}
