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

use oxccl_transport::{Error, Result};

use crate::ctx::{describe, Ctx};

pub use crate::exchange::VERIFY_FINGERPRINT;

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
    let all = crate::exchange::all_gather_records(ctx, VERIFY_FINGERPRINT, &mine)?;
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
