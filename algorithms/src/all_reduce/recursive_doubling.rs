//! Recursive-doubling all-reduce, for any number of ranks.
//!
//! Steps (p ranks, n bytes; q the largest power of two not above p, e = p - q):
//! 1. Fold: of the first 2e ranks, each even rank sends its vector to the odd rank above it,
//!    which reduces it in and stands for both; the other ranks stand for themselves. Now q
//!    ranks take part.
//! 2. lg q exchange steps: at step k a rank swaps its whole vector with the partner whose
//!    index differs in bit k, and both reduce (lower-ranked operand first, so both compute
//!    bitwise the same value).
//! 3. Unfold: each odd rank of the first 2e sends the result back to the even rank below.
//!
//! Out of place, the input is sent and reduced from where it is: the first reduction writes
//! the output, with no copy of the input into it first.
//!
//! Over a transport whose receivers read the sender's buffer (single copy: shared memory
//! with `process_vm_readv`, threads), a vector this rank has written and then sends is read
//! by the peer out of this core's cache, which moves its lines to the peer's core; reducing
//! into it right after then misses on every line. So a written vector goes out from a
//! private copy (a local copy of n bytes per such step), and this rank's own lines stay in
//! its cache, for vectors up to 512 KiB. 2-rank shm in place: 64 KiB 24 -> 13 us, 256 KiB
//! 52-55 -> 42 (out of place 7 and 20: its one step sends the untouched input).
//!
//! Bytes on the wire per rank: lg q · n (plus n for folded ranks).
//!
//! Cost: lg p·(α + n·β + n·γ), plus 2(α + n·β) + n·γ when p is not a power of two.
//! Latency-optimal: the choice for small vectors.

use oxccl_transport::{MemoryKind, Region, RegionMut, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};

/// The largest vector sent from a private copy: beyond the caches the lines come from memory
/// either way, and the copy only adds (2-rank shm in place, 1 MiB: 193-197 us without it,
/// 230-258 with it; 256 KiB: 52-55 without, 42 with).
const PRIVATE_SEND_MAX: usize = 512 << 10;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    let ((q, pow2), n) = (m.pow2(), m.n());
    let lg = q.log2();
    let mut c = m.steps(Level::Flat, lg, 1.0, n) + m.reduce(lg * n);
    if !pow2 {
        c += m.steps(Level::Flat, 2.0, 1.0, n) + m.reduce(n);
    }
    c
}

/// Runs recursive-doubling all-reduce.
pub fn run(ctx: &Ctx<'_>, a: &CollArgs) -> Result<()> {
    if super::trivial(ctx, a)? {
        return Ok(());
    }
    let (p, r) = (ctx.size, ctx.rank);
    let buf = a.recv;
    // This rank's vector so far: the input until the first reduction writes `buf`, so that
    // out of place needs no copy of the input into the output (n bytes read and written).
    let mut cur = a.send;
    // Small vectors (the case this algorithm is for) use a buffer on the stack: a pooled
    // scratch costs a lock and an allocation per call, more than the exchange itself.
    let mut local = [0u64; 32];
    let scratch;
    let tmp = if buf.len() <= std::mem::size_of_val(&local) && ctx.reducer.memory_kind() == MemoryKind::Host {
        // SAFETY: `local` lives until the end of this function, after every request on it
        // has completed (each step waits for its receive).
        unsafe { RegionMut::from_raw_parts(local.as_mut_ptr().cast(), buf.len(), MemoryKind::Host) }
    } else {
        scratch = ctx.reducer.scratch(buf.len())?;
        scratch.region().slice(0..buf.len())
    };
    let q = 1usize << (usize::BITS - 1 - p.leading_zeros());
    let e = p - q;
    // Where a peer reads this rank's buffer directly, a vector this rank wrote is sent from a
    // private copy (see the module documentation).
    let private_sends = ctx.single_copy_min > 0
        && (ctx.single_copy_min..=PRIVATE_SEND_MAX).contains(&buf.len())
        && ctx.reducer.memory_kind() == MemoryKind::Host;
    // Taken at the first send that needs it: out of place at 2 ranks none does.
    let mut spare: Option<crate::kernels::Scratch> = None;

    // Fold.
    let vrank = if r < 2 * e {
        if r % 2 == 0 {
            let s = ctx.send(r + 1, 0, cur)?;
            ctx.wait(s)?;
            None
        } else {
            let q = ctx.recv(r - 1, 0, tmp)?;
            ctx.wait(q)?;
            ctx.reducer.reduce(a.dtype, a.op, buf, tmp.as_region(), cur)?;
            cur = buf.as_region();
            Some(r / 2)
        }
    } else {
        Some(r - e)
    };

    // Exchange (at least one step: q >= 2).
    if let Some(v) = vrank {
        let mut mask = 1;
        let mut step = 1;
        while mask < q {
            let vp = v ^ mask;
            let peer = if vp < e { vp * 2 + 1 } else { vp + e };
            // A vector this rank wrote goes out from the private copy, if it keeps one.
            let out = if private_sends && std::ptr::eq(cur.as_ptr(), buf.as_mut_ptr()) {
                if spare.is_none() {
                    spare = Some(ctx.reducer.scratch(buf.len())?);
                }
                let copy = spare.as_ref().expect("taken above").region().slice(0..buf.len());
                ctx.reducer.copy(copy, cur)?;
                copy.as_region()
            } else {
                cur
            };
            // The send first: it is what the peer is waiting for.
            let sq = ctx.send(peer, step, out)?;
            let rq = ctx.recv(peer, step, tmp)?;
            ctx.wait(rq)?;
            ctx.wait(sq)?;
            let (lo, hi): (Region, Region) = if peer < r { (tmp.as_region(), cur) } else { (cur, tmp.as_region()) };
            ctx.reducer.reduce(a.dtype, a.op, buf, lo, hi)?;
            cur = buf.as_region();
            mask <<= 1;
            step += 1;
        }
    }

    // Unfold.
    const UNFOLD: usize = 0xffff;
    if r < 2 * e {
        if r % 2 == 1 {
            let s = ctx.send(r - 1, UNFOLD, buf.as_region())?;
            ctx.wait(s)?;
        } else {
            let q = ctx.recv(r + 1, UNFOLD, buf)?;
            ctx.wait(q)?;
        }
    }
    if a.op == crate::op::ReduceOp::Avg {
        ctx.reducer.divide(a.dtype, buf, p)?;
    }
    Ok(())
}
