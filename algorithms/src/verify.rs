//! Call verification: before a collective moves any byte, every rank learns what every other
//! rank is calling, and ranks that disagree all fail with one error listing each call and
//! the ranks that made it.
//!
//! The fingerprint in every tag ([`crate::ctx::fingerprint`]) already turns most
//! disagreements into a mismatch, but only on a rank that receives a message of the other
//! call. Ranks that only send in the call they disagree on learn nothing there: two ranks
//! that both call a small broadcast as its root each send their vector and return, and the
//! disagreement shows in their next call (which runs into the other root's message) or at the
//! timeout. Verification closes that gap at a price, so it is opt-in
//! (`OXCCL_VERIFY_CALLS=1`): MPI's collective-checking libraries make the same trade.
//!
//! Steps: a Bruck all-gather of one 16-byte record per rank (the collective and the call's
//! fingerprint), under tags of their own (a reserved fingerprint, so the exchange matches
//! whatever the ranks are about to call), then every rank compares the p records.
//!
//! Bytes on the wire per rank: 16·(p-1), in ceil(lg p) messages. Cost: ceil(lg p)·α per
//! call; nothing of the call itself starts before it ends.

use oxccl_transport::{Error, Region, RegionMut, Result};

use crate::ctx::{describe, CollArgs, Collective, Ctx};
use crate::{DataType, ReduceOp};

/// The fingerprint of the verification exchange's tags; no call's fingerprint takes it (its
/// operator field would be 255).
pub const VERIFY_FINGERPRINT: u64 = u64::MAX;

const RECORD: usize = 16;

/// Checks that every rank is making the call `ctx` describes (collective and fingerprint,
/// at `ctx.seq`): `Ok` on every rank, or on every rank the same InvalidUsage naming each
/// distinct call and its ranks.
pub fn verify_call(ctx: &Ctx<'_>) -> Result<()> {
    if ctx.size == 1 {
        return Ok(());
    }
    let mut mine = [0u8; RECORD];
    mine[..8].copy_from_slice(&(ctx.collective as u64).to_le_bytes());
    mine[8..].copy_from_slice(&ctx.fingerprint.to_le_bytes());
    let mut all = vec![0u8; RECORD * ctx.size];
    let exchange = Ctx {
        net: ctx.net,
        reducer: ctx.reducer,
        rank: ctx.rank,
        size: ctx.size,
        seq: ctx.seq,
        collective: Collective::Barrier,
        deadline: ctx.deadline,
        chunk_bytes: ctx.chunk_bytes,
        pipeline_depth: ctx.pipeline_depth,
        recv_sink: ctx.recv_sink,
        hosts: ctx.hosts,
        fingerprint: VERIFY_FINGERPRINT,
    };
    let args = CollArgs {
        // SAFETY: `mine` and `all` outlive the all-gather, which completes (or fails the
        // transport, dropping its requests) before it returns.
        send: unsafe { Region::from_slice(&mine) },
        // SAFETY: as above.
        recv: unsafe { RegionMut::from_slice(&mut all) },
        in_place: false,
        count: RECORD,
        dtype: DataType::U8,
        op: ReduceOp::Sum,
        root: 0,
    };
    crate::all_gather::bruck::run(&exchange, &args)?;
    let calls: Vec<(u64, u64)> = all
        .chunks_exact(RECORD)
        .map(|r| {
            let word = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
            (word(0), word(8))
        })
        .collect();
    if calls.iter().all(|c| *c == calls[0]) {
        return Ok(());
    }
    // Each distinct call, in order of its first rank, with the ranks that made it.
    let mut groups: Vec<((u64, u64), Vec<usize>)> = Vec::new();
    for (rank, c) in calls.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| g == c) {
            Some((_, ranks)) => ranks.push(rank),
            None => groups.push((*c, vec![rank])),
        }
    }
    let described: Vec<String> = groups
        .iter()
        .map(|((coll, fp), ranks)| {
            let call = describe(*coll, ctx.seq, None, *fp);
            let who = if ranks.len() == 1 { "rank" } else { "ranks" };
            format!("{call} on {who} {}", list(ranks))
        })
        .collect();
    Err(Error::invalid_usage(format!("mismatched calls (verified before any data moved): {}", described.join("; "))))
}

/// `0, 2-5, 7`.
fn list(ranks: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        out.push(if j > i { format!("{}-{}", ranks[i], ranks[j]) } else { ranks[i].to_string() });
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_lists_collapse_runs() {
        assert_eq!(list(&[0]), "0");
        assert_eq!(list(&[0, 2, 3, 4, 5, 7]), "0, 2-5, 7");
        assert_eq!(list(&[1, 2]), "1-2");
    }
}
