//! Choosing an algorithm for a call: apart from running it, so the rule is one place.
//!
//! A forced algorithm ([`Config::algorithms`]) always wins. Otherwise the first row of
//! the table that matches the collective, the fabric, the world size and the message size
//! picks (`TABLE` below). The table was measured on the 2-core development VM with every
//! algorithm side by side (`oxccl-bench --compare ... --collective all` at 3, 4 and 8 ranks
//! over shared memory and TCP, 8 B to 64 MiB; `benches/SELECTION.md` has every figure: the
//! choice is within 10% of the fastest algorithm in 88% of the cells). In short:
//!
//! * **small messages** are latency-bound: log-step algorithms (recursive doubling, Bruck,
//!   halving-doubling, trees) beat the ring's p-1 steps;
//! * **shared memory with single-copy reads**: direct all-reduce and reduce-scatter (two
//!   message steps, each input byte read once, by its owner);
//! * **TCP**: halving-doubling between the latency and bandwidth regimes when p is a power
//!   of two (no fold), the ring for the largest messages;
//! * **several hosts**: the hierarchical algorithms (shared memory inside, TCP between;
//!   all-to-all only for small blocks). These rows follow the algorithms' costs: one
//!   machine cannot measure real hosts.
//!
//! The cost-model issue replaces these thresholds with predicted times.

use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::Collective;

use crate::config::Config;

/// What the ranks of a communicator are connected by, as far as choosing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fabric {
    /// One host, shared memory with single-copy reads (or the in-process transport).
    SharedMemory,
    /// Sockets between every pair (or shared memory without single-copy reads).
    Network,
    /// Several hosts with several ranks on at least one: shared memory inside, TCP between.
    MultiHost,
}

/// Which world sizes a row applies to.
#[derive(Debug, Clone, Copy)]
enum Ranks {
    Any,
    /// Powers of two of at least this many.
    PowerOfTwoFrom(usize),
    /// At least this many.
    From(usize),
    /// At most this many.
    UpTo(usize),
    /// Not a power of two.
    NotPowerOfTwo,
    /// Exactly this many.
    Exactly(usize),
}

impl Ranks {
    fn matches(self, p: usize) -> bool {
        match self {
            Ranks::Any => true,
            Ranks::PowerOfTwoFrom(n) => p >= n && p.is_power_of_two(),
            Ranks::From(n) => p >= n,
            Ranks::UpTo(n) => p <= n,
            Ranks::NotPowerOfTwo => !p.is_power_of_two(),
            Ranks::Exactly(n) => p == n,
        }
    }
}

/// One row: for `coll` on `fabric` (None: any) with `ranks`, messages up to `max_bytes`
/// use `algo`.
struct Row {
    coll: Collective,
    fabric: Option<Fabric>,
    ranks: Ranks,
    max_bytes: usize,
    algo: Algorithm,
}

const K: usize = 1 << 10;
const M: usize = 1 << 20;
const ALL: usize = usize::MAX;

const fn row(coll: Collective, fabric: Option<Fabric>, ranks: Ranks, max_bytes: usize, algo: Algorithm) -> Row {
    Row { coll, fabric, ranks, max_bytes, algo }
}

use Algorithm::*;
use Collective as C;
use Fabric::*;

/// The selection table: the first matching row wins; every collective ends with a row
/// that matches everything. Sizes are the call's bytes (per rank's input for all-reduce,
/// reduce, broadcast; the gathered or scattered total for the others).
const TABLE: &[Row] = &[
    // All-reduce (the small-message threshold is `Config::small_bytes` when set).
    row(C::AllReduce, Some(SharedMemory), Ranks::Any, 32 * K, RecursiveDoubling),
    row(C::AllReduce, Some(SharedMemory), Ranks::PowerOfTwoFrom(4), 512 * K, HalvingDoubling),
    row(C::AllReduce, Some(SharedMemory), Ranks::Any, ALL, Direct),
    row(C::AllReduce, Some(MultiHost), Ranks::Any, 32 * K, RecursiveDoubling),
    row(C::AllReduce, Some(MultiHost), Ranks::Any, ALL, Hierarchical),
    // Folding costs recursive doubling two extra steps when p is not a power of two; over
    // sockets direct exchange (3 ranks) and the double binary tree's halves win there.
    row(C::AllReduce, Some(Network), Ranks::Exactly(3), 128 * K, Direct),
    row(C::AllReduce, Some(Network), Ranks::NotPowerOfTwo, 128 * K, Tree),
    row(C::AllReduce, None, Ranks::Any, 128 * K, RecursiveDoubling),
    // Few ranks over sockets: all peers at once beats p-1 ring steps (5-10% from 512 KiB).
    row(C::AllReduce, Some(Network), Ranks::UpTo(4), ALL, Direct),
    row(C::AllReduce, None, Ranks::PowerOfTwoFrom(4), 8 * M, HalvingDoubling),
    row(C::AllReduce, None, Ranks::Any, ALL, Ring),
    // All-gather.
    row(C::AllGather, Some(MultiHost), Ranks::Any, ALL, Hierarchical),
    row(C::AllGather, Some(SharedMemory), Ranks::UpTo(3), 8 * K, RecursiveDoubling),
    row(C::AllGather, Some(SharedMemory), Ranks::PowerOfTwoFrom(4), 32 * K, RecursiveDoubling),
    row(C::AllGather, Some(SharedMemory), Ranks::From(4), 32 * K, Bruck),
    row(C::AllGather, None, Ranks::UpTo(3), ALL, Ring),
    row(C::AllGather, None, Ranks::PowerOfTwoFrom(4), 8 * M, RecursiveDoubling),
    row(C::AllGather, None, Ranks::Any, 128 * K, Bruck),
    row(C::AllGather, None, Ranks::Any, ALL, Ring),
    // Reduce-scatter.
    row(C::ReduceScatter, Some(MultiHost), Ranks::Any, ALL, Hierarchical),
    row(C::ReduceScatter, Some(Network), Ranks::PowerOfTwoFrom(8), 32 * K, HalvingDoubling),
    row(C::ReduceScatter, None, Ranks::Any, ALL, Direct),
    // All-to-all (across hosts, gathering small blocks saves inter-host messages; large
    // ones go straight to their destinations).
    row(C::AllToAll, Some(MultiHost), Ranks::Any, 32 * K, Hierarchical),
    row(C::AllToAll, Some(Network), Ranks::From(4), 32 * K, Bruck),
    row(C::AllToAll, None, Ranks::Any, ALL, Pairwise),
    // Broadcast and reduce.
    row(C::Broadcast, Some(Network), Ranks::Any, 32 * K, Ring),
    row(C::Broadcast, Some(SharedMemory), Ranks::Any, 32 * K, Tree),
    row(C::Broadcast, None, Ranks::From(4), ALL, Tree),
    row(C::Broadcast, None, Ranks::Any, ALL, Ring),
    // Up to 128 KiB a vector is one chunk, so the chain's p-1 hops are not pipelined.
    row(C::Reduce, None, Ranks::Any, 128 * K, Tree),
    row(C::Reduce, None, Ranks::From(4), ALL, Tree),
    row(C::Reduce, None, Ranks::Any, ALL, Ring),
];

/// The algorithm for `coll` on `bytes` bytes in a world of `size` connected by `fabric`:
/// `forced` if set, else the table's (with `cfg`'s small-message threshold).
pub fn choose(
    coll: Collective,
    bytes: usize,
    size: usize,
    fabric: Fabric,
    forced: Option<Algorithm>,
    cfg: &Config,
) -> Algorithm {
    if let Some(a) = forced {
        return a;
    }
    // A configured small-message threshold replaces the table's recursive-doubling rows.
    let small = if coll == C::AllReduce { cfg.small_bytes } else { None };
    if small.is_some_and(|s| size > 1 && bytes <= s) {
        return RecursiveDoubling;
    }
    TABLE
        .iter()
        .find(|r| {
            r.coll == coll
                && r.fabric.is_none_or(|f| f == fabric)
                && r.ranks.matches(size)
                && bytes <= r.max_bytes
                && !(small.is_some() && r.algo == RecursiveDoubling)
        })
        .map(|r| r.algo)
        .unwrap_or_else(|| registry::algorithms(coll)[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(coll: Collective, bytes: usize, p: usize, fabric: Fabric, cfg: &Config) -> Algorithm {
        choose(coll, bytes, p, fabric, cfg.algorithms.get(coll), cfg)
    }

    #[test]
    fn every_collective_has_a_choice_that_it_implements() {
        let c = Config::default();
        for coll in C::ALL {
            for fabric in [SharedMemory, Network, MultiHost] {
                for p in 1..=9 {
                    for bytes in [0, 8, 32 * K, 128 * K, M, 64 * M] {
                        let a = pick(coll, bytes, p, fabric, &c);
                        assert!(
                            registry::algorithms(coll).is_empty() || registry::lookup(coll, a).is_some(),
                            "{coll} {fabric:?} p {p} {bytes} B: {a} is not implemented"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn table_rows_and_overrides() {
        let c = Config::default();
        assert_eq!(pick(C::AllReduce, 8, 4, Network, &c), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, 8, 4, SharedMemory, &c), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, M, 4, Network, &c), Direct);
        assert_eq!(pick(C::AllReduce, M, 8, Network, &c), HalvingDoubling);
        assert_eq!(pick(C::AllReduce, M, 3, Network, &c), Direct);
        assert_eq!(pick(C::AllReduce, M, 6, Network, &c), Ring);
        assert_eq!(pick(C::AllReduce, 64 * M, 8, Network, &c), Ring);
        assert_eq!(pick(C::AllReduce, M, 4, SharedMemory, &c), Direct);
        assert_eq!(pick(C::AllReduce, 256 * K, 4, SharedMemory, &c), HalvingDoubling);
        assert_eq!(pick(C::AllReduce, M, 4, MultiHost, &c), Hierarchical);
        assert_eq!(pick(C::AllGather, 8, 4, MultiHost, &c), Hierarchical);
        assert_eq!(pick(C::ReduceScatter, 8, 4, MultiHost, &c), Hierarchical);
        assert_eq!(pick(C::AllToAll, 8, 4, MultiHost, &c), Hierarchical);
        assert_eq!(pick(C::AllToAll, M, 4, MultiHost, &c), Pairwise);
        assert_eq!(pick(C::ReduceScatter, 8, 4, SharedMemory, &c), Direct);
        assert_eq!(pick(C::ReduceScatter, 8, 8, Network, &c), HalvingDoubling);
        assert_eq!(pick(C::AllGather, 8, 8, SharedMemory, &c), RecursiveDoubling);
        assert_eq!(pick(C::AllGather, 8, 6, SharedMemory, &c), Bruck);
        assert_eq!(pick(C::AllReduce, 8, 3, Network, &c), Direct);
        // Two ranks: one exchange of recursive doubling, not two rounds of direct.
        assert_eq!(pick(C::AllReduce, 8, 2, Network, &c), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, 8, 5, Network, &c), Tree);
        assert_eq!(pick(C::AllToAll, 8, 8, Network, &c), Bruck);
        assert_eq!(pick(C::AllToAll, 8, 8, SharedMemory, &c), Pairwise);
        assert_eq!(pick(C::Broadcast, M, 8, Network, &c), Tree);
        assert_eq!(pick(C::Broadcast, 8, 8, Network, &c), Ring);
        assert_eq!(pick(C::Broadcast, 8, 3, Network, &c), Ring);
        let forced = Config::default().with_algorithm("ring").unwrap();
        assert_eq!(pick(C::AllReduce, 8, 4, SharedMemory, &forced), Ring);
        assert_eq!(pick(C::ReduceScatter, 8, 4, SharedMemory, &forced), Ring);
        let small = Config { small_bytes: Some(M), ..Config::default() };
        assert_eq!(pick(C::AllReduce, M, 4, SharedMemory, &small), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, 2 * M, 4, SharedMemory, &small), Direct);
        assert_eq!(pick(C::AllReduce, 64 * K, 4, Network, &small), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, 2 * M, 8, Network, &small), HalvingDoubling);
        assert_eq!(pick(C::AllReduce, 2 * M, 4, Network, &small), Direct);
    }
}
