//! All-to-all: rank r sends its block j to rank j and receives rank j's block r into its
//! block j. [`pairwise_v`] is the variable-count form (all-to-all-v).

pub mod bruck;
pub mod hierarchical;
pub mod mapped;
pub mod pairwise;
pub mod pairwise_v;
