//! How many cores the ranks of each host get, for the cost model's oversubscription term.
//!
//! A tuning entry records the cores of the machine it was measured on; a communicator prices
//! with the cores its own ranks have. Those differ in three common ways, and each mispriced
//! every call by the ratio:
//! - a machine larger than the one calibrated (the built-in profile was measured on 2
//!   cores; 8 ranks on a 16-core machine were priced as 4 ranks per core);
//! - ranks bound to cores of their own (`mpirun`'s default, `oxrun --bind-to core`), whose
//!   own affinity is one CPU, which is not one core shared;
//! - "hosts" that share one machine: containers, or network namespaces standing in for
//!   hosts, each with its own host name and no shared memory, but one kernel and its
//!   processors. Two such hosts of 2 ranks on a 2-core machine were priced as 1 rank per
//!   core; they ran at 2, and every prediction came out at 0.4-0.5 of the time taken.
//!
//! So each rank reports the machine it runs on (the kernel's boot id) and the CPUs it may
//! use (its affinity mask, and its cgroup's quota where that is lower); a host's ranks get
//! the CPUs their masks cover, up to the quota, and no more than their ranks' share of the
//! machine's CPUs when other hosts' ranks run on it too.

use sha2::{Digest, Sha256};

/// Bits of an affinity mask a report carries: CPUs 0-255. Above that the mask's size stands
/// in for its union.
const MASK_WORDS: usize = 4;

/// Words of one rank's [`CpuReport`] in the start-up exchange.
pub(crate) const REPORT_WORDS: usize = 3 + MASK_WORDS;

/// What a rank reports at start-up about the processors it may run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CpuReport {
    /// The machine (kernel) the rank runs on: ranks with the same key share its processors,
    /// whatever hosts they count as.
    pub machine: u64,
    /// CPUs 0-255 of the rank's affinity mask.
    pub mask: [u64; MASK_WORDS],
    /// The number of CPUs in the whole affinity mask.
    pub affinity: u64,
    /// The CPUs the cgroup's quota allows where that is fewer than `affinity` (0: none).
    pub quota: u64,
}

impl CpuReport {
    /// This process's report.
    pub fn mine(host_key: u64) -> CpuReport {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        // Without a boot id, each host counts as a machine of its own.
        let machine = if boot.trim().is_empty() {
            host_key
        } else {
            u64::from_le_bytes(Sha256::digest(boot.trim().as_bytes())[..8].try_into().expect("8 bytes"))
        };
        let mut mask = [0u64; MASK_WORDS];
        let mut affinity = 0u64;
        match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
            Ok(set) => {
                for cpu in 0..nix::sched::CpuSet::count() {
                    if set.is_set(cpu).unwrap_or(false) {
                        affinity += 1;
                        if cpu < 64 * MASK_WORDS {
                            mask[cpu / 64] |= 1 << (cpu % 64);
                        }
                    }
                }
            }
            Err(_) => {
                // Unknown: the CPUs the standard library sees, as if numbered from 0.
                affinity = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                for cpu in 0..(affinity as usize).min(64 * MASK_WORDS) {
                    mask[cpu / 64] |= 1 << (cpu % 64);
                }
            }
        }
        // The standard library's count is the affinity mask's, lowered by a cgroup quota.
        let usable = std::thread::available_parallelism().map_or(affinity, |n| n.get() as u64);
        CpuReport { machine, mask, affinity, quota: if usable < affinity { usable } else { 0 } }
    }

    /// The report as words for the exchange.
    pub fn to_words(self) -> [u64; REPORT_WORDS] {
        let mut w = [0u64; REPORT_WORDS];
        w[0] = self.machine;
        w[1] = self.affinity;
        w[2] = self.quota;
        w[3..].copy_from_slice(&self.mask);
        w
    }

    /// A report from its words.
    pub fn from_words(w: &[u64]) -> CpuReport {
        CpuReport {
            machine: w[0],
            affinity: w[1],
            quota: w[2],
            mask: w[3..REPORT_WORDS].try_into().expect("mask words"),
        }
    }
}

/// The CPUs a set of ranks may run on between them, gathered one report at a time: their
/// masks' union (or, for masks beyond the bits reported, the largest mask).
#[derive(Clone, Copy, Default)]
struct Union {
    mask: [u64; MASK_WORDS],
    largest: u64,
}

impl Union {
    fn add(&mut self, r: &CpuReport) {
        for (m, w) in self.mask.iter_mut().zip(r.mask) {
            *m |= w;
        }
        self.largest = self.largest.max(r.affinity);
    }

    fn cpus(&self) -> f64 {
        let bits: u64 = self.mask.iter().map(|w| u64::from(w.count_ones())).sum();
        let n = if self.largest > 64 * MASK_WORDS as u64 { bits.max(self.largest) } else { bits };
        n.max(1) as f64
    }
}

/// One host's ranks, or one machine's: how many, and the CPUs they may use.
#[derive(Clone, Copy, Default)]
struct Group {
    ranks: usize,
    cpus: Union,
    /// The tightest cgroup quota among them (0: none).
    quota: u64,
    machine: u64,
}

/// The cores per host to price with: the value `c` for which `max_local / c` is the largest
/// number of ranks per core any host has (the model's oversubscription,
/// [`oxccl_algorithms::cost::Model::oversubscription`], is that, at least 1). Where the hosts
/// are alike it is each host's CPUs, so a calibration can record it and price other world
/// sizes on the same machine with it. `reports[r]` is rank r's, `hosts[r]` its host's index.
/// Linear in the ranks.
pub(crate) fn cores_per_host(reports: &[CpuReport], hosts: &[usize]) -> f64 {
    let nhosts = hosts.iter().max().map_or(0, |h| h + 1);
    let mut by_host = vec![Group::default(); nhosts];
    let mut by_machine: std::collections::HashMap<u64, Group> = std::collections::HashMap::new();
    for (r, &h) in reports.iter().zip(hosts) {
        let g = &mut by_host[h];
        if g.ranks == 0 {
            g.machine = r.machine;
        }
        g.ranks += 1;
        g.cpus.add(r);
        if r.quota > 0 {
            g.quota = if g.quota == 0 { r.quota } else { g.quota.min(r.quota) };
        }
        // A host counts on the machine of its first rank (a host's ranks share one kernel).
        let m = by_machine.entry(g.machine).or_default();
        m.ranks += 1;
        m.cpus.add(r);
    }
    let mut worst: f64 = 0.0;
    let mut max_local = 0usize;
    for g in by_host.iter().filter(|g| g.ranks > 0) {
        max_local = max_local.max(g.ranks);
        // CPUs the host's ranks may use: their masks' union, capped by the tightest quota;
        // and the scheduler shares a machine's CPUs out by thread, so no more than its ranks'
        // share of the machine where other hosts' ranks run on it too.
        let want = if g.quota > 0 { g.cpus.cpus().min(g.quota as f64) } else { g.cpus.cpus() };
        let m = &by_machine[&g.machine];
        let share = want.min(m.cpus.cpus() * g.ranks as f64 / m.ranks as f64);
        worst = worst.max(g.ranks as f64 / share);
    }
    if worst > 0.0 {
        max_local as f64 / worst
    } else {
        1.0
    }
}

/// Whether a host's `ranks_here` ranks outnumber the CPUs they may use between them:
/// `local` holds every local rank's report (their masks' union counts, up to the quota), or
/// fewer where the host's ranks are not known (over TCP, at the transport's start), and then
/// `own`, this process's CPUs, counts. Ranks bound to a core each see one CPU apiece and do
/// not share it: counted by each rank's own mask, 2 ranks bound on 2 cores spun as if
/// oversubscribed and timed their copies by the CPU clock.
pub(crate) fn ranks_share_cpus(ranks_here: usize, local: &[CpuReport], own: usize) -> bool {
    let cpus = if ranks_here > 1 && local.len() == ranks_here {
        cores_per_host(local, &vec![0; local.len()])
    } else {
        own.max(1) as f64
    };
    ranks_here as f64 > cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report on machine `m` whose mask is CPUs `cpus`.
    fn on(m: u64, cpus: std::ops::Range<usize>, quota: u64) -> CpuReport {
        let mut mask = [0u64; MASK_WORDS];
        for c in cpus.clone() {
            mask[c / 64] |= 1 << (c % 64);
        }
        CpuReport { machine: m, mask, affinity: cpus.len() as u64, quota }
    }

    /// Ranks per core as the model computes it from `cores_per_host`.
    fn per_core(reports: &[CpuReport], hosts: &[usize]) -> f64 {
        let max_local = (0..=*hosts.iter().max().unwrap()).map(|h| hosts.iter().filter(|&&x| x == h).count()).max();
        (max_local.unwrap() as f64 / cores_per_host(reports, hosts)).max(1.0)
    }

    #[test]
    fn ranks_per_core_follow_the_machine_not_the_calibration() {
        // One host, 2 CPUs: 4 ranks share them, 2 ranks do not.
        assert_eq!(per_core(&[on(1, 0..2, 0); 4], &[0; 4]), 2.0);
        assert_eq!(per_core(&[on(1, 0..2, 0); 2], &[0; 2]), 1.0);
        // 8 ranks on a 16-CPU machine: one core each; the host's cores are its 16.
        assert_eq!(per_core(&[on(1, 0..16, 0); 8], &[0; 8]), 1.0);
        assert_eq!(cores_per_host(&[on(1, 0..16, 0); 8], &[0; 8]), 16.0);
        // Bound one to a core: each mask is one CPU, the union is four.
        let bound: Vec<CpuReport> = (0..4).map(|c| on(1, c..c + 1, 0)).collect();
        assert_eq!(per_core(&bound, &[0; 4]), 1.0);
        // Bound two to a core: two CPUs for four ranks.
        let doubled: Vec<CpuReport> = (0..4).map(|c| on(1, c / 2..c / 2 + 1, 0)).collect();
        assert_eq!(per_core(&doubled, &[0; 4]), 2.0);
        // A cgroup quota of 2 CPUs on a 16-CPU mask: 4 ranks get 2 cores.
        assert_eq!(per_core(&[on(1, 0..16, 2); 4], &[0; 4]), 2.0);
    }

    #[test]
    fn bound_ranks_do_not_share_cpus() {
        // Bound to a CPU each, on CPUs 0 and 1: not shared, whatever each mask alone says.
        assert!(!ranks_share_cpus(2, &[on(1, 0..1, 0), on(1, 1..2, 0)], 1));
        // Both bound to CPU 0, or three ranks on two CPUs: shared.
        assert!(ranks_share_cpus(2, &[on(1, 0..1, 0), on(1, 0..1, 0)], 1));
        assert!(ranks_share_cpus(3, &[on(1, 0..2, 0); 3], 2));
        // Unbound on 2 CPUs, but a quota of one CPU: shared.
        assert!(!ranks_share_cpus(2, &[on(1, 0..2, 0); 2], 2));
        assert!(ranks_share_cpus(2, &[on(1, 0..2, 1); 2], 2));
        // The host's ranks unknown (TCP): this process's own CPUs count.
        assert!(ranks_share_cpus(2, &[on(1, 0..1, 0)], 1));
        assert!(!ranks_share_cpus(2, &[on(1, 0..4, 0)], 4));
        assert!(!ranks_share_cpus(1, &[on(1, 0..1, 0)], 1));
    }

    #[test]
    fn hosts_on_one_machine_split_its_cores() {
        // Two "hosts" of 2 ranks (network namespaces) on one 2-CPU machine: 2 ranks per core,
        // each host 1 core; 4 ranks each, 4 per core on the same 1.
        let r = [on(7, 0..2, 0); 4];
        assert_eq!(per_core(&r, &[0, 0, 1, 1]), 2.0);
        assert_eq!(cores_per_host(&r, &[0, 0, 1, 1]), 1.0);
        assert_eq!(cores_per_host(&[on(7, 0..2, 0); 8], &[0, 0, 0, 0, 1, 1, 1, 1]), 1.0);
        // The same on two machines: 1 per core.
        let r = [on(7, 0..2, 0), on(7, 0..2, 0), on(8, 0..2, 0), on(8, 0..2, 0)];
        assert_eq!(per_core(&r, &[0, 0, 1, 1]), 1.0);
        // Two containers of 2 ranks, each held to 1 CPU by its quota, on a 64-CPU node: each
        // host has its 1 CPU whatever the node's size.
        let r = [on(7, 0..64, 1); 4];
        assert_eq!(per_core(&r, &[0, 0, 1, 1]), 2.0);
        // Uneven hosts on one 4-CPU machine, 6 ranks and 2: shared by rank, 2 per core for
        // both (the 6-rank host gets 3 CPUs).
        let r = vec![on(3, 0..4, 0); 8];
        let hosts = [0, 0, 0, 0, 0, 0, 1, 1];
        assert_eq!(per_core(&r, &hosts), 2.0);
        assert_eq!(cores_per_host(&r, &hosts), 3.0);
        // The 2-rank host held to 1 CPU by its quota: the other keeps its 3, still 2 per core
        // for it, and the small host's 2 ranks share their 1.
        let mut r = r;
        r[6].quota = 1;
        r[7].quota = 1;
        assert_eq!(per_core(&r, &hosts), 2.0);
    }

    #[test]
    fn large_worlds_on_many_machines() {
        // 16384 ranks, 8 on each of 2048 machines of 8 CPUs, and the same with each machine
        // holding two hosts of 4.
        let r: Vec<CpuReport> = (0..16384).map(|i| on(i as u64 / 8, 0..8, 0)).collect();
        let hosts: Vec<usize> = (0..16384).map(|i| i / 8).collect();
        assert_eq!(cores_per_host(&r, &hosts), 8.0);
        let hosts: Vec<usize> = (0..16384).map(|i| i / 4).collect();
        assert_eq!(cores_per_host(&r, &hosts), 4.0);
        assert_eq!(per_core(&r, &hosts), 1.0);
    }

    #[test]
    fn reports_round_trip_and_describe_this_process() {
        let r = CpuReport::mine(42);
        assert_eq!(CpuReport::from_words(&r.to_words()), r);
        let mut u = Union::default();
        u.add(&r);
        assert!(r.affinity >= 1 && u.cpus() >= 1.0);
        let usable = std::thread::available_parallelism().unwrap().get() as u64;
        assert_eq!(if r.quota > 0 { r.quota } else { r.affinity }, usable);
    }
}
