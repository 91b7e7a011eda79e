//! `plan`: how long a transformer's training step spends communicating, for each way of
//! laying it out over a cluster, predicted with oxccl's cost model; and, under a launcher,
//! the same collectives replayed with oxccl to check the prediction.
//!
//! ```text
//! # A 7B model on 4 hosts of 8 ranks, priced with the built-in profile:
//! cargo run --release --example plan -- --params 7e9 --layers 32 --hidden 4096 --hosts 4 --ranks-per-host 8
//! # Validate at small scale on this machine: predicted next to measured, every layout of 4 ranks.
//! cargo build --release --example plan
//! oxrun -n 4 --bind-to auto target/release/examples/plan --params 50e6 --layers 8 --hidden 1024 --seq 512 --replay
//! ```
//!
//! Layouts (W ranks = hosts x ranks per host; T tensor-parallel ranks inside a host, D = W/T
//! data-parallel replicas):
//! * **data parallel** (T = 1): the gradients, all-reduced across the W ranks in buckets;
//! * **ZeRO-3 / FSDP** (T = 1, sharded): per layer, the parameters all-gathered for the
//!   forward and again for the backward pass, and the gradients reduce-scattered;
//! * **tensor parallel** (T > 1): per layer two all-reduces of the activations forward and
//!   two backward among the T ranks, and the gradients of the 1/T shard all-reduced across the
//!   D replicas (or, with FSDP over the replicas, gathered and scattered per layer).
//!
//! Prices assume the tensors live in memory the ranks of a host map (`--buffers shared`:
//! `oxccl::SharedBuffer`, `oxcclMemAlloc`), where the `mapped` algorithms are candidates;
//! `--buffers heap` prices (and replays) ordinary memory.
//!
//! The time is communication only, one collective after another, as if nothing overlapped
//! with compute: an upper bound on what communication adds to a step, and the figure to
//! compare layouts by. A group that shares its hosts with other groups working at the same
//! time (the T-rank groups of tensor parallelism, say) is priced with its share of the host's
//! cores.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use half::bf16;
use oxccl::cost::{self, Call, Profile, TuningFile};
use oxccl::{Algorithm, Collective, Communicator, DataType, ReduceOp, SharedBuffer};

/// Communication planner for transformer training.
#[derive(Parser, Debug)]
#[command(name = "plan", about)]
struct Args {
    /// Parameters of the model.
    #[arg(long, default_value = "7e9")]
    params: f64,
    /// Transformer layers.
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 4096)]
    hidden: usize,
    /// Sequence length.
    #[arg(long, default_value_t = 4096)]
    seq: usize,
    /// Micro-batch (sequences per rank per step).
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    /// Hosts (under `--replay`: the launcher's).
    #[arg(long, default_value_t = 1)]
    hosts: usize,
    /// Ranks per host (under `--replay`: the launcher's).
    #[arg(long, default_value_t = 4)]
    ranks_per_host: usize,
    /// CPU cores per host of the machine planned for (the model's oversubscription when ranks
    /// outnumber them); default: those the profile was measured with. Under `--replay`: the
    /// communicator's count of the cores its ranks have.
    #[arg(long)]
    cores_per_host: Option<f64>,
    /// Gradient bucket size in bytes for data parallelism.
    #[arg(long, default_value_t = 25 << 20)]
    bucket: usize,
    /// A tuning file (`oxccl-bench --calibrate`); default: the built-in profile (under
    /// `--replay`: the communicator's).
    #[arg(long)]
    tuning: Option<PathBuf>,
    /// The transport between ranks of one host, for the profile: shm or tcp.
    #[arg(long, default_value = "shm")]
    intra: String,
    /// Run every layout's collectives with oxccl (under oxrun, mpirun, torchrun, srun) and
    /// print measured next to predicted.
    #[arg(long)]
    replay: bool,
    /// Steps replayed per layout (the median is reported).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Where the program keeps its tensors: `shared` (oxccl::SharedBuffer or oxcclMemAlloc,
    /// which ranks of one host map, so the `mapped` algorithms are candidates) or `heap`
    /// (ordinary memory: they are not).
    #[arg(long, default_value = "shared", value_parser = ["shared", "heap"])]
    buffers: String,
    /// Under `--replay`: also time each kind of call of a layout on its own (its calls of
    /// one step back to back, between barriers) next to its own price and the algorithm the
    /// model picks for it, to find which call a layout's miss comes from.
    #[arg(long)]
    breakdown: bool,
    /// Make (under `--replay`) and price every call in place, as DDP's gradient all-reduce
    /// and FSDP's all-gather are: each call runs the algorithm the communicator chooses
    /// (which prices calls out of place), priced in its in-place form.
    #[arg(long)]
    in_place: bool,
}

/// Which ranks a collective runs among.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Group {
    /// Every rank.
    World,
    /// The T ranks of one tensor-parallel group (consecutive ranks of one host).
    Tensor,
    /// The D replicas of one shard (ranks with the same tensor-parallel index).
    Data,
}

/// One kind of call in a step: `times` calls of `coll` on `bytes` (nccl-tests' size) among
/// `group`.
#[derive(Debug, Clone, Copy)]
struct Op {
    group: Group,
    coll: Collective,
    bytes: usize,
    times: usize,
}

struct Layout {
    name: String,
    tp: usize,
    ops: Vec<Op>,
}

const ES: usize = 2; // bf16

fn round_to(x: usize, m: usize) -> usize {
    (x / m).max(1) * m
}

/// The collectives of one training step for tensor parallelism `tp` over `w` ranks.
fn layout(a: &Args, w: usize, tp: usize, fsdp: bool) -> Layout {
    let d = w / tp;
    let shard = (a.params / tp as f64) as usize * ES;
    let mut ops = Vec::new();
    if tp > 1 {
        let act = a.micro_batch * a.seq * a.hidden * ES;
        ops.push(Op { group: Group::Tensor, coll: Collective::AllReduce, bytes: act, times: 4 * a.layers });
    }
    let group = if tp == 1 { Group::World } else { Group::Data };
    if d > 1 && fsdp {
        let per_layer = round_to(shard / a.layers, d * ES);
        ops.push(Op { group, coll: Collective::AllGather, bytes: per_layer, times: 2 * a.layers });
        ops.push(Op { group, coll: Collective::ReduceScatter, bytes: per_layer, times: a.layers });
    } else if d > 1 {
        let full = shard / a.bucket;
        if full > 0 {
            ops.push(Op { group, coll: Collective::AllReduce, bytes: a.bucket, times: full });
        }
        let rest = round_to(shard - full * a.bucket, ES);
        if rest > 0 && !shard.is_multiple_of(a.bucket) {
            ops.push(Op { group, coll: Collective::AllReduce, bytes: rest, times: 1 });
        }
    }
    let name = match (tp, fsdp && d > 1) {
        (1, false) => "data parallel".to_string(),
        (1, true) => "ZeRO-3/FSDP".to_string(),
        (t, false) => format!("TP{t} x DP{d}"),
        (t, true) => format!("TP{t} x FSDP{d}"),
    };
    Layout { name, tp, ops }
}

/// Every layout of `w` ranks with `rph` per host: tensor parallelism over divisors of the
/// ranks per host, each with plain and sharded data parallelism.
fn layouts(a: &Args, w: usize, rph: usize) -> Vec<Layout> {
    let mut v = Vec::new();
    for tp in (1..=rph).filter(|t| rph.is_multiple_of(*t)) {
        v.push(layout(a, w, tp, false));
        if w / tp > 1 {
            v.push(layout(a, w, tp, true));
        }
    }
    v
}

/// The host of each rank of `group` (rank 0's group; all are alike) in a world of `hosts`
/// hosts of `rph` ranks with tensor parallelism `tp`.
fn group_hosts(group: Group, hosts: usize, rph: usize, tp: usize) -> Vec<usize> {
    match group {
        Group::World => (0..hosts * rph).map(|r| r / rph).collect(),
        Group::Tensor => vec![0; tp],
        Group::Data => (0..hosts * rph / tp).map(|i| i * tp / rph).collect(),
    }
}

/// Seconds the ops of a layout are predicted to take per step.
fn predict(l: &Layout, profile: &Profile, hosts: usize, rph: usize, in_place: bool) -> f64 {
    l.ops.iter().map(|op| predict_op(l, op, profile, hosts, rph, in_place).1).sum()
}

/// The algorithm the model picks for one op of a layout (as the communicator does, out of
/// place), and the seconds its calls of one step are predicted to take, in place where the
/// calls are.
fn predict_op(l: &Layout, op: &Op, profile: &Profile, hosts: usize, rph: usize, in_place: bool) -> (Algorithm, f64) {
    let gh = group_hosts(op.group, hosts, rph, l.tp);
    let local = gh.iter().filter(|&&h| h == 0).count();
    // A group gets its share of a host whose other ranks are busy at the same time.
    let mut p = profile.clone();
    p.cores = profile.cores * local as f64 / rph as f64;
    let call = Call::new(op.coll, op.bytes, DataType::Bf16, ReduceOp::Sum);
    let (algo, mut c) = cost::best(&call, &gh, &p);
    if in_place {
        c = cost::predict(&call.with_in_place(true), algo, &gh, &p).unwrap_or(c);
    }
    (algo, c.total() * op.times as f64)
}

fn describe(l: &Layout) -> (usize, f64) {
    let calls = l.ops.iter().map(|o| o.times).sum();
    let bytes = l.ops.iter().map(|o| o.bytes as f64 * o.times as f64).sum();
    (calls, bytes)
}

fn main() {
    oxccl::init_logging();
    let a = Args::parse();
    let r = if a.replay { replay(&a) } else { plan(&a) };
    if let Err(e) = r {
        eprintln!("plan: {e}");
        std::process::exit(1);
    }
}

/// A tensor in the memory `--buffers` names.
enum Tensor {
    Shared(SharedBuffer<bf16>),
    Heap(Vec<bf16>),
}

impl Tensor {
    fn new(len: usize, a: &Args) -> oxccl::Result<Tensor> {
        Ok(match a.buffers.as_str() {
            "shared" => Tensor::Shared(SharedBuffer::new(len)?),
            _ => Tensor::Heap(vec![bf16::ZERO; len]),
        })
    }
}

impl std::ops::Deref for Tensor {
    type Target = [bf16];
    fn deref(&self) -> &[bf16] {
        match self {
            Tensor::Shared(b) => b,
            Tensor::Heap(v) => v,
        }
    }
}

impl std::ops::DerefMut for Tensor {
    fn deref_mut(&mut self) -> &mut [bf16] {
        match self {
            Tensor::Shared(b) => b,
            Tensor::Heap(v) => v,
        }
    }
}

fn header(a: &Args, w: usize, hosts: usize, rph: usize) {
    println!(
        "# {:.3e} parameters, {} layers, hidden {}, sequence {}, micro-batch {}, bf16; {} ranks = {} hosts x {}{}",
        a.params,
        a.layers,
        a.hidden,
        a.seq,
        a.micro_batch,
        w,
        hosts,
        rph,
        if a.in_place { "; calls in place" } else { "" }
    );
}

fn plan(a: &Args) -> oxccl::Result<()> {
    let file = match &a.tuning {
        Some(p) => TuningFile::load(p)?,
        None => TuningFile::builtin(),
    };
    let host = nix_hostname();
    let mut profile = file.profile(&host, &a.intra);
    profile.peer_memory &= a.buffers == "shared";
    if let Some(c) = a.cores_per_host {
        profile.cores = c.max(1e-3);
    }
    let (hosts, rph) = (a.hosts.max(1), a.ranks_per_host.max(1));
    let w = hosts * rph;
    header(a, w, hosts, rph);
    let mut ranked: Vec<(f64, Layout)> =
        layouts(a, w, rph).into_iter().map(|l| (predict(&l, &profile, hosts, rph, a.in_place), l)).collect();
    ranked.sort_by(|x, y| x.0.total_cmp(&y.0));
    println!("# {:>3}  {:<16} {:>8} {:>12} {:>14}", "", "layout", "calls", "GB moved", "comm ms/step");
    for (i, (t, l)) in ranked.iter().enumerate() {
        let (calls, bytes) = describe(l);
        println!("  {:>3}  {:<16} {:>8} {:>12.2} {:>14.2}", i + 1, l.name, calls, bytes / 1e9, t * 1e3);
    }
    Ok(())
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Runs each layout's step with oxccl and prints measured next to predicted.
fn replay(a: &Args) -> oxccl::Result<()> {
    let world = Communicator::from_env()?;
    let w = world.size();
    let hosts = world.hosts().iter().max().map_or(1, |m| m + 1);
    let rph = w / hosts;
    if rph * hosts != w {
        return Err(oxccl::Error::invalid_argument("replay needs the same number of ranks on every host"));
    }
    let mut profile = match &a.tuning {
        Some(p) => TuningFile::load(p)?.profile(&nix_hostname(), world.transport_name()),
        None => world.profile().clone(),
    };
    // The cores these ranks have, as the communicator counted them (a file's entry records
    // the machine it was measured on).
    profile.cores = world.profile().cores;
    profile.peer_memory &= a.buffers == "shared";
    if world.rank() == 0 {
        header(a, w, hosts, rph);
        println!(
            "# {:<16} {:>8} {:>12} {:>14} {:>14} {:>7}",
            "layout", "calls", "GB moved", "predicted ms", "measured ms", "ratio"
        );
    }
    for l in layouts(a, w, rph) {
        let tp = l.tp;
        // Tensor groups: consecutive ranks; data groups: equal index within them.
        let tcomm = world.split(Some((world.rank() / tp) as u32), world.rank() as i64)?.expect("a color");
        let dcomm = world.split(Some((world.rank() % tp) as u32), world.rank() as i64)?.expect("a color");
        let comm_of = |g: Group| match g {
            Group::World => &world,
            Group::Tensor => &tcomm,
            Group::Data => &dcomm,
        };
        let max = l.ops.iter().map(|o| o.bytes).max().unwrap_or(0) / ES;
        let (mut send, mut recv) = (Tensor::new(max, a)?, Tensor::new(max, a)?);
        send.fill(bf16::from_f32(1.0));
        // In place the calls reduce into `recv` itself: finite values, whatever it held.
        recv.fill(bf16::from_f32(0.0));
        // One op's calls of one step.
        let mut run = |op: &Op| -> oxccl::Result<()> {
            let c = comm_of(op.group);
            let n = op.bytes / ES;
            let per = n / c.size();
            for _ in 0..op.times {
                match op.coll {
                    Collective::AllReduce if a.in_place => c.all_reduce(&mut recv[..n], ReduceOp::Sum)?,
                    Collective::AllGather if a.in_place => c.all_gather(&mut recv[..per * c.size()])?,
                    Collective::ReduceScatter if a.in_place => {
                        c.reduce_scatter(&mut recv[..per * c.size()], ReduceOp::Sum)?
                    }
                    Collective::AllReduce => c.all_reduce_into(&send[..n], &mut recv[..n], ReduceOp::Sum)?,
                    Collective::AllGather => c.all_gather_into(&send[..per], &mut recv[..per * c.size()])?,
                    Collective::ReduceScatter => {
                        c.reduce_scatter_into(&send[..per * c.size()], &mut recv[..per], ReduceOp::Sum)?
                    }
                    _ => unreachable!("the planner uses all-reduce, all-gather and reduce-scatter"),
                }
            }
            Ok(())
        };
        l.ops.iter().try_for_each(&mut run)?;
        // Trial calls (`Config::trial_calls`) belong to the warm-up. Each communicator's
        // trials end at the same call on its ranks, but a tensor group's may end before
        // another's (their first timed calls size their rounds), so the world agrees on
        // whether any rank's are still running: otherwise ranks run different numbers of
        // steps and their next calls do not match.
        let trying = || -> oxccl::Result<bool> {
            let mine = l.ops.iter().any(|op| {
                let c = comm_of(op.group);
                let bytes = op.bytes / ES / c.size() * c.size() * ES;
                let bytes = if op.coll == Collective::AllReduce { op.bytes / ES * ES } else { bytes };
                c.trials_pending(op.coll, bytes, DataType::Bf16, ReduceOp::Sum)
            });
            let mut any = [u8::from(mine)];
            world.all_reduce(&mut any, ReduceOp::Max)?;
            Ok(any[0] != 0)
        };
        for _ in 0..100 {
            if !trying()? {
                break;
            }
            l.ops.iter().try_for_each(&mut run)?;
        }
        // The median over the steps of the time of `f` from the first rank's start to the
        // last rank's end. With more ranks than cores, a rank may leave the opening barrier
        // long after another (it waits for a core), and a group whose calls do not involve
        // it may finish in the meantime: each rank's own time misses that. On one host the
        // ranks share the kernel's monotonic clock, so the span is read off it directly:
        // the earliest start to the latest end, nothing subtracted. Across hosts a closing
        // barrier makes every rank's time reach the end of the slowest, and the longest of
        // them starts with the first; the fastest barrier, timed alone, is taken off (its
        // median could exceed a small step's whole span on a loaded host).
        let one_host = hosts == 1;
        let monotonic = || -> f64 {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
            t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
        };
        let span = |f: &mut dyn FnMut() -> oxccl::Result<()>| -> oxccl::Result<f64> {
            world.barrier()?;
            if one_host {
                let start = monotonic();
                f()?;
                // Max of (-start, end): the earliest start and the latest end.
                let mut t = [-start, monotonic()];
                world.all_reduce(&mut t, ReduceOp::Max)?;
                return Ok(t[1] + t[0]);
            }
            let t0 = Instant::now();
            f()?;
            world.barrier()?;
            let mut t = [t0.elapsed().as_secs_f64()];
            world.all_reduce(&mut t, ReduceOp::Max)?;
            Ok(t[0])
        };
        let barrier = if one_host {
            0.0
        } else {
            let barriers = (0..a.steps.max(5)).map(|_| span(&mut || Ok(()))).collect::<oxccl::Result<Vec<f64>>>()?;
            barriers.into_iter().fold(f64::INFINITY, f64::min)
        };
        let median_time = |f: &mut dyn FnMut() -> oxccl::Result<()>| -> oxccl::Result<f64> {
            let mut times = (0..a.steps.max(1)).map(|_| span(f)).collect::<oxccl::Result<Vec<f64>>>()?;
            times.sort_by(f64::total_cmp);
            Ok((times[times.len() / 2] - barrier).max(0.0))
        };
        let measured = median_time(&mut || l.ops.iter().try_for_each(&mut run))?;
        // Each op alone: the calls of every group of its kind run at once, as in a step.
        let mut ops = Vec::new();
        if a.breakdown {
            for op in &l.ops {
                let t = median_time(&mut || run(op))?;
                let c = comm_of(op.group);
                let choice = c.choice_for(op.coll, op.bytes, DataType::Bf16, ReduceOp::Sum);
                // On heap buffers a `mapped` choice runs its fallback.
                let chosen = if a.buffers == "shared" { choice.algo } else { choice.fallback };
                ops.push((op, chosen, t));
            }
        }
        let predicted = predict(&l, &profile, hosts, rph, a.in_place);
        if world.rank() == 0 {
            let (calls, bytes) = describe(&l);
            println!(
                "  {:<16} {:>8} {:>12.3} {:>14.2} {:>14.2} {:>7.2}",
                l.name,
                calls,
                bytes / 1e9,
                predicted * 1e3,
                measured * 1e3,
                predicted / measured
            );
            for (op, chosen, t) in ops {
                let (algo, p) = predict_op(&l, op, &profile, hosts, rph, a.in_place);
                let what = format!("{} {} x{} {:?}", op.coll, op.bytes, op.times, op.group);
                println!(
                    "    {:<40} {:>14.2} {:>14.2} {:>7.2}  model {}, ran {}",
                    what,
                    p * 1e3,
                    t * 1e3,
                    p / t,
                    algo,
                    chosen
                );
            }
        }
    }
    Ok(())
}
