//! The planner example's replay (`examples/plan.rs --replay`) under `oxrun`: four processes
//! replay every layout's collectives on the world and on communicators split from it, and
//! must agree on every step they take. (Each communicator's trial calls end at a call of
//! its own, so the warm-up's end is agreed over the world; when it was not, the ranks of two
//! tensor groups ran different numbers of warm-up steps and timed out in mismatched calls.)

use std::path::PathBuf;
use std::process::Command;

/// `target/<profile>/examples/plan`, which `cargo test` builds with the tests.
fn plan_example() -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    deps.parent().unwrap().join("examples").join("plan")
}

/// Replays every layout of a model of `params` parameters; returns each layout's row, its
/// numbers reversed (ratio, measured, predicted, GB, calls).
fn replay(buffers: &str, params: &str, extra: &[&str]) -> Vec<Vec<f64>> {
    let out = Command::new(env!("CARGO_BIN_EXE_oxrun"))
        .args(["-n", "4"])
        .arg(plan_example())
        .args(["--params", params, "--layers", "2", "--hidden", "256", "--seq", "64", "--micro-batch", "1"])
        .args(["--replay", "--steps", "2", "--buffers", buffers])
        .args(extra)
        .env("OXCCL_TIMEOUT_MS", "30000")
        .env("OXCCL_TRANSPORT", "shm")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "replay on {buffers} buffers:\n{text}");
    let in_place = extra.contains(&"--in-place");
    assert_eq!(text.contains("; calls in place"), in_place, "the header says whether calls are in place:\n{text}");
    // One row per layout: name, calls, GB moved, predicted ms, measured ms, ratio.
    let rows: Vec<Vec<f64>> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let nums: Vec<f64> = l.split_whitespace().rev().take(5).filter_map(|w| w.parse().ok()).collect();
            (nums.len() == 5).then_some(nums)
        })
        .collect();
    assert_eq!(rows.len(), 5, "five layouts on {buffers} buffers:\n{text}");
    if extra.contains(&"--breakdown") {
        // Each op names the algorithm that ran it: on heap buffers never `mapped` (ranks in
        // other processes cannot map them), but its fallback; on shared buffers `mapped`
        // where it was chosen.
        let ran: Vec<&str> = text.lines().filter_map(|l| l.split(", ran ").nth(1)).map(str::trim).collect();
        assert!(!ran.is_empty(), "{text}");
        match buffers {
            "heap" => assert!(!ran.contains(&"mapped"), "{text}"),
            _ => assert!(ran.contains(&"mapped"), "{text}"),
        }
    }
    for r in &rows {
        // Reversed: ratio, measured, predicted, GB, calls.
        let (ratio, measured, predicted) = (r[0], r[1], r[2]);
        assert!(measured > 0.0 && predicted > 0.0, "{text}");
        // Each printed to two decimals: the ratio lies within what their rounding allows.
        let (lo, hi) = ((predicted - 0.005) / (measured + 0.005), (predicted + 0.005) / (measured - 0.005));
        assert!(lo - 0.005 <= ratio && ratio <= hi + 0.005, "ratio {ratio} of {predicted} / {measured}:\n{text}");
    }
    rows
}

#[test]
fn the_planner_replays_every_layout_on_heap_and_shared_buffers() {
    // A model whose gradients (32 MB) the communicator all-reduces with `mapped` where the
    // buffers let it: the same calls on heap buffers name the fallback that ran them.
    replay("heap", "16e6", &["--breakdown"]);
    replay("shared", "16e6", &["--breakdown"]);
}

#[test]
fn the_planner_replays_calls_made_in_place() {
    for buffers in ["heap", "shared"] {
        let (out, inp) = (replay(buffers, "4e6", &[]), replay(buffers, "4e6", &["--in-place"]));
        // The same layouts in the same order, priced in place: never dearer, and ZeRO-3's
        // all-gathers and reduce-scatters (the second row) have no own blocks to copy.
        for (o, i) in out.iter().zip(&inp) {
            assert!(i[2] <= o[2], "{buffers}: in place {i:?}, out of place {o:?}");
        }
        assert!(inp[1][2] < out[1][2], "{buffers}: ZeRO-3 in place {:?}, out of place {:?}", inp[1], out[1]);
    }
}
