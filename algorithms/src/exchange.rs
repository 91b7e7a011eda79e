//! Side exchanges inside a call: every rank's small record to every rank, under tags of
//! their own (a reserved fingerprint and the barrier's collective code at the call's
//! sequence number), so they match whatever call the ranks are in and cannot be taken for
//! its data.
//!
//! Steps: a Bruck all-gather of one record per rank. Bytes on the wire per rank:
//! record·(p-1), in ceil(lg p) messages.

use oxccl_transport::{Region, RegionMut, Result};

use crate::ctx::{CollArgs, Collective, Ctx};
use crate::{DataType, ReduceOp};

/// The fingerprint of call verification's exchange ([`crate::verify`]); no call's
/// fingerprint takes it (its operator field would be 255).
pub const VERIFY_FINGERPRINT: u64 = u64::MAX;

/// The fingerprint of the exchange that ends an algorithm's trial calls (each rank's
/// measured times); as unreachable by a call as [`VERIFY_FINGERPRINT`].
pub const TUNE_FINGERPRINT: u64 = u64::MAX - 1;

/// Every rank's `mine` (all ranks pass records of one length), in rank order, gathered under
/// tags of `fingerprint` at `ctx`'s sequence number.
pub fn all_gather_records(ctx: &Ctx<'_>, fingerprint: u64, mine: &[u8]) -> Result<Vec<u8>> {
    let mut all = vec![0u8; mine.len() * ctx.size];
    if ctx.size == 1 {
        all.copy_from_slice(mine);
        return Ok(all);
    }
    let exchange = Ctx { collective: Collective::Barrier, fingerprint, ..ctx.with_chunk_bytes(ctx.chunk_bytes) };
    let args = CollArgs {
        // SAFETY: `mine` and `all` outlive the all-gather, which completes (or fails the
        // transport, dropping its requests) before it returns.
        send: unsafe { Region::from_slice(mine) },
        // SAFETY: as above.
        recv: unsafe { RegionMut::from_slice(&mut all) },
        in_place: false,
        count: mine.len(),
        dtype: DataType::U8,
        op: ReduceOp::Sum,
        root: 0,
    };
    crate::all_gather::bruck::run(&exchange, &args)?;
    Ok(all)
}
