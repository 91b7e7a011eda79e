//! Choosing an algorithm, and a chunk size, for a call: apart from running it, so the rule
//! is one place.
//!
//! A forced algorithm ([`Config::algorithms`], `OXCCL_ALGO`, [`Communicator::set_algorithms`])
//! always wins. Otherwise every algorithm the collective has is priced with the cost model
//! ([`crate::cost`]: each algorithm's alpha-beta-gamma formula, the world's hosts and the
//! communicator's [`Profile`]) and the least predicted time wins; the hierarchical algorithms
//! are candidates only on several hosts. For the pipelined chains and trees (broadcast,
//! reduce, tree all-reduce) the chunk size is chosen the same way, among powers of two from
//! 64 KiB to 4 MiB, unless the configuration fixes it (`OXCCL_CHUNK_BYTES`).
//!
//! [`Communicator::set_algorithms`]: crate::Communicator::set_algorithms

use oxccl_algorithms::registry::Algorithm;
use oxccl_algorithms::{Collective, DataType, ReduceOp};

use crate::config::Config;
use crate::cost::{self, Call, Cost, Profile};

/// What a call will run with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// The algorithm.
    pub algo: Algorithm,
    /// The pipeline chunk size in bytes.
    pub chunk_bytes: usize,
    /// Its predicted time.
    pub predicted: Cost,
    /// What runs when `algo` cannot: for [`Algorithm::Mapped`], the best other candidate
    /// (taken when some rank's buffers cannot be mapped, with `chunk_bytes` its chunk
    /// size); for every other algorithm, `algo` itself.
    pub fallback: Algorithm,
}

/// `best` with its fallback: the best candidate in `ranked` (fastest first) other than
/// [`Algorithm::Mapped`], whose chunk size it takes.
fn with_fallback(best: Choice, ranked: &[Choice]) -> Choice {
    if best.algo != Algorithm::Mapped {
        return best;
    }
    match ranked.iter().find(|c| c.algo != Algorithm::Mapped) {
        Some(f) => Choice { fallback: f.algo, chunk_bytes: f.chunk_bytes, ..best },
        None => best,
    }
}

/// Chunk sizes the model chooses among.
const CHUNKS: [usize; 7] = [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20];

/// Whether `algo`'s time for `coll` depends on the chunk size through its pipeline (chains
/// and trees fill and drain a pipeline; the others only pay a gap per chunk).
fn pipelined(coll: Collective, algo: Algorithm) -> bool {
    matches!(coll, Collective::Broadcast | Collective::Reduce)
        || (coll, algo) == (Collective::AllReduce, Algorithm::Tree)
}

/// `algo` priced at its best chunk size (or the configured one).
fn priced(call: &Call, algo: Algorithm, hosts: &[usize], profile: &Profile, cfg: &Config) -> Option<Choice> {
    let at = |chunk_bytes: usize| {
        let c = Call { chunk_bytes, ..*call };
        cost::predict(&c, algo, hosts, profile).map(|predicted| Choice { algo, chunk_bytes, predicted, fallback: algo })
    };
    if cfg.chunk_auto && pipelined(call.coll, algo) {
        let mut best = at(cfg.chunk_bytes)?;
        for c in CHUNKS {
            let x = at(c)?;
            if x.predicted.total() < best.predicted.total() * (1.0 - 1e-9) {
                best = x;
            }
        }
        Some(best)
    } else {
        at(cfg.chunk_bytes)
    }
}

/// Every candidate for the call, priced, fastest first (what `oxccl-bench --explain` prints).
pub fn candidates(
    coll: Collective,
    bytes: usize,
    dtype: DataType,
    op: ReduceOp,
    hosts: &[usize],
    profile: &Profile,
    cfg: &Config,
) -> Vec<Choice> {
    let call = Call { coll, bytes, dtype, op, chunk_bytes: cfg.chunk_bytes };
    let small = if coll == Collective::AllReduce { cfg.small_bytes } else { None };
    let mut v: Vec<Choice> = oxccl_algorithms::registry::algorithms(coll)
        .iter()
        .filter(|&&a| cost::applies(a, hosts, profile))
        // A configured small-message threshold: recursive doubling at or below, never above.
        .filter(|&&a| match small {
            Some(s) if hosts.len() > 1 => (a == Algorithm::RecursiveDoubling) == (bytes <= s),
            _ => true,
        })
        .filter_map(|&a| priced(&call, a, hosts, profile, cfg))
        .collect();
    v.sort_by(|a, b| a.predicted.total().total_cmp(&b.predicted.total()));
    if let Some(&first) = v.first() {
        v[0] = with_fallback(first, &v);
    }
    v
}

/// The algorithm and chunk size for `coll` on `bytes` bytes (see [`cost::Call::bytes`]) in
/// a world whose rank r runs on host `hosts[r]`: `forced` if set, else the least predicted
/// time's.
#[allow(clippy::too_many_arguments)]
pub fn choose(
    coll: Collective,
    bytes: usize,
    dtype: DataType,
    op: ReduceOp,
    hosts: &[usize],
    profile: &Profile,
    forced: Option<Algorithm>,
    cfg: &Config,
) -> Choice {
    let call = Call { coll, bytes, dtype, op, chunk_bytes: cfg.chunk_bytes };
    let ranked = candidates(coll, bytes, dtype, op, hosts, profile, cfg);
    if let Some(a) = forced {
        let c = priced(&call, a, hosts, profile, cfg).unwrap_or(Choice {
            algo: a,
            chunk_bytes: cfg.chunk_bytes,
            predicted: Cost::default(),
            fallback: a,
        });
        return with_fallback(c, &ranked);
    }
    ranked.into_iter().next().unwrap_or_else(|| {
        let algo = oxccl_algorithms::registry::algorithms(coll).first().copied().unwrap_or(Algorithm::Ring);
        Choice { algo, chunk_bytes: cfg.chunk_bytes, predicted: Cost::default(), fallback: algo }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::TuningFile;
    use Algorithm::*;
    use Collective as C;

    const K: usize = 1 << 10;
    const M: usize = 1 << 20;

    fn pick(coll: Collective, bytes: usize, hosts: &[usize], intra: &str, cfg: &Config) -> Algorithm {
        let profile = TuningFile::builtin().profile("h", intra);
        choose(coll, bytes, DataType::F32, ReduceOp::Sum, hosts, &profile, cfg.algorithms.get(coll), cfg).algo
    }

    #[test]
    fn every_collective_has_a_choice_that_it_implements() {
        let c = Config::default();
        for coll in C::ALL {
            for intra in ["shm", "tcp"] {
                for p in 1..=9 {
                    for hosts in [vec![0; p], (0..p).map(|r| r % 2).collect()] {
                        for bytes in [0, 8, 32 * K, 128 * K, M, 64 * M] {
                            let a = pick(coll, bytes, &hosts, intra, &c);
                            assert!(
                                oxccl_algorithms::registry::lookup(coll, a).is_some(),
                                "{coll} {intra} hosts {hosts:?} {bytes} B: {a} is not implemented"
                            );
                            assert!(
                                cost::applies(a, &hosts, &TuningFile::builtin().profile("h", intra)) || p == 1,
                                "{a} on {hosts:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_model_picks_by_regime() {
        let c = Config::default();
        let one = |p: usize| vec![0usize; p];
        // Latency-bound: log-step algorithms; bandwidth-bound: the ring's bytes.
        assert_eq!(pick(C::AllReduce, 8, &one(4), "tcp", &c), RecursiveDoubling);
        assert_eq!(pick(C::AllReduce, 8, &one(2), "shm", &c), RecursiveDoubling);
        let big = pick(C::AllReduce, 256 * M, &one(8), "tcp", &c);
        assert!(matches!(big, Ring | Direct | HalvingDoubling), "{big}");
        assert_ne!(pick(C::AllGather, 8, &one(8), "tcp", &c), Ring);
        // Several hosts with several ranks each, the link between hosts ten times slower than
        // shared memory (a real network; the built-in profile's "between hosts" is TCP on
        // loopback, as fast as shared memory here): the two-level algorithms for large calls.
        let mut slow = TuningFile::builtin().profile("h", "shm");
        slow.inter.beta = 10.0 * slow.intra.beta;
        slow.inter.beta_cache = 10.0 * slow.intra.beta_cache;
        let two_hosts = [0, 0, 0, 0, 1, 1, 1, 1];
        for coll in [C::AllReduce, C::ReduceScatter, C::AllGather] {
            let x = choose(coll, 64 * M, DataType::F32, ReduceOp::Sum, &two_hosts, &slow, None, &c);
            assert_eq!(x.algo, Hierarchical, "{coll}");
        }
        // One host: never hierarchical.
        for coll in [C::AllReduce, C::AllGather, C::ReduceScatter, C::AllToAll] {
            assert_ne!(pick(coll, 64 * M, &one(8), "shm", &c), Hierarchical);
        }
    }

    #[test]
    fn overrides_and_thresholds_win() {
        let forced = Config::default().with_algorithm("ring").unwrap();
        assert_eq!(pick(C::AllReduce, 8, &[0; 4], "shm", &forced), Ring);
        assert_eq!(pick(C::ReduceScatter, 8, &[0; 4], "shm", &forced), Ring);
        let small = Config { small_bytes: Some(M), ..Config::default() };
        assert_eq!(pick(C::AllReduce, M, &[0; 4], "shm", &small), RecursiveDoubling);
        assert_ne!(pick(C::AllReduce, 2 * M, &[0; 4], "shm", &small), RecursiveDoubling);
    }

    #[test]
    fn chunk_sizes_follow_the_pipeline() {
        let profile = TuningFile::builtin().profile("h", "tcp");
        let c = Config::default();
        let at = |bytes: usize, p: usize| {
            choose(C::Broadcast, bytes, DataType::F32, ReduceOp::Sum, &vec![0; p], &profile, Some(Ring), &c)
        };
        // A longer chain wants smaller chunks (the pipeline fill costs hops x chunk time).
        assert!(at(64 * M, 8).chunk_bytes <= at(64 * M, 2).chunk_bytes);
        // A chunk size the configuration fixes is kept.
        let fixed = Config::default().with_chunk_bytes(300 * K);
        let x = choose(C::Broadcast, 64 * M, DataType::F32, ReduceOp::Sum, &[0; 8], &profile, Some(Ring), &fixed);
        assert_eq!(x.chunk_bytes, 300 * K);
        // Non-pipelined algorithms keep the configured chunk.
        let y = choose(C::AllReduce, 64 * M, DataType::F32, ReduceOp::Sum, &[0; 8], &profile, Some(Ring), &c);
        assert_eq!(y.chunk_bytes, c.chunk_bytes);
    }
}
