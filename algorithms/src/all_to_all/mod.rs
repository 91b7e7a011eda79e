//! All-to-all: rank r sends its block j to rank j and receives rank j's block r into its
//! block j.

pub mod pairwise;
