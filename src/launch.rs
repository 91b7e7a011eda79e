//! Starting and supervising the ranks of one host: what `oxrun` does, and what
//! `oxccl-bench --ranks N` does when no launcher started it.
//!
//! The launcher hosts the rendezvous store itself (on node 0 of a multi-host world) and
//! starts each rank with `OXCCL_RANK`, `OXCCL_WORLD_SIZE`, `OXCCL_LOCAL_RANK`,
//! `OXCCL_LOCAL_WORLD_SIZE`, `OXCCL_ADDR`, `OXCCL_SECRET` and `OXCCL_STORE_HOST=launcher`
//! (and `OXCCL_BOUND_CPUS`, the CPUs it bound the rank to, where it bound it).
//! Ranks die with the launcher (`PR_SET_PDEATHSIG`). When a rank exits non-zero or is
//! killed, the launcher says which rank and how, gives the others up to
//! `OXRUN_FAILURE_GRACE_MS` (default 3000) to report the lost peer and exit on their own,
//! stops those still running, and exits non-zero.
//!
//! With [`Binding::Core`] (or [`Binding::Auto`] where every rank can have a core of its
//! own) each rank is bound to one core of those the launcher may run on, as `mpirun` binds
//! by default: ranks keep their caches and, on a host of several packages, their memory
//! node. (On the 2-vCPU VM of this project it made no difference: 2-rank all-reduce and
//! all-gather at 256 KiB and 16 MiB over TCP and shared memory, six runs each way, medians
//! within 7%.) Where ranks outnumber the cores, [`Binding::Auto`] deals them out round
//! robin, rank i on core i mod cores: left to the scheduler, which pairs of ranks share a
//! core changes from one phase of a run to the next, and with it the time of every call.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use oxccl_transport::auth::random_bytes;

use crate::bootstrap::tcp_store::TcpStoreServer;
use crate::bootstrap::unique_id::{hex, parse_secret};
use crate::error::{Error, Result};

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The program every rank runs.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Ranks on this host.
    pub nprocs: usize,
    /// Hosts in the world (each runs its own launcher).
    pub nnodes: usize,
    /// This host's index, `0..nnodes`.
    pub node_rank: usize,
    /// `HOST:PORT` of node 0's store, required when `nnodes > 1`.
    pub master: Option<String>,
    /// Prefix every output line with `[rank]`.
    pub tag_output: bool,
    /// Where the ranks may run.
    pub bind: Binding,
}

/// How a launcher places its ranks on this host's cores (`oxrun --bind-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binding {
    /// Wherever the scheduler puts them (what `torchrun` does).
    #[default]
    None,
    /// Each rank on a core of its own (every hardware thread of it), cores in order of
    /// package and core id; an error where ranks outnumber the cores the launcher may use.
    Core,
    /// [`Binding::Core`] where every rank can have a core of its own; where ranks outnumber
    /// the cores, rank i on core i mod cores (round robin).
    ///
    /// Why bind ranks that share cores: left to the scheduler, which ranks share a core
    /// moves with every migration, and an exchange between two ranks on one core costs a
    /// context switch per hand-over where one between cores costs a cache-line transfer.
    /// On the 2-vCPU development VM, 4 ranks over shared memory, the four core collectives
    /// at every power of 4 from 16 B to 4 MiB (`oxccl-bench --ranks 4 -b 16 -e 4M -n 50`,
    /// nine runs each way, alternated): the calls of up to 4 KiB took 8-21 us unbound, from
    /// run to run and size to size, and 7.4-10 us bound; geometric mean of the 80 times
    /// (out of place and in place) 0.77x unbound. 3 ranks 0.97x, 8 ranks 0.96x; over TCP
    /// 0.98-0.99x. (Blocks, ranks 0-1 on one core and 2-3 on the other, did 0.72x at 4 ranks
    /// but 1.10x at 3, where two of the three ranks shared one core.)
    Auto,
}

/// `none`, `core` or `auto`, as the launchers' `--bind-to` takes it.
impl std::str::FromStr for Binding {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Binding, String> {
        Binding::parse(s).ok_or_else(|| format!("'{s}': expected none, core or auto"))
    }
}

impl Binding {
    /// Parses `none`, `core` or `auto`.
    pub fn parse(s: &str) -> Option<Binding> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Binding::None),
            "core" => Some(Binding::Core),
            "auto" => Some(Binding::Auto),
            _ => None,
        }
    }

    /// The CPUs of each of `nprocs` local ranks, from the host's `cores` (each a list of
    /// CPU numbers, as [`usable_cores`] gives them); `None` leaves the ranks unbound.
    pub fn plan(self, nprocs: usize, cores: &[Vec<usize>]) -> Result<Option<Vec<Vec<usize>>>> {
        match self {
            Binding::None => Ok(None),
            // No core known (no affinity mask to read): nothing to bind to.
            Binding::Auto if cores.is_empty() => Ok(None),
            // Round robin: a core each where they fit, core i mod cores where they do not.
            Binding::Auto => Ok(Some((0..nprocs).map(|i| cores[i % cores.len()].clone()).collect())),
            Binding::Core if nprocs > cores.len() => Err(Error::invalid_argument(format!(
                "--bind-to core: {nprocs} ranks but only {} cores here (use --bind-to none or auto)",
                cores.len()
            ))),
            Binding::Core => Ok(Some(cores[..nprocs].to_vec())),
        }
    }
}

/// The cores this process may run on, each a list of its CPU numbers (hardware threads),
/// ordered by package and core id; a CPU whose topology the kernel does not give counts as
/// a core of its own.
pub fn usable_cores() -> Result<Vec<Vec<usize>>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| Error::io("reading this process's CPU affinity", e.into()))?;
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect();
    let topo = |cpu: usize, what: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{what}")).ok()?.trim().parse().ok()
    };
    Ok(group_cores(cpus.into_iter().map(|c| {
        let id = match (topo(c, "physical_package_id"), topo(c, "core_id")) {
            (Some(p), Some(k)) => (p, k, 0),
            // Unknown: its own core, after the known ones.
            _ => (u64::MAX, u64::MAX, c),
        };
        (id, c)
    })))
}

/// CPUs keyed by (package, core, tie) grouped into cores, in key order.
fn group_cores(cpus: impl Iterator<Item = ((u64, u64, usize), usize)>) -> Vec<Vec<usize>> {
    let mut by_core: std::collections::BTreeMap<(u64, u64, usize), Vec<usize>> = Default::default();
    for (key, cpu) in cpus {
        by_core.entry(key).or_default().push(cpu);
    }
    by_core
        .into_values()
        .map(|mut v| {
            v.sort_unstable();
            v
        })
        .collect()
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::SeqCst);
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => {
            let name =
                nix::sys::signal::Signal::try_from(s).map(|s| s.as_str().to_string()).unwrap_or_else(|_| "?".into());
            format!("was killed by signal {s} ({name})")
        }
        _ => "ended".into(),
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(0), _) => 1,
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

fn terminate(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: plain kill(2) on the process group of a child we started and have not
            // reaped (each rank leads its own group, so its own children go too).
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGTERM) };
        }
    }
    let grace = Instant::now() + Duration::from_secs(3);
    while Instant::now() < grace && children.iter_mut().any(|(_, c)| matches!(c.try_wait(), Ok(None))) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: as above.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            let _ = c.wait();
        } else {
            // The rank is gone; anything it left running in its group goes with it.
            // SAFETY: as above; a group with no members makes kill fail harmlessly.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
        }
    }
}

fn pump(rank: usize, input: impl std::io::Read + Send + 'static, to_stderr: bool) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(input).lines().map_while(|l| l.ok()) {
            if to_stderr {
                let _ = writeln!(std::io::stderr().lock(), "[{rank}] {line}");
            } else {
                let _ = writeln!(std::io::stdout().lock(), "[{rank}] {line}");
            }
        }
    })
}

/// Starts this host's ranks and supervises them. Returns the exit code for the launcher:
/// 0 when every rank exits 0.
pub fn launch(spec: &LaunchSpec) -> Result<i32> {
    if spec.nprocs == 0 || spec.nnodes == 0 || spec.node_rank >= spec.nnodes {
        return Err(Error::invalid_argument(format!(
            "need at least one rank and a node rank below the node count (got -n {}, --nnodes {}, --node-rank {})",
            spec.nprocs, spec.nnodes, spec.node_rank
        )));
    }
    let world = spec.nprocs * spec.nnodes;
    let secret = match std::env::var("OXCCL_SECRET").ok().filter(|s| !s.is_empty()) {
        Some(s) => parse_secret(&s).ok_or_else(|| Error::invalid_argument("OXCCL_SECRET is not 32 hex digits"))?,
        None if spec.nnodes > 1 => {
            return Err(Error::invalid_argument(
                "a multi-host launch needs the same OXCCL_SECRET on every host \
                 (for example: export OXCCL_SECRET=$(openssl rand -hex 16))",
            ))
        }
        None => random_bytes()?,
    };
    let (server, addr) = if spec.nnodes == 1 {
        let s = TcpStoreServer::start("127.0.0.1:0".parse().expect("valid address"), secret)?;
        let a = s.addr();
        (Some(s), a.to_string())
    } else {
        let master = spec
            .master
            .clone()
            .ok_or_else(|| Error::invalid_argument("--nnodes > 1 needs --master HOST:PORT (node 0's address)"))?;
        if spec.node_rank == 0 {
            let port = master
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .ok_or_else(|| Error::invalid_argument(format!("--master '{master}' is not HOST:PORT")))?;
            (Some(TcpStoreServer::start(SocketAddr::from(([0, 0, 0, 0], port)), secret)?), master)
        } else {
            (None, master)
        }
    };

    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }

    let placement = match spec.bind {
        Binding::None => None,
        b => b.plan(spec.nprocs, &usable_cores()?)?,
    };
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(spec.nprocs);
    let mut pumps = Vec::new();
    for local in 0..spec.nprocs {
        let rank = spec.node_rank * spec.nprocs + local;
        let mut cmd = Command::new(&spec.program);
        cmd.args(&spec.args)
            .env("OXCCL_RANK", rank.to_string())
            .env("OXCCL_WORLD_SIZE", world.to_string())
            .env("OXCCL_LOCAL_RANK", local.to_string())
            .env("OXCCL_LOCAL_WORLD_SIZE", spec.nprocs.to_string())
            .env("OXCCL_ADDR", &addr)
            .env("OXCCL_SECRET", hex(&secret))
            .env("OXCCL_STORE_HOST", "launcher");
        // Another launcher's variables would contradict ours.
        for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID"] {
            cmd.env_remove(v);
        }
        if spec.tag_output {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        // Built here: the child may not allocate between fork and exec.
        let cpus = match &placement {
            Some(p) => {
                let mut set = nix::sched::CpuSet::new();
                for &c in &p[local] {
                    set.set(c).map_err(|e| Error::io(format!("binding rank {rank} to CPU {c}"), e.into()))?;
                }
                cmd.env("OXCCL_BOUND_CPUS", p[local].iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","));
                Some(set)
            }
            None => None,
        };
        // SAFETY: the closure runs in the forked child before exec and only calls setpgid,
        // prctl and sched_setaffinity, which are async-signal-safe system calls; the CPU set
        // was built before the fork.
        unsafe {
            cmd.pre_exec(move || {
                // Its own process group, so stopping a rank stops what it started too.
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(set) = &cpus {
                    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set)?;
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                terminate(&mut children);
                return Err(Error::io(format!("starting rank {rank}: {}", spec.program.display()), e));
            }
        };
        if spec.tag_output {
            if let Some(o) = child.stdout.take() {
                pumps.push(pump(rank, o, false));
            }
            if let Some(e) = child.stderr.take() {
                pumps.push(pump(rank, e, true));
            }
        }
        children.push((rank, child));
    }

    let mut running = children.len();
    let mut done = vec![false; children.len()];
    let code = loop {
        let sig = SIGNALLED.load(Ordering::SeqCst);
        if sig != 0 {
            eprintln!("oxrun: received signal {sig}; stopping all ranks");
            terminate(&mut children);
            break 128 + sig;
        }
        let mut failed = None;
        for (i, (rank, c)) in children.iter_mut().enumerate() {
            if done[i] {
                continue;
            }
            match c.try_wait() {
                Ok(Some(st)) => {
                    done[i] = true;
                    running -= 1;
                    if !st.success() {
                        failed = Some((*rank, st));
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => return Err(Error::io(format!("waiting for rank {rank}"), e)),
            }
        }
        if let Some((rank, st)) = failed {
            // The others learn of the failure themselves (an oxccl rank reports the lost peer
            // within 2 s): give them time to say so and exit before they are stopped.
            let grace = std::env::var("OXRUN_FAILURE_GRACE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
            eprintln!("oxrun: rank {rank} {}; stopping the other ranks within {grace} ms", describe(st));
            let until = Instant::now() + Duration::from_millis(grace);
            while Instant::now() < until
                && children.iter_mut().enumerate().any(|(i, (_, c))| !done[i] && matches!(c.try_wait(), Ok(None)))
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            terminate(&mut children);
            break exit_code(st);
        }
        if running == 0 {
            break 0;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(server);
    // The pipes close when the ranks are gone; let their last lines through.
    for p in pumps {
        let _ = p.join();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores(n: usize) -> Vec<Vec<usize>> {
        (0..n).map(|c| vec![c, c + n]).collect()
    }

    #[test]
    fn binding_plans_a_core_per_rank_where_they_fit() {
        assert_eq!(Binding::None.plan(2, &cores(4)).unwrap(), None);
        assert_eq!(Binding::Auto.plan(2, &cores(4)).unwrap(), Some(vec![vec![0, 4], vec![1, 5]]));
        assert_eq!(Binding::Core.plan(4, &cores(4)).unwrap(), Some(cores(4)));
        // Ranks that must share cores are dealt out round robin, or refused when a core each
        // was asked for.
        let over = Binding::Auto.plan(5, &cores(2)).unwrap().unwrap();
        assert_eq!(over, vec![vec![0, 2], vec![1, 3], vec![0, 2], vec![1, 3], vec![0, 2]]);
        assert_eq!(Binding::Auto.plan(3, &[]).unwrap(), None);
        let e = Binding::Core.plan(5, &cores(4)).unwrap_err().to_string();
        assert!(e.contains("5 ranks but only 4 cores"), "{e}");
        assert_eq!(Binding::parse("CORE"), Some(Binding::Core));
        assert_eq!(Binding::parse("socket"), None);
        assert_eq!("auto".parse::<Binding>(), Ok(Binding::Auto));
        assert!("socket".parse::<Binding>().unwrap_err().contains("expected none, core or auto"));
    }

    #[test]
    fn hardware_threads_group_into_cores_in_package_order() {
        // Two packages of two cores, two threads each, numbered as Linux numbers Intel's:
        // first threads 0-3, their siblings 4-7. One CPU without topology comes last.
        let key = |cpu: usize| ((cpu % 4 / 2) as u64, (cpu % 2) as u64, 0);
        let mut cpus: Vec<_> = (0..8).map(|c| (key(c), c)).collect();
        cpus.push(((u64::MAX, u64::MAX, 9), 9));
        assert_eq!(group_cores(cpus.into_iter()), vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7], vec![9]]);
    }

    #[test]
    fn this_process_has_usable_cores() {
        let cores = usable_cores().unwrap();
        let mut cpus: Vec<usize> = cores.iter().flatten().copied().collect();
        let n = cpus.len();
        cpus.sort_unstable();
        cpus.dedup();
        assert_eq!(cpus.len(), n, "a CPU in two cores: {cores:?}");
        // A cgroup quota may lower what the standard library counts, never raise it.
        assert!(n >= std::thread::available_parallelism().unwrap().get(), "{cores:?}");
        assert!(cores.iter().all(|c| !c.is_empty()));
    }
}
