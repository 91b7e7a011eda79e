//! All-gather: every rank ends with every rank's block, in rank order.

pub mod bruck;
pub mod hierarchical;
pub mod mapped;
pub mod mapped_ring;
pub mod recursive_doubling;
pub mod ring;
