//! Pairwise-exchange all-to-all.
//!
//! Steps (p ranks, n bytes sent per rank, blocks of n/p, sent in chunks): out of place,
//! every send (to rank r+k for k = 1..p-1) and every receive (from rank r-k) is posted at
//! once, in that order, so the transport moves all p-1 exchanges side by side, and the own
//! block is copied while they go. Sends first: a single-copy send announces its buffer when
//! posted, so the peer can read it while this rank copies its own block (2-rank shm, single
//! copy from 32 KiB, out of place: 256 KiB 11.2-11.5 us against 13.9-14.3 with the receives
//! first, 1 MiB 63-69 against 70-79; TCP and the FIFO alike). A block long enough for the
//! transport's single copy goes by single copy in its pieces too (out of place: the pieces
//! are the caller's unchanged input). In place, ranks pair up instead, one partner per round
//! ([`partner`]: a round-robin tournament, p-1 rounds in which every rank has a partner for
//! even p, p rounds with one rank resting for odd p): rank r swaps block j with its round's
//! partner j, chunk by chunk, sending each chunk from a scratch copy and receiving into the
//! block itself, so no block is overwritten before it is sent; the scratch is a few chunks,
//! which stay in cache. Both forms send the same messages (the pair's chunks under tag
//! (r + j) mod p), so some ranks may call in place and others not. Small calls in place on
//! more than 2 ranks copy the whole vector into scratch instead and exchange as out of place
//! from the copy ([`IN_PLACE_COPY_MAX_BYTES`]): the same messages, side by side.
//!
//! Bytes on the wire per rank: (p-1)/p · n sent and as many received.
//!
//! Cost (k chunks per block): out of place, one step of (p-1)·k messages side by side,
//! α + ((p-1)·k - 1)·gap + (p-1)/p·n·β + n/p·β_copy; in place, p-1 rounds of one pair each,
//! every block also copied into scratch, (p-1)·(α + (k-1)·gap) + (p-1)/p·n·(β + β_copy); in
//! place through a copy, out of place's exchange plus n·β_copy.

use std::collections::VecDeque;

use oxccl_transport::{ReqId, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::{bytes, chunks, ring_index};

/// Blocks travel in pieces of the chunk size, or up to this size when that is a sixteenth
/// of the block or less, in both forms (on every rank alike: it depends on the call alone).
/// Large blocks want few messages (over shared memory each is a single-copy read of its own:
/// 512 KiB pieces made a 2-rank 64 MiB call 15% slower than one message per block; 2 MiB
/// pieces, 10% faster), while the in-place form wants several pieces per block to overlap
/// its scratch copies with the exchange (one 2 MiB piece per block made a 4 MiB call 45%
/// slower in place).
const MAX_PIECE_BYTES: usize = 2 << 20;

/// Elements per piece (see [`MAX_PIECE_BYTES`]); the same on every rank.
fn piece_elems(ctx: &Ctx<'_>, a: &CollArgs) -> usize {
    let es = a.dtype.size();
    let bytes = (a.count * es / 16).clamp(ctx.chunk_bytes, ctx.chunk_bytes.max(MAX_PIECE_BYTES));
    (bytes / es).clamp(1, a.count.max(1))
}

/// Calls in place of up to this many bytes per rank, on more than 2 ranks, copy the whole
/// vector into scratch and run every exchange side by side from the copy, as out of place,
/// instead of swapping pair by pair: the p-1 rounds of the swap wait on each other, and with
/// ranks sharing cores each round waits for its pair to be scheduled. Measured in place over
/// shm (`oxccl-bench --algo all_to_all:pairwise -c 1`, two runs each, medians, us, swap / copy): 4
/// ranks 16 B 16.1 / 9.8, 4 KiB 16.8 / 10.7, 64 KiB 30.1 / 20.6, 256 KiB 55.4 / 48.4, 1 MiB
/// 163 / 168; 8 ranks 16 B 118 / 34, 64 KiB 138 / 64, 256 KiB 261 / 180, 1 MiB 803 / 989. At
/// 2 ranks the swap is one round, all the exchange there is, and the copy only cost (4 KiB
/// 0.98 / 1.21, 64 KiB 7.7 / 8.6).
pub const IN_PLACE_COPY_MAX_BYTES: usize = 256 << 10;

/// Whether a call in place of `bytes` per rank on `p` ranks goes through a copy of its whole
/// vector ([`IN_PLACE_COPY_MAX_BYTES`]) rather than the pairwise swap.
pub fn in_place_copies(p: usize, bytes: usize) -> bool {
    p > 2 && bytes <= IN_PLACE_COPY_MAX_BYTES
}

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let (p, n) = (m.p() as f64, m.n());
    if m.in_place && !in_place_copies(m.p(), m.bytes) {
        return m.steps(Level::Flat, p - 1.0, m.chunks(n / p), n / p) + m.copy((p - 1.0) / p * n);
    }
    let exchange = m.steps(Level::Flat, 1.0, (p - 1.0) * m.chunks(n / p), (p - 1.0) / p * n);
    // In place through a copy: the whole vector copied once, the own block left where it is.
    exchange + if m.in_place { m.copy(n) } else { m.copy(n / p) }
}

/// Runs pairwise all-to-all.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if a.count == 0 {
        return Ok(());
    }
    if !a.in_place {
        return out_of_place(ctx, a, true);
    }
    let n = a.recv.len();
    if !in_place_copies(ctx.size, n) {
        return in_place(ctx, a);
    }
    let scratch = ctx.reducer.scratch(n)?;
    ctx.reducer.copy(scratch.region(), a.recv.as_region())?;
    let from_copy = CollArgs { send: scratch.region().as_region(), in_place: false, ..*a };
    out_of_place(ctx, &from_copy, false).inspect_err(|e| {
        // Sends out of scratch may still be queued: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}

/// Out of place: every exchange posted at once; `own` copies the own block into place
/// (false where it is there already).
fn out_of_place(ctx: &Ctx<'_>, a: &CollArgs, own: bool) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    let blk = |j: usize| bytes(&(j * count..(j + 1) * count), es);
    // The messages of the in-place schedule (tag (r + j) mod p, chunk by chunk), so ranks
    // that call in place and ranks that do not exchange alike.
    let ce = piece_elems(ctx, a);
    let tag = |j: usize| (r + j) % p;
    // A block long enough for the transport to move it by single copy whole goes so in its
    // pieces too (a hint, which only this rank's sends follow: receivers take either). Cut
    // below the threshold, the 2 MiB blocks of a 2-rank 4 MiB call went through the FIFO, two
    // copies: 480-540 us against 360-390 by single copy, where Open MPI reads each block
    // whole in 380-390.
    let smallest_piece = (count - (count - 1) / ce * ce) * es;
    let pieces_ctx;
    let ctx = if ctx.single_copy_min != 0 && count * es >= ctx.single_copy_min && smallest_piece < ctx.single_copy_min {
        pieces_ctx = ctx.with_single_copy_min(smallest_piece);
        &pieces_ctx
    } else {
        ctx
    };
    let mut reqs = Vec::with_capacity(2 * (p - 1) * count.div_ceil(ce));
    for k in 1..p {
        let to = ring_index(r, k as isize, p);
        for c in chunks(to * count..(to + 1) * count, ce) {
            reqs.push(ctx.send(to, tag(to), a.send.slice(bytes(&c, es)))?);
        }
    }
    for k in 1..p {
        let from = ring_index(r, -(k as isize), p);
        for c in chunks(from * count..(from + 1) * count, ce) {
            reqs.push(ctx.recv(from, tag(from), a.recv.slice(bytes(&c, es)))?);
        }
    }
    // Peers read their blocks while the own block is copied.
    if own {
        ctx.place(a.recv.slice(blk(r)), a.send.slice(blk(r)), a.recv.len())?;
    }
    ctx.wait_all(&reqs)
}

/// How many rounds the in-place form takes: p-1 for even p, p for odd p (see [`partner`]).
pub fn rounds(p: usize) -> usize {
    if p.is_multiple_of(2) {
        p - 1
    } else {
        p
    }
}

/// Rank `r`'s partner in round `k` of the in-place form, or `None` where it rests that
/// round: a round-robin tournament, so each pair meets in exactly one round and both of
/// its ranks meet there. For odd p, rank r pairs with (k - r) mod p (resting where that is
/// r itself); for even p, ranks 0 to p-2 pair so modulo p-1 among themselves, and the one
/// that would rest pairs with rank p-1 instead, so no rank rests. (Pairing every p by
/// (k - r) mod p, as this did before, left two ranks resting in half of p rounds for even p:
/// at 4 ranks bound two to a core, two of the four rounds were one pair on one core with the
/// other core idle.)
pub fn partner(r: usize, k: usize, p: usize) -> Option<usize> {
    if !p.is_multiple_of(2) {
        let j = (k % p + p - r) % p;
        return (j != r).then_some(j);
    }
    let m = p - 1;
    if r == m {
        // The j with 2j = k (mod m): m is odd, so 2 has the inverse (m + 1) / 2.
        return Some(k % m * m.div_ceil(2) % m);
    }
    let j = (k % m + m - r) % m;
    Some(if j == r { m } else { j })
}

/// In place: in each round swap the block of this round's partner ([`partner`]) with it,
/// chunk by chunk through a few scratch chunks that stay in cache (each is reused once its
/// send completed).
fn in_place(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    let (p, r, count) = (ctx.size, ctx.rank, a.count);
    let es = a.dtype.size();
    if p == 1 {
        return Ok(());
    }
    let ce = piece_elems(ctx, a);
    let depth = ctx.pipeline_depth.max(1);
    let scratch = ctx.reducer.scratch(depth * ce * es)?;
    let slot = |i: usize, len: usize| scratch.region().slice(i * ce * es..(i * ce + len) * es);
    let mut inflight: VecDeque<ReqId> = VecDeque::new();
    let mut n = 0;
    let mut swap = || -> Result<()> {
        for round in 0..rounds(p) {
            let Some(j) = partner(r, round, p) else { continue };
            // The pair's tag, as out of place.
            let k = (r + j) % p;
            let mut recvs = Vec::new();
            for c in chunks(j * count..(j + 1) * count, ce) {
                if inflight.len() == depth {
                    ctx.wait(inflight.pop_front().expect("non-empty"))?;
                }
                let tmp = slot(n % depth, c.len());
                n += 1;
                let block = a.recv.slice(bytes(&c, es));
                ctx.reducer.copy(tmp, block.as_region())?;
                recvs.push(ctx.recv(j, k, block)?);
                inflight.push_back(ctx.send(j, k, tmp.as_region())?);
            }
            ctx.wait_all(&recvs)?;
        }
        let rest: Vec<ReqId> = inflight.drain(..).collect();
        ctx.wait_all(&rest)
    };
    swap().inspect_err(|e| {
        // Sends out of scratch may still be queued: fail the transport before it goes.
        ctx.net.fail(e.clone());
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_meets_in_exactly_one_round() {
        for p in 1..=17 {
            let mut met = vec![vec![0; p]; p];
            for k in 0..rounds(p) {
                let mut resting = 0;
                for (r, row) in met.iter_mut().enumerate() {
                    match partner(r, k, p) {
                        Some(j) => {
                            assert!(j < p && j != r, "p {p} round {k}: rank {r} paired with {j}");
                            assert_eq!(partner(j, k, p), Some(r), "p {p} round {k}: {r} -> {j} is not mutual");
                            row[j] += 1;
                        }
                        None => resting += 1,
                    }
                }
                // Even p: nobody rests; odd p: exactly one rank does.
                assert_eq!(resting, p % 2, "p {p} round {k}");
            }
            for (r, row) in met.iter().enumerate() {
                for (j, &n) in row.iter().enumerate() {
                    assert_eq!(n, usize::from(r != j), "p {p}: ranks {r} and {j} met {n} times");
                }
            }
        }
    }
}
