//! Trial calls ([`oxccl::Config::trial_calls`]): where the cost model prices several
//! algorithms close together, the first calls of a shape try each and a later one fixes the
//! fastest. Every rank must take the same steps (else they would run different algorithms in
//! one call and fail or hang), every result must be right during the trials and after, and
//! every rank must fix the same algorithm. Worlds of threads over TCP and shared memory, and
//! of processes under `oxrun`; ranks mix in-place and out-of-place calls, which is each
//! rank's own affair.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    call_and_check, call_and_check_as, call_and_check_in, checked_collectives, on_all, shm_world, tcp_world,
    test_config,
};
use oxccl::select::{
    candidates, trial_candidates, EARLY_SINGLE_COPY_MIN, TRIAL_MAX_CANDIDATES, TRIAL_MAX_ROUNDS, TRIAL_WARM_CALLS,
};
use oxccl::{Collective, Communicator, Config, DataType, ReduceOp};
use oxccl_transport::{
    Capabilities, LoopbackTransport, Region, RegionMut, ReqId, Result as TResult, SendHints, Tag, Transport,
};

/// Element counts searched for a shape with something to try: primes, so blocks are uneven.
const COUNTS: [usize; 14] = [1, 2, 3, 5, 7, 13, 31, 127, 509, 1021, 4093, 16381, 65521, 262139];

/// A call's bytes as the model counts them, for `count` f32 elements in the API's terms.
fn call_bytes(coll: Collective, count: usize, p: usize) -> usize {
    let per =
        if matches!(coll, Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll) { p } else { 1 };
    count * 4 * per
}

/// The smallest count of `coll` whose shape has at least two candidates to try, with them;
/// with `after_mapped`, among the shapes whose best-priced algorithm is `mapped`, the
/// candidates after it.
fn tried_shape(comm: &Communicator, coll: Collective, after_mapped: bool) -> Option<(usize, Vec<oxccl::Algorithm>)> {
    COUNTS.iter().find_map(|&count| {
        let bytes = call_bytes(coll, count, comm.size());
        let mut ranked =
            candidates(coll, bytes, DataType::F32, ReduceOp::Sum, comm.hosts(), comm.profile(), comm.config());
        if after_mapped {
            if ranked.first()?.algo != oxccl::Algorithm::Mapped {
                return None;
            }
            ranked.retain(|c| c.algo != oxccl::Algorithm::Mapped);
        }
        let t = trial_candidates(&ranked);
        (t.len() >= 2).then(|| (count, t.iter().map(|c| c.algo).collect()))
    })
}

/// Calls `coll` of `count` (checked) until its trials end: the number of calls, or the
/// failure to report.
fn call_until_fixed(comm: &Communicator, coll: Collective, count: usize) -> Result<usize, String> {
    // Up to the most algorithms, and the model's choice with single copy below the threshold.
    let limit = TRIAL_WARM_CALLS as usize + TRIAL_MAX_ROUNDS as usize * (TRIAL_MAX_CANDIDATES + 1) + 1;
    let bytes = call_bytes(coll, count, comm.size());
    let mut calls = 0;
    loop {
        call_and_check(comm, coll, count)
            .map_err(|e| format!("FAIL rank {} {coll} count {count} call {calls}: {e}", comm.rank()))?;
        calls += 1;
        if !comm.trials_pending(coll, bytes, DataType::F32, ReduceOp::Sum) {
            return Ok(calls);
        }
        if calls > limit {
            return Err(format!("FAIL rank {} {coll}: still trying after {calls} calls", comm.rank()));
        }
    }
}

/// Drives every collective's tried shape through its trials on this rank: the lines it
/// reports are `coll count chosen calls`, or failures (prefixed `FAIL`). With
/// `after_mapped`, the shapes whose best is `mapped`, on ordinary buffers (which no rank of
/// another process can map): their calls try the algorithms after `mapped` and fix one,
/// reported as `mapped`'s fallback, and calls on shared buffers still run `mapped`.
fn drive(comm: &Communicator, after_mapped: bool) -> Vec<String> {
    let mut out = Vec::new();
    for coll in checked_collectives() {
        let Some((count, tried)) = tried_shape(comm, coll, after_mapped) else {
            out.push(format!("{coll} none"));
            continue;
        };
        let bytes = call_bytes(coll, count, comm.size());
        let calls = match call_until_fixed(comm, coll, count) {
            Ok(calls) => calls,
            Err(fail) => {
                out.push(fail);
                return out;
            }
        };
        let choice = comm.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum);
        let chosen = if after_mapped { choice.fallback } else { choice.algo };
        if !tried.contains(&chosen) || after_mapped && choice.algo != oxccl::Algorithm::Mapped {
            out.push(format!(
                "FAIL rank {} {coll}: fixed {chosen} (choice {}), not one of the candidates {tried:?}",
                comm.rank(),
                choice.algo
            ));
        }
        // Fixed for good: more calls stay right and try nothing (shared buffers run `mapped`).
        for shared in [after_mapped, false, after_mapped] {
            if let Err(e) = call_and_check_in(comm, coll, count, shared) {
                out.push(format!("FAIL rank {} {coll} after the trials (shared {shared}): {e}", comm.rank()));
            }
        }
        if comm.trials_pending(coll, bytes, DataType::F32, ReduceOp::Sum)
            || comm.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum) != choice
        {
            out.push(format!("FAIL rank {} {coll}: the fixed choice changed", comm.rank()));
        }
        out.push(format!("{coll} {count} {chosen} {calls}"));
    }
    out
}

/// Checks the reports of every rank of one world: no failure, and every rank fixed the same
/// algorithm after the same number of calls, with trials run for at least three collectives.
fn check_world(reports: &[Vec<String>], what: &str) {
    for (r, rep) in reports.iter().enumerate() {
        let fails: Vec<&String> = rep.iter().filter(|l| l.starts_with("FAIL")).collect();
        assert!(fails.is_empty(), "{what}, rank {r}: {fails:?}");
        assert_eq!(rep, &reports[0], "{what}: rank {r} took other steps than rank 0");
    }
    let tried: Vec<&String> = reports[0].iter().filter(|l| !l.ends_with(" none")).collect();
    assert!(tried.len() >= 3, "{what}: too few collectives had candidates to try: {:?}", reports[0]);
    for line in &tried {
        // The warm-up calls, then blocks of at least two calls (one untimed, one timed) of
        // at least two candidates, then the fixing call.
        let calls: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(calls > TRIAL_WARM_CALLS as usize + 2 * 2, "{what}: {line}");
    }
}

fn thread_world(comms: &[Communicator], what: &str) {
    let reports: Vec<Vec<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = comms.iter().map(|c| s.spawn(|| drive(c, false))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    check_world(&reports, what);
}

#[test]
fn trials_fix_one_algorithm_on_every_rank_over_tcp() {
    for p in [2, 3, 4] {
        thread_world(&tcp_world(p, test_config()), &format!("{p} ranks over TCP"));
    }
}

#[test]
fn trials_fix_one_algorithm_on_every_rank_over_shared_memory() {
    for p in [3, 5] {
        thread_world(&shm_world(p, test_config()), &format!("{p} ranks over shared memory"));
    }
}

/// Processes, since ranks that are threads of one process map each other's ordinary buffers.
#[test]
fn trials_fix_the_algorithm_after_mapped_on_buffers_that_cannot_be_mapped() {
    process_world(3, "shm", "after_mapped");
    process_world(4, "shm", "after_mapped");
}

#[test]
fn no_trials_when_off_or_forced() {
    let comms = tcp_world(3, test_config().with_trial_calls(0));
    let fails = on_all(&comms, |c| {
        let mut out = Vec::new();
        for coll in checked_collectives() {
            let Some((count, tried)) = tried_shape(c, coll, false) else { continue };
            let bytes = call_bytes(coll, count, c.size());
            if let Err(e) = call_and_check(c, coll, count) {
                out.push(e);
            }
            if c.trials_pending(coll, bytes, DataType::F32, ReduceOp::Sum) {
                out.push(format!("{coll}: trials with trial_calls 0"));
            }
            // The model's own choice, the best-priced candidate.
            if c.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum).algo != tried[0] {
                out.push(format!("{coll}: not the model's choice"));
            }
        }
        out
    });
    assert!(fails.is_empty(), "{fails:?}");
    let comms = tcp_world(3, test_config());
    let fails = on_all(&comms, |c| {
        let mut out = Vec::new();
        let (count, tried) = tried_shape(c, Collective::AllGather, false).expect("all-gather has a shape to try");
        let forced = tried[1];
        c.set_algorithms(&format!("all_gather:{}", forced.name())).unwrap();
        let bytes = call_bytes(Collective::AllGather, count, c.size());
        for _ in 0..3 {
            if let Err(e) = call_and_check(c, Collective::AllGather, count) {
                out.push(e);
            }
        }
        if c.trials_pending(Collective::AllGather, bytes, DataType::F32, ReduceOp::Sum) {
            out.push("trials under a forced algorithm".into());
        }
        if c.choice_for(Collective::AllGather, bytes, DataType::F32, ReduceOp::Sum).algo != forced {
            out.push("the forced algorithm did not run".into());
        }
        out
    });
    assert!(fails.is_empty(), "{fails:?}");
}

fn process_world(p: usize, transport: &str, which: &str) {
    let me = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", &p.to_string(), "--tag-output"])
        .arg(&me)
        .args(["trials_rank", "--exact", "--nocapture", "--test-threads=1"])
        .env("OXCCL_TEST_RANK_TRIALS", which)
        .env("OXCCL_TIMEOUT_MS", "60000")
        .env("OXCCL_TRANSPORT", transport)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{p} processes over {transport}:\n{text}");
    let reports: Vec<Vec<String>> = (0..p)
        .map(|r| {
            let tag = format!("[{r}] TRIALS ");
            text.lines().filter_map(|l| l.strip_prefix(&tag)).map(str::to_string).collect()
        })
        .collect();
    assert!(reports.iter().all(|r| !r.is_empty()), "a rank reported nothing:\n{text}");
    check_world(&reports, &format!("{p} processes over {transport} ({which})"));
}

#[test]
fn trials_agree_across_processes() {
    process_world(3, "shm", "drive");
    process_world(4, "tcp", "drive");
}

/// One rank of `trials_agree_across_processes` (or, with `after_mapped`, of
/// `trials_fix_the_algorithm_after_mapped_on_buffers_that_cannot_be_mapped`) under oxrun;
/// run directly, a world of threads.
#[test]
fn trials_rank() {
    let Ok(which) = std::env::var("OXCCL_TEST_RANK_TRIALS") else {
        thread_world(&Communicator::local_world(3, test_config()).unwrap(), "3 ranks in one process");
        return;
    };
    let comm = Communicator::from_env().expect("launcher environment");
    let lines = if which == "early" { drive_early(&comm) } else { drive(&comm, which == "after_mapped") };
    for line in lines {
        println!("\nTRIALS {line}");
    }
}

#[test]
fn trial_calls_from_the_environment() {
    let c = Config::default().overlay(&|k| (k == "OXCCL_TRIAL_CALLS").then(|| "7".into())).unwrap();
    assert_eq!(c.trial_calls, 7);
}

/// A rank's endpoint for [`trials_keep_single_copy_below_the_threshold_where_it_ran_faster`]:
/// moves messages over loopback, reports `single_copy_min` as its single-copy threshold (as
/// shared memory does, without mapping peers' memory), counts the sends posted with the
/// trials' early threshold as hint ([`EARLY_SINGLE_COPY_MIN`]) and the others, keeps the
/// length and hints of every send in `sent`, and holds every send of one kind back by
/// [`HELD_BACK`] (`slow_early`; neither where `None`), so that the other kind measures faster.
struct HintedSends {
    inner: LoopbackTransport,
    single_copy_min: usize,
    slow_early: Option<bool>,
    early: AtomicUsize,
    plain: AtomicUsize,
    sent: std::sync::Mutex<Vec<(usize, SendHints)>>,
}

impl Transport for HintedSends {
    fn name(&self) -> &'static str {
        "hinted"
    }
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            peer_memory_mappable: false,
            single_copy: true,
            single_copy_min: self.single_copy_min,
            ..self.inner.capabilities()
        }
    }
    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> TResult<ReqId> {
        self.post_send_hinted(peer, tag, buf, SendHints::default())
    }
    fn post_send_hinted(&self, peer: usize, tag: Tag, buf: Region, hints: SendHints) -> TResult<ReqId> {
        let early = hints.single_copy_min == Some(EARLY_SINGLE_COPY_MIN);
        if early { &self.early } else { &self.plain }.fetch_add(1, Ordering::Relaxed);
        self.sent.lock().unwrap().push((buf.len(), hints));
        if Some(early) == self.slow_early {
            std::thread::sleep(HELD_BACK);
        }
        self.inner.post_send(peer, tag, buf)
    }
    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> TResult<ReqId> {
        self.inner.post_recv(peer, tag, buf)
    }
    fn test(&self, req: ReqId) -> TResult<bool> {
        self.inner.test(req)
    }
    fn wait(&self, req: ReqId, deadline: Instant) -> TResult<()> {
        self.inner.wait(req, deadline)
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    fn progress(&self, max_wait: Duration) -> TResult<()> {
        self.inner.progress(max_wait)
    }
    fn abort(&self) {
        self.inner.abort()
    }
    fn fail(&self, err: oxccl_transport::Error) {
        self.inner.fail(err)
    }
}

/// How long [`HintedSends`] holds back each send of the slowed kind: far above what a call
/// of the other kind takes (tens of microseconds) and above the time slices a rank loses on
/// a busy machine (the tests run beside worlds of processes on 2 cores, where single calls
/// took up to 3 ms), so that the trials' mean of their kept runs tells the kinds apart.
const HELD_BACK: Duration = Duration::from_millis(3);

/// A world of 2 threads over [`HintedSends`]: each rank's communicator and its endpoint.
/// Rank r's endpoint reports `single_copy_min[r]`.
fn hinted_world(
    single_copy_min: [usize; 2],
    slow_early: Option<bool>,
    config: Config,
) -> Vec<(Communicator, Arc<HintedSends>)> {
    let ends: Vec<Arc<HintedSends>> = LoopbackTransport::world(2)
        .into_iter()
        .zip(single_copy_min)
        .map(|(inner, single_copy_min)| {
            Arc::new(HintedSends {
                inner,
                single_copy_min,
                slow_early,
                early: AtomicUsize::new(0),
                plain: AtomicUsize::new(0),
                sent: Default::default(),
            })
        })
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = ends
            .iter()
            .map(|e| {
                let (e, config) = (e.clone(), config.clone());
                s.spawn(move || (Communicator::from_transport(e.clone(), config).unwrap(), e))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Where the transport's single-copy threshold lies above [`EARLY_SINGLE_COPY_MIN`], the
/// trials of a call whose messages fall between the two also run the model's choice with
/// its messages by single copy from there (its sends carry that hint), and keep whichever
/// ran faster: every later call out of place sends with the hint if it won, without if it
/// lost; in place, only the all-gather (which sends the caller's input, unchanged) and not
/// the all-to-all (which sends a fresh copy). No such trial where the transport's threshold
/// is not above it, where the configuration turned them off (as `OXCCL_SHM_SINGLE_COPY`
/// does), or where the ranks' thresholds differ (each rank must try the same candidates).
/// 256 KiB calls (2 x 32749 f32).
#[test]
fn trials_keep_single_copy_below_the_threshold_where_it_ran_faster() {
    let count = 32749;
    let bytes = call_bytes(Collective::AllGather, count, 2);
    assert!(oxccl::select::tries_early_single_copy(bytes, 2, 1 << 20));
    // Whole messages, not the tests' 4 KiB chunks: a pipelined candidate would sleep for each
    // chunk, and its spread of milliseconds would swamp every candidate's measurement.
    //
    // Sixteen trial calls per candidate (fourteen timed, the slowest three dropped), not the
    // default three: the held-back sends make the first timed call slow, so the trials would
    // shrink to their floor, and two timed calls per candidate let one lost time slice on a
    // busy machine decide (with the default and a 1 ms hold, 7 runs of 15 of this test
    // binary on 2 cores fixed the wrong kind; none of 40 since).
    let config = test_config().with_chunk_bytes(1 << 20).with_trial_calls(16);
    let no_trials = Config { shm_single_copy_trials: false, ..config.clone() };
    // (each rank's threshold, early sends slowed, configuration, early sends in trials, early won)
    let m = 1 << 20;
    let cases = [
        ([m, m], false, config.clone(), true, true),
        ([m, m], true, config.clone(), true, false),
        // A threshold not above the early one: nothing to try (and sends hint 16 KiB).
        ([16 << 10, 16 << 10], false, config.clone(), false, false),
        ([m, m], false, no_trials, false, false),
        ([m, 16 << 10], false, config, false, false),
    ];
    for (min, slow_early, config, tried, won) in cases {
        let (comms, ends): (Vec<Communicator>, Vec<Arc<HintedSends>>) =
            hinted_world(min, Some(slow_early), config.clone()).into_iter().unzip();
        for coll in [Collective::AllGather, Collective::AllToAll] {
            let what = format!(
                "{coll}, thresholds {min:?}, early sends slowed {slow_early}, trials {}",
                config.shm_single_copy_trials
            );
            // The trials, out of place on both ranks.
            let fails = on_all(&comms, |c| {
                let mut out = Vec::new();
                for _ in 0..1000 {
                    if let Err(e) = call_and_check_as(c, coll, count, false, false) {
                        out.push(e);
                    }
                    if !c.trials_pending(coll, bytes, DataType::F32, ReduceOp::Sum) {
                        return out;
                    }
                }
                out.push(format!("rank {}: still trying after 1000 calls", c.rank()));
                out
            });
            assert!(fails.is_empty(), "{what}: {fails:?}");
            let choices: Vec<_> =
                comms.iter().map(|c| c.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum)).collect();
            assert_eq!(choices[0], choices[1], "{what}: the ranks fixed different choices");
            let early_fixed = choices[0].single_copy_min == EARLY_SINGLE_COPY_MIN;
            assert_eq!(early_fixed, won, "{what}: fixed {}", choices[0].label());
            assert_eq!(choices[0].label().ends_with("+single-copy"), won, "{what}: label {}", choices[0].label());
            for e in &ends {
                let early = e.early.swap(0, Ordering::Relaxed);
                assert_eq!(early > 0, tried, "{what}: {early} early sends in the trials");
                e.plain.store(0, Ordering::Relaxed);
            }
            for in_place in [false, true] {
                let fails = on_all(&comms, |c| {
                    (0..3).filter_map(|_| call_and_check_as(c, coll, count, false, in_place).err()).collect()
                });
                assert!(fails.is_empty(), "{what}: after the trials (in place {in_place}): {fails:?}");
                let expect = won && (!in_place || coll == Collective::AllGather);
                for e in &ends {
                    let (early, plain) = (e.early.swap(0, Ordering::Relaxed), e.plain.swap(0, Ordering::Relaxed));
                    assert!(early + plain > 0, "{what}: no sends after the trials");
                    assert_eq!(
                        (early > 0, plain > 0),
                        (expect, !expect),
                        "{what}: after the trials (in place {in_place}) {early} early sends, {plain} others"
                    );
                }
            }
        }
    }
}

/// Every send carries its call's bytes ([`SendHints::call_bytes`], which the shared-memory
/// transport reads to leave the pieces of calls too large for the caches unjudged), and the
/// pairwise all-to-all sends the pieces of a block that the transport would move by single
/// copy whole with a hint low enough for its smallest piece, and those of a shorter block
/// with none below the transport's threshold. In place it sends from scratch and hints
/// nothing lower. Every element checked.
#[test]
fn sends_carry_their_call_and_long_blocks_go_by_single_copy_in_pieces() {
    let m = 1 << 20;
    let config = test_config().with_chunk_bytes(512 << 10).with_trial_calls(0);
    let (comms, ends): (Vec<Communicator>, Vec<Arc<HintedSends>>) =
        hinted_world([m, m], None, config).into_iter().unzip();
    for c in &comms {
        c.set_algorithms("all_to_all:pairwise").unwrap();
    }
    // What setting up sent (the communicators' agreement at init) is not a call's.
    for e in &ends {
        e.sent.lock().unwrap().clear();
    }
    // (elements per block, in place, the hint every send must carry). 524309 f32: a block of
    // 2 MiB + 84 B, in four pieces of 512 KiB and one of 84 B; 131071: one piece below 1 MiB.
    let cases = [(524309, false, Some(84)), (524309, true, Some(m)), (131071, false, Some(m))];
    for (count, in_place, hint) in cases {
        let what = format!("all-to-all of {count} f32 per block (in place {in_place})");
        let fails = on_all(&comms, |c| {
            call_and_check_as(c, Collective::AllToAll, count, false, in_place).err().into_iter().collect()
        });
        assert!(fails.is_empty(), "{what}: {fails:?}");
        let bytes = call_bytes(Collective::AllToAll, count, 2);
        for e in &ends {
            let sent = std::mem::take(&mut *e.sent.lock().unwrap());
            assert!(!sent.is_empty(), "{what}: no sends");
            for (len, h) in sent {
                assert_eq!(h.call_bytes, bytes, "{what}: a send of {len} B");
                assert_eq!(h.single_copy_min, hint, "{what}: a send of {len} B");
            }
        }
    }
}

/// One rank's part of the early-single-copy runs over shared memory: each collective at a
/// size whose messages fall between 32 KiB and the default 1 MiB threshold, through its
/// trials (every result checked) and two calls after: `coll choice calls` per collective,
/// or failures (prefixed `FAIL`).
fn drive_early(c: &Communicator) -> Vec<String> {
    let mut out = Vec::new();
    for coll in checked_collectives() {
        // About 192 KiB of messages: 49157 f32 per block or vector.
        let count = if matches!(coll, Collective::AllToAll) { 16381 } else { 49157 };
        let bytes = call_bytes(coll, count, c.size());
        if !oxccl::select::tries_early_single_copy(bytes, c.size(), 1 << 20) {
            out.push(format!("FAIL {coll}: {bytes} B is not tried"));
            continue;
        }
        match call_until_fixed(c, coll, count) {
            Ok(calls) => {
                // What ran: on heap buffers in processes, `mapped`'s fallback.
                let choice = c.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum);
                out.push(format!("{coll} {} {calls}", choice.fallback_label()))
            }
            Err(e) => out.push(e),
        }
        for _ in 0..2 {
            if let Err(e) = call_and_check(c, coll, count) {
                out.push(format!("FAIL {coll} after the trials: {e}"));
            }
        }
    }
    out
}

/// Over shared memory at its default threshold (1 MiB), trials with single copy from 32 KiB
/// move real messages both ways ([`drive_early`]): every result right during the trials and
/// after, and every rank the same steps and choice, with trials run for every collective.
/// Processes under `oxrun`, at the configuration's defaults (single copy from 1 MiB, trials
/// on): ranks that are threads map each other's heap buffers, and `mapped` would run every
/// call of these sizes without trials.
#[test]
fn trials_of_early_single_copy_agree_across_processes() {
    process_world(2, "shm", "early");
    process_world(3, "shm", "early");
}
