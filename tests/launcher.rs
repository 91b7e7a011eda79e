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

#[test]
fn a_missing_program_is_an_error() {
    let out = oxrun().args(["-n", "2", "/nonexistent/program"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("starting rank 0"));
}
