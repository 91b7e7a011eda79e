//! Dissemination barrier.
//!
//! Steps (p ranks): in round k = 0, 1, ... while 2^k < p, each rank sends an empty message
//! to rank r + 2^k and waits for one from rank r - 2^k. After ceil(lg p) rounds every rank
//! has heard, directly or through others, from every rank.
//!
//! Bytes on the wire: frame headers only.
//!
//! Cost: ceil(lg p)·α.

use oxccl_transport::{Region, RegionMut, Result};

use crate::cost::{Cost, Level, Model};
use crate::ctx::{CollArgs, Ctx};
use crate::partition::ring_index;

/// The predicted time of one call (the formula above; see [`crate::cost`]), for p >= 2
/// and a non-empty call.
pub fn cost(m: &Model<'_>) -> Cost {
    m.steps(Level::Flat, m.log2_ceil(), 1.0, 0.0)
}

/// Runs the dissemination barrier.
pub fn run(ctx: &Ctx<'_>, _a: &CollArgs) -> Result<()> {
    let (p, r) = (ctx.size, ctx.rank);
    let mut d = 1;
    let mut round = 0;
    while d < p {
        let rq = ctx.recv(ring_index(r, -(d as isize), p), round, RegionMut::empty())?;
        let sq = ctx.send(ring_index(r, d as isize, p), round, Region::empty())?;
        ctx.wait(rq)?;
        ctx.wait(sq)?;
        d <<= 1;
        round += 1;
    }
    Ok(())
}
