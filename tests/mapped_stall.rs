//! A rank whose mapped call fails while a peer, stalled, may still write into its buffers:
//! in a test binary of its own, as the stall is injected through a process-wide setting that
//! any mapped call on rank 1 would take.

mod common;

use std::time::{Duration, Instant};

use common::{shm_world, test_config};
use oxccl::{Communicator, Config, ReduceOp};

const N: usize = 3 << 20;

/// Rank 1 stalls for 400 ms just after its schedule's first look at the transport, so it has
/// yet to write its slice into its peers' outputs; rank 2 is aborted once the stall has begun
/// (from another thread), so its call fails at once, and rank 0's fails too. No rank may
/// return while rank 1 may still write into its output: once a call returns, its output must
/// not change (its caller may free or reuse it). Threads, so a late write would land in
/// memory the caller owns again: over the in-process transport and shared memory.
fn a_failed_rank_returns_after_its_peers_stop_writing(name: &str, comms: Vec<Communicator>) {
    // One world at a time: the stall is the process's.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    oxccl_algorithms::mapped::stall_next_check_of(1, 400);
    let start = Instant::now();
    let outcome = std::thread::scope(|s| {
        let ranks: Vec<_> = comms
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let send = oxccl::SharedBuffer::<f32>::from_slice(&vec![1.0; N]).unwrap();
                    let mut recv = oxccl::SharedBuffer::<f32>::from_slice(&vec![-1.0; N]).unwrap();
                    let res = c.all_reduce_into(&send, &mut recv, ReduceOp::Sum);
                    let returned = start.elapsed();
                    // What the caller sees once the call returned, and again after the
                    // stalled peer has surely woken and moved on.
                    let at_return = recv.to_vec();
                    std::thread::sleep(Duration::from_millis(800));
                    let changed = recv.iter().zip(&at_return).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    (res.map_err(|e| e.to_string()), returned, changed)
                })
            })
            .collect();
        // Abort only once rank 1 sleeps: on a loaded machine the ranks may take longer than
        // any fixed delay to reach their schedules.
        let deadline = Instant::now() + Duration::from_secs(30);
        while oxccl_algorithms::mapped::stall_pending() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let stalled_at = start.elapsed();
        comms[2].abort();
        (stalled_at, ranks.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>())
    });
    let (stalled_at, outcome) = outcome;
    assert!(!oxccl_algorithms::mapped::stall_pending(), "{name}: rank 1 never reached its stall: {outcome:?}");
    for (r, (res, returned, changed)) in outcome.iter().enumerate() {
        assert!(res.is_err(), "{name}: rank {r} must fail with rank 2 aborted: {outcome:?}");
        assert_eq!(
            *changed, 0,
            "{name}: rank {r}'s output changed after its call returned (at {returned:?}): {outcome:?}"
        );
    }
    // The aborted rank waited for the stalled one, but not for long: a running peer stops
    // within a piece of its schedule.
    let returned = outcome[2].1;
    assert!(
        returned >= stalled_at + Duration::from_millis(350),
        "{name}: rank 2 returned before rank 1 woke (stall from {stalled_at:?}): {outcome:?}"
    );
    assert!(returned < stalled_at + Duration::from_secs(2), "{name}: stall from {stalled_at:?}: {outcome:?}");
}

fn mapped() -> Config {
    test_config().with_algorithm("mapped").unwrap()
}

#[test]
fn a_failed_rank_waits_for_a_stalled_peer_in_process() {
    a_failed_rank_returns_after_its_peers_stop_writing("in-process", Communicator::local_world(3, mapped()).unwrap());
}

#[test]
fn a_failed_rank_waits_for_a_stalled_peer_over_shared_memory() {
    a_failed_rank_returns_after_its_peers_stop_writing("shm", shm_world(3, mapped()));
}
