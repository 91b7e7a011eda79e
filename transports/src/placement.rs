//! [`CpuBoard`]: keeps the ranks of a host off each other's CPUs where each has one.
//!
//! With a core for every rank, two ranks on one CPU are the scheduler's accident: a wake-up
//! placed one beside the other. A waiter that spins and yields, as the shared-memory and TCP
//! waiters do before they sleep, keeps both runnable there while another CPU idles, until the
//! load balancer acts tens of milliseconds later. On the 2-vCPU development VM that held whole
//! 2000-call runs of 2-rank all-reduces of 4 KiB at 8.5 us instead of 1.0 over shared memory
//! (in 4 of 15 unbound runs), and at 16-19 us instead of 7-12 over loopback TCP.
//!
//! So each rank publishes, in memory every rank of the host maps, the CPU it ran on when it
//! last waited. A waiter that finds the peer it waits for on its own CPU moves itself to a
//! CPU of its affinity mask that no rank of the host uses, and at once gives itself its own
//! mask back: the thread stays where it was moved, and keeps every CPU its caller allowed.
//! Of the free CPUs it takes one on a core no rank uses, then one that shares its last-level
//! cache, then one in its package (`pick_cpu`): a rank moved to another socket would leave
//! its memory behind.
//! It publishes the CPU it moves to before it moves: the peer runs as soon as this thread
//! leaves the CPU (on a VM the target CPU can take tens of microseconds to wake), and had it
//! read the old figure it would move onto the same free CPU (published after the move, both
//! ranks of a pair moved together, back and forth every millisecond: 118 moves in one run).
//! A rank moves at most once a millisecond. Where ranks outnumber cores, sharing is no
//! accident, and the transports build no board.
//!
//! The cells are advice, read and written with relaxed atomics: no message's delivery rests
//! on them (a stale figure costs a needless move or a few more microseconds sharing a CPU),
//! so unlike the FIFO and the doorbell they need no `loom` model.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::error::{Error, Result};
use crate::shm::segment::Segment;
use crate::shm::sync::{AtomicU32, Ordering};
use crate::store::Store;

/// The least time between two moves of a rank.
pub(crate) const MOVE_INTERVAL: Duration = Duration::from_millis(1);

/// One rank's published CPU, plus one (0: not known yet), on a cache line of its own.
pub(crate) type CpuCell = CachePadded<AtomicU32>;

/// Where the ranks of a host last waited, and this rank's moves (see the module doc).
pub struct CpuBoard {
    rank: usize,
    /// `cells[r]`: rank r's cell, for the ranks of this host; null for the others.
    cells: Vec<*const CpuCell>,
    /// The segments the cells live in, where the board made its own.
    _segments: Vec<Segment>,
    moves: Mutex<Moves>,
}

#[derive(Default)]
struct Moves {
    count: u64,
    last: Option<Instant>,
}

// SAFETY: the cells are atomics in shared mappings that live as long as the board (its own
// segments, or, for `CpuBoard::over`, memory its creator promised to keep mapped).
unsafe impl Send for CpuBoard {}
// SAFETY: as above; the cells are only touched through atomic operations.
unsafe impl Sync for CpuBoard {}

impl CpuBoard {
    /// A board over cells that live elsewhere: `cells[r]` is rank r's, null for ranks off
    /// this host.
    ///
    /// # Safety
    /// Every non-null cell must stay mapped, and be touched only atomically, for as long as
    /// the board lives; `cells[rank]` must be non-null.
    pub(crate) unsafe fn over(rank: usize, cells: Vec<*const CpuCell>) -> CpuBoard {
        debug_assert!(!cells[rank].is_null());
        // Read now, not in the first move (a waiter's path).
        topology();
        CpuBoard { rank, cells, _segments: Vec::new(), moves: Mutex::default() }
    }

    /// A board of its own for the ranks `members` of a world of `size` (this host's, `rank`
    /// among them): each creates a segment holding its cell, publishes it in `store` under
    /// `cpus/{rank}`, and maps the others'. Every member must call it. A segment that cannot
    /// be made or mapped leaves that rank's cell unknown (it is then never taken for a
    /// neighbour, and, if it is this rank's, this rank never moves) rather than failing.
    pub fn connect(
        rank: usize,
        size: usize,
        members: &[usize],
        store: &dyn Store,
        deadline: Instant,
    ) -> Result<CpuBoard> {
        if !members.contains(&rank) || members.iter().any(|&m| m >= size) {
            return Err(Error::invalid_argument(format!(
                "CPU board members {members:?} must be ranks of the world of {size}, {rank} among them"
            )));
        }
        topology();
        let len = std::mem::size_of::<CpuCell>();
        let mut cells = vec![std::ptr::null(); size];
        let mut segments = Vec::with_capacity(members.len());
        let published = match Segment::create(len) {
            Ok(mine) => {
                cells[rank] = mine.ptr() as *const CpuCell;
                let at = format!("{}:{}", std::process::id(), mine.raw_fd());
                segments.push(mine);
                at
            }
            Err(e) => {
                tracing::info!(rank, error = %e, "CPU board: no segment of this rank's; it will not move");
                "-".into()
            }
        };
        store.set(&format!("cpus/{rank}"), published.as_bytes())?;
        for &peer in members.iter().filter(|&&p| p != rank) {
            let v = store.get(&format!("cpus/{peer}"), deadline).map_err(|e| e.on_rank(rank).with_peer(peer))?;
            let text = String::from_utf8_lossy(&v).into_owned();
            let at = text.split_once(':').and_then(|(p, f)| Some((p.parse::<u32>().ok()?, f.parse::<i32>().ok()?)));
            match at.map(|(pid, fd)| Segment::open(pid, fd, len)) {
                Some(Ok(seg)) => {
                    cells[peer] = seg.ptr() as *const CpuCell;
                    segments.push(seg);
                }
                Some(Err(e)) => tracing::info!(rank, peer, error = %e, "CPU board: a peer's cell cannot be mapped"),
                None => {}
            }
        }
        Ok(CpuBoard { rank, cells, _segments: segments, moves: Mutex::default() })
    }

    fn cell(&self, r: usize) -> Option<&CpuCell> {
        // SAFETY: non-null cells stay mapped while the board lives (`over`'s contract, or the
        // board's own segments), and hold only an atomic.
        self.cells.get(r).and_then(|&c| unsafe { c.as_ref() })
    }

    /// What a waiter does after finding nothing to do for a while, waiting for `peer`: unless
    /// it tried a move in the last [`MOVE_INTERVAL`] (then nothing, not even publishing),
    /// publishes this rank's CPU and, if `peer` last waited on it, moves this thread to a free
    /// CPU. True if it moved.
    pub(crate) fn on_wait(&self, peer: usize, now: Instant) -> bool {
        let mut moves = self.moves.lock().unwrap_or_else(|p| p.into_inner());
        if moves.last.is_some_and(|t| now.duration_since(t) < MOVE_INTERVAL) || !self.shares_cpu_with(peer) {
            return false;
        }
        moves.last = Some(now);
        let moved = self.move_to_free_cpu();
        moves.count += u64::from(moved);
        moved
    }

    /// How many times this rank moved.
    pub fn moves(&self) -> u64 {
        self.moves.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// Rank `r`'s published CPU plus one (0: not known, or `r` is not on this host).
    pub(crate) fn published(&self, r: usize) -> u32 {
        self.cell(r).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Publishes the CPU this rank runs on, and says whether `peer` last waited on the same
    /// one. The peer's figure may be stale (it is written when the peer waits): a wrong
    /// answer costs one needless move, or a few more microseconds sharing a CPU.
    pub(crate) fn shares_cpu_with(&self, peer: usize) -> bool {
        let Some(cpu) = nix::sched::sched_getcpu().ok().and_then(|c| u32::try_from(c).ok()) else {
            return false;
        };
        if let Some(mine) = self.cell(self.rank) {
            if mine.load(Ordering::Relaxed) != cpu + 1 {
                mine.store(cpu + 1, Ordering::Relaxed);
            }
        }
        peer != self.rank && self.published(peer) == cpu + 1
    }

    /// Moves this thread to a CPU it may run on that no rank of the host last waited on (or
    /// is moving to), chosen by [`pick_cpu`], publishing it first, and gives the thread its
    /// own CPU mask back at once. False where there is no such CPU or the system refuses.
    pub(crate) fn move_to_free_cpu(&self) -> bool {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let Ok(mask) = sched_getaffinity(Pid::from_raw(0)) else {
            return false;
        };
        let taken: Vec<usize> =
            (0..self.cells.len()).map(|r| self.published(r)).filter(|&c| c != 0).map(|c| c as usize - 1).collect();
        let allowed = cpus_in(&mask);
        let here = nix::sched::sched_getcpu().ok();
        let Some(target) = pick_cpu(&allowed, &taken, here, topology()) else {
            return false;
        };
        let mut only = CpuSet::new();
        let Some(mine) = self.cell(self.rank) else {
            return false;
        };
        if only.set(target).is_err() {
            return false;
        }
        let was = mine.swap(target as u32 + 1, Ordering::Relaxed);
        if sched_setaffinity(Pid::from_raw(0), &only).is_err() {
            mine.store(was, Ordering::Relaxed);
            return false;
        }
        let _ = sched_setaffinity(Pid::from_raw(0), &mask);
        true
    }
}

/// The CPUs in `mask`, ascending.
fn cpus_in(mask: &nix::sched::CpuSet) -> Vec<usize> {
    (0..nix::sched::CpuSet::count()).filter(|&c| mask.is_set(c).unwrap_or(false)).collect()
}

/// Where a CPU sits: its package, its core within it, and its last-level cache (`None`
/// where the kernel does not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuPlace {
    pub package: Option<u32>,
    pub core: Option<u32>,
    pub llc: Option<u32>,
}

/// This machine's CPUs' places, by CPU number, read from sysfs once.
fn topology() -> &'static [CpuPlace] {
    static TOPOLOGY: std::sync::OnceLock<Vec<CpuPlace>> = std::sync::OnceLock::new();
    TOPOLOGY.get_or_init(|| {
        let read = |cpu: usize, what: &str| -> Option<u32> {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/{what}")).ok()?.trim().parse().ok()
        };
        // The last-level cache: the highest-level index the kernel lists.
        let llc = |cpu: usize| -> Option<u32> {
            (0..8)
                .filter_map(|i| Some((read(cpu, &format!("cache/index{i}/level"))?, i)))
                .max()
                .and_then(|(_, i)| read(cpu, &format!("cache/index{i}/id")))
        };
        // The CPUs the kernel may ever bring up ("0-63"): not the 1024 a CPU set can hold.
        let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| s.trim().split([',', '-']).filter_map(|n| n.parse::<usize>().ok()).max().map(|m| m + 1));
        (0..possible.unwrap_or(64).min(nix::sched::CpuSet::count()))
            .map(|c| CpuPlace {
                package: read(c, "topology/physical_package_id"),
                core: read(c, "topology/core_id"),
                llc: llc(c),
            })
            .collect()
    })
}

/// The CPU to move to: of the `allowed` CPUs no rank has `taken`, the one that best keeps
/// this rank near where it runs (`here`): first on a core no rank uses (a hardware thread
/// beside a busy one runs at part speed), then sharing `here`'s last-level cache, then in
/// its package; the lowest-numbered of equals. Places not known count as no match.
pub(crate) fn pick_cpu(allowed: &[usize], taken: &[usize], here: Option<usize>, places: &[CpuPlace]) -> Option<usize> {
    let place = |c: usize| places.get(c).copied().unwrap_or_default();
    let same = |a: Option<u32>, b: Option<u32>| a.is_some() && a == b;
    let at = here.map(place).unwrap_or_default();
    let score = |c: usize| {
        let p = place(c);
        let core_free = p.core.is_none()
            || !taken.iter().any(|&t| same(place(t).core, p.core) && same(place(t).package, p.package));
        (core_free, same(p.llc, at.llc), same(p.package, at.package))
    };
    allowed.iter().copied().filter(|c| !taken.contains(c)).max_by(|&a, &b| score(a).cmp(&score(b)).then(b.cmp(&a)))
}

/// Test helpers: which CPUs this thread may use, and pinning it.
#[cfg(test)]
pub(crate) mod pin {
    /// The CPUs this thread may run on.
    pub fn allowed_cpus() -> Vec<usize> {
        super::cpus_in(&nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap())
    }

    /// Restricts this thread to `cpus`.
    pub fn run_on(cpus: &[usize]) {
        let mut mask = nix::sched::CpuSet::new();
        for &c in cpus {
            mask.set(c).unwrap();
        }
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &mask).unwrap();
    }

    /// The CPU this thread runs on now.
    pub fn this_cpu() -> usize {
        nix::sched::sched_getcpu().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::pin::*;
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn boards(members: &[usize], size: usize) -> Vec<CpuBoard> {
        let store = Arc::new(MemoryStore::new());
        let hs: Vec<_> = members
            .iter()
            .map(|&r| {
                let (s, m) = (store.clone(), members.to_vec());
                std::thread::spawn(move || {
                    CpuBoard::connect(r, size, &m, &*s, Instant::now() + Duration::from_secs(10)).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// Boards of their own: each rank maps the others' cells (ranks 1 and 3 of a world of
    /// 4 share a host); a rank whose peer waited on its CPU moves to the first free one,
    /// publishing it, and keeps its mask; nothing moves twice within MOVE_INTERVAL, nor
    /// where no CPU is free.
    #[test]
    fn a_rank_on_its_peers_cpu_moves_to_a_free_one() {
        let all = allowed_cpus();
        let b = boards(&[1, 3], 4);
        assert_eq!(b[0].published(0), 0, "rank 0 is on another host");
        run_on(&all[..1]);
        let first = this_cpu() as u32;
        assert!(!b[1].shares_cpu_with(1), "rank 1 has published nothing yet");
        assert_eq!(b[0].published(3), first + 1, "rank 3's cell, seen from rank 1");
        let t = Instant::now();
        // One CPU allowed: nowhere to go.
        assert!(!b[0].on_wait(3, t));
        run_on(&all);
        // The failed attempt counts: no second try within the interval.
        assert!(!b[0].on_wait(3, t + MOVE_INTERVAL / 2));
        let moved = b[0].on_wait(3, t + MOVE_INTERVAL);
        assert_eq!(moved, all.len() > 1, "{} CPUs", all.len());
        assert_eq!(b[0].moves(), u64::from(moved));
        if moved {
            let now = b[1].published(1);
            assert!(now != first + 1 && all.contains(&(now as usize - 1)), "moved from CPU {first} to {now} - 1");
        }
        assert_eq!(allowed_cpus(), all, "the thread's own mask is given back");
    }

    /// A rank whose segment could not be made publishes "-": its peers go on without its
    /// cell instead of failing (or waiting for the store's deadline).
    #[test]
    fn a_rank_without_a_cell_is_left_out() {
        let store = MemoryStore::new();
        store.set("cpus/0", b"-").unwrap();
        let b = CpuBoard::connect(1, 2, &[0, 1], &store, Instant::now() + Duration::from_secs(5)).unwrap();
        assert!(!b.shares_cpu_with(0));
        assert_eq!(b.published(0), 0);
        assert_eq!(b.published(1), this_cpu() as u32 + 1);
    }

    /// The target keeps the rank near: a free core first, then its own last-level cache,
    /// then its package; never a taken CPU.
    #[test]
    fn the_target_cpu_stays_near() {
        // Two packages of two cores of two hardware threads; each package one cache.
        // CPU c: package c / 4, core (c / 2) % 2, thread c % 2.
        let places: Vec<CpuPlace> =
            (0..8u32).map(|c| CpuPlace { package: Some(c / 4), core: Some((c / 2) % 2), llc: Some(c / 4) }).collect();
        let all: Vec<usize> = (0..8).collect();
        // On CPU 0 with the peer: CPU 1 (its sibling) shares a core with the peer; CPU 2 is a
        // free core in the same cache.
        assert_eq!(pick_cpu(&all, &[0], Some(0), &places), Some(2));
        // Package 0's cores both busy: a free core in the other package beats a sibling.
        assert_eq!(pick_cpu(&all, &[0, 2], Some(0), &places), Some(4));
        // Every core busy: a sibling in this package's cache.
        assert_eq!(pick_cpu(&all, &[0, 2, 4, 6], Some(2), &places), Some(1));
        // Only what the mask allows, never a taken CPU.
        assert_eq!(pick_cpu(&[0, 1, 5], &[0], Some(0), &places), Some(5));
        assert_eq!(pick_cpu(&[0], &[0], Some(0), &places), None);
        // Nothing known: the lowest free CPU.
        assert_eq!(pick_cpu(&all, &[0, 1], Some(0), &[]), Some(2));
        assert_eq!(pick_cpu(&all, &[3], None, &places), Some(0));
        // This machine's: every CPU this thread may use is listed, with its package.
        let here = topology();
        assert!(allowed_cpus().iter().all(|&c| c < here.len()), "{} places", here.len());
        assert!(here[this_cpu()].package.is_some(), "{:?}", here[this_cpu()]);
    }

    #[test]
    fn members_must_include_the_rank() {
        let store = MemoryStore::new();
        let e = CpuBoard::connect(0, 2, &[1], &store, Instant::now()).err().expect("refused");
        assert!(e.to_string().contains("among them"), "{e}");
    }
}
