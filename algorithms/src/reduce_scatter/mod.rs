//! Reduce-scatter: rank r ends with block r of the element-wise reduction.

pub mod direct;
pub mod halving_doubling;
pub mod hierarchical;
pub mod ring;
