//! Shared by the integration tests: a sweep of every collective over counts, data types and
//! operators, checking every element against a closed form; and world builders.

#![allow(dead_code)]

use std::time::Duration;

use half::{bf16, f16};
use oxccl::check::{self, fill_contribution, fill_pattern, wrong_pattern, wrong_reduced, CheckElem};
use oxccl::{Collective, Communicator, Config, ReduceOp, TransportKind, UniqueId};

/// Counts every sweep covers: empty, one, a prime, one not divisible by most world sizes.
pub const COUNTS: [usize; 4] = [0, 1, 7, 1000];
/// The large count (not divisible by any world size above 1 that the tests use but 1).
pub const BIG: usize = (1 << 20) + 3;

/// A world of `p` ranks as threads, over TCP on loopback.
pub fn tcp_world(p: usize, config: Config) -> Vec<Communicator> {
    world_over(p, config.with_transport(TransportKind::Tcp))
}

/// A world of `p` ranks as threads, over shared memory.
pub fn shm_world(p: usize, config: Config) -> Vec<Communicator> {
    world_over(p, config.with_transport(TransportKind::Shm))
}

fn world_over(p: usize, config: Config) -> Vec<Communicator> {
    let id = UniqueId::new().unwrap();
    let hs: Vec<_> = (0..p)
        .map(|r| {
            let c = config.clone();
            std::thread::spawn(move || Communicator::init(&id, r, p, c).unwrap())
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `f` on every communicator in its own thread and collects the failures they report.
pub fn on_all(comms: &[Communicator], f: impl Fn(&Communicator) -> Vec<String> + Sync) -> Vec<String> {
    std::thread::scope(|s| {
        let hs: Vec<_> = comms.iter().map(|c| s.spawn(|| f(c))).collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Quick configuration for tests: short timeout so a bug fails fast, small chunks so the
/// pipelines have many chunks even on small vectors.
pub fn test_config() -> Config {
    let mut c = Config::default().with_timeout(Duration::from_secs(60)).with_chunk_bytes(4096);
    // Single-copy reads from 64 KiB, below the 1 MiB default: the tests' counts (primes up to
    // a few hundred thousand elements) then go by both paths of the shm transport.
    c.shm_single_copy_min = Some(64 << 10);
    c
}

/// A test buffer: heap memory, or an [`oxccl::SharedBuffer`] that peers map.
pub enum TestBuf<T: CheckElem> {
    Heap(Vec<T>),
    Shared(oxccl::SharedBuffer<T>),
}

impl<T: CheckElem> std::ops::Deref for TestBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            TestBuf::Heap(v) => v,
            TestBuf::Shared(b) => b,
        }
    }
}

impl<T: CheckElem> std::ops::DerefMut for TestBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            TestBuf::Heap(v) => v,
            TestBuf::Shared(b) => b,
        }
    }
}

struct Sweep<'a> {
    comm: &'a Communicator,
    fails: Vec<String>,
    /// Collective buffers are shared buffers (the `mapped` algorithms can run).
    shared: bool,
}

macro_rules! attempt {
    ($s:expr, $what:expr, $call:expr) => {
        if let Err(e) = $call {
            $s.fails.push(format!("rank {}: {}: error {e}", $s.comm.rank(), $what));
            return false;
        }
    };
}

impl Sweep<'_> {
    fn buf<T: CheckElem>(&self, value: T, n: usize) -> TestBuf<T> {
        if self.shared {
            let mut b = oxccl::SharedBuffer::new(n).expect("shared buffer");
            b.fill(value);
            TestBuf::Shared(b)
        } else {
            TestBuf::Heap(vec![value; n])
        }
    }

    fn wrong(&mut self, what: String, n: usize) {
        if n > 0 {
            self.fails.push(format!("rank {}: {what}: {n} wrong elements", self.comm.rank()));
        }
    }

    fn reductions<T: CheckElem>(&mut self, count: usize, op: ReduceOp) -> bool {
        let (r, p) = (self.comm.rank(), self.comm.size());
        let name = format!("{} {op} count {count}", T::DTYPE);
        let sentinel = T::from_i64(77);
        // all-reduce, out of place and in place
        let mut send = self.buf(sentinel, count);
        check::fill_contribution(&mut send, r, op, 0);
        let mut recv = self.buf(sentinel, count);
        attempt!(self, format!("all_reduce_into {name}"), self.comm.all_reduce_into(&send, &mut recv, op));
        self.wrong(format!("all_reduce_into {name}"), check::wrong_reduced(&recv, p, op, 0));
        attempt!(self, format!("all_reduce {name}"), self.comm.all_reduce(&mut send, op));
        self.wrong(format!("all_reduce {name}"), check::wrong_reduced(&send, p, op, 0));

        // reduce-scatter, out of place and in place (count per rank)
        let mut input = self.buf(sentinel, count * p);
        check::fill_contribution(&mut input, r, op, 0);
        let mut out = self.buf(sentinel, count);
        attempt!(self, format!("reduce_scatter_into {name}"), self.comm.reduce_scatter_into(&input, &mut out, op));
        self.wrong(format!("reduce_scatter_into {name}"), check::wrong_reduced(&out, p, op, r * count));
        let before = input.to_vec();
        attempt!(self, format!("reduce_scatter {name}"), self.comm.reduce_scatter(&mut input, op));
        self.wrong(
            format!("reduce_scatter {name}"),
            check::wrong_reduced(&input[r * count..(r + 1) * count], p, op, r * count),
        );
        let others_changed = (0..p)
            .filter(|&j| j != r)
            .map(|j| (j * count..(j + 1) * count).filter(|&i| input[i] != before[i]).count())
            .sum();
        self.wrong(format!("reduce_scatter {name} (other blocks must stay)"), others_changed);

        // reduce to the first and the last rank, out of place and in place
        for root in [0, p - 1] {
            let mut send = self.buf(sentinel, count);
            check::fill_contribution(&mut send, r, op, 0);
            let mut recv = self.buf(sentinel, if r == root { count } else { 0 });
            attempt!(
                self,
                format!("reduce_into root {root} {name}"),
                self.comm.reduce_into(&send, &mut recv, op, root)
            );
            if r == root {
                self.wrong(format!("reduce_into root {root} {name}"), check::wrong_reduced(&recv, p, op, 0));
            }
            let keep = send.to_vec();
            attempt!(self, format!("reduce root {root} {name}"), self.comm.reduce(&mut send, op, root));
            let n = if r == root { check::wrong_reduced(&send, p, op, 0) } else { (send[..] != keep[..]) as usize };
            self.wrong(format!("reduce root {root} {name}"), n);
        }
        true
    }

    fn movement<T: CheckElem>(&mut self, count: usize) -> bool {
        let (r, p) = (self.comm.rank(), self.comm.size());
        let name = format!("{} count {count}", T::DTYPE);
        let sentinel = T::from_i64(0);
        // all-gather
        let mut send = self.buf(sentinel, count);
        check::fill_pattern(&mut send, r, 0);
        let mut recv = self.buf(sentinel, count * p);
        attempt!(self, format!("all_gather_into {name}"), self.comm.all_gather_into(&send, &mut recv));
        let n = (0..p).map(|j| check::wrong_pattern(&recv[j * count..(j + 1) * count], j, 0)).sum();
        self.wrong(format!("all_gather_into {name}"), n);
        let mut buf = self.buf(sentinel, count * p);
        check::fill_pattern(&mut buf[r * count..(r + 1) * count], r, 0);
        attempt!(self, format!("all_gather {name}"), self.comm.all_gather(&mut buf));
        let n = (0..p).map(|j| check::wrong_pattern(&buf[j * count..(j + 1) * count], j, 0)).sum();
        self.wrong(format!("all_gather {name}"), n);

        // all-to-all: block j of rank r carries pattern(r, j); rank r receives pattern(j, r)
        let mut send = self.buf(sentinel, count * p);
        for j in 0..p {
            check::fill_pattern(&mut send[j * count..(j + 1) * count], r, j);
        }
        let mut recv = self.buf(sentinel, count * p);
        attempt!(self, format!("all_to_all_into {name}"), self.comm.all_to_all_into(&send, &mut recv));
        let n = (0..p).map(|j| check::wrong_pattern(&recv[j * count..(j + 1) * count], j, r)).sum();
        self.wrong(format!("all_to_all_into {name}"), n);
        attempt!(self, format!("all_to_all {name}"), self.comm.all_to_all(&mut send));
        let n = (0..p).map(|j| check::wrong_pattern(&send[j * count..(j + 1) * count], j, r)).sum();
        self.wrong(format!("all_to_all {name}"), n);

        // broadcast from the first and the last rank
        for root in [0, p - 1] {
            let mut buf = self.buf(sentinel, count);
            if r == root {
                check::fill_pattern(&mut buf, root, 3);
            }
            attempt!(self, format!("broadcast root {root} {name}"), self.comm.broadcast(&mut buf, root));
            self.wrong(format!("broadcast root {root} {name}"), check::wrong_pattern(&buf, root, 3));
            let mut src = self.buf(sentinel, if r == root { count } else { 0 });
            check::fill_pattern(&mut src, root, 4);
            let mut dst = self.buf(sentinel, count);
            attempt!(
                self,
                format!("broadcast_into root {root} {name}"),
                self.comm.broadcast_into(&src, &mut dst, root)
            );
            self.wrong(format!("broadcast_into root {root} {name}"), check::wrong_pattern(&dst, root, 4));
        }
        true
    }

    fn point_to_point(&mut self, count: usize) -> bool {
        let (r, p) = (self.comm.rank(), self.comm.size());
        if p == 1 {
            return true;
        }
        let (right, left) = ((r + 1) % p, (r + p - 1) % p);
        let mut send = vec![0u32; count];
        check::fill_pattern(&mut send, r, 9);
        let mut recv = vec![0u32; count];
        attempt!(self, format!("sendrecv count {count}"), self.comm.sendrecv(&send, right, &mut recv, left));
        self.wrong(format!("sendrecv count {count}"), check::wrong_pattern(&recv, left, 9));
        // Plain send/recv: even ranks send first, odd ranks receive first (no deadlock with
        // rendezvous transports), twice to check ordering.
        for round in 0..2 {
            let mut got = vec![0u32; count];
            let mut mine = vec![0u32; count];
            check::fill_pattern(&mut mine, r, round);
            if p % 2 == 1 && r == p - 1 {
                // The odd one out exchanges with rank 0 through sendrecv at the end.
                continue;
            }
            let partner = r ^ 1;
            if r % 2 == 0 {
                attempt!(self, "send", self.comm.send(&mine, partner));
                attempt!(self, "recv", self.comm.recv(&mut got, partner));
            } else {
                attempt!(self, "recv", self.comm.recv(&mut got, partner));
                attempt!(self, "send", self.comm.send(&mine, partner));
            }
            self.wrong(format!("send/recv round {round} count {count}"), check::wrong_pattern(&got, partner, round));
        }
        true
    }
}

/// Runs every collective on `comm` for the counts, data types and operators of the sweep
/// (all ten types and five operators on small counts; a few on [`BIG`] when `big`).
/// Returns the failures, each naming rank, collective, type, operator and count.
pub fn sweep(comm: &Communicator, big: bool) -> Vec<String> {
    sweep_buffers(comm, big, false)
}

/// [`sweep`], with the collectives' buffers in shared buffers when `shared`.
pub fn sweep_buffers(comm: &Communicator, big: bool, shared: bool) -> Vec<String> {
    let mut s = Sweep { comm, fails: Vec::new(), shared };
    macro_rules! all_types {
        ($f:ident, $($arg:expr),*) => {
            s.$f::<i8>($($arg),*) && s.$f::<u8>($($arg),*) && s.$f::<i32>($($arg),*) && s.$f::<u32>($($arg),*)
                && s.$f::<i64>($($arg),*) && s.$f::<u64>($($arg),*) && s.$f::<f16>($($arg),*)
                && s.$f::<bf16>($($arg),*) && s.$f::<f32>($($arg),*) && s.$f::<f64>($($arg),*)
        };
    }
    'outer: for count in COUNTS {
        for op in ReduceOp::ALL {
            if !all_types!(reductions, count, op) {
                break 'outer;
            }
        }
        if !all_types!(movement, count) || !s.point_to_point(count) {
            break;
        }
        if let Err(e) = comm.barrier() {
            s.fails.push(format!("rank {}: barrier: {e}", comm.rank()));
            break;
        }
    }
    if big && s.fails.is_empty() {
        let _ = s.reductions::<f32>(BIG, ReduceOp::Sum)
            && s.reductions::<i64>(BIG, ReduceOp::Max)
            && s.reductions::<bf16>(BIG, ReduceOp::Avg)
            && s.movement::<u8>(BIG)
            && s.point_to_point(BIG);
    }
    s.fails
}

/// The collectives [`call_and_check`] checks: every one with algorithms to choose from but
/// the barrier, which moves no data.
pub fn checked_collectives() -> impl Iterator<Item = Collective> {
    Collective::ALL.into_iter().filter(|&c| c != Collective::Barrier)
}

/// One call of `coll` on `count` f32 elements (in the API's terms), every element checked
/// against its closed form. Rank parity picks in place or out of place, so ranks mix the
/// two forms in one call (roots of broadcast and reduce: rank 1 and the last rank).
pub fn call_and_check(comm: &Communicator, coll: Collective, count: usize) -> Result<(), String> {
    call_and_check_in(comm, coll, count, false)
}

/// [`call_and_check`] with every buffer an [`oxccl::SharedBuffer`] when `shared` (the
/// `mapped` algorithms can run).
pub fn call_and_check_in(comm: &Communicator, coll: Collective, count: usize, shared: bool) -> Result<(), String> {
    call_and_check_as(comm, coll, count, shared, comm.rank().is_multiple_of(2))
}

/// [`call_and_check_in`] with this rank's call in place when `in_place`.
pub fn call_and_check_as(
    comm: &Communicator,
    coll: Collective,
    count: usize,
    shared: bool,
    in_place: bool,
) -> Result<(), String> {
    let zeros = |n: usize| -> TestBuf<f32> {
        if shared {
            let mut b = oxccl::SharedBuffer::new(n).expect("shared buffer");
            b.fill(0.0);
            TestBuf::Shared(b)
        } else {
            TestBuf::Heap(vec![0f32; n])
        }
    };
    let (r, p) = (comm.rank(), comm.size());
    let op = ReduceOp::Sum;
    let e = |e: oxccl::Error| e.to_string();
    let wrong = match coll {
        Collective::AllReduce => {
            let mut send = zeros(count);
            fill_contribution(&mut send, r, op, 0);
            if in_place {
                comm.all_reduce(&mut send, op).map_err(e)?;
                wrong_reduced(&send, p, op, 0)
            } else {
                let mut recv = zeros(count);
                comm.all_reduce_into(&send, &mut recv, op).map_err(e)?;
                wrong_reduced(&recv, p, op, 0)
            }
        }
        Collective::AllGather => {
            let mut all = zeros(count * p);
            fill_pattern(&mut all[r * count..(r + 1) * count], r, 0);
            if in_place {
                comm.all_gather(&mut all).map_err(e)?;
            } else {
                let mut mine = zeros(count);
                mine.copy_from_slice(&all[r * count..(r + 1) * count]);
                comm.all_gather_into(&mine, &mut all).map_err(e)?;
            }
            (0..p).map(|s| wrong_pattern(&all[s * count..(s + 1) * count], s, 0)).sum()
        }
        Collective::ReduceScatter => {
            let mut send = zeros(count * p);
            fill_contribution(&mut send, r, op, 0);
            if in_place {
                comm.reduce_scatter(&mut send, op).map_err(e)?;
                wrong_reduced(&send[r * count..(r + 1) * count], p, op, r * count)
            } else {
                let mut recv = zeros(count);
                comm.reduce_scatter_into(&send, &mut recv, op).map_err(e)?;
                wrong_reduced(&recv, p, op, r * count)
            }
        }
        Collective::AllToAll => {
            // Block j of rank r's input goes to rank j: pattern(r, j, i).
            let mut send = zeros(count * p);
            for j in 0..p {
                fill_pattern(&mut send[j * count..(j + 1) * count], r, j);
            }
            let mut recv = zeros(count * p);
            if in_place {
                comm.all_to_all(&mut send).map_err(e)?;
                recv = send;
            } else {
                comm.all_to_all_into(&send, &mut recv).map_err(e)?;
            }
            (0..p).map(|s| wrong_pattern(&recv[s * count..(s + 1) * count], s, r)).sum()
        }
        Collective::Broadcast => {
            let root = 1 % p;
            let mut buf = zeros(count);
            if r == root {
                fill_pattern(&mut buf, root, 0);
            }
            if r == root && !in_place {
                let mut mine = zeros(count);
                mine.copy_from_slice(&buf);
                comm.broadcast_into(&mine, &mut buf, root).map_err(e)?;
            } else {
                comm.broadcast(&mut buf, root).map_err(e)?;
            }
            wrong_pattern(&buf, root, 0)
        }
        Collective::Reduce => {
            let root = p - 1;
            let mut send = zeros(count);
            fill_contribution(&mut send, r, op, 0);
            if in_place {
                comm.reduce(&mut send, op, root).map_err(e)?;
                if r == root {
                    wrong_reduced(&send, p, op, 0)
                } else {
                    0
                }
            } else {
                let mut recv = zeros(count);
                comm.reduce_into(&send, &mut recv, op, root).map_err(e)?;
                if r == root {
                    wrong_reduced(&recv, p, op, 0)
                } else {
                    0
                }
            }
        }
        other => return Err(format!("{other} is not checked here")),
    };
    if wrong == 0 {
        Ok(())
    } else {
        Err(format!("{wrong} wrong elements"))
    }
}
