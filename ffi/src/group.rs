//! `oxcclGroupStart` / `oxcclGroupEnd`: per-thread queues of sends and receives that are
//! posted together at the outermost group end.

use std::cell::RefCell;

use oxccl_rs::{Error, RawP2p};

use crate::boundary::{lookup, Entry};
use crate::types::oxcclComm_t;

#[derive(Default)]
struct Group {
    depth: u32,
    ops: Vec<(usize, RawP2p)>,
}

thread_local! {
    static GROUP: RefCell<Group> = RefCell::new(Group::default());
}

pub(crate) fn start() {
    GROUP.with(|g| g.borrow_mut().depth += 1);
}

/// Runs `op` now, or queues it when a group is open on this thread.
pub(crate) fn submit(comm: oxcclComm_t, entry: &Entry, op: RawP2p) -> Result<(), Error> {
    let queued = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.depth > 0 {
            g.ops.push((comm as usize, op));
            true
        } else {
            false
        }
    });
    if queued {
        return Ok(());
    }
    // SAFETY: the caller's buffer, valid for the call (header contract).
    unsafe { entry.comm.p2p_batch_raw(&[op]) }
}

/// Closes a group; at the outermost level runs the queued operations per communicator.
pub(crate) fn end(failed: &mut Option<oxcclComm_t>) -> Result<(), Error> {
    let ops = GROUP.with(|g| {
        let mut g = g.borrow_mut();
        if g.depth == 0 {
            return Err(Error::invalid_usage("oxcclGroupEnd without a matching oxcclGroupStart"));
        }
        g.depth -= 1;
        Ok(if g.depth == 0 { std::mem::take(&mut g.ops) } else { Vec::new() })
    })?;
    let mut order: Vec<usize> = Vec::new();
    for (h, _) in &ops {
        if !order.contains(h) {
            order.push(*h);
        }
    }
    for h in order {
        let batch: Vec<RawP2p> = ops.iter().filter(|(c, _)| *c == h).map(|(_, op)| *op).collect();
        let handle = h as oxcclComm_t;
        let r = lookup(handle).and_then(|e| {
            // SAFETY: the buffers queued by oxcclSend/oxcclRecv must stay valid until
            // oxcclGroupEnd returns (header contract).
            unsafe { e.comm.p2p_batch_raw(&batch) }
        });
        if let Err(e) = r {
            *failed = Some(handle);
            return Err(e);
        }
    }
    Ok(())
}
