//! Faults become prompt, precise errors: dead peers, stuck peers, mismatched calls, aborts,
//! bad arguments; and a failed communicator stays failed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{shm_world, tcp_world};
use oxccl::bootstrap::tcp_store::TcpStoreServer;
use oxccl::{Communicator, Config, ErrorKind, ReduceOp};

fn short(ms: u64) -> Config {
    Config::default().with_timeout(Duration::from_millis(ms))
}

fn worlds(p: usize, cfg: Config) -> Vec<(&'static str, Vec<Communicator>)> {
    vec![
        ("loopback", Communicator::local_world(p, cfg.clone()).unwrap()),
        ("tcp", tcp_world(p, cfg.clone())),
        ("shm", shm_world(p, cfg)),
    ]
}

#[test]
fn stuck_peer_times_out_naming_it_and_the_communicator_stays_failed() {
    for (name, comms) in worlds(2, short(300)) {
        let mut v = vec![1.0f32; 1000];
        let start = Instant::now();
        let e = comms[0].all_reduce(&mut v, ReduceOp::Sum).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{name}: {e}");
        assert!(start.elapsed() < Duration::from_secs(3), "{name}");
        let text = e.to_string();
        assert!(text.contains("all_reduce #1") && text.contains("rank 0") && text.contains("peer 1"), "{name}: {text}");
        // The peer never started the call: the message says so (over TCP, as of the peer's
        // last frame, which it never sent: progress 0).
        assert!(text.contains("not seen in this call: peers [1]"), "{name}: {text}");
        // Poisoned: the same error at once, even for another collective.
        let again = comms[0].barrier().unwrap_err();
        assert_eq!(again.to_string(), text, "{name}");
        assert_eq!(comms[0].error().map(|e| e.to_string()), Some(text));
    }
}

/// Three ranks: two finish a call and start the next, the third sleeps after the first.
/// The timeout names it as the one not in the call, and shows everyone's progress. Direct
/// all-reduce, so that every rank sends to every other in the first call (over TCP a peer's
/// progress is as of its last frame).
#[test]
fn timeout_names_the_rank_that_stopped_calling() {
    for (name, comms) in worlds(3, short(400).with_algorithm("all_reduce:direct").unwrap()) {
        let errs: Vec<Option<String>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let mut v = vec![1u32; 100];
                        c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                        if c.rank() == 2 {
                            return None; // stops calling
                        }
                        Some(c.all_reduce(&mut v, ReduceOp::Sum).unwrap_err().to_string())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (r, e) in errs.iter().enumerate().take(2) {
            let e = e.as_ref().unwrap();
            assert!(e.contains("all_reduce #2") && e.contains(&format!("rank {r}")), "{name}: {e}");
            // Over TCP progress is as of each peer's last frame here: a peer that has not
            // sent in this call yet is listed too.
            let exact = if name == "tcp" { "" } else { "not seen in this call: peers [2]" };
            assert!(e.contains("not seen in this call: peers [") && e.contains(exact), "{name}: {e}");
            let listed = e.split("not seen in this call: peers [").nth(1).unwrap().split(']').next().unwrap();
            assert!(listed.split(", ").any(|p| p == "2"), "{name}: {e}");
            assert!(e.contains("2: done with #1") || (name == "tcp" && e.contains("2: in #1")), "{name}: {e}");
        }
    }
}

#[test]
fn abort_from_another_thread_returns_promptly() {
    for (name, comms) in worlds(2, short(30_000)) {
        let c0 = &comms[0];
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let mut v = vec![0u8; 1 << 20];
                c0.all_reduce(&mut v, ReduceOp::Max)
            });
            std::thread::sleep(Duration::from_millis(50));
            let t = Instant::now();
            c0.abort();
            let e = h.join().unwrap().unwrap_err();
            assert!(t.elapsed() < Duration::from_millis(100), "{name}: abort took {:?}", t.elapsed());
            assert_eq!(e.kind(), ErrorKind::Aborted, "{name}: {e}");
        });
        // The peer learns too: its matching call fails instead of waiting for its timeout.
        let t = Instant::now();
        let e = comms[1].all_reduce(&mut vec![0u8; 1 << 20], ReduceOp::Max).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::PeerLost | ErrorKind::Remote), "{name}: {e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{name}");
    }
}

#[test]
fn abort_ends_a_long_mapped_schedule_promptly() {
    // Both ranks inside a 1 GiB mapped all-reduce (over 100 ms of loads and
    // stores, no message until its done round): an abort of one rank ends its call within
    // 100 ms, and the other's soon after.
    let cfg = short(30_000).with_algorithm("mapped").unwrap();
    let comms = Communicator::local_world(2, cfg).unwrap();
    let mut bufs: Vec<Vec<f32>> = (0..2).map(|_| vec![1.0f32; 256 << 20]).collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .iter()
            .zip(bufs.iter_mut())
            .map(|(c, v)| {
                s.spawn(move || {
                    let r = c.all_reduce(v, ReduceOp::Sum);
                    (r, Instant::now())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        comms[0].abort();
        let ends: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        let (r0, end0) = &ends[0];
        assert_eq!(r0.as_ref().unwrap_err().kind(), ErrorKind::Aborted, "{r0:?}");
        assert!(end0.duration_since(t) < Duration::from_millis(100), "abort took {:?}", end0.duration_since(t));
        let (r1, end1) = &ends[1];
        assert!(r1.is_err(), "the peer of an aborted rank must fail too");
        assert!(end1.duration_since(t) < Duration::from_secs(2), "the peer took {:?}", end1.duration_since(t));
    });
}

#[test]
fn mismatched_collectives_are_invalid_usage_not_a_hang() {
    for (name, comms) in worlds(2, short(10_000)) {
        let start = Instant::now();
        let (a, b) = std::thread::scope(|s| {
            let h0 = s.spawn(|| {
                let mut v = vec![1i32; 64];
                comms[0].all_reduce(&mut v, ReduceOp::Sum)
            });
            let h1 = s.spawn(|| {
                let send = vec![1i32; 32];
                let mut recv = vec![0i32; 64];
                comms[1].all_gather_into(&send, &mut recv)
            });
            (h0.join().unwrap(), h1.join().unwrap())
        });
        let (a, b) = (a.unwrap_err(), b.unwrap_err());
        assert!(start.elapsed() < Duration::from_secs(5), "{name}: took {:?}", start.elapsed());
        assert!(a.kind() == ErrorKind::InvalidUsage || b.kind() == ErrorKind::InvalidUsage, "{name}: {a} / {b}");
        let both = format!("{a} / {b}");
        assert!(both.contains("mismatched"), "{name}: {both}");
        // The message names both calls, not only their tags.
        assert!(both.contains("= all_reduce #1 step") && both.contains("= all_gather #1 step"), "{name}: {both}");
    }
}

#[test]
fn mismatched_counts_are_detected() {
    for (name, comms) in worlds(2, short(10_000)) {
        let (a, b) = std::thread::scope(|s| {
            let h0 = s.spawn(|| comms[0].all_reduce(&mut vec![1u64; 100_000], ReduceOp::Sum));
            let h1 = s.spawn(|| comms[1].all_reduce(&mut vec![1u64; 100_001], ReduceOp::Sum));
            (h0.join().unwrap(), h1.join().unwrap())
        });
        assert!(a.is_err() && b.is_err(), "{name}: {a:?} {b:?}");
        let text = format!("{} / {}", a.unwrap_err(), b.unwrap_err());
        assert!(text.contains("mismatched"), "{name}: {text}");
    }
}

/// Two ranks make calls that move the same bytes but mean different things: the
/// fingerprint in every tag turns each into a mismatch naming both calls, on both ranks.
#[test]
fn same_bytes_different_meaning_is_a_mismatch_naming_both_calls() {
    type Call = Box<dyn Fn(&Communicator) -> oxccl::Result<()> + Sync>;
    let cases: Vec<(&str, Call, Call, [&str; 2])> = vec![
        (
            "element type",
            Box::new(|c| c.all_reduce(&mut vec![1f32; 1000], ReduceOp::Sum)),
            Box::new(|c| c.all_reduce(&mut vec![1i32; 1000], ReduceOp::Sum)),
            ["(float, sum, 1000 elements)", "(int32, sum, 1000 elements)"],
        ),
        (
            "operator",
            Box::new(|c| c.all_reduce(&mut vec![1f32; 1000], ReduceOp::Sum)),
            Box::new(|c| c.all_reduce(&mut vec![1f32; 1000], ReduceOp::Max)),
            ["(float, sum, 1000 elements)", "(float, max, 1000 elements)"],
        ),
        (
            "count at equal bytes",
            Box::new(|c| c.all_reduce(&mut vec![1f32; 1000], ReduceOp::Sum)),
            Box::new(|c| c.all_reduce(&mut vec![1f64; 500], ReduceOp::Sum)),
            ["(float, sum, 1000 elements)", "(double, sum, 500 elements)"],
        ),
    ];
    for (what, call0, call1, names) in &cases {
        for (name, comms) in worlds(2, short(10_000)) {
            let start = Instant::now();
            let (a, b) = std::thread::scope(|s| {
                let h0 = s.spawn(|| call0(&comms[0]));
                let h1 = s.spawn(|| call1(&comms[1]));
                (h0.join().unwrap(), h1.join().unwrap())
            });
            assert!(start.elapsed() < Duration::from_secs(5), "{what} over {name}: took {:?}", start.elapsed());
            let (Err(a), Err(b)) = (a, b) else { panic!("{what} over {name}: a call succeeded") };
            for e in [&a, &b] {
                assert!(matches!(e.kind(), ErrorKind::InvalidUsage | ErrorKind::Remote), "{what} over {name}: {e}");
            }
            let both = format!("{a} / {b}");
            assert!(a.kind() == ErrorKind::InvalidUsage || b.kind() == ErrorKind::InvalidUsage, "{both}");
            for n in names {
                assert!(both.contains(n), "{what} over {name}: no '{n}' in: {both}");
            }
        }
    }
}

/// Ranks that disagree on the root: a message meant for another root's tree fails the rank
/// that receives it with both calls named (at the latest in the next call, which runs into
/// the stray message), and no rank goes on as if nothing happened. (Two ranks that both
/// believe they are the root only send: see `two_roots_of_one_broadcast`.)
#[test]
fn disagreeing_roots_are_a_mismatch() {
    for (name, comms) in worlds(3, short(10_000)) {
        let results: Vec<oxccl::Result<()>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let root = if c.rank() == 2 { 1 } else { 0 };
                        c.broadcast(&mut [1u8; 64], root)?;
                        c.barrier()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r.is_err()), "{name}: {results:?}");
        let text: Vec<String> = results.iter().map(|r| r.as_ref().unwrap_err().to_string()).collect();
        // Which message shows the disagreement first depends on the tree; it names a
        // broadcast with its root and the call it ran into.
        let named = text
            .iter()
            .any(|t| t.contains("mismatched") && t.contains("= broadcast #1 step 0 (uint8, 64 elements, root "));
        assert!(named, "{name}: {text:?}");
    }
}

/// Two ranks that both call a small broadcast as its root only send. By default that shows
/// one call late: each broadcast returns, and the next call runs into the other root's
/// message, naming both broadcasts. With call verification it fails in the broadcast
/// itself, on every rank, naming each call and the ranks that made it.
#[test]
fn two_roots_of_one_broadcast() {
    let run = |comms: &[Communicator], roots: &[usize]| -> Vec<(oxccl::Result<()>, oxccl::Result<()>)> {
        std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    let root = roots[c.rank()];
                    s.spawn(move || {
                        let mut v = vec![c.rank() as u8; 64];
                        let b = c.broadcast(&mut v, root);
                        (b, c.barrier())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    for (name, comms) in worlds(2, short(1000)) {
        let got = run(&comms, &[0, 1]);
        for (r, (b, next)) in got.iter().enumerate() {
            if name == "loopback" {
                // Its sends complete only when received: each root waits out the timeout.
                let e = b.as_ref().unwrap_err().to_string();
                assert!(e.contains("timed out") && e.contains("broadcast #1"), "{name}: rank {r}: {e}");
                continue;
            }
            assert!(b.is_ok(), "{name}: rank {r}: without verification each root's broadcast returns: {b:?}");
            let e = next.as_ref().unwrap_err().to_string();
            assert!(e.contains("broadcast #1 step 0 (uint8, 64 elements, root "), "{name}: rank {r}: {e}");
        }
    }
    let verified = short(10_000).with_verify_calls(true);
    for (p, roots) in [(2, vec![0, 1]), (5, vec![0, 0, 3, 0, 3])] {
        for (name, comms) in worlds(p, verified.clone()) {
            let start = Instant::now();
            let got = run(&comms, &roots);
            assert!(start.elapsed() < Duration::from_secs(5), "{name}: took {:?}", start.elapsed());
            let texts: Vec<String> = got
                .iter()
                .enumerate()
                .map(|(r, (b, _))| {
                    let e = b.as_ref().expect_err(&format!("{name}: rank {r}'s broadcast succeeded"));
                    assert_eq!(e.kind(), ErrorKind::InvalidUsage, "{name}: rank {r}: {e}");
                    e.to_string()
                })
                .collect();
            let want = if p == 2 {
                "broadcast #1 (uint8, 64 elements, root 0) on rank 0; broadcast #1 (uint8, 64 elements, root 1) on rank 1"
            } else {
                "broadcast #1 (uint8, 64 elements, root 0) on ranks 0-1, 3; broadcast #1 (uint8, 64 elements, root 3) on ranks 2, 4"
            };
            for (r, t) in texts.iter().enumerate() {
                assert!(t.contains(want) && t.contains(&format!("rank {r}")), "{name}: rank {r}: {t}");
            }
        }
    }
}

/// Call verification names every disagreement (collective, count, type, operator) on every
/// rank before any data moves, and agreeing calls run as usual with it on.
#[test]
fn verified_calls_name_every_disagreement_and_agreeing_calls_run() {
    type Call = Box<dyn Fn(&Communicator) -> oxccl::Result<()> + Sync>;
    let cases: Vec<(Call, Call, &str)> = vec![
        (
            Box::new(|c| c.all_reduce(&mut [1f32; 10], ReduceOp::Sum)),
            Box::new(|c| c.all_gather(&mut [1f32; 30])),
            "all_reduce #1 (float, sum, 10 elements) on ranks 0-1; all_gather #1 (float, 10 elements) on rank 2",
        ),
        (
            Box::new(|c| c.all_reduce(&mut [1u64; 7], ReduceOp::Max)),
            Box::new(|c| c.all_reduce(&mut [1u64; 7], ReduceOp::Min)),
            "all_reduce #1 (uint64, max, 7 elements) on ranks 0-1; all_reduce #1 (uint64, min, 7 elements) on rank 2",
        ),
        (
            Box::new(|c| c.reduce(&mut [1i32; 0], ReduceOp::Sum, 1)),
            Box::new(|c| c.reduce(&mut [1i32; 1], ReduceOp::Sum, 1)),
            "reduce #1 (int32, sum, 0 elements, root 1) on ranks 0-1; reduce #1 (int32, sum, 1 elements, root 1) on rank 2",
        ),
    ];
    let cfg = short(10_000).with_verify_calls(true);
    for (call, odd, want) in &cases {
        for (name, comms) in worlds(3, cfg.clone()) {
            let results: Vec<oxccl::Result<()>> = std::thread::scope(|s| {
                let hs: Vec<_> =
                    comms.iter().map(|c| s.spawn(move || if c.rank() == 2 { odd(c) } else { call(c) })).collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            for (r, res) in results.iter().enumerate() {
                let e = res.as_ref().expect_err(&format!("{name}: rank {r} succeeded"));
                assert_eq!(e.kind(), ErrorKind::InvalidUsage, "{name}: rank {r}: {e}");
                assert!(e.to_string().contains(want), "{name}: rank {r}: {e}");
            }
        }
    }
    // Agreeing calls: every collective, checked, with verification on.
    for (name, comms) in worlds(4, cfg) {
        let fails = common::on_all(&comms, |c| {
            let (p, r) = (c.size(), c.rank());
            let mut bad = Vec::new();
            for count in [0usize, 1, 13] {
                let mut v: Vec<u32> = (0..count).map(|i| (r * 100 + i) as u32).collect();
                c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                let want: Vec<u32> = (0..count).map(|i| (0..p).map(|q| (q * 100 + i) as u32).sum()).collect();
                if v != want {
                    bad.push(format!("all_reduce {count}: {v:?}"));
                }
                let mut b: Vec<u32> = (0..count).map(|i| if r == 2 { i as u32 + 7 } else { 0 }).collect();
                c.broadcast(&mut b, 2).unwrap();
                if b.iter().enumerate().any(|(i, &x)| x != i as u32 + 7) {
                    bad.push(format!("broadcast {count}: {b:?}"));
                }
                let mut g = vec![0u32; count * p];
                g[r * count..(r + 1) * count].iter_mut().enumerate().for_each(|(i, x)| *x = (r * 1000 + i) as u32);
                c.all_gather(&mut g).unwrap();
                if (0..p * count).any(|k| g[k] != ((k / count) * 1000 + k % count) as u32) {
                    bad.push(format!("all_gather {count}: {g:?}"));
                }
            }
            c.barrier().unwrap();
            bad
        });
        assert!(fails.is_empty(), "{name}: {fails:?}");
    }
}

#[test]
fn bad_arguments_are_invalid_argument_never_a_panic() {
    let comms = Communicator::local_world(3, short(1000)).unwrap();
    let c = &comms[0];
    let k = |r: oxccl::Result<()>| r.unwrap_err().kind();
    assert_eq!(k(c.all_reduce_into(&[1.0f32; 3], &mut [0.0; 4], ReduceOp::Sum)), ErrorKind::InvalidArgument);
    assert_eq!(k(c.all_gather_into(&[1u8; 3], &mut [0; 8])), ErrorKind::InvalidArgument);
    assert_eq!(k(c.all_gather(&mut [0u8; 8])), ErrorKind::InvalidArgument);
    assert_eq!(k(c.reduce_scatter_into(&[1u8; 8], &mut [0; 3], ReduceOp::Sum)), ErrorKind::InvalidArgument);
    assert_eq!(k(c.all_to_all_into(&[1u8; 6], &mut [0; 9])), ErrorKind::InvalidArgument);
    assert_eq!(k(c.broadcast(&mut [0u8; 4], 3)), ErrorKind::InvalidArgument);
    assert_eq!(k(c.reduce(&mut [0u8; 4], ReduceOp::Sum, 7)), ErrorKind::InvalidArgument);
    assert_eq!(k(c.reduce_into(&[0u8; 4], &mut [0; 3], ReduceOp::Sum, 0)), ErrorKind::InvalidArgument);
    assert_eq!(k(c.send(&[0u8; 4], 0)), ErrorKind::InvalidArgument, "sending to oneself");
    assert_eq!(k(c.recv(&mut [0u8; 4], 9)), ErrorKind::InvalidArgument);
    let e = c.broadcast(&mut [0u8; 4], 3).unwrap_err().to_string();
    assert!(e.contains("broadcast") && e.contains("root 3"), "{e}");
    // Argument errors do not poison: the world still works.
    let fails = common::on_all(&comms, |c| {
        let mut v = vec![1u32; 10];
        match c.all_reduce(&mut v, ReduceOp::Sum) {
            Ok(()) if v.iter().all(|&x| x == 3) => vec![],
            r => vec![format!("{r:?} {v:?}")],
        }
    });
    assert!(fails.is_empty(), "{fails:?}");
}

/// Ranks of a real multi-process world; rank `victim` is killed with SIGKILL in the middle
/// of a stream of all-reduces, and every survivor must report PeerLost naming it within 2 s.
#[test]
fn killed_rank_gives_peer_lost_on_every_survivor() {
    // "router": two pretend hosts, shared memory within and TCP between, hierarchical
    // all-reduce.
    // "shm-shared": shared memory with buffers the peers map (the mapped all-reduce, whose
    // schedule moves bytes without messages until its done round).
    for transport in ["tcp", "shm", "router", "shm-shared"] {
        killed_rank(transport);
    }
}

fn killed_rank(transport: &str) {
    let p = 4;
    let victim = 2;
    let secret = [9u8; 16];
    let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), secret).unwrap();
    let me = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..p)
        .map(|r| {
            Command::new(&me)
                .args(["fault_worker", "--exact", "--nocapture", "--test-threads=1"])
                .env("OXCCL_FAULT_WORKER", "1")
                .env("OXCCL_RANK", r.to_string())
                .env("OXCCL_WORLD_SIZE", p.to_string())
                .env("OXCCL_ADDR", server.addr().to_string())
                .env("OXCCL_SECRET", "09".repeat(16))
                .env("OXCCL_STORE_HOST", "launcher")
                .env("OXCCL_TIMEOUT_MS", "60000")
                .env(
                    "OXCCL_TRANSPORT",
                    match transport {
                        "router" => "auto",
                        "shm-shared" => "shm",
                        t => t,
                    },
                )
                .env("OXCCL_TEST_SHARED_BUFFERS", if transport == "shm-shared" { "all" } else { "" })
                .env("OXCCL_HOST_ID", if transport == "router" { format!("pretend-{}", r % 2) } else { String::new() })
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Wait until the victim reports it is inside the stream of collectives.
    let mut victim_out = BufReader::new(children[victim].stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("STREAMING") {
        line.clear();
        assert!(victim_out.read_line(&mut line).unwrap() > 0, "the victim ended early");
    }
    assert!(line.contains(&format!("over {}", transport.trim_end_matches("-shared"))), "{transport}: {line}");
    let killed_at = Instant::now();
    children[victim].kill().unwrap();
    let _ = children[victim].wait();
    let outputs: Vec<(usize, String)> = children
        .into_iter()
        .enumerate()
        .filter(|(r, _)| *r != victim)
        .map(|(r, c)| (r, String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()))
        .collect();
    let all: String = outputs.iter().map(|(r, t)| format!("rank {r}: {t}")).collect();
    for (r, text) in &outputs {
        let r = *r;
        let report = text.lines().find(|l| l.starts_with("ERROR-AFTER-MS")).unwrap_or_else(|| panic!("{all}"));
        let mut parts = report.splitn(3, ' ');
        parts.next();
        let ms: u128 = parts.next().unwrap().parse().unwrap();
        let msg = parts.next().unwrap();
        assert!(msg.contains("peer lost") || msg.contains("remote error"), "{transport} rank {r}: {msg}");
        assert!(msg.starts_with("peer lost"), "{transport} rank {r} must name the dead rank as lost: {msg}\n{all}");
        assert!(msg.contains("all_reduce #"), "rank {r}: {msg}");
        assert!(killed_at.elapsed().as_millis() < 10_000);
        assert!(ms < 2000, "{transport} rank {r} took {ms} ms to notice: {msg}");
        // Every survivor names the dead rank: a rank that fails passes the cause on (a flag and
        // the culprit in shared memory; last words before the connection closes over TCP).
        {
            assert!(msg.contains(&format!("peer {victim}")), "{transport} rank {r}: {msg}");
        }
    }
    // Nothing of oxccl's is left in /dev/shm (segments are memfds, never named there), and
    // no process of the world still holds one.
    let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!leftovers.iter().any(|n| n.contains("oxccl")), "{transport}: left in /dev/shm: {leftovers:?}");
}

/// Chaos: under `oxrun -n 4`, a random rank is killed with SIGKILL at a random moment of a
/// long stream of all-reduces, again and again (over TCP and shared memory in turn). Every
/// time the survivors report PeerLost naming it within 2 s, oxrun names the dead rank and
/// its signal, and nothing is left in /dev/shm. `OXCCL_CHAOS` rounds (default 6).
#[test]
fn chaos_random_kills_under_oxrun() {
    let rounds: usize = std::env::var("OXCCL_CHAOS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let me = std::env::current_exe().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut slowest = [0u128; 2];
    for round in 0..rounds {
        let transport = ["tcp", "shm"][round % 2];
        let victim = rand(4) as usize;
        let mut child = Command::new(env!("CARGO_BIN_EXE_oxrun"))
            .args(["-n", "4", "--tag-output"])
            .arg(&me)
            .args(["fault_worker", "--exact", "--nocapture", "--test-threads=1"])
            .env("OXCCL_FAULT_WORKER", "1")
            .env("OXCCL_TIMEOUT_MS", "60000")
            .env("OXCCL_TRANSPORT", transport)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A deadline on the whole round: if the world hangs, the watchdog stops oxrun (its
        // ranks die with it), the reads below see end of file and the round fails.
        let launcher = child.id() as libc::pid_t;
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let finished = finished.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline && !finished.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if !finished.load(std::sync::atomic::Ordering::Relaxed) {
                    // SAFETY: plain kill(2) of the launcher we started and have not reaped.
                    unsafe { libc::kill(launcher, libc::SIGKILL) };
                }
            })
        };
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut pids = [0i32; 4];
        let mut streaming = false;
        let mut seen = String::new();
        let mut line = String::new();
        while pids.contains(&0) || !streaming {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "round {round}: the world ended early:\n{seen}");
            seen.push_str(&line);
            let Some((tag, rest)) = line.trim().split_once("] ") else { continue };
            let Ok(r) = tag.trim_start_matches('[').parse::<usize>() else { continue };
            // (libtest's "test fault_worker ... " may start the line.)
            if let Some(i) = rest.find("PID ") {
                pids[r] = rest[i + 4..].trim().parse().unwrap();
            }
            streaming |= r == victim && rest.contains("STREAMING");
        }
        std::thread::sleep(Duration::from_millis(rand(300)));
        // SAFETY: plain syscall on a child's child we just read the pid of.
        assert_eq!(unsafe { libc::kill(pids[victim], libc::SIGKILL) }, 0);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let output = child.wait_with_output().unwrap();
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        watchdog.join().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let all = format!("{seen}{rest}{stderr}");
        assert!(!output.status.success(), "round {round}: oxrun succeeded:\n{all}");
        assert!(
            stderr.contains(&format!("rank {victim}")) && stderr.contains("SIGKILL"),
            "round {round}: oxrun must name rank {victim} and its signal:\n{all}"
        );
        for r in (0..4).filter(|&r| r != victim) {
            let report = rest
                .lines()
                .filter(|l| l.starts_with(&format!("[{r}] ")))
                .find_map(|l| l.find("ERROR-AFTER-MS").map(|i| &l[i..]))
                .unwrap_or_else(|| panic!("round {round} ({transport}): no report from rank {r}:\n{all}"));
            let mut parts = report.splitn(3, ' ');
            parts.next();
            let ms: u128 = parts.next().unwrap().parse().unwrap();
            let msg = parts.next().unwrap();
            assert!(
                msg.starts_with("peer lost") && msg.contains(&format!("peer {victim}")),
                "round {round} ({transport}) rank {r}: {msg}"
            );
            assert!(ms < 2000, "round {round} ({transport}) rank {r} took {ms} ms: {msg}");
            slowest[round % 2] = slowest[round % 2].max(ms);
        }
        let leftovers: Vec<String> = std::fs::read_dir("/dev/shm")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        assert!(!leftovers.iter().any(|n| n.contains("oxccl")), "round {round}: {leftovers:?}");
    }
    println!("chaos: {rounds} kills; slowest detection by a survivor: tcp {} ms, shm {} ms", slowest[0], slowest[1]);
}

/// The body of the worker processes of the test above. Run directly (not as a worker), it
/// checks the same thing with threads: a rank that drops out mid-stream is reported as lost.
#[test]
fn fault_worker() {
    if std::env::var("OXCCL_FAULT_WORKER").is_ok() {
        let comm = Communicator::from_env().unwrap();
        println!("PID {}", std::process::id());
        let shared = std::env::var("OXCCL_TEST_SHARED_BUFFERS").as_deref() == Ok("all");
        let mut heap = vec![1.0f32; 1 << 16];
        let mut mapped = oxccl::SharedBuffer::<f32>::new(if shared { 1 << 20 } else { 0 }).unwrap();
        let v: &mut [f32] = if shared { &mut mapped } else { &mut heap };
        let mut i = 0u64;
        loop {
            let t = Instant::now();
            if let Err(e) = comm.all_reduce(v, ReduceOp::Sum) {
                println!("ERROR-AFTER-MS {} {e}", t.elapsed().as_millis());
                return;
            }
            i += 1;
            if i == 20 {
                println!("STREAMING over {}", comm.transport_name());
            }
        }
    }
    let mut comms = tcp_world(3, short(30_000));
    let dropped = comms.pop().unwrap();
    let survivors = comms;
    std::thread::scope(|s| {
        let hs: Vec<_> = survivors
            .iter()
            .map(|c| {
                s.spawn(move || {
                    let mut v = vec![1.0f32; 1 << 16];
                    loop {
                        if let Err(e) = c.all_reduce(&mut v, ReduceOp::Sum) {
                            return e;
                        }
                    }
                })
            })
            .collect();
        let mut v = vec![1.0f32; 1 << 16];
        for _ in 0..5 {
            dropped.all_reduce(&mut v, ReduceOp::Sum).unwrap();
        }
        let t = Instant::now();
        drop(dropped);
        for h in hs {
            let e = h.join().unwrap();
            assert!(matches!(e.kind(), ErrorKind::PeerLost | ErrorKind::Remote), "{e}");
            assert!(t.elapsed() < Duration::from_secs(2), "{e}");
        }
    });
}
