//! Reduce-scatter: rank r ends with block r of the element-wise reduction.

pub mod direct;
pub mod halving_doubling;
pub mod hierarchical;
pub mod mapped;
pub mod mapped_ring;
pub mod ring;

use oxccl_transport::Result;

use crate::ctx::{CollArgs, Ctx};

/// Handles the cases every reduce-scatter algorithm shares: empty blocks, and a world of
/// one (its block is the whole input: a copy when out of place). `Ok(true)` when done.
pub(crate) fn trivial(ctx: &Ctx<'_>, a: &CollArgs) -> Result<bool> {
    if a.count == 0 {
        return Ok(true);
    }
    if ctx.size == 1 {
        if !a.in_place {
            ctx.reducer.copy(a.recv, a.send.slice(0..a.count * a.dtype.size()))?;
        }
        return Ok(true);
    }
    Ok(false)
}
