//! All-reduce: every rank ends with the element-wise reduction of every rank's vector.

pub mod direct;
pub mod halving_doubling;
pub mod hierarchical;
pub mod mapped;
pub mod mapped_ring;
pub mod recursive_doubling;
pub mod ring;
pub mod tree;

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};

/// Handles the cases every all-reduce algorithm shares: an empty vector, and a world of one
/// (a copy when out of place; the mean of one value is itself). `Ok(true)` when done.
pub(crate) fn trivial(ctx: &Ctx<'_>, a: &CollArgs) -> Result<bool> {
    if a.count == 0 {
        return Ok(true);
    }
    if ctx.size == 1 {
        if !a.in_place {
            ctx.reducer.copy(a.recv, a.send)?;
        }
        return Ok(true);
    }
    Ok(false)
}
