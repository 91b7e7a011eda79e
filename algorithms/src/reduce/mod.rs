//! Reduce: the root ends with the element-wise reduction of every rank's vector.

pub mod mapped;
pub mod ring;
pub mod tree;
