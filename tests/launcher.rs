//! `oxrun`: environment of the ranks, tagged output, and what happens when a rank fails.

use std::process::Command;
use std::time::{Duration, Instant};

fn oxrun() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oxrun"))
}

#[test]
fn ranks_get_their_environment_and_tagged_output() {
    let out = oxrun()
        .args([
            "-n",
            "3",
            "--tag-output",
            "sh",
            "-c",
            "echo rank=$OXCCL_RANK size=$OXCCL_WORLD_SIZE local=$OXCCL_LOCAL_RANK store=$OXCCL_STORE_HOST",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for r in 0..3 {
        assert!(text.contains(&format!("[{r}] rank={r} size=3 local={r} store=launcher")), "{text}");
    }
}

/// The CPUs this process may run on, from `/proc/self/status` (`Cpus_allowed_list`, as
/// `0-3,6`).
fn allowed(list: &str) -> Vec<usize> {
    list.split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect()
}

#[test]
fn bound_ranks_run_on_cores_of_their_own() {
    let mine = std::fs::read_to_string("/proc/self/status").unwrap();
    let mine = allowed(mine.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim());
    let cores = oxccl::launch::usable_cores().unwrap();
    let show = "echo rank=$OXCCL_LOCAL_RANK bound=$OXCCL_BOUND_CPUS $(grep Cpus_allowed_list /proc/self/status)";
    let n = cores.len().min(2);
    let out = oxrun().args(["-n", &n.to_string(), "--bind-to", "core", "sh", "-c", show]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let mut seen = Vec::new();
    for line in text.lines() {
        let rank: usize = line.split_whitespace().next().unwrap()["rank=".len()..].parse().unwrap();
        let list = allowed(line.split_whitespace().last().unwrap());
        // Exactly the hardware threads of the rank-th core, and what the launcher said.
        assert_eq!(list, cores[rank], "{text}");
        let said = cores[rank].iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
        assert!(line.contains(&format!("bound={said} ")), "{text}");
        seen.push(rank);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{text}");

    // Unbound (the default), a rank keeps everything the launcher may use.
    let out = oxrun().args(["-n", "1", "sh", "-c", show]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bound= "), "{text}");
    assert_eq!(allowed(text.split_whitespace().last().unwrap()), mine, "{text}");

    // More ranks than cores: auto deals them out round robin, core refuses and says why.
    let over = (cores.len() + 1).to_string();
    let out = oxrun().args(["-n", &over, "--bind-to", "auto", "sh", "-c", show]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.lines().count() == cores.len() + 1, "{text}");
    for line in text.lines() {
        let rank: usize = line.split_whitespace().next().unwrap()["rank=".len()..].parse().unwrap();
        assert_eq!(allowed(line.split_whitespace().last().unwrap()), cores[rank % cores.len()], "{text}");
    }
    let out = oxrun().args(["-n", &over, "--bind-to", "core", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{over} ranks but only {} cores", cores.len())), "{err}");
}

#[test]
fn a_failing_rank_is_named_and_the_others_are_stopped() {
    let start = Instant::now();
    let out = oxrun()
        .args(["-n", "3", "sh", "-c", "if [ $OXCCL_RANK = 1 ]; then sleep 0.2; exit 3; fi; sleep 60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 1 exited with code 3"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "the sleeping ranks were not stopped");
}

#[test]
fn a_killed_rank_is_named_with_its_signal() {
    let out = oxrun()
        .args(["-n", "2", "sh", "-c", "if [ $OXCCL_RANK = 0 ]; then kill -9 $$; fi; sleep 60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(128 + 9));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0 was killed by signal 9 (SIGKILL)"), "{err}");
}

#[test]
fn benchmark_under_oxrun_checks_every_collective() {
    let out = oxrun()
        .args([
            "-n",
            "3",
            env!("CARGO_BIN_EXE_oxccl-bench"),
            "-b",
            "1",
            "-e",
            "100K",
            "-f",
            "7",
            "-n",
            "2",
            "-w",
            "1",
            "-c",
            "1",
        ])
        .args(["--collective", "all", "-d", "bfloat16", "-o", "avg"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("# Out of bounds values : 0 OK").count(), 6, "{text}");
    assert!(text.contains("bfloat16"), "{text}");
    // nccl-tests' columns, and the closing line.
    assert!(
        text.contains("#       size         count      type   redop    root     time   algbw   busbw #wrong"),
        "{text}"
    );
    assert!(text.contains("# Avg bus bandwidth"), "{text}");
}

/// A forced algorithm that only takes mapped buffers (`--algo mapped -R 1`) runs every size
/// and checks clean: the bench's own exchanges of its figures, on heap memory, run under the
/// automatic choice.
#[test]
fn benchmark_with_forced_mapped_on_shared_buffers() {
    let out = oxrun()
        .args(["-n", "3", env!("CARGO_BIN_EXE_oxccl-bench"), "-b", "1K", "-e", "64K", "-f", "8"])
        .args(["-n", "2", "-w", "1", "-c", "1", "-R", "1", "--algo", "mapped", "--collective", "all_reduce,all_gather"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("# Out of bounds values : 0 OK").count(), 2, "{text}");
    assert_eq!(text.matches("algorithm mapped").count(), 2, "{text}");
}

/// `--fresh 1`: every collective still checks clean, the header says the input is rewritten,
/// and every time left once the writes' own time is taken off is positive (a subtraction
/// that ate the calls, or calls that never ran, would leave 0).
#[test]
fn benchmark_with_fresh_input_times_the_calls() {
    let out = oxrun()
        .args(["-n", "2", env!("CARGO_BIN_EXE_oxccl-bench"), "-b", "1K", "-e", "200K", "-f", "13"])
        .args(["-n", "3", "-w", "1", "-c", "1", "--fresh", "1", "--collective", "all"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.matches("# Out of bounds values : 0 OK").count(), 6, "{text}");
    assert_eq!(text.matches("input rewritten before every call (--fresh)").count(), 6, "{text}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() >= 13 && f[0].parse::<usize>().is_ok())
        .collect();
    // 1 KiB, 13 KiB, 169 KiB and the largest, 200 KiB, for each of the six collectives.
    assert_eq!(rows.len(), 24, "{text}");
    for f in &rows {
        // Out-of-place and in-place time columns.
        for t in [f[5], f[9]] {
            let t: f64 = t.parse().unwrap_or_else(|_| panic!("time '{t}' in {f:?}"));
            assert!(t > 0.0, "a time of {t} us in {f:?}\n{text}");
        }
    }
}

#[test]
fn a_missing_program_is_an_error() {
    let out = oxrun().args(["-n", "2", "/nonexistent/program"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting rank 0"));
}
