//! Choosing an algorithm for a call: apart from running it, so the rule is one place.
//!
//! A forced algorithm ([`Config::algorithms`]) always wins. Otherwise all-reduce takes
//! recursive doubling up to [`Config::small_bytes`] (latency-bound: lg p messages instead of
//! 2(p-1)) and, above it, the ring (bandwidth-bound: 2(p-1)/p of the bytes instead of lg p
//! times them) or, where the transport moves messages with one copy read by the receiver
//! (shared memory), the direct algorithm. Reduce-scatter takes direct on such transports
//! and the ring elsewhere.
//!
//! Measured on the 2-core development VM over shared memory (float sum, busbw, see
//! `benches/RESULTS.md`): direct reduce-scatter beats the ring by 1.3-2x from 64 KiB at 2
//! and 4 ranks (each input byte is read once, by its owner, instead of partials making
//! p-1 trips); direct all-reduce matches the ring at 2 ranks and beats it by 1.2-1.9x at 4
//! ranks from 256 KiB (two message steps instead of 2(p-1)).

use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::Collective;

use oxccl_transport::Capabilities;

use crate::config::Config;

/// The algorithm for `coll` on `bytes` bytes in a world of `size`, over a transport with
/// `caps`.
pub fn choose(coll: Collective, bytes: usize, size: usize, caps: Capabilities, cfg: &Config) -> Algorithm {
    if let Some(a) = cfg.algorithms.get(coll) {
        return a;
    }
    match coll {
        Collective::AllReduce if size > 1 && bytes <= cfg.small_bytes => Algorithm::RecursiveDoubling,
        Collective::AllReduce | Collective::ReduceScatter if caps.single_copy => Algorithm::Direct,
        _ => registry::algorithms(coll)[0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_and_overrides() {
        let c = Config::default();
        let tcp = Capabilities { inter_host: true, ..Capabilities::default() };
        let shm = Capabilities { single_copy: true, ..Capabilities::default() };
        assert_eq!(choose(Collective::AllReduce, 8, 4, tcp, &c), Algorithm::RecursiveDoubling);
        assert_eq!(choose(Collective::AllReduce, 8, 4, shm, &c), Algorithm::RecursiveDoubling);
        assert_eq!(choose(Collective::AllReduce, 1 << 20, 4, tcp, &c), Algorithm::Ring);
        assert_eq!(choose(Collective::AllReduce, 1 << 20, 4, shm, &c), Algorithm::Direct);
        assert_eq!(choose(Collective::ReduceScatter, 8, 4, shm, &c), Algorithm::Direct);
        assert_eq!(choose(Collective::ReduceScatter, 8, 4, tcp, &c), Algorithm::Ring);
        assert_eq!(choose(Collective::AllToAll, 8, 4, shm, &c), Algorithm::Pairwise);
        let forced = Config::default().with_algorithm("ring").unwrap();
        assert_eq!(choose(Collective::AllReduce, 8, 4, shm, &forced), Algorithm::Ring);
        assert_eq!(choose(Collective::ReduceScatter, 8, 4, shm, &forced), Algorithm::Ring);
    }
}
