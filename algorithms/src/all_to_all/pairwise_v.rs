//! Pairwise all-to-all-v: all-to-all with a count and a displacement per peer (what MPI calls
//! `MPI_Alltoallv` and NCCL lacks).
//!
//! Steps (p ranks): first every rank tells every peer how many elements it will send it and
//! how many it expects from it (16 bytes per pair, all at once); a disagreement is an
//! `InvalidUsage` error on both sides of the pair, naming both counts, before any data moves.
//! Then the own block is copied locally and every non-empty receive and send is posted at
//! once, as in pairwise all-to-all.
//!
//! Bytes on the wire per rank: its send counts (plus 16 (p-1) bytes of counts).
//!
//! Cost: 2(p-1)·α + n·β, n the bytes a rank sends.

use oxccl_transport::{Error, Region, RegionMut, Result};

use crate::ctx::Ctx;
use crate::dtype::DataType;
use crate::partition::ring_index;

/// Per-peer layout of one side of an all-to-all-v, in elements.
#[derive(Debug, Clone, Copy)]
pub struct Layout<'a> {
    /// Elements for (or from) each peer.
    pub counts: &'a [usize],
    /// Where each peer's elements start.
    pub displs: &'a [usize],
}

impl Layout<'_> {
    /// Checks the layout has one entry per rank and fits in `bytes` bytes of `dtype`.
    pub fn check(&self, what: &str, p: usize, bytes: usize, dtype: DataType) -> Result<()> {
        if self.counts.len() != p || self.displs.len() != p {
            return Err(Error::invalid_argument(format!("{what}: need {p} counts and displacements")));
        }
        for j in 0..p {
            let end = self.displs[j]
                .checked_add(self.counts[j])
                .and_then(|e| e.checked_mul(dtype.size()))
                .ok_or_else(|| Error::invalid_argument(format!("{what}: block {j} overflows")))?;
            if end > bytes {
                return Err(Error::invalid_argument(format!(
                    "{what}: block {j} ends at byte {end}, past the buffer's {bytes} bytes"
                )));
            }
        }
        Ok(())
    }

    fn bytes(&self, j: usize, es: usize) -> std::ops::Range<usize> {
        self.displs[j] * es..(self.displs[j] + self.counts[j]) * es
    }
}

/// Runs pairwise all-to-all-v. `send` and `recv` must not overlap.
pub fn run(
    ctx: &Ctx<'_>,
    send: Region,
    sl: Layout<'_>,
    recv: RegionMut,
    rl: Layout<'_>,
    dtype: DataType,
) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let es = dtype.size();
    sl.check("send layout", p, send.len(), dtype)?;
    rl.check("recv layout", p, recv.len(), dtype)?;
    if sl.counts[r] != rl.counts[r] {
        return Err(Error::invalid_usage(format!(
            "this rank sends itself {} elements but expects {}",
            sl.counts[r], rl.counts[r]
        )));
    }

    // Counts first: to peer j, (what I send j, what I expect from j).
    let mine: Vec<[u64; 2]> = (0..p).map(|j| [sl.counts[j] as u64, rl.counts[j] as u64]).collect();
    let mut theirs = vec![[0u64; 2]; p];
    let mut reqs = Vec::with_capacity(2 * p);
    for k in 1..p {
        let from = ring_index(r, -(k as isize), p);
        // SAFETY: `theirs` outlives the wait below and is not touched until then.
        let dst = unsafe {
            RegionMut::from_raw_parts(theirs[from].as_mut_ptr().cast(), 16, oxccl_transport::MemoryKind::Host)
        };
        reqs.push(ctx.recv(from, 0, dst)?);
    }
    for k in 1..p {
        let to = ring_index(r, k as isize, p);
        // SAFETY: `mine` outlives the wait below.
        let src = unsafe { Region::from_raw_parts(mine[to].as_ptr().cast(), 16, oxccl_transport::MemoryKind::Host) };
        reqs.push(ctx.send(to, 0, src)?);
    }
    ctx.wait_all(&reqs)?;
    for j in (0..p).filter(|&j| j != r) {
        let [they_send, they_expect] = theirs[j];
        if they_send != rl.counts[j] as u64 || they_expect != sl.counts[j] as u64 {
            return Err(Error::invalid_usage(format!(
                "all_to_allv counts disagree with rank {j}: it sends {they_send} elements here where {} are expected, \
                 and expects {they_expect} where {} are sent",
                rl.counts[j], sl.counts[j]
            ))
            .with_peer(j));
        }
    }

    ctx.place(recv.slice(rl.bytes(r, es)), send.slice(sl.bytes(r, es)), recv.len())?;
    let mut reqs = Vec::with_capacity(2 * p);
    for k in 1..p {
        let from = ring_index(r, -(k as isize), p);
        if rl.counts[from] > 0 {
            reqs.push(ctx.recv(from, 1, recv.slice(rl.bytes(from, es)))?);
        }
    }
    for k in 1..p {
        let to = ring_index(r, k as isize, p);
        if sl.counts[to] > 0 {
            reqs.push(ctx.send(to, 1, send.slice(sl.bytes(to, es)))?);
        }
    }
    ctx.wait_all(&reqs)
}
