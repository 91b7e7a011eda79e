//! Broadcast: every rank ends with the root's vector.

pub mod ring;
pub mod tree;
