//! Broadcast: every rank ends with the root's vector.

pub mod mapped;
pub mod ring;
pub mod tree;
