//! How far apart this machine's CPUs are: the round trip of one cache line between two of
//! them, the figure that tells a benchmark run on a virtual machine where its cores sit.
//!
//! On a VM the host decides which physical cores the virtual CPUs run on, and may change its
//! mind while a job runs. On this project's development VM (two vCPUs of an AMD EPYC) a line
//! went back and forth in 55-80 ns for most of the time and in 320-360 ns for stretches of
//! minutes, when the two vCPUs sat on core complexes that share no cache; every
//! shared-memory or loopback-TCP transfer then slowed, up to 5x where a sender writes lines
//! its receiver holds. `oxccl-bench` prints this figure before and after each run and between
//! sizes where it moved, so a slow run says which of the two it ran in; calibration probes it
//! between sizes and times again what it timed with the cores far apart.
//!
//! ```
//! # fn main() -> oxccl::Result<()> {
//! use std::time::Duration;
//! let cpus = oxccl::probe::allowed_cpus();
//! if cpus.len() >= 2 {
//!     let t = oxccl::probe::line_round_trip(cpus[0], cpus[1], Duration::from_millis(2))?;
//!     assert!(t > Duration::ZERO);
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Round trips per timed batch: long enough to swamp the clock's cost, short enough
/// (20-70 us) that most batches run without a preemption.
const BATCH: u64 = 256;

/// At least this many batches are timed, whatever the budget.
const MIN_BATCHES: u32 = 4;

/// How long either side waits for the other before the probe gives up (a CPU that is busy
/// with something else, or one the process may not run on after all).
const PATIENCE: Duration = Duration::from_millis(250);

/// One cache line the two sides hand back and forth.
#[repr(align(128))]
struct Line(AtomicU64);

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => Vec::new(),
    }
}

/// The CPUs this process could be bound to: every online CPU its cpuset (cgroup) permits,
/// whatever narrower mask it runs under now. A rank bound to one CPU (`oxrun --bind-to`)
/// still probes the machine's CPUs from it: where the vCPUs sit is a property of the
/// machine, and the probe's threads pin themselves, not the rank.
///
/// Found by asking the kernel: a scratch thread sets its mask to every CPU, which the kernel
/// narrows to those the cpuset permits, and reads it back. Falls back to [`allowed_cpus`].
pub fn machine_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    let widest = std::thread::scope(|s| {
        s.spawn(|| -> Option<Vec<usize>> {
            let mut all = CpuSet::new();
            for c in 0..CpuSet::count() {
                all.set(c).ok()?;
            }
            let me = nix::unistd::Pid::from_raw(0);
            sched_setaffinity(me, &all).ok()?;
            let set = sched_getaffinity(me).ok()?;
            Some((0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect())
        })
        .join()
        .ok()
        .flatten()
    });
    match widest {
        Some(cpus) if !cpus.is_empty() => cpus,
        _ => allowed_cpus(),
    }
}

fn pin(cpu: usize) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).map_err(|e| Error::invalid_argument(format!("CPU {cpu}: {e}")))?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| Error::invalid_argument(format!("cannot run on CPU {cpu}: {e}")))
}

/// What the line holds once it holds `want` or [`STOP`]; `None` if `PATIENCE` passed first.
fn await_value(line: &Line, want: u64) -> Option<u64> {
    let mut spins = 0u32;
    let mut since: Option<Instant> = None;
    loop {
        let v = line.0.load(Ordering::Acquire);
        if v == want || v == STOP {
            return Some(v);
        }
        spins += 1;
        // The clock only now and then: reading it costs more than a round trip.
        if spins.is_multiple_of(4096) && since.get_or_insert_with(Instant::now).elapsed() > PATIENCE {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// Tells the echoing side to return.
const STOP: u64 = u64::MAX;

/// The time one cache line takes to go from CPU `a` to CPU `b` and back: the fastest batch's
/// mean over batches of round trips timed for about `budget` (at least four batches).
///
/// Two threads, pinned to `a` and `b`, take turns writing a counter the other waits for.
/// The fastest batch stands for the machine rather than for whatever else ran meanwhile.
/// An error if either CPU cannot be used or the other side stops answering for 250 ms (its
/// CPU busy with other work).
pub fn line_round_trip(a: usize, b: usize, budget: Duration) -> Result<Duration> {
    if a == b {
        return Err(Error::invalid_argument(format!("a round trip needs two CPUs, not {a} twice")));
    }
    let line = Line(AtomicU64::new(0));
    let stalled = |who: usize| Error::timeout(format!("cache-line probe: CPU {who} did not answer"), PATIENCE);
    std::thread::scope(|s| {
        let line = &line;
        let echo = s.spawn(move || -> Result<()> {
            pin(b)?;
            // Answers 2k + 1 with 2k + 2 until told to stop or left waiting.
            let mut next = 1u64;
            loop {
                match await_value(line, next) {
                    None => return Err(stalled(a)),
                    Some(STOP) => return Ok(()),
                    Some(_) => line.0.store(next + 1, Ordering::Release),
                }
                next += 2;
            }
        });
        // Both sides on threads of their own: pinning the caller would narrow its mask for good.
        let run = s.spawn(move || -> Result<Duration> {
            pin(a)?;
            let start = Instant::now();
            let mut best = Duration::MAX;
            let (mut batches, mut v) = (0u32, 0u64);
            while batches < MIN_BATCHES || start.elapsed() < budget {
                let t0 = Instant::now();
                for _ in 0..BATCH {
                    line.0.store(v + 1, Ordering::Release);
                    if await_value(line, v + 2).is_none() {
                        return Err(stalled(b));
                    }
                    v += 2;
                }
                best = best.min(t0.elapsed() / BATCH as u32);
                batches += 1;
            }
            Ok(best)
        });
        let r = run.join().unwrap_or_else(|_| Err(Error::internal("cache-line probe thread panicked")));
        line.0.store(STOP, Ordering::Release);
        // The echo's own error first: where it could not pin, the other side only saw silence.
        echo.join().unwrap_or_else(|_| Err(Error::internal("cache-line probe thread panicked")))?;
        r
    })
}

/// What [`placement`] measured: the round trip from the first allowed CPU to each other one
/// it probed.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    /// The CPU every round trip starts from.
    pub from: usize,
    /// `(cpu, round trip)` for each other CPU probed.
    pub to: Vec<(usize, Duration)>,
}

impl Placement {
    /// The slowest round trip probed (`None` with fewer than two CPUs).
    pub fn slowest(&self) -> Option<Duration> {
        self.to.iter().map(|&(_, t)| t).max()
    }
}

impl std::fmt::Display for Placement {
    /// `CPUs 0-1 68 ns`; with more CPUs, `CPU 0 to 1-7 60-340 ns`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = |t: Duration| t.as_secs_f64() * 1e9;
        match self.to.as_slice() {
            [] => write!(f, "one CPU"),
            [(c, t)] => write!(f, "CPUs {}-{} {:.0} ns", self.from, c, ns(*t)),
            to => {
                let lo = to.iter().map(|&(_, t)| t).min().unwrap_or_default();
                let hi = to.iter().map(|&(_, t)| t).max().unwrap_or_default();
                let (first, last) = (to[0].0, to[to.len() - 1].0);
                write!(f, "CPU {} to {first}-{last} {:.0}-{:.0} ns", self.from, ns(lo), ns(hi))
            }
        }
    }
}

/// The cache-line round trip from the first CPU of the machine ([`machine_cpus`]: those this
/// process could be bound to, not only those its current mask allows) to each of up to
/// `max_peers` others (spread over them), about `budget` each.
pub fn placement(max_peers: usize, budget: Duration) -> Result<Placement> {
    let cpus = machine_cpus();
    let Some((&from, rest)) = cpus.split_first() else {
        return Ok(Placement { from: 0, to: Vec::new() });
    };
    let take = rest.len().min(max_peers);
    let mut to = Vec::with_capacity(take);
    for i in 0..take {
        // Evenly spaced over the others, so a wide machine's far sockets are among them.
        let cpu = rest[i * rest.len() / take];
        to.push((cpu, line_round_trip(from, cpu, budget)?));
    }
    Ok(Placement { from, to })
}

/// The placement probed from inside a world, between two steps of a benchmark or a
/// calibration: every rank enters a barrier, then rank 0 waits `wait` (the others past their
/// brief spin, asleep, so that they do not compete with the probe's threads) and probes up to
/// 8 CPUs for 0.5 ms each. Rank 0 gets the placement (`None` where the probe failed); the
/// other ranks `None`, and return at once: the caller decides how they wait for rank 0.
/// Collective: every rank must call it.
pub fn placement_from_rank0(comm: &crate::Communicator, wait: Duration) -> Result<Option<Placement>> {
    comm.barrier()?;
    if comm.rank() != 0 {
        return Ok(None);
    }
    std::thread::sleep(wait);
    Ok(placement(8, Duration::from_micros(500)).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_timed_between_two_allowed_cpus() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "this process may run on no CPU");
        if cpus.len() < 2 {
            // One CPU: the round trip is refused with an error, not a hang.
            assert!(line_round_trip(cpus[0], cpus[0], Duration::from_millis(1)).is_err());
            return;
        }
        let t = line_round_trip(cpus[0], cpus[1], Duration::from_millis(2)).expect("probe");
        // The probe pins threads of its own, never the caller.
        assert_eq!(allowed_cpus(), cpus);
        // A round trip is two cache-line transfers: more than a nanosecond, and far less
        // than the probe's patience even on an oversubscribed machine (the fastest batch).
        assert!(t > Duration::from_nanos(1) && t < PATIENCE, "{t:?}");
        let p = placement(4, Duration::from_millis(1)).expect("placement");
        let machine = machine_cpus();
        assert!(cpus.iter().all(|c| machine.contains(c)), "{cpus:?} not within {machine:?}");
        assert_eq!(p.from, machine[0]);
        assert_eq!(p.to.len(), (machine.len() - 1).min(4));
        assert!(p.to.iter().all(|&(c, _)| c != p.from && machine.contains(&c)));
        assert!(p.to_string().starts_with("CPU"), "{p}");
    }

    #[test]
    fn a_caller_bound_to_one_cpu_still_probes_the_machine() {
        // As a rank `oxrun --bind-to core` bound: the probe between benchmark sizes, and
        // calibration's, run there and must still see the other CPUs.
        let machine = machine_cpus();
        if machine.len() < 2 {
            return;
        }
        let seen = std::thread::scope(|s| {
            s.spawn(|| {
                pin(machine[1]).expect("pin");
                assert_eq!(allowed_cpus(), vec![machine[1]]);
                let p = placement(1, Duration::from_millis(1)).expect("placement");
                // The caller's own mask is left as it was.
                assert_eq!(allowed_cpus(), vec![machine[1]]);
                (machine_cpus(), p)
            })
            .join()
            .expect("bound thread")
        });
        assert_eq!(seen.0, machine);
        assert_eq!(seen.1.from, machine[0]);
        assert_eq!(seen.1.to.len(), 1);
        assert!(seen.1.slowest().is_some_and(|t| t > Duration::ZERO));
    }

    #[test]
    fn a_cpu_outside_the_mask_is_an_error() {
        let cpus = allowed_cpus();
        let machine = machine_cpus();
        let outside = (0..nix::sched::CpuSet::count()).find(|c| !machine.contains(c));
        if let (Some(&a), Some(b)) = (cpus.first(), outside) {
            let e = line_round_trip(a, b, Duration::from_millis(1)).expect_err("CPU outside the mask");
            assert!(e.to_string().contains(&format!("CPU {b}")), "{e}");
        }
        assert!(line_round_trip(0, 0, Duration::from_millis(1)).is_err());
    }

    #[test]
    fn placement_reads_as_a_range() {
        let ns = Duration::from_nanos;
        let one = Placement { from: 0, to: vec![(1, ns(68))] };
        assert_eq!(one.to_string(), "CPUs 0-1 68 ns");
        let many = Placement { from: 0, to: vec![(1, ns(60)), (4, ns(340)), (7, ns(120))] };
        assert_eq!(many.to_string(), "CPU 0 to 1-7 60-340 ns");
        assert_eq!(many.slowest(), Some(ns(340)));
        assert_eq!(Placement { from: 3, to: vec![] }.to_string(), "one CPU");
    }
}
