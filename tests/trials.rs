//! Trial calls ([`oxccl::Config::trial_calls`]): where the cost model prices several
//! algorithms close together, the first calls of a shape try each and a later one fixes the
//! fastest. Every rank must take the same steps (else they would run different algorithms in
//! one call and fail or hang), every result must be right during the trials and after, and
//! every rank must fix the same algorithm. Worlds of threads over TCP and shared memory, and
//! of processes under `oxrun`; ranks mix in-place and out-of-place calls, which is each
//! rank's own affair.

mod common;

use std::process::Command;

use common::{call_and_check, call_and_check_in, checked_collectives, on_all, shm_world, tcp_world, test_config};
use oxccl::select::{candidates, trial_candidates, TRIAL_MAX_CANDIDATES, TRIAL_MAX_ROUNDS, TRIAL_WARM_CALLS};
use oxccl::{Collective, Communicator, Config, DataType, ReduceOp};

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
    let limit = TRIAL_WARM_CALLS as usize + TRIAL_MAX_ROUNDS as usize * TRIAL_MAX_CANDIDATES + 1;
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
    let lines = drive(&comm, which == "after_mapped");
    for line in lines {
        println!("\nTRIALS {line}");
    }
}

#[test]
fn trial_calls_from_the_environment() {
    let c = Config::default().overlay(&|k| (k == "OXCCL_TRIAL_CALLS").then(|| "7".into())).unwrap();
    assert_eq!(c.trial_calls, 7);
}
