//! Collectives on GPU buffers: every collective, every element type and operator, counts 0,
//! 1, 7, 1000 and 2^20+3, in place and out of place, checked element by element against the
//! closed forms of `oxccl::check`, in worlds of threads (one process: the device pointers
//! themselves) and of processes sharing the GPU(s) (CUDA IPC).
//!
//! Where there is no CUDA driver (CI, this project's VMs) every test says it was skipped and
//! why, after checking that the reason is the clear Unsupported error oxccl promises.
//! `scripts/gpu-check.sh` runs them on a GPU machine.

use std::process::Command;

use half::{bf16, f16};
use oxccl::check::{self, CheckElem};
use oxccl::{Communicator, Config, DeviceBuffer, ErrorKind, ReduceOp};

const COUNTS: [usize; 4] = [0, 1, 7, 1000];
const BIG: usize = (1 << 20) + 3;

/// `None` when a GPU is usable; else why not (after checking it is the promised error).
fn no_gpu() -> Option<String> {
    match DeviceBuffer::<u8>::new(1, 0) {
        Ok(_) => None,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            let text = e.to_string();
            assert!(text.contains("no CUDA driver found") || text.contains("no CUDA support"), "{text}");
            Some(text)
        }
    }
}

/// The device this rank uses: its local rank over the devices there are.
fn device_for(comm: &Communicator) -> u32 {
    let n = oxccl_transport::cuda::driver().map(|d| d.device_count()).unwrap_or(1).max(1);
    (comm.local_rank() % n) as u32
}

struct GpuSweep<'a> {
    comm: &'a Communicator,
    dev: u32,
    fails: Vec<String>,
}

impl GpuSweep<'_> {
    fn up<T: CheckElem>(&self, host: &[T]) -> DeviceBuffer<T> {
        DeviceBuffer::from_slice(host, self.dev).expect("device buffer")
    }

    fn check<T: CheckElem>(
        &mut self,
        what: String,
        r: oxccl::Result<()>,
        got: &DeviceBuffer<T>,
        wrong: impl Fn(&[T]) -> usize,
    ) {
        if let Err(e) = r {
            self.fails.push(format!("rank {}: {what}: error {e}", self.comm.rank()));
            return;
        }
        let host = got.to_vec().expect("copy back");
        let n = wrong(&host);
        if n > 0 {
            self.fails.push(format!("rank {}: {what}: {n} wrong elements", self.comm.rank()));
        }
    }

    fn reductions<T: CheckElem>(&mut self, count: usize, op: ReduceOp) {
        let (r, p) = (self.comm.rank(), self.comm.size());
        let name = format!("{} {op} count {count}", T::DTYPE);
        let mut host = vec![T::from_i64(77); count];
        check::fill_contribution(&mut host, r, op, 0);
        let send = self.up(&host);
        let mut recv = self.up(&vec![T::from_i64(77); count]);
        let res = self.comm.all_reduce_device_into(&send, &mut recv, op);
        self.check(format!("all_reduce_device_into {name}"), res, &recv, |h| check::wrong_reduced(h, p, op, 0));
        let mut inplace = self.up(&host);
        let res = self.comm.all_reduce_device(&mut inplace, op);
        self.check(format!("all_reduce_device {name}"), res, &inplace, |h| check::wrong_reduced(h, p, op, 0));

        let mut input = vec![T::from_i64(77); count * p];
        check::fill_contribution(&mut input, r, op, 0);
        let send = self.up(&input);
        let mut out = self.up(&vec![T::from_i64(77); count]);
        let res = self.comm.reduce_scatter_device_into(&send, &mut out, op);
        self.check(format!("reduce_scatter_device_into {name}"), res, &out, |h| {
            check::wrong_reduced(h, p, op, r * count)
        });
        let mut inplace = self.up(&input);
        let res = self.comm.reduce_scatter_device(&mut inplace, op);
        let before = input.clone();
        self.check(format!("reduce_scatter_device {name}"), res, &inplace, |h| {
            let others: usize = (0..p)
                .filter(|&j| j != r)
                .map(|j| (j * count..(j + 1) * count).filter(|&i| h[i] != before[i]).count())
                .sum();
            check::wrong_reduced(&h[r * count..(r + 1) * count], p, op, r * count) + others
        });

        for root in [0, p - 1] {
            let send = self.up(&host);
            let mut recv = self.up(&vec![T::from_i64(77); count]);
            let res = self.comm.reduce_device_into(&send, &mut recv, op, root);
            self.check(format!("reduce_device_into root {root} {name}"), res, &recv, |h| {
                if r == root {
                    check::wrong_reduced(h, p, op, 0)
                } else {
                    h.iter().filter(|x| **x != T::from_i64(77)).count()
                }
            });
            let mut inplace = self.up(&host);
            let keep = host.clone();
            let res = self.comm.reduce_device(&mut inplace, op, root);
            self.check(format!("reduce_device root {root} {name}"), res, &inplace, |h| {
                if r == root {
                    check::wrong_reduced(h, p, op, 0)
                } else {
                    (h != &keep[..]) as usize
                }
            });
        }
    }

    fn movement<T: CheckElem>(&mut self, count: usize) {
        let (r, p) = (self.comm.rank(), self.comm.size());
        let name = format!("{} count {count}", T::DTYPE);
        let zero = T::from_i64(0);
        let mut mine = vec![zero; count];
        check::fill_pattern(&mut mine, r, 0);
        let send = self.up(&mine);
        let mut recv = self.up(&vec![zero; count * p]);
        let res = self.comm.all_gather_device_into(&send, &mut recv);
        let gathered = |h: &[T]| (0..p).map(|j| check::wrong_pattern(&h[j * count..(j + 1) * count], j, 0)).sum();
        self.check(format!("all_gather_device_into {name}"), res, &recv, gathered);
        let mut whole = vec![zero; count * p];
        whole[r * count..(r + 1) * count].copy_from_slice(&mine);
        let mut inplace = self.up(&whole);
        let res = self.comm.all_gather_device(&mut inplace);
        self.check(format!("all_gather_device {name}"), res, &inplace, gathered);

        let mut blocks = vec![zero; count * p];
        for j in 0..p {
            check::fill_pattern(&mut blocks[j * count..(j + 1) * count], r, j);
        }
        let exchanged = |h: &[T]| (0..p).map(|j| check::wrong_pattern(&h[j * count..(j + 1) * count], j, r)).sum();
        let send = self.up(&blocks);
        let mut recv = self.up(&vec![zero; count * p]);
        let res = self.comm.all_to_all_device_into(&send, &mut recv);
        self.check(format!("all_to_all_device_into {name}"), res, &recv, exchanged);
        let mut inplace = self.up(&blocks);
        let res = self.comm.all_to_all_device(&mut inplace);
        self.check(format!("all_to_all_device {name}"), res, &inplace, exchanged);

        for root in [0, p - 1] {
            let mut v = vec![zero; count];
            if r == root {
                check::fill_pattern(&mut v, root, 3);
            }
            let mut buf = self.up(&v);
            let res = self.comm.broadcast_device(&mut buf, root);
            self.check(format!("broadcast_device root {root} {name}"), res, &buf, |h| check::wrong_pattern(h, root, 3));
            let mut src = vec![zero; count];
            check::fill_pattern(&mut src, root, 4);
            let src = self.up(&src);
            let mut dst = self.up(&vec![zero; count]);
            let res = self.comm.broadcast_device_into(&src, &mut dst, root);
            self.check(format!("broadcast_device_into root {root} {name}"), res, &dst, |h| {
                check::wrong_pattern(h, root, 4)
            });
        }
    }
}

/// Every collective on device buffers, for every type, operator and count (and a few big
/// ones when `big`). Returns the failures.
fn gpu_sweep(comm: &Communicator, big: bool) -> Vec<String> {
    let mut s = GpuSweep { comm, dev: device_for(comm), fails: Vec::new() };
    macro_rules! all_types {
        ($f:ident, $($arg:expr),*) => {
            s.$f::<i8>($($arg),*); s.$f::<u8>($($arg),*); s.$f::<i32>($($arg),*); s.$f::<u32>($($arg),*);
            s.$f::<i64>($($arg),*); s.$f::<u64>($($arg),*); s.$f::<f16>($($arg),*);
            s.$f::<bf16>($($arg),*); s.$f::<f32>($($arg),*); s.$f::<f64>($($arg),*);
        };
    }
    for count in COUNTS {
        for op in ReduceOp::ALL {
            all_types!(reductions, count, op);
        }
        all_types!(movement, count);
        if !s.fails.is_empty() {
            break;
        }
    }
    if big && s.fails.is_empty() {
        s.reductions::<f32>(BIG, ReduceOp::Sum);
        s.reductions::<bf16>(BIG, ReduceOp::Avg);
        s.reductions::<i64>(BIG, ReduceOp::Max);
        s.movement::<u8>(BIG);
    }
    s.fails
}

#[test]
fn device_buffers_without_cuda_are_a_clear_error() {
    if let Some(why) = no_gpu() {
        eprintln!("skipped the GPU part: {why}");
        // Host collectives are untouched by the device path.
        let comms = Communicator::local_world(2, Config::default()).unwrap();
        std::thread::scope(|s| {
            for c in &comms {
                s.spawn(move || {
                    let mut v = vec![1u32; 5];
                    c.all_reduce(&mut v, ReduceOp::Sum).unwrap();
                    assert_eq!(v, vec![2; 5]);
                });
            }
        });
    }
}

#[test]
fn thread_worlds_on_device_buffers() {
    if let Some(why) = no_gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    for p in [1, 2, 3, 4] {
        let comms = Communicator::local_world(p, Config::default()).unwrap();
        let fails: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = comms.iter().map(|c| s.spawn(move || gpu_sweep(c, p == 2))).collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert!(fails.is_empty(), "{p} threads: {fails:?}");
    }
}

/// Under `oxrun` (OXCCL_TEST_GPU_RANK set): one rank of a process world on the GPU.
#[test]
fn gpu_rank() {
    if std::env::var_os("OXCCL_TEST_GPU_RANK").is_none() {
        return;
    }
    let comm = Communicator::from_env().expect("a rank under oxrun");
    let before = oxccl_algorithms::mapped::schedules_run();
    let fails = gpu_sweep(&comm, true);
    assert!(fails.is_empty(), "{fails:?}");
    // Whichever algorithm was asked for, the buffers moved through CUDA IPC, not host memory
    // (a forced ring: all-reduce, reduce-scatter and all-gather; at least all-reduce and
    // all-gather, 3 non-empty counts, 10 types, 5 operators).
    let ran = oxccl_algorithms::mapped::schedules_run() - before;
    assert!(
        ran >= 3 * (10 * 5 * 2 + 10 * 2),
        "rank {}: only {ran} calls ran over CUDA IPC; the last mapping that failed here: {:?}",
        comm.rank(),
        oxccl_algorithms::mapped::last_map_error()
    );
    println!("GPU-RANK-OK {}/{}", comm.rank(), comm.size());
}

#[test]
fn process_worlds_on_device_buffers() {
    if let Some(why) = no_gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let me = std::env::current_exe().unwrap();
    // The automatic choice (direct reads of every peer's buffers), and the ring over CUDA IPC
    // (all-reduce, reduce-scatter and all-gather; the other collectives staged).
    for (p, algo) in [(2, "auto"), (4, "auto"), (3, "ring")] {
        // scripts/gpu-check.sh runs a prebuilt copy of this binary elsewhere: it says where
        // oxrun is there.
        let oxrun = std::env::var("OXCCL_OXRUN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_oxrun").to_string());
        let mut cmd = Command::new(oxrun);
        cmd.args(["-n", &p.to_string()])
            .arg(&me)
            .args(["gpu_rank", "--exact", "--nocapture", "--test-threads=1"])
            .env("OXCCL_TEST_GPU_RANK", "1")
            .env("OXCCL_TIMEOUT_MS", "120000")
            .env("OXCCL_TRANSPORT", "shm");
        if algo != "auto" {
            cmd.env("OXCCL_ALGO", algo);
        }
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{p} processes, {algo}:\n{text}");
        for r in 0..p {
            assert!(text.contains(&format!("GPU-RANK-OK {r}/{p}")), "rank {r} of {p}:\n{text}");
        }
    }
}

/// Device buffers where ranks cannot open each other's IPC handles (TCP, as between hosts)
/// are staged through host memory: every collective still gives the closed-form results. So
/// does a forced ring on device buffers: over CUDA IPC for all-reduce, reduce-scatter and
/// all-gather (each rank reading peers' buffers step by step: checked to have run as a
/// mapped schedule), staged for the others.
#[test]
fn device_buffers_over_tcp_or_a_forced_ring_are_staged() {
    if let Some(why) = no_gpu() {
        eprintln!("skipped: {why}");
        return;
    }
    let id = oxccl::UniqueId::new().unwrap();
    let fails: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|r| {
                s.spawn(move || {
                    let cfg = Config::default().with_transport(oxccl::TransportKind::Tcp);
                    let comm = Communicator::init(&id, r, 3, cfg).unwrap();
                    gpu_sweep(&comm, false)
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(fails.is_empty(), "over TCP: {fails:?}");
    let before = oxccl_algorithms::mapped::schedules_run();
    let comms = Communicator::local_world(3, Config::default().with_algorithm("ring").unwrap()).unwrap();
    let fails: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = comms.iter().map(|c| s.spawn(move || gpu_sweep(c, false))).collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(fails.is_empty(), "forced ring: {fails:?}");
    // All-reduce (in and out of place) and all-gather (both forms), 10 types, 5 operators
    // for all-reduce, 3 non-empty counts, on each of 3 ranks.
    let ran = oxccl_algorithms::mapped::schedules_run() - before;
    assert!(
        ran >= 3 * 3 * (10 * 5 * 2 + 10 * 2),
        "the forced ring ran over CUDA IPC only {ran} times; the last mapping that failed: {:?}",
        oxccl_algorithms::mapped::last_map_error()
    );
}
