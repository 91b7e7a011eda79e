//! Soak: 4 ranks run a long stream of collectives of random kind, element type, operator,
//! algorithm and size (0 to 4 MiB), over shared memory and TCP, every element of every
//! result checked, and the process's resident memory must not grow. CI runs a short stream
//! (`OXCCL_SOAK` collectives per transport, default 1200); the full run is
//! `OXCCL_SOAK=10000 cargo test --release --test soak -- --nocapture`.

mod common;

use common::{on_all, shm_world, tcp_world, test_config};
use half::bf16;
use oxccl::check::{self, CheckElem};
use oxccl::{algorithms_of, Collective, Communicator, ReduceOp};

/// A small deterministic generator, the same on every rank (so every rank makes the same
/// random call).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const MAX_BYTES: usize = 4 << 20;
const KINDS: [Collective; 5] = [
    Collective::AllReduce,
    Collective::AllGather,
    Collective::ReduceScatter,
    Collective::AllToAll,
    Collective::Broadcast,
];

/// One random collective on `T`, checked; the count of wrong elements.
fn one<T: CheckElem>(c: &Communicator, rng: &mut Rng, send: &mut [T], recv: &mut [T]) -> oxccl::Result<usize> {
    let p = c.size();
    let es = std::mem::size_of::<T>();
    let coll = KINDS[rng.below(KINDS.len())];
    // The algorithms that can run here (mapped needs a transport that maps peers' memory).
    let algos: Vec<_> =
        algorithms_of(coll).iter().filter(|a| oxccl::cost::applies(**a, c.hosts(), c.profile())).collect();
    let spec = match rng.below(algos.len() + 1) {
        0 => "auto".to_string(),
        i => format!("{coll}:{}", algos[i - 1]),
    };
    c.set_algorithms(&spec)?;
    // Sizes: often tiny, sometimes large, up to 4 MiB of output.
    let max = MAX_BYTES / es / p;
    let n = match rng.below(4) {
        0 => rng.below(8),
        1 => rng.below(4096),
        _ => rng.below(max + 1),
    };
    let op = [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::Prod, ReduceOp::Avg][rng.below(5)];
    let root = rng.below(p);
    checked(c, coll, n, op, root, send, recv)
}

/// The largest call of each collective under each algorithm that can run it, checked: the
/// library's pools then hold what the largest calls need, as they do in a long run, and
/// memory that grows after this is kept by something else. (The scratch pool keeps the
/// largest buffers it is given; met at random, the largest calls take thousands of calls
/// to come round.)
fn largest_of_each<T: CheckElem>(c: &Communicator, send: &mut [T], recv: &mut [T]) -> oxccl::Result<usize> {
    let max = MAX_BYTES / std::mem::size_of::<T>() / c.size();
    let mut wrong = 0;
    for coll in KINDS {
        for algo in algorithms_of(coll).iter().filter(|a| oxccl::cost::applies(**a, c.hosts(), c.profile())) {
            c.set_algorithms(&format!("{coll}:{algo}"))?;
            wrong += checked(c, coll, max, ReduceOp::Sum, 0, send, recv)?;
        }
    }
    c.set_algorithms("auto")?;
    Ok(wrong)
}

/// Runs `coll` on `n` elements per block (as `one` draws it), checked: the count of wrong
/// elements.
fn checked<T: CheckElem>(
    c: &Communicator,
    coll: Collective,
    n: usize,
    op: ReduceOp,
    root: usize,
    send: &mut [T],
    recv: &mut [T],
) -> oxccl::Result<usize> {
    let (p, r) = (c.size(), c.rank());
    let wrong = match coll {
        Collective::AllReduce => {
            let n = n * p;
            check::fill_contribution(&mut send[..n], r, op, 0);
            c.all_reduce_into(&send[..n], &mut recv[..n], op)?;
            check::wrong_reduced(&recv[..n], p, op, 0)
        }
        Collective::ReduceScatter => {
            check::fill_contribution(&mut send[..n * p], r, op, 0);
            c.reduce_scatter_into(&send[..n * p], &mut recv[..n], op)?;
            check::wrong_reduced(&recv[..n], p, op, r * n)
        }
        Collective::AllGather => {
            check::fill_pattern(&mut send[..n], r, 0);
            c.all_gather_into(&send[..n], &mut recv[..n * p])?;
            (0..p).map(|q| check::wrong_pattern(&recv[q * n..(q + 1) * n], q, 0)).sum()
        }
        Collective::AllToAll => {
            for q in 0..p {
                check::fill_pattern(&mut send[q * n..(q + 1) * n], r, q);
            }
            c.all_to_all_into(&send[..n * p], &mut recv[..n * p])?;
            (0..p).map(|q| check::wrong_pattern(&recv[q * n..(q + 1) * n], q, r)).sum()
        }
        _ => {
            let n = n * p;
            if r == root {
                check::fill_pattern(&mut recv[..n], root, 7);
            }
            c.broadcast(&mut recv[..n], root)?;
            check::wrong_pattern(&recv[..n], root, 7)
        }
    };
    Ok(wrong)
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

fn soak(name: &str, comms: Vec<Communicator>, total: usize) {
    // The baseline: after a tenth of the full run's 10,000 calls, or a quarter of a short one.
    let warm = (total / 4).min(1000);
    let rss = std::sync::Mutex::new((0usize, 0usize));
    let fails = on_all(&comms, |c| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Buffers are allocated and touched once: the memory figure is the library's, not
        // the test's pages being faulted in as sizes grow.
        let elems = MAX_BYTES / 2;
        let (mut s32, mut r32) = (vec![1f32; elems / 2], vec![1f32; elems / 2]);
        let (mut s8, mut r8) = (vec![1u8; elems * 2], vec![1u8; elems * 2]);
        let (mut sb, mut rb) = (vec![bf16::ONE; elems], vec![bf16::ONE; elems]);
        let (mut s64, mut r64) = (vec![1i64; elems / 4], vec![1i64; elems / 4]);
        match largest_of_each(c, &mut s32, &mut r32) {
            Ok(0) => {}
            Ok(w) => return vec![format!("{name} rank {}: the largest calls: {w} wrong elements", c.rank())],
            Err(e) => return vec![format!("{name} rank {}: the largest calls: {e}", c.rank())],
        }
        for i in 0..total {
            if i == warm {
                c.barrier().unwrap();
                if c.rank() == 0 {
                    rss.lock().unwrap().0 = rss_kib();
                }
            }
            let r = match rng.below(4) {
                0 => one(c, &mut rng, &mut s32, &mut r32),
                1 => one(c, &mut rng, &mut s8, &mut r8),
                2 => one(c, &mut rng, &mut sb, &mut rb),
                _ => one(c, &mut rng, &mut s64, &mut r64),
            };
            match r {
                Ok(0) => {}
                Ok(w) => return vec![format!("{name} rank {}: call {i}: {w} wrong elements", c.rank())],
                Err(e) => return vec![format!("{name} rank {}: call {i}: {e}", c.rank())],
            }
        }
        c.barrier().unwrap();
        if c.rank() == 0 {
            rss.lock().unwrap().1 = rss_kib();
        }
        vec![]
    });
    assert!(fails.is_empty(), "{}", fails.join("\n"));
    let (after_warm, end) = *rss.lock().unwrap();
    println!(
        "soak {name}: {total} collectives checked; resident memory {after_warm} KiB after {warm}, {end} KiB at the end"
    );
    assert!(end as f64 <= after_warm as f64 * 1.05, "{name}: resident memory grew from {after_warm} KiB to {end} KiB");
}

fn total() -> usize {
    std::env::var("OXCCL_SOAK").ok().and_then(|v| v.parse().ok()).unwrap_or(1200)
}

/// One test, the transports in turn: resident memory is the whole process's.
#[test]
fn soak_over_shared_memory_then_tcp() {
    soak("shm", shm_world(4, test_config().with_chunk_bytes(512 << 10)), total());
    soak("tcp", tcp_world(4, test_config().with_chunk_bytes(512 << 10)), total());
}
