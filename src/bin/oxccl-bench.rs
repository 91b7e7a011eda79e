//! `oxccl-bench`: collective bandwidth benchmark with nccl-tests' flags and columns.
//!
//! ```text
//! oxccl-bench                                   # 2 local ranks, all-reduce, 8 B .. 64 MiB
//! oxccl-bench --ranks 4 -b 8 -e 256M -f 4 -c 1  # 4 local ranks, with result checks
//! oxrun -n 4 oxccl-bench --collective all       # under a launcher (also mpirun, srun, torchrun)
//! ```
//! Columns as nccl-tests: size (B), count (elements), type, redop, root, then time (us),
//! algbw and busbw (GB/s) and #wrong, out of place and in place. algbw = size / time;
//! busbw = algbw x 2(p-1)/p for all-reduce, x (p-1)/p for all-gather, reduce-scatter and
//! all-to-all, x 1 for broadcast and reduce. Time is the mean per iteration, the maximum over
//! ranks.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use half::{bf16, f16};
use oxccl::bootstrap::env::LaunchEnv;
use oxccl::check::{self, CheckElem};
use oxccl::config::{parse_bytes, AlgoOverrides, TransportKind};
use oxccl::{Algorithm, Collective, Communicator, Config, DataType, DeviceBuffer, ReduceOp};

/// Collective bandwidth benchmark (nccl-tests' columns).
#[derive(Parser, Debug, Clone)]
#[command(name = "oxccl-bench", version, about)]
struct Args {
    /// Minimum size in bytes (K, M, G suffixes).
    #[arg(short = 'b', long = "minbytes", default_value = "8", value_parser = bytes_arg)]
    min_bytes: usize,
    /// Maximum size in bytes.
    #[arg(short = 'e', long = "maxbytes", default_value = "64M", value_parser = bytes_arg)]
    max_bytes: usize,
    /// Size multiplication factor between steps.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 4)]
    factor: usize,
    /// Timed iterations per size.
    #[arg(short = 'n', long = "iters", default_value_t = 20)]
    iters: usize,
    /// Warm-up iterations per size.
    #[arg(short = 'w', long = "warmup_iters", default_value_t = 5)]
    warmup: usize,
    /// Check results (1) or not (0).
    #[arg(short = 'c', long = "check", default_value_t = 1)]
    check: u8,
    /// Data type: float, half, bfloat16, double, int8, uint8, int32, uint32, int64, uint64.
    #[arg(short = 'd', long = "datatype", default_value = "float")]
    dtype: String,
    /// Reduction: sum, prod, min, max, avg.
    #[arg(short = 'o', long = "op", default_value = "sum")]
    op: String,
    /// Root of broadcast and reduce.
    #[arg(short = 'r', long = "root", default_value_t = 0)]
    root: usize,
    /// all, all_reduce, all_gather, reduce_scatter, all_to_all, broadcast, reduce.
    #[arg(long, default_value = "all_reduce")]
    collective: String,
    /// Force an algorithm (as OXCCL_ALGO: a name, or COLLECTIVE:NAME;...).
    #[arg(long)]
    algo: Option<String>,
    /// Compare algorithms in one run: at each size, each of these (comma-separated names,
    /// `auto` for the automatic choice) in turn, one row each, the algorithm last on the row.
    /// Names a collective does not have are skipped for it.
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// tcp, shm or auto.
    #[arg(long)]
    transport: Option<String>,
    /// Start this many local ranks when not under a launcher (default 2).
    #[arg(long)]
    ranks: Option<usize>,
    /// With `--ranks`: where the ranks run. `none` leaves them to the scheduler, `core` puts
    /// each on a core of its own (as mpirun does), `auto` (the default) does so where there
    /// are enough and deals them out round robin where there are not, so that which ranks
    /// share a core stays the same for the whole run (see `oxccl::launch::Binding::Auto`)
    #[arg(long = "bind-to", default_value = "auto")]
    bind_to: oxccl::launch::Binding,
    /// Print the cost model's reasoning: at each size every algorithm is measured (as with
    /// `--compare`) and each row ends with the algorithm and its predicted times, out of
    /// place and in place (`predicted 12.30 in-place 10.10`, us); the `auto` row names the
    /// choice.
    #[arg(long)]
    explain: bool,
    /// Measure this host's transport and kernels (see `oxccl::cost::calibrate`) and add the
    /// entry to this tuning file (created if missing; an entry for the same host, processor
    /// and transport is replaced). Load it with `OXCCL_TUNING_FILE`.
    #[arg(long, value_name = "FILE")]
    calibrate: Option<PathBuf>,
    /// With `--calibrate`: pool this run with the file's earlier calibrations of this world
    /// size instead of replacing them: every figure is refitted on the median of the runs'
    /// measurements (see `oxccl::cost::TuningEntry::average_with`). Calibrate three times,
    /// minutes apart, on a noisy machine.
    #[arg(long, requires = "calibrate")]
    average: bool,
    /// Fit every entry of this tuning file again from the raw measurements it keeps (after
    /// a change to the formulas, say) and write it back; runs nothing, needs no ranks.
    #[arg(long, value_name = "FILE", conflicts_with = "calibrate")]
    refit: Option<PathBuf>,
    /// Buffers from `oxccl::SharedBuffer` (1), which the other ranks on this host map, so the
    /// `mapped` algorithms run; or plain heap memory (0). As nccl-tests' `-R` (user buffer
    /// registration).
    #[arg(short = 'R', long = "registered", default_value_t = 0)]
    registered: u8,
    /// Heap buffers on transparent huge pages (1): each buffer's whole 2 MiB pages are
    /// advised `MADV_HUGEPAGE` before they are first written, and collapsed (`MADV_COLLAPSE`)
    /// where the kernel has it. With 4 KiB pages the shared-memory transport's reads of a
    /// peer's buffer walk and pin every page, which is where large out-of-place calls lose
    /// time (see benches/RESULTS.md, "Huge pages"). A program can do the same with its own
    /// buffers; with `/sys/kernel/mm/transparent_hugepage/enabled` at `always` every large
    /// buffer gets them.
    #[arg(long, default_value_t = 0)]
    hugepages: u8,
    /// Buffers in GPU memory (`oxccl::DeviceBuffer`, on device local rank mod device count):
    /// collectives through CUDA IPC with reductions on the GPU. Rank 0 also prints the
    /// device's copy bandwidth (a device-to-device copy of the largest size), for comparison.
    #[arg(long)]
    device: bool,
    /// Rewrite each rank's input before every timed call (1), as a training step's freshly
    /// computed gradients are, and report the loop's time less that of the same writes alone.
    /// With the default (0) the input is written once, so out of place the peers read a send
    /// buffer that sits unchanged in their caches from one call to the next, as nccl-tests and
    /// Open MPI's benchmarks measure; a program's freshly written data has to move from the
    /// writer's cache. Host memory only.
    #[arg(long, default_value_t = 0)]
    fresh: u8,
}

fn bytes_arg(s: &str) -> Result<usize, String> {
    parse_bytes(s).ok_or_else(|| format!("'{s}' is not a size (like 8, 64K, 256M)"))
}

fn main() {
    oxccl::init_logging();
    let args = Args::parse();
    if let Some(path) = &args.refit {
        let code = match refit(path) {
            Ok(n) => {
                println!(
                    "# refitted {n} entr{} of {} from their samples",
                    if n == 1 { "y" } else { "ies" },
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("oxccl-bench: {e}");
                1
            }
        };
        std::process::exit(code);
    }
    let under_launcher = LaunchEnv::from_process();
    let code = match under_launcher {
        Ok(env) => match run_rank(&args, &env) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("oxccl-bench (rank {}): {e}", env.rank);
                1
            }
        },
        Err(e) if e.to_string().contains("no launcher environment") => {
            // Where the machine's cores sit, before the ranks start and after they end: on a
            // VM it can change between runs and explains a slow one (oxccl::probe).
            let before = placement();
            std::env::set_var(PLACEMENT_VAR, &before.0);
            if let Some(ns) = before.1 {
                std::env::set_var(ROUND_TRIP_VAR, format!("{ns:.0}"));
            }
            let spec = oxccl::launch::LaunchSpec {
                program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("oxccl-bench")),
                args: std::env::args_os().skip(1).collect(),
                nprocs: args.ranks.unwrap_or(2),
                nnodes: 1,
                node_rank: 0,
                master: None,
                tag_output: false,
                bind: args.bind_to,
            };
            let code = match oxccl::launch::launch(&spec) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("oxccl-bench: {e}");
                    2
                }
            };
            println!("# cache-line round trip after the run: {}", placement().0);
            code
        }
        Err(e) => {
            eprintln!("oxccl-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Where the launcher hands the ranks its cache-line probe: the figure as printed.
const PLACEMENT_VAR: &str = "OXCCL_BENCH_PLACEMENT";

/// ... and the slowest round trip in nanoseconds, which calibration records.
const ROUND_TRIP_VAR: &str = "OXCCL_BENCH_ROUND_TRIP_NS";

/// This machine's cache-line round trips ([`oxccl::probe::placement`], up to 8 CPUs from the
/// first, 3 ms each) as printed, and the slowest in nanoseconds.
fn placement() -> (String, Option<f64>) {
    match oxccl::probe::placement(8, std::time::Duration::from_millis(3)) {
        Ok(p) => (p.to_string(), p.slowest().map(|t| t.as_secs_f64() * 1e9)),
        Err(e) => (format!("not measured ({e})"), None),
    }
}

/// `--refit`: every entry with samples fitted again; returns how many.
fn refit(path: &std::path::Path) -> oxccl::Result<usize> {
    let mut file = oxccl::cost::TuningFile::load(path)?;
    let mut n = 0;
    for e in file.entries.iter_mut().filter(|e| !e.samples.is_empty()) {
        e.refit();
        n += 1;
    }
    file.save(path)?;
    Ok(n)
}

fn collectives(spec: &str) -> Result<Vec<Collective>, String> {
    if spec == "all" {
        return Ok(Collective::ALL.iter().copied().filter(|c| *c != Collective::Barrier).collect());
    }
    spec.split(',')
        .map(|c| match Collective::parse(c) {
            Some(Collective::Barrier) | None => Err(format!("unknown collective '{c}'")),
            Some(c) => Ok(c),
        })
        .collect()
}

fn run_rank(args: &Args, env: &LaunchEnv) -> oxccl::Result<i32> {
    let bad = |m: String| oxccl::Error::invalid_argument(m);
    let mut config = Config::from_env()?;
    if let Some(a) = &args.algo {
        config.algorithms = AlgoOverrides::parse(a)?;
    }
    if let Some(t) = &args.transport {
        config.transport = TransportKind::parse(t)?;
    }
    let dtype = DataType::parse(&args.dtype).ok_or_else(|| bad(format!("unknown data type '{}'", args.dtype)))?;
    let op = ReduceOp::parse(&args.op).ok_or_else(|| bad(format!("unknown op '{}'", args.op)))?;
    let colls = collectives(&args.collective).map_err(bad)?;
    if args.factor < 2 {
        return Err(bad("-f must be at least 2".into()));
    }
    if args.fresh != 0 && args.device {
        return Err(bad("--fresh rewrites host memory; it does not take --device".into()));
    }
    let comm = Communicator::from_launch_env(env, config)?;
    if let Some(path) = &args.calibrate {
        let t0 = Instant::now();
        let mut file = if path.exists() {
            oxccl::cost::TuningFile::load(path)?
        } else {
            oxccl::cost::TuningFile { oxccl_tuning: oxccl::cost::TUNING_VERSION, entries: Vec::new() }
        };
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        // The runs pooled with this one: this host's and processor's (an entry of the same
        // host name measured on another machine type is kept apart, as upsert keeps it).
        let cpu = oxccl::cost::cpu_model();
        let base = file
            .entries
            .iter()
            .find(|e| e.host == host && e.cpu == cpu && e.transport == comm.transport_name())
            .cloned();
        let mut entry = oxccl::cost::calibrate(&comm, base.as_ref())?;
        // The cache-line round trip the launcher probed before this run.
        if let Some(ns) = std::env::var(ROUND_TRIP_VAR).ok().and_then(|v| v.parse::<f64>().ok()) {
            entry.samples.round_trip.push([comm.size() as f64, ns]);
        }
        if let (true, Some(b)) = (args.average, &base) {
            entry.average_with(b, comm.size());
        }
        entry.measured = entry.describe_runs(if args.average {
            "oxccl-bench --calibrate --average"
        } else {
            "oxccl-bench --calibrate"
        });
        if comm.rank() == 0 {
            println!(
                "# calibrated {} over {} ranks in {:.1} s: alpha {:.2} us, gap {:.3} us, wake {:.2} us, {:.2} GB/s, copy {:.2} GB/s, f32 sum {:.2} GB/s",
                entry.transport,
                comm.size(),
                t0.elapsed().as_secs_f64(),
                entry.alpha_us,
                entry.gap_us,
                entry.wake_us,
                entry.bandwidth_gbs,
                entry.copy_gbs,
                entry.reduce_gbs.get("float.sum").copied().unwrap_or(0.0)
            );
            let runs = entry.runs.get(&comm.size().to_string()).copied().unwrap_or(1);
            file.upsert(entry);
            file.save(path)?;
            println!("# written to {} ({runs} run(s) averaged at {} ranks)", path.display(), comm.size());
            if let Ok(p) = std::env::var(PLACEMENT_VAR) {
                println!("# cache-line round trip before the run: {p}");
            }
        }
        return Ok(0);
    }
    if args.root >= comm.size() {
        return Err(bad(format!("root {} is not a rank of this world of {}", args.root, comm.size())));
    }
    let mut total_wrong = 0;
    for coll in colls {
        total_wrong += match dtype {
            DataType::I8 => bench::<i8>(&comm, args, coll, op)?,
            DataType::U8 => bench::<u8>(&comm, args, coll, op)?,
            DataType::I32 => bench::<i32>(&comm, args, coll, op)?,
            DataType::U32 => bench::<u32>(&comm, args, coll, op)?,
            DataType::I64 => bench::<i64>(&comm, args, coll, op)?,
            DataType::U64 => bench::<u64>(&comm, args, coll, op)?,
            DataType::F16 => bench::<f16>(&comm, args, coll, op)?,
            DataType::Bf16 => bench::<bf16>(&comm, args, coll, op)?,
            DataType::F32 => bench::<f32>(&comm, args, coll, op)?,
            DataType::F64 => bench::<f64>(&comm, args, coll, op)?,
        };
    }
    Ok(if total_wrong > 0 { 1 } else { 0 })
}

fn bus_factor(coll: Collective, p: usize) -> f64 {
    let p = p as f64;
    match coll {
        Collective::AllReduce => 2.0 * (p - 1.0) / p,
        Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => (p - 1.0) / p,
        _ => 1.0,
    }
}

/// Where the buffers live.
#[derive(Clone, Copy, PartialEq)]
enum Memory {
    Heap,
    /// Heap memory on transparent huge pages (`--hugepages 1`).
    HugeHeap,
    /// Shared buffers (`-R 1`).
    Shared,
    /// GPU memory (`--device`) of this device.
    Device(u32),
}

/// One buffer: plain heap memory, memory peers map (`-R 1`), or GPU memory with a host copy
/// to fill and check (`--device`).
enum Storage<T: CheckElem> {
    Heap(Vec<T>),
    Shared(oxccl::SharedBuffer<T>),
    Device(Vec<T>, DeviceBuffer<T>),
}

impl<T: CheckElem> Storage<T> {
    fn new(len: usize, memory: Memory) -> oxccl::Result<Storage<T>> {
        match memory {
            Memory::Shared => match oxccl::SharedBuffer::new(len) {
                Ok(b) => return Ok(Storage::Shared(b)),
                Err(e) => eprintln!("# shared buffer of {len} elements: {e}; using heap memory"),
            },
            Memory::Device(d) => return Ok(Storage::Device(vec![zero(); len], DeviceBuffer::new(len, d)?)),
            Memory::HugeHeap => {
                let mut v = vec![zero(); len];
                advise_huge_pages(&mut v);
                return Ok(Storage::Heap(v));
            }
            Memory::Heap => {}
        }
        Ok(Storage::Heap(vec![zero(); len]))
    }

    /// GPU memory: the host copy goes to the device.
    fn upload(&mut self) -> oxccl::Result<()> {
        match self {
            Storage::Device(host, dev) => dev.copy_from_host(host),
            _ => Ok(()),
        }
    }

    /// GPU memory: the device's bytes come back to the host copy.
    fn download(&mut self) -> oxccl::Result<()> {
        match self {
            Storage::Device(host, dev) => dev.copy_to_host(host),
            _ => Ok(()),
        }
    }

    fn device(&self) -> &DeviceBuffer<T> {
        match self {
            Storage::Device(_, d) => d,
            _ => unreachable!("device buffers only with --device"),
        }
    }

    fn device_mut(&mut self) -> &mut DeviceBuffer<T> {
        match self {
            Storage::Device(_, d) => d,
            _ => unreachable!("device buffers only with --device"),
        }
    }
}

impl<T: CheckElem> std::ops::Deref for Storage<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Storage::Heap(v) | Storage::Device(v, _) => v,
            Storage::Shared(b) => b,
        }
    }
}

impl<T: CheckElem> std::ops::DerefMut for Storage<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            Storage::Heap(v) | Storage::Device(v, _) => v,
            Storage::Shared(b) => b,
        }
    }
}

/// Buffers for one size of one collective.
struct Bufs<T: CheckElem> {
    send: Storage<T>,
    recv: Storage<T>,
    /// Elements of the size column (the full vector).
    total: usize,
}

fn zero<T: CheckElem>() -> T {
    T::from_i64(0)
}

impl<T: CheckElem> Bufs<T> {
    fn new(coll: Collective, bytes: usize, p: usize, memory: Memory) -> oxccl::Result<Bufs<T>> {
        let es = T::DTYPE.size();
        let mut total = bytes / es;
        let (send, recv) = match coll {
            Collective::AllGather => {
                total -= total % p;
                (total / p, total)
            }
            Collective::ReduceScatter => {
                total -= total % p;
                (total, total / p)
            }
            Collective::AllToAll => {
                total -= total % p;
                (total, total)
            }
            _ => (total, total),
        };
        Ok(Bufs { send: Storage::new(send, memory)?, recv: Storage::new(recv, memory)?, total })
    }

    fn upload(&mut self) -> oxccl::Result<()> {
        self.send.upload()?;
        self.recv.upload()
    }

    fn download(&mut self) -> oxccl::Result<()> {
        self.send.download()?;
        self.recv.download()
    }

    fn on_device(&self) -> bool {
        matches!(self.send, Storage::Device(..))
    }

    /// Memory the other ranks map (`-R 1`), so that a chosen mapped algorithm runs.
    fn mapped(&self) -> bool {
        matches!((&self.send, &self.recv), (Storage::Shared(_), Storage::Shared(_)))
    }
}

/// [`run_once`] on GPU memory.
fn run_once_device<T: CheckElem>(
    comm: &Communicator,
    coll: Collective,
    b: &mut Bufs<T>,
    op: ReduceOp,
    root: usize,
    in_place: bool,
) -> oxccl::Result<()> {
    let (send, recv) = (&mut b.send, &mut b.recv);
    match (coll, in_place) {
        (Collective::AllReduce, false) => comm.all_reduce_device_into(send.device(), recv.device_mut(), op),
        (Collective::AllReduce, true) => comm.all_reduce_device(recv.device_mut(), op),
        (Collective::AllGather, false) => comm.all_gather_device_into(send.device(), recv.device_mut()),
        (Collective::AllGather, true) => comm.all_gather_device(recv.device_mut()),
        (Collective::ReduceScatter, false) => comm.reduce_scatter_device_into(send.device(), recv.device_mut(), op),
        (Collective::ReduceScatter, true) => comm.reduce_scatter_device(send.device_mut(), op),
        (Collective::AllToAll, false) => comm.all_to_all_device_into(send.device(), recv.device_mut()),
        (Collective::AllToAll, true) => comm.all_to_all_device(recv.device_mut()),
        (Collective::Broadcast, false) => comm.broadcast_device_into(send.device(), recv.device_mut(), root),
        (Collective::Broadcast, true) => comm.broadcast_device(recv.device_mut(), root),
        (Collective::Reduce, false) => comm.reduce_device_into(send.device(), recv.device_mut(), op, root),
        (Collective::Reduce, true) => comm.reduce_device(recv.device_mut(), op, root),
        _ => unreachable!("not benchmarked"),
    }
}

fn run_once<T: CheckElem>(
    comm: &Communicator,
    coll: Collective,
    b: &mut Bufs<T>,
    op: ReduceOp,
    root: usize,
    in_place: bool,
) -> oxccl::Result<()> {
    if b.on_device() {
        return run_once_device(comm, coll, b, op, root, in_place);
    }
    let r = comm.rank();
    let n = b.send.len();
    match (coll, in_place) {
        (Collective::AllReduce, false) => comm.all_reduce_into(&b.send, &mut b.recv, op),
        (Collective::AllReduce, true) => comm.all_reduce(&mut b.recv, op),
        (Collective::AllGather, false) => comm.all_gather_into(&b.send, &mut b.recv),
        (Collective::AllGather, true) => comm.all_gather(&mut b.recv),
        (Collective::ReduceScatter, false) => comm.reduce_scatter_into(&b.send, &mut b.recv, op),
        (Collective::ReduceScatter, true) => comm.reduce_scatter(&mut b.send, op),
        (Collective::AllToAll, false) => comm.all_to_all_into(&b.send, &mut b.recv),
        (Collective::AllToAll, true) => comm.all_to_all(&mut b.recv),
        (Collective::Broadcast, false) => {
            comm.broadcast_into(&b.send[..if r == root { n } else { 0 }], &mut b.recv, root)
        }
        (Collective::Broadcast, true) => comm.broadcast(&mut b.recv, root),
        (Collective::Reduce, false) => {
            let len = if r == root { b.recv.len() } else { 0 };
            comm.reduce_into(&b.send, &mut b.recv[..len], op, root)
        }
        (Collective::Reduce, true) => comm.reduce(&mut b.recv, op, root),
        _ => unreachable!("not benchmarked"),
    }
}

/// Fills inputs with closed-form values for `coll`.
fn fill<T: CheckElem>(
    comm: &Communicator,
    coll: Collective,
    b: &mut Bufs<T>,
    op: ReduceOp,
    root: usize,
    in_place: bool,
) {
    let (r, p) = (comm.rank(), comm.size());
    b.recv.iter_mut().for_each(|x| *x = zero());
    match coll {
        Collective::AllReduce | Collective::Reduce => {
            let dst = if in_place { &mut b.recv } else { &mut b.send };
            check::fill_contribution(dst, r, op, 0);
        }
        Collective::ReduceScatter => check::fill_contribution(&mut b.send, r, op, 0),
        Collective::AllGather => {
            let per = b.total / p;
            if in_place {
                check::fill_pattern(&mut b.recv[r * per..(r + 1) * per], r, 0);
            } else {
                check::fill_pattern(&mut b.send, r, 0);
            }
        }
        Collective::AllToAll => {
            let per = b.total / p;
            let dst = if in_place { &mut b.recv } else { &mut b.send };
            for j in 0..p {
                check::fill_pattern(&mut dst[j * per..(j + 1) * per], r, j);
            }
        }
        Collective::Broadcast if r == root => {
            let dst = if in_place { &mut b.recv } else { &mut b.send };
            check::fill_pattern(dst, root, 0);
        }
        _ => {}
    }
}

fn count_wrong<T: CheckElem>(
    comm: &Communicator,
    coll: Collective,
    b: &Bufs<T>,
    op: ReduceOp,
    root: usize,
    in_place: bool,
) -> usize {
    let (r, p) = (comm.rank(), comm.size());
    let per = b.total / p.max(1);
    match coll {
        Collective::AllReduce => check::wrong_reduced(&b.recv, p, op, 0),
        Collective::Reduce if r == root => check::wrong_reduced(&b.recv, p, op, 0),
        Collective::Reduce => 0,
        Collective::ReduceScatter => {
            let out = if in_place { &b.send[r * per..(r + 1) * per] } else { &b.recv[..] };
            check::wrong_reduced(out, p, op, r * per)
        }
        Collective::AllGather => (0..p).map(|j| check::wrong_pattern(&b.recv[j * per..(j + 1) * per], j, 0)).sum(),
        Collective::AllToAll => (0..p).map(|j| check::wrong_pattern(&b.recv[j * per..(j + 1) * per], j, r)).sum(),
        Collective::Broadcast => check::wrong_pattern(&b.recv, root, 0),
        _ => 0,
    }
}

/// Times one size out of place and in place (this rank's mean per iteration) and counts this
/// rank's wrong elements when checking; `world_figures` makes them world-wide.
fn measure<T: CheckElem>(
    comm: &Communicator,
    args: &Args,
    coll: Collective,
    b: &mut Bufs<T>,
    op: ReduceOp,
) -> oxccl::Result<([f64; 2], [u64; 2])> {
    let mut times = [0f64; 2];
    let mut wrong = [0u64; 2];
    for (k, in_place) in [false, true].into_iter().enumerate() {
        fill(comm, coll, b, op, args.root, in_place);
        b.upload()?;
        // With `--fresh`, the warm-up rewrites the input before each call as the timed calls
        // do: the trials among them must see the input the timed calls see (single copy
        // below the threshold wins on input written once and loses on fresh input).
        let image = (args.fresh != 0).then(|| input_mut(coll, b, in_place).to_vec());
        let warm_call = |b: &mut Bufs<T>| {
            if let Some(image) = &image {
                input_mut(coll, b, in_place).copy_from_slice(image);
            }
            run_once(comm, coll, b, op, args.root, in_place)
        };
        for _ in 0..args.warmup {
            warm_call(b)?;
        }
        // Trial calls of candidate algorithms belong to the warm-up, not to the timed calls
        // (`Config::trial_calls`): every rank sees the same trials, so runs the same calls.
        let bytes = b.total * T::DTYPE.size();
        while comm.trials_pending(coll, bytes, T::DTYPE, op) {
            warm_call(b)?;
        }
        comm.barrier()?;
        times[k] = time_calls(comm, args, coll, b, op, in_place)?;
        if args.check != 0 {
            fill(comm, coll, b, op, args.root, in_place);
            b.upload()?;
            run_once(comm, coll, b, op, args.root, in_place)?;
            b.download()?;
            wrong[k] = count_wrong(comm, coll, b, op, args.root, in_place) as u64;
        }
    }
    Ok((times, wrong))
}

/// The input a call reads (the buffer `fill` writes): what `--fresh` rewrites.
fn input_mut<T: CheckElem>(coll: Collective, b: &mut Bufs<T>, in_place: bool) -> &mut [T] {
    match coll {
        Collective::ReduceScatter => &mut b.send,
        _ if in_place => &mut b.recv,
        _ => &mut b.send,
    }
}

/// The mean time of one of `args.iters` calls. With `--fresh`, the input is rewritten just
/// before each call (a copy from a saved image of it), and the mean time of the same copy
/// alone, measured after the calls, is taken off. The copy alone runs on lines already in
/// this rank's cache; before a call, part of them went to the peers that read them, and
/// winning them back is the cost of moving fresh data that a program pays, so it is counted.
fn time_calls<T: CheckElem>(
    comm: &Communicator,
    args: &Args,
    coll: Collective,
    b: &mut Bufs<T>,
    op: ReduceOp,
    in_place: bool,
) -> oxccl::Result<f64> {
    let image = (args.fresh != 0).then(|| input_mut(coll, b, in_place).to_vec());
    let t0 = Instant::now();
    for _ in 0..args.iters {
        if let Some(image) = &image {
            input_mut(coll, b, in_place).copy_from_slice(image);
        }
        run_once(comm, coll, b, op, args.root, in_place)?;
    }
    let mut secs = t0.elapsed().as_secs_f64();
    if let Some(image) = &image {
        let t0 = Instant::now();
        for _ in 0..args.iters {
            input_mut(coll, b, in_place).copy_from_slice(image);
            std::hint::black_box(input_mut(coll, b, in_place).as_ptr());
        }
        secs = (secs - t0.elapsed().as_secs_f64()).max(0.0);
    }
    Ok(secs / args.iters.max(1) as f64)
}

/// Every rank's figures from `measure`, one entry per run, made world-wide in one call: each
/// run's time is its slowest rank's, its wrong count the sum over ranks. Leaves the
/// communicator on the automatic choice, which these calls run under whatever algorithm the
/// runs forced: a forced `mapped` cannot reduce the bench's own heap-allocated figures.
fn world_figures(comm: &Communicator, local: &[([f64; 2], [u64; 2])]) -> oxccl::Result<Vec<([f64; 2], [u64; 2])>> {
    let mut times: Vec<f64> = local.iter().flat_map(|(t, _)| *t).collect();
    let mut wrong: Vec<u64> = local.iter().flat_map(|(_, w)| *w).collect();
    comm.set_algorithms("auto")?;
    comm.all_reduce(&mut times, ReduceOp::Max)?;
    comm.all_reduce(&mut wrong, ReduceOp::Sum)?;
    Ok(times.chunks_exact(2).zip(wrong.chunks_exact(2)).map(|(t, w)| ([t[0], t[1]], [w[0], w[1]])).collect())
}

/// Where this rank's buffers live, from the flags.
fn memory(comm: &Communicator, args: &Args) -> oxccl::Result<Memory> {
    if args.device {
        let n = oxccl_transport::cuda::driver()?.device_count().max(1);
        return Ok(Memory::Device((comm.local_rank() % n) as u32));
    }
    Ok(match (args.registered != 0, args.hugepages != 0) {
        (true, _) => Memory::Shared,
        (false, true) => Memory::HugeHeap,
        (false, false) => Memory::Heap,
    })
}

/// Asks the kernel to back the whole 2 MiB pages of `v` with transparent huge pages: advised
/// before the bench first writes them (a large `vec!` of zeros is fresh, untouched memory),
/// and collapsed at once where the kernel can (Linux 6.1 and later). A refusal is reported
/// once and the buffer stays as it is.
fn advise_huge_pages<T>(v: &mut [T]) {
    const HUGE: usize = 2 << 20;
    let start = (v.as_mut_ptr() as usize).next_multiple_of(HUGE);
    let end = (v.as_mut_ptr() as usize + std::mem::size_of_val(v)) / HUGE * HUGE;
    if end <= start {
        return;
    }
    static WARNED: std::sync::Once = std::sync::Once::new();
    for advice in [libc::MADV_HUGEPAGE, libc::MADV_COLLAPSE] {
        // SAFETY: [start, end) lies inside `v`, which this function borrows mutably; both
        // advices change how the pages are backed, never their contents.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) } != 0 {
            let e = std::io::Error::last_os_error();
            let name = if advice == libc::MADV_HUGEPAGE { "MADV_HUGEPAGE" } else { "MADV_COLLAPSE" };
            WARNED.call_once(|| eprintln!("# --hugepages: madvise {name}: {e}; some buffers stay on small pages"));
            if advice == libc::MADV_HUGEPAGE {
                return;
            }
        }
    }
}

/// Rank 0's device-to-device copy bandwidth at `bytes` (the reference for GPU collectives):
/// bytes copied per second, each read once and written once.
fn device_copy_bandwidth(ordinal: u32, bytes: usize) -> oxccl::Result<f64> {
    let src = DeviceBuffer::<u8>::new(bytes, ordinal)?;
    let mut dst = DeviceBuffer::<u8>::new(bytes, ordinal)?;
    let ctx = oxccl_transport::cuda::context(ordinal)?;
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let mut run = |n: usize| -> oxccl::Result<f64> {
        let t0 = Instant::now();
        for _ in 0..n {
            // SAFETY: two live device buffers of `bytes` bytes.
            unsafe { ctx.copy_async(dst.as_mut_ptr(), src.as_ptr(), bytes)? };
        }
        ctx.sync(deadline, "device copy")?;
        Ok(t0.elapsed().as_secs_f64() / n as f64)
    };
    run(3)?;
    let t = run(20)?;
    Ok(bytes as f64 / t / 1e9)
}

/// Between two sizes of a `--ranks` run on one host: the cache-line round trip again, taken
/// by rank 0 while the others wait in a barrier (asleep after their brief spin). Rank 0
/// prints it where it moved by more than half from `last` (the figure last printed), so a
/// log shows from which row on the cores sat elsewhere. A VM's host moves them within seconds
/// at times; the launcher's figures before and after the whole run miss that.
fn probe_between(comm: &Communicator, last: &mut Option<f64>) -> oxccl::Result<()> {
    let probed = oxccl::probe::placement_from_rank0(comm, std::time::Duration::from_micros(500))?;
    if let Some((p, ns)) = probed.and_then(|p| p.slowest().map(|t| (p, t.as_secs_f64() * 1e9))) {
        if last.is_none_or(|l| ns > 1.5 * l || ns < l / 1.5) {
            println!("# cache-line round trip from here on: {p}");
            *last = Some(ns);
        }
    }
    // The others wait for rank 0 here (a barrier, not a broadcast: an algorithm forced with
    // --algo would take a broadcast too).
    comm.barrier()
}

fn bench<T: CheckElem>(comm: &Communicator, args: &Args, coll: Collective, op: ReduceOp) -> oxccl::Result<usize> {
    let (r, p) = (comm.rank(), comm.size());
    let reduces = matches!(coll, Collective::AllReduce | Collective::ReduceScatter | Collective::Reduce);
    let root_col = |c: Collective| {
        if matches!(c, Collective::Broadcast | Collective::Reduce) {
            args.root as i64
        } else {
            -1
        }
    };
    if r == 0 {
        let forced = comm.config().algorithms.get(coll);
        let algo_label = if args.explain {
            "explain (every algorithm, measured and predicted)".to_string()
        } else if args.compare.is_empty() {
            forced.map(|a| a.name().to_string()).unwrap_or_else(|| "auto".into())
        } else {
            format!("compare {}", args.compare.join(","))
        };
        println!(
            "# oxccl-bench {}: {} ranks over {}, type {}, op {}, iters {}, warmup {}, check {}, algorithm {}, buffers {}, {}",
            coll,
            p,
            comm.transport_name(),
            T::DTYPE,
            if reduces { op.name() } else { "none" },
            args.iters,
            args.warmup,
            args.check,
            algo_label,
            match memory(comm, args)? {
                Memory::Heap => "heap".to_string(),
                Memory::HugeHeap => "heap on huge pages".to_string(),
                Memory::Shared => "shared (-R 1)".to_string(),
                Memory::Device(d) => format!("GPU memory (cuda:{d})"),
            } + if args.fresh != 0 { ", input rewritten before every call (--fresh)" } else { "" },
            // The launcher says where it bound this rank (oxccl::launch::Binding).
            match std::env::var("OXCCL_BOUND_CPUS") {
                Ok(cpus) => format!("rank 0 bound to CPU {cpus}"),
                Err(_) => "ranks unbound".to_string(),
            },
        );
        if let Ok(p) = std::env::var(PLACEMENT_VAR) {
            println!("# cache-line round trip before the run: {p}");
        }
        if let Memory::Device(d) = memory(comm, args)? {
            let bytes = args.max_bytes.clamp(1 << 20, 1 << 30);
            match device_copy_bandwidth(d, bytes) {
                Ok(bw) => println!(
                    "# device copy bandwidth (cuda:{d}, {bytes} B device to device): {bw:.1} GB/s copied, {:.1} GB/s \
                     read plus written",
                    2.0 * bw
                ),
                Err(e) => println!("# device copy bandwidth: {e}"),
            }
        }
        println!("#");
        println!("#                                                              out-of-place                       in-place          ");
        println!("#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong");
        println!("#        (B)    (elements)                               (us)  (GB/s)  (GB/s)            (us)  (GB/s)  (GB/s)       ");
    }
    let mut bus_sum = 0.0;
    let mut bus_n = 0usize;
    let mut wrong_total = 0usize;
    let mut bytes = args.min_bytes.max(1);
    // Compare mode: the algorithms this collective has (and `auto`), else one unnamed run.
    let variants: Vec<Option<String>> = if args.explain {
        std::iter::once("auto".to_string())
            .chain(
                oxccl::algorithms_of(coll)
                    .iter()
                    .filter(|a| oxccl::cost::applies(**a, comm.hosts(), comm.profile()))
                    // Forced, mapped needs buffers every rank can map: shared ones (-R 1), or
                    // ranks that are threads of one process.
                    .filter(|a| **a != Algorithm::Mapped || args.registered != 0 || p == 1)
                    .map(|a| a.name().to_string()),
            )
            .map(Some)
            .collect()
    } else if args.compare.is_empty() {
        vec![None]
    } else {
        args.compare
            .iter()
            .filter(|n| {
                n.as_str() == "auto" || Algorithm::parse(n).is_some_and(|a| oxccl::algorithms_of(coll).contains(&a))
            })
            .map(|n| Some(n.clone()))
            .collect()
    };
    // Compare mode measures every variant twice, interleaved, and keeps each one's best:
    // on a busy machine the first runs after a size change pay for fresh buffers.
    let comparing = args.explain || !args.compare.is_empty();
    let rounds = if comparing { 2 } else { 1 };
    // Launched with --ranks on this host: the launcher probed the cores' placement
    // (`placement`), and every size probes it again.
    let one_host = comm.hosts().iter().all(|&h| h == comm.hosts()[0]);
    let probing = one_host && p > 1 && !args.device && std::env::var(PLACEMENT_VAR).is_ok();
    let mut last_probe = std::env::var(ROUND_TRIP_VAR).ok().and_then(|v| v.parse::<f64>().ok());
    while bytes <= args.max_bytes {
        if probing {
            probe_between(comm, &mut last_probe)?;
        }
        let mut b = Bufs::<T>::new(coll, bytes, p, memory(comm, args)?)?;
        let size = b.total * T::DTYPE.size();
        // This rank's figures, round by round, variant by variant.
        let mut local = Vec::with_capacity(rounds * variants.len());
        for _ in 0..rounds {
            for variant in &variants {
                if let Some(name) = variant {
                    let spec = if name == "auto" { "auto".to_string() } else { format!("{coll}:{name}") };
                    comm.set_algorithms(&spec)?;
                }
                local.push(measure(comm, args, coll, &mut b, op)?);
            }
        }
        // Each variant keeps its best round (the slowest rank's time in that round).
        let figures = world_figures(comm, &local)?;
        // Compare mode stays on the automatic choice (its row is priced from it); a run of
        // one forced algorithm (`--algo`) gets it back for what follows.
        if let (false, Some(a)) = (comparing, &args.algo) {
            comm.set_algorithms(a)?;
        }
        let mut results = vec![([f64::INFINITY; 2], [0u64; 2]); variants.len()];
        for (i, (times, wrong)) in figures.into_iter().enumerate() {
            let best = &mut results[i % variants.len()];
            for k in 0..2 {
                best.0[k] = best.0[k].min(times[k]);
                best.1[k] = best.1[k].max(wrong[k]);
            }
        }
        // Device buffers on one host move through CUDA IPC (the mapped algorithm) unless one
        // is forced; the host model's choice is what stages them elsewhere.
        let (chosen, fallback, fallback_label) = if b.on_device() && one_host {
            (Algorithm::Mapped, Algorithm::Mapped, Algorithm::Mapped.to_string())
        } else {
            // What runs where buffers cannot be mapped, as the trials fixed it.
            let c = comm.choice_for(coll, size, T::DTYPE, op);
            (c.algo, c.fallback, c.fallback_label())
        };
        let priced = if args.explain {
            oxccl::select::candidates(coll, size, T::DTYPE, op, comm.hosts(), comm.profile(), comm.config())
        } else {
            Vec::new()
        };
        // The automatic row is priced as what it runs: on memory the ranks cannot map, the
        // fallback of a chosen mapped algorithm.
        let runs = if b.mapped() || b.on_device() { chosen } else { fallback };
        // Out of place as chosen, and the same algorithm and chunk size priced in place.
        let predicted = |name: &str| {
            let a = if name == "auto" { runs } else { Algorithm::parse(name)? };
            let c = priced.iter().find(|c| c.algo == a)?;
            let call =
                oxccl::cost::Call { chunk_bytes: c.chunk_bytes, ..oxccl::cost::Call::new(coll, size, T::DTYPE, op) };
            let in_place = oxccl::cost::predict(&call.with_in_place(true), a, comm.hosts(), comm.profile());
            Some((c.predicted.total() * 1e6, in_place.map_or(f64::NAN, |t| t.total() * 1e6)))
        };
        for (variant, (times, wrong)) in variants.iter().zip(results) {
            wrong_total += (wrong[0] + wrong[1]) as usize;
            if r != 0 {
                continue;
            }
            let mut line = format!(
                "{:>12}  {:>12}  {:>8}  {:>6}  {:>6}",
                size,
                b.total,
                T::DTYPE.name(),
                if reduces { op.name() } else { "none" },
                root_col(coll)
            );
            for k in 0..2 {
                let algbw = if times[k] > 0.0 { size as f64 / times[k] / 1e9 } else { 0.0 };
                let busbw = algbw * bus_factor(coll, p);
                bus_sum += busbw;
                bus_n += 1;
                let w = if args.check != 0 { wrong[k].to_string() } else { "N/A".into() };
                line.push_str(&format!("  {:>7.2}  {:>6.3}  {:>6.3}  {:>5}", times[k] * 1e6, algbw, busbw, w));
            }
            if let Some(name) = variant {
                if name == "auto" && fallback != chosen {
                    // What runs where some rank's buffers cannot be mapped (heap buffers).
                    line.push_str(&format!("  auto({chosen},fallback={fallback_label})"));
                } else if name == "auto" {
                    line.push_str(&format!("  auto({fallback_label})"));
                } else {
                    line.push_str(&format!("  {name}"));
                }
                if args.explain {
                    match predicted(name) {
                        Some((us, in_place)) => line.push_str(&format!("  predicted {us:.2} in-place {in_place:.2}")),
                        None => line.push_str("  predicted -"),
                    }
                }
            }
            println!("{line}");
        }
        // Like nccl-tests, multiply by the factor; unlike it, end on the maximum itself so
        // `-e` is always measured.
        bytes = match bytes.checked_mul(args.factor) {
            Some(n) if n > args.max_bytes && bytes < args.max_bytes => args.max_bytes,
            Some(n) => n,
            None => break,
        };
    }
    if r == 0 {
        println!("# Out of bounds values : {} {}", wrong_total, if wrong_total == 0 { "OK" } else { "FAILED" });
        println!("# Avg bus bandwidth    : {:.4}", if bus_n > 0 { bus_sum / bus_n as f64 } else { 0.0 });
        println!("#");
    }
    Ok(wrong_total)
}
