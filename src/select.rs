//! Choosing an algorithm for a call: apart from running it, so the rule is one place.
//!
//! A forced algorithm ([`Config::algorithms`]) always wins. Otherwise all-reduce takes
//! recursive doubling up to [`Config::small_bytes`] (latency-bound: lg p messages instead of
//! 2(p-1)) and the ring above it (bandwidth-bound: 2(p-1)/p of the bytes instead of lg p
//! times them); every other collective has one algorithm in this build.

use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::Collective;

use crate::config::Config;

/// The algorithm for `coll` on `bytes` bytes in a world of `size`.
pub fn choose(coll: Collective, bytes: usize, size: usize, cfg: &Config) -> Algorithm {
    if let Some(a) = cfg.algorithms.get(coll) {
        return a;
    }
    match coll {
        Collective::AllReduce if size > 1 && bytes <= cfg.small_bytes => Algorithm::RecursiveDoubling,
        _ => registry::algorithms(coll)[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_and_overrides() {
        let c = Config::default();
        assert_eq!(choose(Collective::AllReduce, 8, 4, &c), Algorithm::RecursiveDoubling);
        assert_eq!(choose(Collective::AllReduce, 1 << 20, 4, &c), Algorithm::Ring);
        assert_eq!(choose(Collective::AllToAll, 8, 4, &c), Algorithm::Pairwise);
        let forced = Config::default().with_algorithm("ring").unwrap();
        assert_eq!(choose(Collective::AllReduce, 8, 4, &forced), Algorithm::Ring);
    }
}
