//! Choosing an algorithm, and a chunk size, for a call: apart from running it, so the rule
//! is one place.
//!
//! A forced algorithm ([`Config::algorithms`], `OXCCL_ALGO`, [`Communicator::set_algorithms`])
//! always wins. Otherwise every algorithm the collective has is priced with the cost model
//! ([`crate::cost`]: each algorithm's alpha-beta-gamma formula, the world's hosts and the
//! communicator's [`Profile`]) and the least predicted time wins; the hierarchical algorithms
//! are candidates only on several hosts. For the pipelined chains and trees of broadcast and
//! reduce the chunk size is chosen the same way, among powers of two from 64 KiB to 4 MiB,
//! unless the configuration fixes it (`OXCCL_CHUNK_BYTES`); every other algorithm, the tree
//! all-reduce among them, runs at the configured chunk size.
//!
//! Where the model cannot tell candidates apart, measurement does: [`trial_candidates`]
//! names the algorithms whose predictions lie within [`TRIAL_WINDOW`] of the best, the
//! communicator runs each for the first [`Config::trial_calls`] calls of that shape, and
//! [`measured_best`] fixes the fastest on every rank alike, where the runs were steady
//! enough to outweigh the prices. Measurement alone decides one more thing, which no price
//! can: whether a call's messages below the transport's single-copy threshold go by single
//! copy ([`EARLY_SINGLE_COPY_MIN`]).
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
    /// Messages of at least this many bytes move by single copy, below the transport's own
    /// threshold ([`EARLY_SINGLE_COPY_MIN`], fixed by trials where it ran faster); 0: at the
    /// transport's own threshold.
    pub single_copy_min: usize,
}

impl Choice {
    /// The algorithm's name, with `+single-copy` where its messages move by single copy
    /// below the transport's threshold ([`label`]). For `mapped` with a fallback, `mapped`:
    /// the threshold is the fallback's ([`Choice::fallback_label`]).
    pub fn label(&self) -> String {
        label(self.algo, if self.algo == self.fallback { self.single_copy_min } else { 0 })
    }

    /// The single-copy threshold this rank's call of `coll` sends with, in place
    /// (`in_place`) or out of place, where its shape fixed [`Choice::single_copy_min`]: that
    /// threshold out of place, and in place where what the call sends is the caller's input,
    /// unchanged (all-gather, reduce-scatter); else 0, the transport's own. An in-place
    /// all-reduce sends what the call (or the last one) just wrote into the buffer, and an
    /// in-place all-to-all a fresh copy of it: freshly written data, which the FIFO moves
    /// faster (2-rank shm, input written once, 256 KiB, the shape's trials fixed out of place:
    /// all-reduce in place 55.9 us with single copy from 64 KiB, 37.7 without, all-to-all
    /// 40.2 and 25.4; all-gather in place 7.6 and 22.9). Each rank decides for its own sends
    /// (a receiver takes either), so ranks may differ.
    pub fn single_copy_min_in(&self, coll: Collective, in_place: bool) -> usize {
        let sends_input = !in_place || matches!(coll, Collective::AllGather | Collective::ReduceScatter);
        if sends_input {
            self.single_copy_min
        } else {
            0
        }
    }

    /// What runs where some rank's buffers cannot be mapped: [`Choice::fallback`] with its
    /// single-copy threshold (the algorithm itself where it is not `mapped`).
    pub fn fallback_label(&self) -> String {
        label(self.fallback, self.single_copy_min)
    }
}

/// How logs and `oxccl-bench` name an algorithm whose messages move by single copy from
/// `single_copy_min` bytes ([`Choice::single_copy_min`]): `ring`, or `ring+single-copy`.
///
/// ```
/// use oxccl::select::{label, EARLY_SINGLE_COPY_MIN};
/// use oxccl::Algorithm;
/// assert_eq!(label(Algorithm::Ring, 0), "ring");
/// assert_eq!(label(Algorithm::Ring, EARLY_SINGLE_COPY_MIN), "ring+single-copy");
/// ```
pub fn label(algo: Algorithm, single_copy_min: usize) -> String {
    if single_copy_min == 0 {
        algo.to_string()
    } else {
        format!("{algo}+single-copy")
    }
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

/// Whether the algorithms of `coll` depend on the chunk size through their pipeline (the
/// chains and trees of broadcast and reduce fill and drain one; the others only pay a gap
/// per chunk).
///
/// Not the tree all-reduce: it runs at the configured chunk, where calibration times it.
/// Its formula prices no fill where the trees are shallow (at 2 to 4 ranks the busiest
/// rank's sends outnumber the hops), so larger chunks only saved latency in the model and
/// it took the largest, which ran 1.15-1.6x slower than 512 KiB ones (`OXCCL_CHUNK_BYTES=C
/// oxccl-bench --compare tree`, out of place: 2-rank shm 16 MiB 6.6 ms at 256 and 512 KiB,
/// 8.0 at 1 MiB, 7.7 at 4 MiB, the model's 4 MiB 10.5 in a sweep; 3-rank shm 4 MiB 1.49 ms at
/// 256 KiB, 1.73 at 512 KiB, 2.1 at the model's 2 MiB; 2-rank TCP 16 MiB 6.7-7.1 ms at 512
/// KiB, 7.5 at 4 MiB), and smaller chunks are slower still (9.3 ms at 64 KiB): a chunk step
/// costs far more than the link's gap, which the formula does not know.
fn pipelined(coll: Collective) -> bool {
    matches!(coll, Collective::Broadcast | Collective::Reduce)
}

/// `algo` priced at its best chunk size (or the configured one).
fn priced(call: &Call, algo: Algorithm, hosts: &[usize], profile: &Profile, cfg: &Config) -> Option<Choice> {
    let at = |chunk_bytes: usize| {
        let c = Call { chunk_bytes, ..*call };
        cost::predict(&c, algo, hosts, profile).map(|predicted| Choice {
            algo,
            chunk_bytes,
            predicted,
            fallback: algo,
            single_copy_min: 0,
        })
    };
    if cfg.chunk_auto && pipelined(call.coll) {
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
    let call = Call { chunk_bytes: cfg.chunk_bytes, ..Call::new(coll, bytes, dtype, op) };
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

/// Candidates priced within this factor of the best are tried by measurement.
///
/// The model's prediction of one algorithm is within 25% of its measured time in about nine
/// cells of ten on this project's machines, and two algorithms' errors add: 1.5 covers what
/// it gets wrong and keeps clear losers out of the trials.
pub const TRIAL_WINDOW: f64 = 1.5;

/// Only calls whose best prediction is under this are tried: past it, a few rounds of a
/// candidate up to [`TRIAL_WINDOW`] slower cost seconds.
pub const TRIAL_MAX_SECONDS: f64 = 0.5;

/// At most this many algorithms are tried (the best-priced ones); over shared memory the
/// model's choice with single copy below the threshold may come on top
/// ([`EARLY_SINGLE_COPY_MIN`]).
pub const TRIAL_MAX_CANDIDATES: usize = 3;

/// The time trials of one call shape aim to spend: calls of a few microseconds swing
/// several-fold one to the next on a busy machine, so they get many rounds (up to
/// [`TRIAL_MAX_ROUNDS`]); long calls get [`crate::Config::trial_calls`].
pub const TRIAL_BUDGET_SECONDS: f64 = 20e-3;

/// The most trial rounds (calls per candidate).
pub const TRIAL_MAX_ROUNDS: u32 = 64;

/// Calls of a shape that run the model's choice, untimed, before its trials begin. A
/// process's first calls of a size are cold (the buffers' first pages faulted in, the
/// sockets' first bursts), and the first timed call also sizes the trials' rounds: over TCP
/// at 3 ranks on 2 cores a 1 MiB all-reduce took 2.5-3.4 ms, then 1.0-2.4, then 0.6-1.3,
/// against 0.6 in its loop. Timed from the shape's second call, the first candidate read
/// about twice its loop's time and the rounds were cut to two timed calls each, and the
/// trials overturned the model's right choice in 2 of 3 runs.
pub const TRIAL_WARM_CALLS: u32 = 2;

/// Trial calls per candidate for `k` candidates, the best predicted at `best` seconds: as
/// many as [`TRIAL_BUDGET_SECONDS`] buys, at least `min_rounds`, at most
/// [`TRIAL_MAX_ROUNDS`].
pub fn trial_rounds(best: f64, k: usize, min_rounds: u32) -> u32 {
    let afford = TRIAL_BUDGET_SECONDS / (best.max(1e-7) * k.max(1) as f64);
    (afford.min(f64::from(TRIAL_MAX_ROUNDS)) as u32).clamp(min_rounds.min(TRIAL_MAX_ROUNDS), TRIAL_MAX_ROUNDS)
}

/// The candidates worth trying for a call, from [`candidates`]' list (fastest first): the
/// best-priced algorithm and those within [`TRIAL_WINDOW`] of it, at most
/// [`TRIAL_MAX_CANDIDATES`], in price order. Fewer than two means nothing to try: when the
/// best is [`Algorithm::Mapped`] (it runs only on buffers every rank maps; the communicator
/// tries the algorithms after it, for calls on buffers some rank cannot map, from the list
/// without it), or its prediction is over [`TRIAL_MAX_SECONDS`].
pub fn trial_candidates(ranked: &[Choice]) -> Vec<Choice> {
    let Some(best) = ranked.first() else { return Vec::new() };
    let t = best.predicted.total();
    if best.algo == Algorithm::Mapped || t.is_nan() || t > TRIAL_MAX_SECONDS {
        return Vec::new();
    }
    let mut v: Vec<Choice> = ranked
        .iter()
        .filter(|c| c.algo != Algorithm::Mapped && c.predicted.total() <= t * TRIAL_WINDOW)
        .take(TRIAL_MAX_CANDIDATES)
        .map(|c| Choice { fallback: c.algo, ..*c })
        .collect();
    if v.len() < 2 {
        v.clear();
    }
    v
}

/// The single-copy threshold that trials try below the transport's own (shared memory's
/// 1 MiB, [`Config::shm_single_copy_min`]).
///
/// Which is faster depends on the program, not the machine. A send buffer that peers read
/// again unchanged (nccl-tests' and Open MPI's benchmarks write their input once) sits in
/// every cache, and a single copy of it beats the FIFO's two: 2-rank shm, all-gather of
/// 64 KiB 4.0-4.1 us with single copy from 32 KiB against 5.8-6.4 from 1 MiB, of 256 KiB
/// 11.1 against 22.5, of 1 MiB 57.3 against 90.6; all-to-all of 1 MiB 73.5 against 111
/// (`oxccl-bench --fresh 0`). Freshly written data (gradients) must first leave the
/// writer's cache, and the FIFO's copy from it runs faster (all-gather of 256 KiB 38.2 us
/// with single copy from 64 KiB, 24.7 without, `--fresh 1`), as it does in all-reduces,
/// whose later steps send what they just reduced. So trials run the model's choice with its
/// messages by single copy from here for a block of calls, and keep it where it ran faster.
/// Not lower: 16 KiB messages took as long either way.
pub const EARLY_SINGLE_COPY_MIN: usize = 32 << 10;

/// The factor on the price of [`EARLY_SINGLE_COPY_MIN`]'s trial candidate when the trials
/// weigh their measurement against the prices ([`measured_best`]): the model prices it as
/// its algorithm, so measurement alone decides, and it must find single copy a few percent
/// faster, not equal within the noise.
pub const EARLY_SINGLE_COPY_PRIOR: f64 = 1.05;

/// Whether calls of `bytes` bytes in a world of `p` ranks try their messages by single copy
/// from [`EARLY_SINGLE_COPY_MIN`] bytes, where the transport's own threshold is
/// `transport_min` (0: no single copy): where that is higher, and some of the call's
/// messages can fall between the two (a call's messages are at most its bytes, and at
/// least `bytes / p` for most algorithms).
pub fn tries_early_single_copy(bytes: usize, p: usize, transport_min: usize) -> bool {
    transport_min > EARLY_SINGLE_COPY_MIN && bytes >= EARLY_SINGLE_COPY_MIN && bytes < p.saturating_mul(transport_min)
}

/// One rank's trials of one candidate: its typical call and how closely its runs pin that
/// down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialTime {
    /// The typical call in nanoseconds; `u64::MAX` where no call was timed.
    pub ns: u64,
    /// The standard error of `ns` relative to it: the runs' spread over the root of their
    /// count (1 where fewer than two runs).
    pub rel_err: f64,
}

/// The spread of the model's error in the price ratio of two algorithms, as a standard
/// deviation of its logarithm: predictions are within 25% of the measured time in about nine
/// cells of ten (a log spread of about 0.14 each), and two algorithms' errors add.
pub const MODEL_LOG_SPREAD: f64 = 0.2;

/// The error of a candidate's trials that their runs' spread does not show, as a standard
/// deviation of its logarithm: a candidate's calls run in blocks, and a block sees the
/// machine in one state. On 2 cores such a state lasts tens of milliseconds and moves one
/// algorithm's time and not another's (the 1 MiB ring all-reduce at 4 ranks ran at 1.5x in
/// it while the 64 KiB call beside it did not; 3 ranks' 16 KiB reduce-scatter trials read
/// direct 17.5 us and ring 12.3 one run, 9.2 and 9.4 the next). Without it, tight runs of
/// a block overturned the model on differences of 1-5%: over 100 runs of 20 call shapes whose
/// trials had disagreed with the model, the fixed choice was over 1.10x the fastest in 11
/// (8 with this floor, 6 with 0.15, 5 with the model alone) and 1.027x it on average (1.020,
/// 1.017, 1.016). Not higher: a noisy trial that measures a candidate twice as fast as the
/// model's choice must still win where the model priced it 1.4x (with 0.15 it did not).
pub const TRIAL_LOG_FLOOR: f64 = 0.1;

/// Candidate i's trials on its slowest rank (the one whose typical call took longest), from
/// `times[r * k + i]` as [`measured_best`] takes them; `None` without any rank's.
pub fn slowest_rank(times: &[TrialTime], k: usize, i: usize) -> Option<TrialTime> {
    times.iter().skip(i).step_by(k.max(1)).copied().max_by_key(|t| t.ns)
}

/// The candidate the trials fix: `times[r * k + i]` is rank r's trials of candidate i and
/// `predicted[i]` its price (seconds; k candidates, the model's choice first).
///
/// A call takes as long as its slowest rank, so each candidate counts as its slowest rank's
/// typical time. The trials do not simply take the least of those: a few calls of several
/// milliseconds on a busy machine swing by tens of percent, and such a swing overturned a
/// correct model choice as often as it fixed a wrong one. So the measured ratio of each
/// candidate to the model's choice is weighed against the model's price ratio, each by its
/// precision (the runs' standard error with [`TRIAL_LOG_FLOOR`], [`MODEL_LOG_SPREAD`]): a
/// measured difference larger than the model's the other way outweighs it, a smaller one or
/// two noisy runs do not. The least weighed time wins (ties: the better-priced, lower
/// index). Every rank computes this from the same gathered numbers, so every rank fixes the
/// same candidate.
pub fn measured_best(times: &[TrialTime], predicted: &[f64]) -> usize {
    let k = predicted.len();
    if k == 0 || times.len() < k {
        return 0;
    }
    let worst = |i: usize| slowest_rank(times, k, i).unwrap_or(TrialTime { ns: u64::MAX, rel_err: 1.0 });
    let base = worst(0);
    let measured_only = || (0..k).min_by_key(|&i| (worst(i).ns, i)).unwrap_or(0);
    if base.ns == u64::MAX || base.ns == 0 {
        return measured_only();
    }
    let var_model = MODEL_LOG_SPREAD * MODEL_LOG_SPREAD;
    let mut best = (0, 0.0);
    for i in 1..k {
        let t = worst(i);
        if t.ns == u64::MAX || t.ns == 0 {
            continue;
        }
        let d_meas = (t.ns as f64 / base.ns as f64).ln();
        let floor = TRIAL_LOG_FLOOR * TRIAL_LOG_FLOOR;
        let var_meas = t.rel_err * t.rel_err + base.rel_err * base.rel_err + 2.0 * floor;
        let ratio = predicted[i] / predicted[0];
        let d = if ratio.is_finite() && ratio > 0.0 {
            (d_meas * var_model + ratio.ln() * var_meas) / (var_model + var_meas)
        } else {
            d_meas
        };
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
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
    let call = Call { chunk_bytes: cfg.chunk_bytes, ..Call::new(coll, bytes, dtype, op) };
    let ranked = candidates(coll, bytes, dtype, op, hosts, profile, cfg);
    if let Some(a) = forced {
        let c = priced(&call, a, hosts, profile, cfg).unwrap_or(Choice {
            algo: a,
            chunk_bytes: cfg.chunk_bytes,
            predicted: Cost::default(),
            fallback: a,
            single_copy_min: 0,
        });
        return with_fallback(c, &ranked);
    }
    ranked.into_iter().next().unwrap_or_else(|| {
        let algo = oxccl_algorithms::registry::algorithms(coll).first().copied().unwrap_or(Algorithm::Ring);
        Choice { algo, chunk_bytes: cfg.chunk_bytes, predicted: Cost::default(), fallback: algo, single_copy_min: 0 }
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
        // (The pipelined double binary tree moves about the ring's bytes per rank, and at 8
        // ranks over TCP it is the fastest measured: 256 MiB in 620 ms, ring 750, halving-
        // doubling 740, in the eighteenth session's sweep.)
        let big = pick(C::AllReduce, 256 * M, &one(8), "tcp", &c);
        assert!(matches!(big, Ring | Direct | HalvingDoubling | Tree), "{big}");
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

    fn priced_at(algo: Algorithm, us: f64) -> Choice {
        let predicted = Cost { latency: us * 1e-6, ..Cost::default() };
        Choice { algo, chunk_bytes: 512 * K, predicted, fallback: algo, single_copy_min: 0 }
    }

    #[test]
    fn labels_put_single_copy_on_what_sends() {
        let ring = Choice { single_copy_min: EARLY_SINGLE_COPY_MIN, ..priced_at(Ring, 10.0) };
        assert_eq!((ring.label(), ring.fallback_label()), ("ring+single-copy".into(), "ring+single-copy".into()));
        assert_eq!(priced_at(Ring, 10.0).label(), "ring");
        // `mapped` sends nothing: the threshold is its fallback's.
        let mapped = Choice { algo: Mapped, fallback: Ring, ..ring };
        assert_eq!((mapped.label(), mapped.fallback_label()), ("mapped".into(), "ring+single-copy".into()));
        // In place only where the call sends the caller's input unchanged.
        let sc = |coll, in_place| ring.single_copy_min_in(coll, in_place);
        assert_eq!(sc(Collective::AllToAll, false), EARLY_SINGLE_COPY_MIN);
        assert_eq!(
            (sc(Collective::AllGather, true), sc(Collective::ReduceScatter, true)),
            (ring.single_copy_min, ring.single_copy_min)
        );
        assert_eq!((sc(Collective::AllReduce, true), sc(Collective::AllToAll, true)), (0, 0));
        assert_eq!(priced_at(Ring, 10.0).single_copy_min_in(Collective::AllGather, false), 0);
    }

    #[test]
    fn trials_take_the_close_candidates_only() {
        let ranked = [
            priced_at(RecursiveDoubling, 10.0),
            priced_at(Bruck, 14.0),
            priced_at(Ring, 15.0),
            priced_at(Direct, 15.1),
            priced_at(Tree, 40.0),
        ];
        let t: Vec<Algorithm> = trial_candidates(&ranked).iter().map(|c| c.algo).collect();
        assert_eq!(t, [RecursiveDoubling, Bruck, Ring]);
        // Only one within the window: nothing to try.
        assert!(trial_candidates(&[priced_at(Ring, 10.0), priced_at(Tree, 15.1)]).is_empty());
        // Too slow a call to spend trials on.
        assert!(trial_candidates(&[priced_at(Ring, 600e3), priced_at(Tree, 601e3)]).is_empty());
        // Mapped best: its own path decides; mapped elsewhere is skipped, never tried.
        assert!(trial_candidates(&[priced_at(Mapped, 10.0), priced_at(Ring, 10.5), priced_at(Tree, 11.0)]).is_empty());
        let t = trial_candidates(&[priced_at(Ring, 10.0), priced_at(Mapped, 10.5), priced_at(Tree, 11.0)]);
        assert_eq!(t.iter().map(|c| c.algo).collect::<Vec<_>>(), [Ring, Tree]);
        assert!(t.iter().all(|c| c.fallback == c.algo));
    }

    #[test]
    fn trial_rounds_spend_the_budget() {
        // 20 ms over two candidates of 10 us: more than the cap.
        assert_eq!(trial_rounds(10e-6, 2, 3), TRIAL_MAX_ROUNDS);
        // Of 1 ms: 10 rounds each.
        assert_eq!(trial_rounds(1e-3, 2, 3), 10);
        // Long calls: the configured minimum.
        assert_eq!(trial_rounds(50e-3, 3, 3), 3);
        assert_eq!(trial_rounds(50e-3, 3, 1000), TRIAL_MAX_ROUNDS);
    }

    fn runs(v: &[(u64, f64)]) -> Vec<TrialTime> {
        v.iter().map(|&(ns, rel_err)| TrialTime { ns, rel_err }).collect()
    }

    #[test]
    fn the_measured_best_is_the_least_slowest_rank() {
        // Three ranks, two candidates priced alike, tight runs: rank 2 is slow on candidate
        // 0, so candidate 1 wins although ranks 0 and 1 ran candidate 0 faster.
        let tight = |ns: &[u64]| runs(&ns.iter().map(|&t| (t, 0.001)).collect::<Vec<_>>());
        assert_eq!(measured_best(&tight(&[5, 8, 5, 8, 20, 9]), &[1.0, 1.0]), 1);
        assert_eq!(measured_best(&tight(&[5, 8, 5, 8, 7, 9]), &[1.0, 1.0]), 0);
        // Ties go to the better-priced candidate.
        assert_eq!(measured_best(&tight(&[7, 7, 7]), &[1.0, 1.1, 1.2]), 0);
        assert_eq!(measured_best(&tight(&[9, 7, 7]), &[1.0, 1.1, 1.2]), 1);
        assert_eq!(measured_best(&[], &[]), 0);
        // A candidate with no timed run is never taken.
        assert_eq!(measured_best(&runs(&[(10, 0.01), (u64::MAX, 1.0)]), &[1.0, 1.0]), 0);
        assert_eq!(measured_best(&runs(&[(u64::MAX, 1.0), (10, 0.01)]), &[1.0, 1.0]), 1);
    }

    #[test]
    fn noisy_trials_do_not_overturn_a_clear_price() {
        // The model prices candidate 1 at 1.4x candidate 0; two noisy runs each (15%
        // standard error) measure it 10% faster: the model's choice stands.
        let noisy = runs(&[(1000, 0.15), (900, 0.15)]);
        assert_eq!(measured_best(&noisy, &[1.0, 1.4]), 0);
        // Steady runs measuring the same do not either: a block of calls sees the machine in
        // one state ([`TRIAL_LOG_FLOOR`]).
        let steady = runs(&[(1000, 0.01), (900, 0.01)]);
        assert_eq!(measured_best(&steady, &[1.0, 1.4]), 0);
        // Steady runs measuring it 30% faster: the measurement wins.
        assert_eq!(measured_best(&runs(&[(1000, 0.01), (700, 0.01)]), &[1.0, 1.4]), 1);
        // A steady 3% against a price 10% the other way: the model's choice stands (without
        // the floor the measurement won).
        assert_eq!(measured_best(&runs(&[(1000, 0.01), (970, 0.01)]), &[1.0, 1.1]), 0);
        // Priced alike, even noisy runs decide.
        assert_eq!(measured_best(&noisy, &[1.0, 1.0]), 1);
        // A large measured win outweighs the price (2x faster, noisy).
        assert_eq!(measured_best(&runs(&[(1000, 0.15), (500, 0.15)]), &[1.0, 1.4]), 1);
        // Without a usable price, the measurement alone.
        assert_eq!(measured_best(&noisy, &[1.0, f64::NAN]), 1);
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
        // Non-pipelined algorithms keep the configured chunk, and so does the tree
        // all-reduce, whose formula cannot price its chunk size.
        for algo in [Ring, Tree] {
            for p in [2, 3, 8] {
                let y =
                    choose(C::AllReduce, 64 * M, DataType::F32, ReduceOp::Sum, &vec![0; p], &profile, Some(algo), &c);
                assert_eq!(y.chunk_bytes, c.chunk_bytes, "{algo:?} at {p} ranks");
            }
        }
    }
}
