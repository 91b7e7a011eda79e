//! Every collective x world sizes 1, 2, 3, 4, 5, 8 x counts 0, 1, 7, 1000, 2^20+3 x all data
//! types and operators, over the in-process transport and over TCP, with algorithms chosen
//! by size and forced. Every element is checked against a closed form.

mod common;

use common::{on_all, shm_world, sweep, tcp_world, test_config};
use oxccl::{Collective, Communicator, Config};

const SIZES: [usize; 6] = [1, 2, 3, 4, 5, 8];

fn check(comms: Vec<Communicator>, big: bool) {
    let fails = on_all(&comms, |c| sweep(c, big));
    assert!(fails.is_empty(), "{} failures:\n{}", fails.len(), fails.join("\n"));
}

#[test]
fn loopback_auto_algorithms() {
    for p in 1..=9 {
        check(Communicator::local_world(p, test_config()).unwrap(), p <= 5 || p == 8);
    }
}

#[test]
fn loopback_forced_ring() {
    for p in 1..=9 {
        check(Communicator::local_world(p, test_config().with_algorithm("ring").unwrap()).unwrap(), p <= 3);
    }
}

#[test]
fn loopback_forced_recursive_doubling() {
    let cfg = test_config().with_algorithm("all_reduce:recursive_doubling").unwrap();
    for p in [1, 2, 3, 5, 6, 7, 8] {
        check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 6);
    }
}

/// Recursive doubling over shared memory with vectors the transport moves by single copy
/// (64 KiB and up), where a vector this rank wrote goes out from a private copy: in place,
/// out of place and both in one call, with a fold (5 ranks) and several exchange steps.
#[test]
fn shm_recursive_doubling_sends_written_vectors_from_a_copy() {
    let cfg = test_config().with_algorithm("all_reduce:recursive_doubling").unwrap();
    for p in [2, 4, 5] {
        let comms = shm_world(p, cfg.clone());
        let fails = on_all(&comms, |c| {
            let mut fails = Vec::new();
            // Just above the 64 KiB single-copy size, a prime, and past the private-copy limit.
            for count in [16_411, 70_001, 140_009] {
                for in_place in [true, false, c.rank() % 2 == 0] {
                    if let Err(e) = common::call_and_check_as(c, oxccl::Collective::AllReduce, count, false, in_place) {
                        fails.push(format!("{p} ranks, count {count}, in place {in_place}: {e}"));
                    }
                }
            }
            fails
        });
        assert!(fails.is_empty(), "{}", fails.join("\n"));
    }
}

#[test]
fn loopback_forced_direct() {
    // test_config's 4 KiB chunks: every slice spans many chunks, several in flight.
    let cfg = test_config().with_algorithm("direct").unwrap();
    for p in SIZES {
        check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 3);
    }
}

#[test]
fn loopback_and_shm_threads_forced_mapped() {
    // Threads of one process map each other's memory whatever it is: the mapped schedules
    // run (the counter says so), over the in-process transport and over shared memory.
    let cfg = test_config().with_algorithm("mapped").unwrap();
    for p in SIZES {
        let before = oxccl_algorithms::mapped::schedules_run();
        check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 3);
        if p > 1 {
            assert!(oxccl_algorithms::mapped::schedules_run() > before + 100, "{p} ranks: mapped never ran");
        }
    }
    for p in [2, 5] {
        let before = oxccl_algorithms::mapped::schedules_run();
        check(shm_world(p, cfg.clone()), p == 2);
        assert!(oxccl_algorithms::mapped::schedules_run() > before + 100, "{p} ranks over shm: mapped never ran");
    }
}

#[test]
fn forced_mapped_streams_large_outputs() {
    // Outputs over 32 MiB on the host take the streaming stores: 4 ranks of 3,000,017 f32
    // (12 MB each), every element checked, with every rank out of place (streaming) and with
    // ranks mixing the forms (even ranks in place: all-reduce must not stream into an input).
    let cfg = test_config().with_algorithm("mapped").unwrap();
    let comms = Communicator::local_world(4, cfg).unwrap();
    for mixed in [false, true] {
        let before = oxccl_algorithms::mapped::schedules_run();
        let fails = on_all(&comms, |c| {
            let in_place = mixed && c.rank().is_multiple_of(2);
            common::checked_collectives()
                .filter_map(|coll| {
                    let r = common::call_and_check_as(c, coll, 3_000_017, false, in_place);
                    r.err().map(|e| format!("{coll}, mixed {mixed}: {e}"))
                })
                .collect()
        });
        assert!(fails.is_empty(), "{}", fails.join("\n"));
        assert!(oxccl_algorithms::mapped::schedules_run() >= before + 4 * 6, "mapped did not run every call");
    }
}

#[test]
fn own_blocks_stream_into_large_outputs() {
    // Where a host's outputs exceed 32 MiB, the all-gathers and all-to-alls copy the own
    // block with streaming stores (recursive doubling while its first message travels): 3
    // and 4 ranks over shm (3: the fold's three roles) of 3,000,017 f32 per block (12 MB),
    // every element checked, ranks mixing in place and out of place.
    let forced = [
        ("all_gather:ring", Collective::AllGather),
        ("all_gather:recursive_doubling", Collective::AllGather),
        ("all_gather:bruck", Collective::AllGather),
        ("all_to_all:pairwise", Collective::AllToAll),
        ("all_to_all:bruck", Collective::AllToAll),
    ];
    for p in [3, 4] {
        for (spec, coll) in forced {
            let comms = shm_world(p, test_config().with_algorithm(spec).unwrap());
            let fails = on_all(&comms, |c| {
                // Counted on this rank's thread, where its call runs.
                let before = oxccl_algorithms::ctx::streamed_placements();
                if let Err(e) = common::call_and_check(c, coll, 3_000_017) {
                    return vec![format!("{p} ranks, {spec}: {e}")];
                }
                let streamed = oxccl_algorithms::ctx::streamed_placements() - before;
                // Odd ranks call out of place and stream their own block; in place the own
                // block stays where it is, but Bruck unpacks its scratch buffer either way.
                let out_of_place = c.rank() % 2 == 1;
                let copies_in_place = spec.ends_with("bruck");
                match (out_of_place || copies_in_place, streamed) {
                    (true, 0) => vec![format!("{p} ranks, {spec}: rank {} streamed no block", c.rank())],
                    (false, n) if n > 0 => vec![format!("{p} ranks, {spec}: rank {} in place streamed {n}", c.rank())],
                    _ => Vec::new(),
                }
            });
            assert!(fails.is_empty(), "{}", fails.join("\n"));
        }
    }
}

/// World sizes for the log-step algorithms: powers of two and the sizes around them.
const LOG_SIZES: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

#[test]
fn loopback_forced_tree() {
    let cfg = test_config().with_algorithm("tree").unwrap();
    for p in LOG_SIZES {
        check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 5);
    }
}

#[test]
fn loopback_forced_tree_at_every_pipeline_depth() {
    // Chunks go up `pipeline_depth` ahead of coming down: depth 1 is the lockstep schedule,
    // deeper ones keep several chunks in flight, in both trees, between ranks that are
    // parent and child in one tree and child and parent in the other.
    for depth in [1, 2, 3, 7] {
        let cfg = Config { pipeline_depth: depth, ..test_config().with_algorithm("tree").unwrap() };
        for p in [2, 3, 5, 8] {
            check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 3);
        }
        // Over shared memory children's chunks are reduced as they land (receive sinks),
        // the second child's onto the first's sum.
        for p in [2, 5] {
            check(shm_world(p, cfg.clone()), false);
        }
    }
}

#[test]
fn loopback_forced_halving_doubling() {
    let cfg = test_config().with_algorithm("halving_doubling").unwrap();
    for p in LOG_SIZES {
        check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 6);
    }
}

#[test]
fn loopback_forced_bruck_and_recursive_doubling_all_gather() {
    for spec in ["bruck", "all_gather:recursive_doubling"] {
        let cfg = test_config().with_algorithm(spec).unwrap();
        for p in LOG_SIZES {
            check(Communicator::local_world(p, cfg.clone()).unwrap(), p == 7);
        }
    }
}

#[test]
fn loopback_hierarchical_on_simulated_hosts() {
    // Equal and unequal hosts, ranks interleaved across hosts, one rank per host, one host.
    let layouts: [&[usize]; 7] =
        [&[0, 0, 1, 1], &[0, 1, 0, 1], &[0, 0, 0, 1, 1], &[0, 1, 2], &[0, 0, 0], &[1, 0, 0, 2, 2, 2, 1, 0, 2], &[0, 1]];
    let cfg = test_config().with_algorithm("hierarchical").unwrap();
    for (i, hosts) in layouts.iter().enumerate() {
        check(Communicator::local_world_on_hosts(hosts, cfg.clone()).unwrap(), i == 2);
    }
}

#[test]
fn tcp_and_shm_forced_log_step_algorithms() {
    for spec in ["tree", "halving_doubling", "bruck", "all_gather:recursive_doubling"] {
        let cfg = test_config().with_algorithm(spec).unwrap();
        for p in [3, 4] {
            check(tcp_world(p, cfg.clone()), false);
            check(shm_world(p, cfg.clone()), p == 3);
        }
    }
}

#[test]
fn tcp_forced_direct() {
    let cfg = test_config().with_algorithm("direct").unwrap();
    for p in [2, 3, 5] {
        check(tcp_world(p, cfg.clone()), p == 3);
    }
}

#[test]
fn loopback_default_chunking_and_shallow_pipeline() {
    let cfg = Config { pipeline_depth: 1, ..Config::default() };
    check(Communicator::local_world(3, cfg).unwrap(), true);
}

#[test]
fn tcp_threads() {
    for p in SIZES {
        check(tcp_world(p, test_config()), p <= 3 || p == 5);
    }
}

#[test]
fn tcp_forced_ring_with_two_connections_per_peer() {
    let cfg = test_config().with_algorithm("ring").unwrap().with_tcp_conns(2).with_chunk_bytes(1 << 20);
    check(tcp_world(4, cfg), true);
}

#[test]
fn shm_threads() {
    for p in SIZES {
        check(shm_world(p, test_config()), p <= 3 || p == 5);
    }
}

#[test]
fn shm_threads_forced_ring() {
    // The automatic choice on shm is direct; keep the ring covered there too.
    let cfg = test_config().with_algorithm("ring").unwrap();
    for p in [2, 3, 4] {
        check(shm_world(p, cfg.clone()), p == 3);
    }
}

#[test]
fn shm_small_fifo_forced_ring() {
    // Two slots of 256 bytes: every message spans many slots and every sender waits for space.
    let mut cfg = test_config().with_algorithm("ring").unwrap();
    cfg.shm_slots = 2;
    cfg.shm_slot_bytes = 256;
    check(shm_world(4, cfg), true);
}

#[test]
fn ranks_may_mix_in_place_and_out_of_place() {
    // Even ranks call in place and odd ranks out of place (NCCL's API decides per rank, by
    // its pointers): every algorithm must exchange the same messages in either form.
    use oxccl::Algorithm;
    let worlds: Vec<(String, Vec<Communicator>)> = vec![
        ("5 threads, in-process".into(), Communicator::local_world(5, test_config()).unwrap()),
        ("3 threads over TCP".into(), tcp_world(3, test_config())),
        ("4 threads over shared memory".into(), shm_world(4, test_config())),
        (
            "5 threads on hosts 0 0 1 1 1".into(),
            Communicator::local_world_on_hosts(&[0, 0, 1, 1, 1], test_config()).unwrap(),
        ),
    ];
    for (what, comms) in &worlds {
        for coll in common::checked_collectives() {
            // Mapped needs buffers every rank maps: threads map each other's memory over the
            // in-process transport and shared memory.
            let maps = !what.contains("TCP") && !what.contains("hosts");
            for algo in oxccl::algorithms_of(coll).iter().filter(|a| maps || **a != Algorithm::Mapped) {
                let fails = on_all(comms, |c| {
                    c.set_algorithms(&format!("{coll}:{}", algo.name())).unwrap();
                    let out: Vec<String> = [1, 7, 1000, 70_001]
                        .into_iter()
                        .filter_map(|n| {
                            common::call_and_check(c, coll, n)
                                .err()
                                .map(|e| format!("rank {} count {n}: {e}", c.rank()))
                        })
                        .collect();
                    c.set_algorithms("auto").unwrap();
                    out
                });
                assert!(fails.is_empty(), "{what}, {coll} {algo}: {fails:?}");
            }
        }
    }
}
