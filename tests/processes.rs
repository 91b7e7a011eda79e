//! Worlds of real processes, started by `oxrun`, running the same sweep as the thread tests
//! over TCP. The test binary runs itself as the ranks: under oxrun, the `sweep_rank` test
//! finds the launcher's environment and acts as one rank; run directly, it sweeps a world of
//! threads instead, so it is a real test either way.

mod common;

use std::process::Command;

use common::{on_all, sweep, sweep_buffers, tcp_world, test_config};
use oxccl::Communicator;

fn run_world(p: usize, transport: &str) {
    run_world_with(p, transport, &[]);
}

fn run_world_with(p: usize, transport: &str, env: &[(&str, &str)]) {
    let me = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", &p.to_string(), "--tag-output"])
        .arg(&me)
        .args(["sweep_rank", "--exact", "--nocapture", "--test-threads=1"])
        .env("OXCCL_TEST_RANK_SWEEP", "1")
        .env("OXCCL_TIMEOUT_MS", "120000")
        .env("OXCCL_TRANSPORT", transport)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "world of {p} processes over {transport} failed:\n{text}");
    // Every rank must have run and passed the sweep (not merely exited 0).
    let label = if transport == "auto" { "router" } else { transport };
    for r in 0..p {
        let want = format!("[{r}] RANK-SWEEP-OK {r}/{p} {label}");
        assert!(text.contains(&want), "rank {r} of {p} over {transport} did not finish:\n{text}");
    }
}

#[test]
fn process_worlds_over_tcp() {
    for p in [1, 2, 3, 4, 5, 8] {
        run_world(p, "tcp");
    }
}

#[test]
fn process_ranks_mix_in_place_and_out_of_place_on_shared_buffers() {
    for p in [3, 4] {
        let text = run_world_output(p, &[("OXCCL_ALGO", "mapped"), ("OXCCL_TEST_MIX_SHARED", "1")]);
        for r in 0..p {
            assert!(text.contains(&format!("MIX-SHARED-OK {r}")), "rank {r} of {p}:\n{text}");
        }
    }
}

#[test]
fn process_worlds_over_shared_memory() {
    // 4 and 8 ranks on this 2-core machine: oversubscribed, so waiters must sleep.
    for p in [2, 3, 4, 5, 8] {
        run_world(p, "shm");
    }
}

#[test]
fn every_algorithm_as_processes() {
    // Each algorithm forced for every collective that has it, in a world of processes whose
    // size is not a power of two (folds, uneven blocks), over both transports.
    for algo in ["tree", "halving_doubling", "bruck", "recursive_doubling", "direct", "ring", "pairwise"] {
        for transport in ["shm", "tcp"] {
            run_world_with(5, transport, &[("OXCCL_ALGO", algo)]);
        }
    }
}

#[test]
fn process_worlds_on_two_pretend_hosts_mix_shared_memory_and_tcp() {
    // Ranks 0,2,4 on one pretend host and 1,3 on another: shared memory within each, TCP
    // between them, behind one router; automatic algorithms, then the hierarchical ones.
    let hosts = [("OXCCL_TEST_PRETEND_HOSTS", "2")];
    run_world_with(5, "auto", &hosts);
    run_world_with(5, "auto", &[hosts[0], ("OXCCL_ALGO", "hierarchical")]);
}

/// Pretend hosts share this machine's CPUs: the cost model prices each host's ranks with
/// their share of them, not with the cores of the machine the profile was measured on.
#[test]
fn pretend_hosts_on_one_machine_share_its_cores() {
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    let cores = |text: &str, p: usize| -> Vec<f64> {
        (0..p)
            .map(|r| {
                let key = format!("CORES {r} ");
                let at = text.find(&key).unwrap_or_else(|| panic!("rank {r} reported no cores:\n{text}"));
                text[at + key.len()..].split_whitespace().next().unwrap().parse().unwrap()
            })
            .collect()
    };
    // One host of 4 ranks: the host has this machine's CPUs.
    let one = run_world_output(4, &[("OXCCL_TEST_REPORT_CORES", "1")]);
    let want = cpus;
    assert!(cores(&one, 4).iter().all(|&c| (c - want).abs() < 1e-9), "want {want}:\n{one}");
    // Two pretend hosts of 2 ranks each on this one machine: each host gets half its CPUs.
    let env = [("OXCCL_TEST_REPORT_CORES", "1"), ("OXCCL_TEST_PRETEND_HOSTS", "2"), ("OXCCL_TRANSPORT", "auto")];
    let two = run_world_output(4, &env);
    let want = cpus / 2.0;
    assert!(cores(&two, 4).iter().all(|&c| (c - want).abs() < 1e-9), "want {want}:\n{two}");
}

/// The mapped schedules and the fallbacks each rank of `text` reported.
fn mapped_runs(text: &str, p: usize) -> Vec<(u64, u64)> {
    (0..p)
        .map(|r| {
            let key = format!("MAPPED-RUNS {r} ");
            let at = text.find(&key).unwrap_or_else(|| panic!("rank {r} reported no mapped runs:\n{text}"));
            let mut w = text[at + key.len()..].split_whitespace().map(|x| x.parse::<u64>().unwrap());
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect()
}

fn run_world_output(p: usize, env: &[(&str, &str)]) -> String {
    let me = std::env::current_exe().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", &p.to_string()])
        .arg(&me)
        .args(["sweep_rank", "--exact", "--nocapture", "--test-threads=1"])
        .env("OXCCL_TEST_RANK_SWEEP", "1")
        .env("OXCCL_TIMEOUT_MS", "120000")
        .env("OXCCL_TRANSPORT", "shm")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "world of {p} processes with {env:?} failed:\n{text}");
    text
}

#[test]
fn shared_buffers_let_processes_map_each_other() {
    // Every rank's buffers shared: the mapped algorithms (forced for the four collectives that
    // have one) run on every rank, for every type, operator and count of the sweep.
    for p in [2, 3, 5, 8] {
        let text = run_world_output(p, &[("OXCCL_ALGO", "mapped"), ("OXCCL_TEST_SHARED_BUFFERS", "all")]);
        let runs = mapped_runs(&text, p);
        assert!(runs.iter().all(|&(n, f)| n > 100 && f == 0), "{p} ranks: mapped schedules per rank {runs:?}");
    }
    // Only odd ranks' buffers shared (or none), automatic choice: wherever mapped is chosen it
    // falls back, on every rank alike (else the ranks would disagree and fail), and the
    // results are still right.
    for (p, which) in [(3, "odd"), (4, "odd"), (2, "none")] {
        let text = run_world_output(p, &[("OXCCL_TEST_SHARED_BUFFERS", which)]);
        let runs = mapped_runs(&text, p);
        assert!(runs.iter().all(|&(n, f)| n == 0 && f > 0), "{p} ranks, {which} shared: {runs:?}\n{text}");
    }
    // From heap to shared buffers (1 MiB all-reduces, where the automatic choice is mapped):
    // the fallback backs off, and the mapped path comes back at the next probe.
    let text = run_world_output(2, &[("OXCCL_TEST_SWITCH_TO_SHARED", "1")]);
    for r in 0..2 {
        let key = format!("SWITCH {r} fallbacks ");
        let at = text.find(&key).unwrap_or_else(|| panic!("rank {r}:\n{text}"));
        let w: Vec<&str> = text[at + key.len()..].split_whitespace().collect();
        let (fell_back, mapped): (u64, u64) = (w[0].parse().unwrap(), w[3].parse().unwrap());
        // Heap calls 1, 3 and 6 probe and fall back (windows of 1, 2 and 4 skipped calls
        // after them); the first shared call is a probe, maps, and resets the window.
        assert_eq!(fell_back, 3, "rank {r}: fallbacks in 10 heap calls:\n{text}");
        assert_eq!(mapped, 80, "rank {r}: mapped of 80 shared calls:\n{text}");
    }
    // Forced on heap buffers: InvalidUsage on every rank, saying why.
    for p in [2, 3] {
        let text = run_world_output(p, &[("OXCCL_ALGO", "mapped"), ("OXCCL_TEST_EXPECT_FORCED_ERROR", "1")]);
        for r in 0..p {
            assert!(text.contains(&format!("FORCED-ERROR-OK {r} ")), "rank {r} of {p}:\n{text}");
        }
        assert!(text.contains("ordinary memory"), "{text}");
    }
}

#[test]
fn sweep_rank() {
    if std::env::var("OXCCL_TEST_RANK_SWEEP").is_ok() {
        if let Ok(n) = std::env::var("OXCCL_TEST_PRETEND_HOSTS") {
            let rank: usize = std::env::var("OXCCL_RANK").unwrap().parse().unwrap();
            let n: usize = n.parse().unwrap();
            // Set before anything reads it, in this single-threaded test process.
            std::env::set_var("OXCCL_HOST_ID", format!("pretend-host-{}", rank % n));
        }
        let comm = Communicator::from_env().expect("launcher environment");
        if std::env::var("OXCCL_TEST_SWITCH_TO_SHARED").is_ok() {
            // Heap buffers first (the automatic mapped choice falls back and backs off), then
            // shared ones: the mapped path must come back within the backoff window.
            let p = comm.size() as f32;
            let n = 1 << 18;
            let mut heap = vec![1f32; n];
            for _ in 0..10 {
                heap.fill(1.0);
                comm.all_reduce(&mut heap, oxccl::ReduceOp::Sum).unwrap();
                assert!(heap.iter().all(|&x| x == p));
            }
            let fell_back = oxccl_algorithms::mapped::fallbacks();
            let before = oxccl_algorithms::mapped::schedules_run();
            let mut shared = oxccl::SharedBuffer::<f32>::new(n).unwrap();
            for _ in 0..80 {
                shared.fill(1.0);
                comm.all_reduce(&mut shared, oxccl::ReduceOp::Sum).unwrap();
                assert!(shared.iter().all(|&x| x == p));
            }
            let mapped = oxccl_algorithms::mapped::schedules_run() - before;
            println!("\nSWITCH {} fallbacks {fell_back} then mapped {mapped} of 80", comm.rank());
            return;
        }
        if std::env::var("OXCCL_TEST_REPORT_CORES").is_ok() {
            println!("\nCORES {} {}", comm.rank(), comm.profile().cores);
            return;
        }
        if std::env::var("OXCCL_TEST_MIX_SHARED").is_ok() {
            // Shared buffers, mapped forced (by the parent), even ranks in place and odd ranks
            // out of place in every call: the mapped schedules must learn each rank's form.
            let before = oxccl_algorithms::mapped::schedules_run();
            for coll in common::checked_collectives() {
                for count in [1, 7, 1000, 70_001] {
                    if let Err(e) = common::call_and_check_in(&comm, coll, count, true) {
                        panic!("rank {}: {coll} count {count}: {e}", comm.rank());
                    }
                }
            }
            let ran = oxccl_algorithms::mapped::schedules_run() - before;
            assert_eq!(ran, 24, "every call ran the mapped schedule");
            println!("\nMIX-SHARED-OK {}", comm.rank());
            return;
        }
        if std::env::var("OXCCL_TEST_EXPECT_FORCED_ERROR").is_ok() {
            // Forced mapped on heap buffers: an error on every rank that says why, not a hang
            // and not a silent switch.
            let e = comm.all_reduce(&mut vec![1f32; 1000], oxccl::ReduceOp::Sum).unwrap_err();
            assert_eq!(e.kind(), oxccl::ErrorKind::InvalidUsage, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("mapped algorithm was forced") && msg.contains("SharedBuffer"), "{msg}");
            println!("\nFORCED-ERROR-OK {} {msg}", comm.rank());
            return;
        }
        let big = comm.size() <= 4;
        // Shared buffers on every rank ("all") or on odd ranks only ("odd": every call must
        // fall back, on every rank alike).
        let shared = match std::env::var("OXCCL_TEST_SHARED_BUFFERS").as_deref() {
            Ok("all") => true,
            Ok("odd") => comm.rank() % 2 == 1,
            _ => false,
        };
        let fails = sweep_buffers(&comm, big, shared);
        assert!(fails.is_empty(), "{}", fails.join("\n"));
        println!(
            "\nMAPPED-RUNS {} {} {}",
            comm.rank(),
            oxccl_algorithms::mapped::schedules_run(),
            oxccl_algorithms::mapped::fallbacks()
        );
        let mut transport = std::env::var("OXCCL_TRANSPORT").unwrap_or_default();
        if transport == "auto" {
            // Several pretend hosts with more than one rank each: a router over shm and TCP.
            transport = "router".into();
        }
        assert!(
            comm.size() == 1 || comm.transport_name() == transport,
            "asked for {transport}, got {}",
            comm.transport_name()
        );
        println!("\nRANK-SWEEP-OK {}/{} {transport}", comm.rank(), comm.size());
    } else {
        let comms = tcp_world(3, test_config());
        let fails = on_all(&comms, |c| sweep(c, false));
        assert!(fails.is_empty(), "{}", fails.join("\n"));
    }
}
