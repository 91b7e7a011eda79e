//! Trial calls: where the cost model prices several algorithms of a call shape close
//! together, the first calls of that shape (after two warm-up calls of the model's choice)
//! run each for a block of calls and the next one fixes the fastest by measurement
//! ([`Config::trial_calls`], [`select::trial_candidates`]). Where the best-priced algorithm
//! is `mapped`, which runs only on buffers every rank maps, the algorithms after it have
//! trials of their own, run by the calls whose buffers some rank cannot map. Over shared
//! memory, calls whose messages can fall below its single-copy threshold also try the
//! model's choice with single copy from [`select::EARLY_SINGLE_COPY_MIN`] (which wins on a
//! send buffer read again unchanged and loses on freshly written data: only the program's
//! own calls tell).
//!
//! Every decision here is taken inside a call, under its sequence number, from state that
//! only calls change: ranks make the same calls in the same order, so every rank runs the
//! same candidate in each trial call and fixes the same one at the same call. The fixing
//! call first gathers every rank's typical time per candidate (a side exchange under tags
//! of its own, [`exchange::TUNE_FINGERPRINT`]), then runs the winner.
//!
//! [`Config::trial_calls`]: crate::Config::trial_calls

use std::time::Instant;

use oxccl_algorithms::exchange;
use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::{CollArgs, Ctx};

use super::{ChoiceKey, Communicator};
use crate::error::{Error, Result};
use crate::select::{self, Choice, TrialTime};

/// A call shape as trials key it: the choice's key, and whether these are the trials of the
/// algorithms after `mapped`, for its calls on buffers that some rank cannot map. Not
/// whether the call is in place: that is each rank's own affair (a broadcast's root may pass
/// one buffer, the others two), and every rank must take the same steps.
pub(super) type TrialKey = (ChoiceKey, bool);

/// Where a call shape's trials stand.
#[derive(Debug, Clone)]
pub(super) enum Trials {
    /// Running the candidates in blocks of `block` calls, each candidate's block in turn,
    /// `passes` times (see [`schedule`]), once `warming` more warm-up calls of the model's
    /// choice have run ([`select::TRIAL_WARM_CALLS`]): `calls` calls of the schedule so far,
    /// `runs[i]` this rank's timed calls of candidate i in nanoseconds; `rescaled` once the
    /// rounds were sized by the first timed call ([`Step::Rescale`]).
    Trying {
        candidates: Vec<Choice>,
        runs: Vec<Vec<u64>>,
        block: u32,
        passes: u32,
        warming: u32,
        calls: u32,
        rescaled: bool,
    },
    /// Decided: by trials, or by the model where there was nothing to try.
    Fixed(Choice),
}

/// The most call shapes whose choice is tracked here; past it, calls of new shapes take the
/// model's choice without trials. (The count only changes inside calls, so every rank
/// reaches it at the same call.)
pub(super) const MAX_TRIAL_SHAPES: usize = 4096;

/// A candidate's runs that count: the fastest three quarters, fastest first. On a busy
/// machine one call's time swings several-fold (a rank waits for a peer that lost its core),
/// so the mean of many calls is what a loop of them costs; the slowest quarter is left out
/// because a rare long stall (a page fault storm, a time slice lost for milliseconds) would
/// otherwise outweigh dozens of calls.
fn kept(runs: &[u64]) -> Vec<u64> {
    let mut v = runs.to_vec();
    v.sort_unstable();
    v.truncate(v.len() - v.len() / 4);
    v
}

/// A candidate's typical time from its [`kept`] runs: their mean, with its standard error
/// relative to it. No runs: `u64::MAX`; fewer than two: a relative error of 1.
fn typical_of_kept(kept: &[u64]) -> TrialTime {
    let keep = kept.len();
    if keep == 0 {
        return TrialTime { ns: u64::MAX, rel_err: 1.0 };
    }
    let ns = (kept.iter().map(|&t| u128::from(t)).sum::<u128>() / keep as u128) as u64;
    let rel_err = if keep < 2 || ns == 0 {
        1.0
    } else {
        let mean = ns as f64;
        let var = kept.iter().map(|&t| (t as f64 - mean).powi(2)).sum::<f64>() / (keep - 1) as f64;
        var.sqrt() / mean / (keep as f64).sqrt()
    };
    TrialTime { ns, rel_err }
}

/// Every candidate's typical call ([`kept`], [`typical_of_kept`]), each standard error at
/// least what the spread of one call, pooled over all candidates' kept runs, gives for its
/// number of runs.
///
/// A call's spread is the machine's more than the algorithm's, and calls of a few
/// milliseconds get two or three timed runs each: two runs that happen to agree gave a
/// standard error of 0.1% and let a single noisy pair overturn the model (4 ranks over TCP,
/// 1 MiB all-reduce: ring's runs 1.0-2.3 ms, direct's 1.2-1.5 ms; the trials fixed direct
/// or halving-doubling in 10 of 14 runs of the benchmark, where ring was the fastest loop
/// in 13). Pooled, the spread rests on every run of the shape.
fn typical_all(runs: &[Vec<u64>]) -> Vec<TrialTime> {
    let kept: Vec<Vec<u64>> = runs.iter().map(|r| kept(r)).collect();
    let mut times: Vec<TrialTime> = kept.iter().map(|k| typical_of_kept(k)).collect();
    let (mut sum_sq, mut dof) = (0.0f64, 0usize);
    for (k, t) in kept.iter().zip(&times) {
        if k.len() < 2 || t.ns == 0 {
            continue;
        }
        let mean = t.ns as f64;
        sum_sq += k.iter().map(|&x| ((x as f64 - mean) / mean).powi(2)).sum::<f64>();
        dof += k.len() - 1;
    }
    if dof == 0 {
        return times;
    }
    let spread = (sum_sq / dof as f64).sqrt();
    for (k, t) in kept.iter().zip(times.iter_mut()) {
        if k.len() >= 2 {
            t.rel_err = t.rel_err.max(spread / (k.len() as f64).sqrt());
        }
    }
    times
}

/// Trial call `c` (from 0) of `k` candidates in blocks of `block` calls: which candidate
/// runs, and whether the call is timed.
///
/// A candidate runs a block of consecutive calls, not one call in turn with the others: on
/// an oversubscribed machine an algorithm's steady state depends on how its ranks fall into
/// step with the scheduler, and alternating algorithms call by call measured every one at
/// the same (slow) time (4 ranks on 2 cores over shared memory, all-gather of 16 B:
/// recursive doubling and Bruck both 10 us alternated, 5.3 and 7.5 us in their own loops).
/// The first call of a block, where the ranks leave the previous candidate's pattern, is
/// not timed (the shape's first, cold calls come before the schedule:
/// [`select::TRIAL_WARM_CALLS`]).
///
/// Every second pass runs the candidates in reverse order (A B C C B A), so each
/// candidate's calls sit on average at the same point of the trials and a machine that
/// speeds up or slows down through them favours none. In one order the first candidate,
/// the model's choice, ran while the process was still warming: 2 ranks over TCP,
/// all-reduce of 64 MiB, its timed calls took 26.8-58.4 ms where the same calls took
/// 19.8-22.6 ms a few hundred milliseconds later, and the trials fixed halving-doubling
/// (1.16x direct in a loop) in 2 of 6 runs.
fn schedule(c: u32, k: usize, block: u32) -> (usize, bool) {
    let per_pass = k as u32 * block;
    let w = c % per_pass;
    let i = (w / block) as usize;
    let i = if (c / per_pass).is_multiple_of(2) { i } else { k - 1 - i };
    (i, !w.is_multiple_of(block))
}

/// Blocks for `rounds` calls per candidate: two passes (the second in reverse order, see
/// [`schedule`]) of half as many, at least two calls each (one timed); one pass of two calls
/// for fewer than three rounds.
fn blocks(rounds: u32) -> (u32, u32) {
    if rounds >= 3 {
        (rounds.div_ceil(2).max(2), 2)
    } else {
        (2, 1)
    }
}

/// The blocks for trials of `k` candidates scheduled as `block` x `passes`, once the first
/// timed call took `slowest_ns` on the slowest rank: fewer rounds where that time buys fewer
/// within the budget ([`select::trial_rounds`]), never more; unchanged without a time.
fn rescaled(block: u32, passes: u32, k: usize, slowest_ns: u64, min_rounds: u32) -> (u32, u32) {
    if slowest_ns == 0 {
        return (block, passes);
    }
    let rounds = select::trial_rounds(slowest_ns as f64 * 1e-9, k, min_rounds);
    if rounds < block * passes {
        blocks(rounds)
    } else {
        (block, passes)
    }
}

/// What a call does, decided under the choices' lock.
enum Step {
    Run(Choice),
    /// Candidate i's call, timed or not.
    Trial(usize, Choice, bool),
    /// Fix the winner: the candidates and this rank's typical time of each.
    Fix(Vec<Choice>, Vec<TrialTime>),
    /// Size the rounds by what the first timed call took (this rank's, in nanoseconds), then
    /// run the next trial call.
    Rescale(u64),
}

impl Communicator {
    /// Runs a call of shape `key` (whose model choice is `model`) inside `execute`: a trial
    /// of the next candidate, the call that fixes the winner, or the fixed choice.
    pub(super) fn run_trials(&self, ctx: &Ctx<'_>, key: TrialKey, args: &CollArgs, model: Choice) -> Result<()> {
        let step = self.next_step(key, model);
        let coll = ctx.collective;
        // A candidate runs at its chunk size, its messages by single copy from its threshold
        // where this rank's call takes it.
        let run = |c: Choice| {
            let f = registry::lookup(coll, c.algo)
                .ok_or_else(|| Error::internal(format!("{coll} has no {} algorithm", c.algo)))?;
            f(
                &ctx.with_chunk_bytes(c.chunk_bytes).with_single_copy_min(c.single_copy_min_in(coll, args.in_place)),
                args,
            )
        };
        let step = match step {
            Step::Rescale(mine) => {
                // Every rank's first timed call, so every rank sizes the rounds alike; then
                // this call is the next trial call of the resized schedule.
                let all = exchange::all_gather_records(ctx, exchange::TUNE_FINGERPRINT, &mine.to_le_bytes())?;
                let slowest =
                    all.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).max().unwrap_or(0);
                self.rescale_trials(key, slowest);
                self.next_step(key, model)
            }
            other => other,
        };
        match step {
            Step::Rescale(_) => Err(Error::internal(format!("{coll} #{}: trials asked to resize twice", ctx.seq))),
            Step::Run(c) => run(c),
            Step::Trial(_, c, false) => run(c),
            Step::Trial(i, c, true) => {
                let t0 = Instant::now();
                run(c)?;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let mut cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(Trials::Trying { runs, .. }) = cache.trials.get_mut(&key) {
                    runs[i].push(ns);
                }
                Ok(())
            }
            Step::Fix(candidates, typical) => {
                let mine: Vec<u8> = typical
                    .iter()
                    .flat_map(|t| [t.ns.to_le_bytes(), t.rel_err.to_bits().to_le_bytes()])
                    .flatten()
                    .collect();
                let all = exchange::all_gather_records(ctx, exchange::TUNE_FINGERPRINT, &mine)?;
                let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
                let times: Vec<TrialTime> = all
                    .chunks_exact(16)
                    .map(|b| TrialTime { ns: word(&b[..8]), rel_err: f64::from_bits(word(&b[8..])) })
                    .collect();
                let k = candidates.len();
                // Single copy below the transport's threshold is priced as its algorithm, and
                // a little above it for the weighing: measurement alone decides it, and must
                // find it clearly faster.
                let predicted: Vec<f64> = candidates
                    .iter()
                    .map(|c| {
                        let prior = if c.single_copy_min != 0 { select::EARLY_SINGLE_COPY_PRIOR } else { 1.0 };
                        c.predicted.total() * prior
                    })
                    .collect();
                let won = candidates[select::measured_best(&times, &predicted)];
                let ((_, bytes, dtype, op, _), fallback_of_mapped) = key;
                tracing::info!(
                    rank = self.rank,
                    "{coll} of {} B ({}, {}{}): trials (slowest rank's typical call, its standard error, the model's price) {}: {} from now on (the model's choice: {})",
                    bytes,
                    dtype,
                    op,
                    if fallback_of_mapped { ", buffers some rank cannot map" } else { "" },
                    candidates
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            let (ns, err) = select::slowest_rank(&times, k, i).map_or((0, 0.0), |t| (t.ns, t.rel_err));
                            format!(
                                "{} {:.2} us ±{:.1}% (priced {:.2} us)",
                                c.label(),
                                ns as f64 / 1e3,
                                err * 100.0,
                                c.predicted.total() * 1e6
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    won.label(),
                    candidates[0].label(),
                );
                {
                    let mut cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
                    cache.trials.insert(key, Trials::Fixed(won));
                    cache.last_fixed = Some((key, won));
                    // What `choice_for` reports from now on: the winner; for the trials of
                    // the algorithms after `mapped`, `mapped` with the winner after it, which
                    // the choice's next lookup derives from the trials (`chosen_state`).
                    let (shape, fallback_of_mapped) = key;
                    if fallback_of_mapped {
                        cache.made.remove(&shape);
                        if cache.last.is_some_and(|(k, _)| k == shape) {
                            cache.last = None;
                        }
                    } else {
                        cache.made.insert(shape, won);
                        cache.last = Some((shape, won));
                    }
                }
                run(won)
            }
        }
    }

    fn next_step(&self, key: TrialKey, model: Choice) -> Step {
        let mut cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, c)) = cache.last_fixed {
            if k == key {
                return Step::Run(c);
            }
        }
        let min_rounds = self.config.trial_calls;
        let full = cache.trials.len() >= MAX_TRIAL_SHAPES;
        match cache.trials.get_mut(&key) {
            Some(Trials::Fixed(c)) => {
                let c = *c;
                cache.last_fixed = Some((key, c));
                Step::Run(c)
            }
            Some(Trials::Trying { warming, .. }) if *warming > 0 => {
                *warming -= 1;
                Step::Run(model)
            }
            Some(Trials::Trying { runs, rescaled, calls, .. }) if !*rescaled && *calls == 2 => {
                *rescaled = true;
                Step::Rescale(runs[0].first().copied().unwrap_or(0))
            }
            Some(Trials::Trying { candidates, runs, block, passes, calls, .. }) => {
                let k = candidates.len();
                if *calls < *passes * k as u32 * *block {
                    let (i, timed) = schedule(*calls, k, *block);
                    *calls += 1;
                    Step::Trial(i, candidates[i], timed)
                } else {
                    tracing::debug!(
                        rank = self.rank,
                        "{} of {} B{}: this rank's trial runs in order (us): {}",
                        key.0 .0,
                        key.0 .1,
                        if key.1 { " (buffers some rank cannot map)" } else { "" },
                        candidates
                            .iter()
                            .zip(runs.iter())
                            .map(|(c, r)| format!(
                                "{} [{}]",
                                c.label(),
                                r.iter().map(|ns| format!("{:.2}", *ns as f64 / 1e3)).collect::<Vec<_>>().join(" ")
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    Step::Fix(candidates.clone(), typical_all(runs))
                }
            }
            None if full => Step::Run(model),
            None => {
                let ((coll, bytes, dtype, op, _), fallback_of_mapped) = key;
                let mut ranked = select::candidates(coll, bytes, dtype, op, &self.hosts, &self.profile, &self.config);
                if fallback_of_mapped {
                    ranked.retain(|c| c.algo != Algorithm::Mapped);
                }
                let mut candidates = select::trial_candidates(&ranked);
                // Below the transport's threshold single copy wins on a send buffer that
                // peers read again unchanged, and loses on one freshly written (see
                // `select::EARLY_SINGLE_COPY_MIN`): only the program's own calls tell which.
                let base = candidates.first().copied().unwrap_or(Choice { fallback: model.algo, ..model });
                if base.algo != Algorithm::Mapped
                    && base.predicted.total() <= select::TRIAL_MAX_SECONDS
                    && self.tries_early_single_copy(bytes)
                {
                    if candidates.is_empty() {
                        candidates.push(base);
                    }
                    candidates.push(Choice { single_copy_min: select::EARLY_SINGLE_COPY_MIN, ..base });
                }
                if candidates.is_empty() || min_rounds == 0 {
                    cache.trials.insert(key, Trials::Fixed(model));
                    cache.last_fixed = Some((key, model));
                    return Step::Run(model);
                }
                let k = candidates.len();
                let (block, passes) = blocks(select::trial_rounds(candidates[0].predicted.total(), k, min_rounds));
                // This call is the first warm-up call.
                let warming = select::TRIAL_WARM_CALLS.saturating_sub(1);
                let trying = Trials::Trying {
                    candidates,
                    runs: vec![Vec::new(); k],
                    block,
                    passes,
                    warming,
                    calls: 0,
                    rescaled: false,
                };
                cache.trials.insert(key, trying);
                Step::Run(model)
            }
        }
    }

    /// Whether trials of calls of `bytes` bytes also try the model's choice with its messages
    /// by single copy below the transport's threshold ([`select::EARLY_SINGLE_COPY_MIN`]).
    fn tries_early_single_copy(&self, bytes: usize) -> bool {
        select::tries_early_single_copy(bytes, self.size, self.single_copy_trials_below)
    }

    /// After the first timed call of a shape's trials (the slowest rank's took `slowest_ns`):
    /// the rounds were sized from the model's price, which on a link far slower than the
    /// profile (a real network under the built-in loopback profile) is far too low, so the
    /// trials would spend many times their budget. Fewer rounds where the measured time buys
    /// fewer (never more). Calls 0 and 1 ran candidate 0 under any block of two or more, so
    /// the shorter schedule continues the same sequence.
    fn rescale_trials(&self, key: TrialKey, slowest_ns: u64) {
        let min_rounds = self.config.trial_calls;
        let mut cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Trials::Trying { candidates, block, passes, .. }) = cache.trials.get_mut(&key) {
            (*block, *passes) = rescaled(*block, *passes, candidates.len(), slowest_ns, min_rounds);
        }
    }

    /// Whether calls of this shape (see [`Communicator::choice_for`]) are still trying
    /// candidate algorithms ([`crate::Config::trial_calls`]): a
    /// benchmark's warm-up runs until they are done, so its timed calls run the fixed
    /// choice. The same on every rank of this communicator after the same calls; two
    /// communicators split from one world may end their trials at different calls, so a
    /// program that warms up several until all are done agrees on that over the world (as
    /// `examples/plan.rs` does).
    pub fn trials_pending(
        &self,
        coll: oxccl_algorithms::Collective,
        bytes: usize,
        dtype: oxccl_algorithms::DataType,
        op: oxccl_algorithms::ReduceOp,
    ) -> bool {
        let forced = self.forced.load(std::sync::atomic::Ordering::Relaxed);
        let cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let key = (coll, bytes, dtype, super::shape_op(coll, op), forced);
        [false, true].iter().any(|&f| matches!(cache.trials.get(&(key, f)), Some(Trials::Trying { .. })))
    }
}

#[cfg(test)]
mod tests {
    use super::{blocks, kept, rescaled, schedule, typical_all, typical_of_kept, TrialTime};

    /// One candidate's typical call from all its runs.
    fn typical(runs: &[u64]) -> TrialTime {
        typical_of_kept(&kept(runs))
    }

    #[test]
    fn candidates_run_in_blocks_whose_first_call_is_untimed() {
        // Two candidates, blocks of 3, two passes, the second in reverse: A A A B B B B B B
        // A A A.
        let s: Vec<(usize, bool)> = (0..12).map(|c| schedule(c, 2, 3)).collect();
        let a = |t| (0, t);
        let b = |t| (1, t);
        let block = |x: fn(bool) -> (usize, bool)| [x(false), x(true), x(true)];
        assert_eq!(s, [block(a), block(b), block(b), block(a)].concat());
        // Three candidates, blocks of 2: A B C C B A, and again after two passes.
        let order: Vec<usize> = (0..24).filter(|c| c % 2 == 1).map(|c| schedule(c, 3, 2).0).collect();
        assert_eq!(order, [0, 1, 2, 2, 1, 0].repeat(2));
        // Each candidate's timed calls sit at the same mean position: a drift of the machine
        // through the trials favours none.
        for k in 1..=4usize {
            let mean = |i: usize| {
                let pos: Vec<u32> = (0..4 * k as u32).filter(|&c| schedule(c, k, 2) == (i, true)).collect();
                assert_eq!(pos.len(), 2);
                f64::from(pos.iter().sum::<u32>()) / 2.0
            };
            assert!((0..k).all(|i| mean(i) == mean(0)), "{k} candidates");
        }
        assert_eq!(blocks(64), (32, 2));
        assert_eq!(blocks(8), (4, 2));
        assert_eq!(blocks(5), (3, 2));
        assert_eq!(blocks(3), (2, 2));
        assert_eq!(blocks(2), (2, 1));
        assert_eq!(blocks(1), (2, 1));
    }

    #[test]
    fn rounds_shrink_to_what_the_measured_call_buys() {
        // Priced at microseconds: two passes of 32. The first timed call took 5 ms on the
        // slowest rank: 20 ms buys about one round of three candidates, so the minimum of 3,
        // two passes of two.
        assert_eq!(rescaled(32, 2, 3, 5_000_000, 3), (2, 2));
        // 100 us: 66 rounds would fit, more than planned: unchanged, never more.
        assert_eq!(rescaled(32, 2, 3, 100_000, 3), (32, 2));
        // 400 us: 16 rounds, two passes of 8.
        assert_eq!(rescaled(32, 2, 3, 400_000, 3), (8, 2));
        // No time: unchanged.
        assert_eq!(rescaled(32, 2, 3, 0, 3), (32, 2));
        // Every rescaled schedule runs candidate 0 for calls 0 and 1, as the first did, so
        // switching after call 1 continues the same sequence.
        for (b, _) in [rescaled(32, 2, 3, 5_000_000, 3), rescaled(32, 2, 3, 400_000, 3), (2, 1)] {
            assert_eq!((0..2).map(|c| schedule(c, 3, b)).collect::<Vec<_>>(), [(0, false), (0, true)]);
        }
    }

    #[test]
    fn the_typical_call_leaves_out_the_slowest_quarter() {
        let ns = |runs: &[u64]| typical(runs).ns;
        // A cold first call and a lost time slice among eight calls: the mean of the rest.
        assert_eq!(ns(&[90_000, 20, 30, 5_000_000, 10, 20, 30, 10]), 20);
        // Bimodal calls (a peer descheduled half the time) count at their mean.
        assert_eq!(ns(&[10, 50, 10, 50]), 23);
        assert_eq!(ns(&[7]), 7);
        assert_eq!(ns(&[]), u64::MAX);
    }

    #[test]
    fn the_typical_call_carries_its_standard_error() {
        // Kept runs 10, 20, 30 (the 40 is the slowest quarter): mean 20, sample standard
        // deviation 10, standard error 10 / sqrt(3), relative 0.2887.
        let t = typical(&[30, 10, 40, 20]);
        assert_eq!(t.ns, 20);
        assert!((t.rel_err - 10.0 / 3f64.sqrt() / 20.0).abs() < 1e-9, "{}", t.rel_err);
        // Identical runs pin it exactly; one run says nothing of its spread.
        assert_eq!(typical(&[5, 5, 5, 5]).rel_err, 0.0);
        assert_eq!(typical(&[7]).rel_err, 1.0);
        assert_eq!(typical(&[]).rel_err, 1.0);
    }

    #[test]
    fn a_pair_of_runs_that_agree_by_chance_gets_the_pooled_spread() {
        // Candidate 0's two runs agree to 0.1%; candidate 1's four swing by 30%. One call's
        // spread is the machine's: candidate 0's error comes from the pooled spread.
        let t = typical_all(&[vec![1000, 1001], vec![700, 1300, 1000, 1000, 5000]]);
        assert_eq!(t[0].ns, 1000);
        assert!(typical(&[1000, 1001]).rel_err < 0.001);
        assert!(t[0].rel_err > 0.1, "{t:?}");
        // A candidate noisier than the pool keeps its own error.
        assert_eq!(t[1].rel_err, typical(&[700, 1300, 1000, 1000, 5000]).rel_err);
        // Steady runs everywhere stay steady; no runs, or one, say nothing new.
        let steady = typical_all(&[vec![100, 100, 101], vec![200, 201, 200]]);
        assert!(steady.iter().all(|t| t.rel_err < 0.01), "{steady:?}");
        assert_eq!(typical_all(&[vec![], vec![7]]), [typical(&[]), typical(&[7])]);
    }
}
