//! The table of algorithms: which exist for which collective, by name. Choosing one (by
//! configuration or by size) lives in the `oxccl` crate; this is only the lookup.

use std::fmt;

use crate::cost::{Cost, CostFn, Model};
use crate::ctx::{AlgoFn, Collective};

/// An algorithm, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ring (a pipelined chain for broadcast and reduce).
    Ring,
    /// Recursive doubling.
    RecursiveDoubling,
    /// Pairwise exchange.
    Pairwise,
    /// Dissemination (barrier).
    Dissemination,
    /// Direct: each rank reduces its own slice from every peer's input at once.
    Direct,
    /// Trees: double binary tree (all-reduce), binomial tree (broadcast, reduce).
    Tree,
    /// Recursive halving, then recursive doubling (Rabenseifner).
    HalvingDoubling,
    /// Bruck's log-step algorithms (all-gather, all-to-all).
    Bruck,
    /// Two levels: within each host, then across hosts.
    Hierarchical,
    /// Peers' buffers mapped into each rank, moved with loads and stores (falls back to
    /// another algorithm where some rank's buffers cannot be mapped).
    Mapped,
}

impl Algorithm {
    /// Every algorithm of this build.
    pub const ALL: [Algorithm; 10] = [
        Algorithm::Ring,
        Algorithm::RecursiveDoubling,
        Algorithm::Pairwise,
        Algorithm::Dissemination,
        Algorithm::Direct,
        Algorithm::Tree,
        Algorithm::HalvingDoubling,
        Algorithm::Bruck,
        Algorithm::Hierarchical,
        Algorithm::Mapped,
    ];

    /// The name used in configuration (`OXCCL_ALGO`) and `--algo`.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Ring => "ring",
            Algorithm::RecursiveDoubling => "recursive_doubling",
            Algorithm::Pairwise => "pairwise",
            Algorithm::Dissemination => "dissemination",
            Algorithm::Direct => "direct",
            Algorithm::Tree => "tree",
            Algorithm::HalvingDoubling => "halving_doubling",
            Algorithm::Bruck => "bruck",
            Algorithm::Hierarchical => "hierarchical",
            Algorithm::Mapped => "mapped",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Algorithm> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Algorithm::ALL.iter().copied().find(|a| a.name() == s)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The algorithms this build has for `coll`, the default first.
pub fn algorithms(coll: Collective) -> &'static [Algorithm] {
    use Algorithm::*;
    match coll {
        Collective::AllReduce => &[Ring, RecursiveDoubling, Direct, Tree, HalvingDoubling, Hierarchical, Mapped],
        Collective::ReduceScatter => &[Ring, Direct, HalvingDoubling, Hierarchical, Mapped],
        Collective::AllGather => &[Ring, RecursiveDoubling, Bruck, Hierarchical, Mapped],
        Collective::Broadcast | Collective::Reduce => &[Ring, Tree, Mapped],
        Collective::AllToAll => &[Pairwise, Bruck, Hierarchical, Mapped],
        Collective::Barrier => &[Dissemination],
        Collective::SendRecv | Collective::AllToAllV | Collective::Split => &[],
    }
}

/// Declares the one table of (collective, algorithm) pairs: each names the module holding
/// that algorithm's `run` and `cost`, so an algorithm and its formula are found together.
macro_rules! implementations {
    ($($coll:ident, $algo:ident => $module:path;)*) => {
        /// The implementation of `algo` for `coll`, if there is one.
        pub fn lookup(coll: Collective, algo: Algorithm) -> Option<AlgoFn> {
            match (coll, algo) {
                $((Collective::$coll, Algorithm::$algo) => Some({ use $module as m; m::run }),)*
                _ => None,
            }
        }

        /// The cost formula of `algo` for `coll`, if there is such an algorithm.
        pub fn cost_formula(coll: Collective, algo: Algorithm) -> Option<CostFn> {
            match (coll, algo) {
                $((Collective::$coll, Algorithm::$algo) => Some({ use $module as m; m::cost }),)*
                _ => None,
            }
        }
    };
}

implementations! {
    AllReduce, Ring => crate::all_reduce::ring;
    AllReduce, RecursiveDoubling => crate::all_reduce::recursive_doubling;
    AllReduce, Direct => crate::all_reduce::direct;
    AllReduce, Tree => crate::all_reduce::tree;
    AllReduce, HalvingDoubling => crate::all_reduce::halving_doubling;
    AllReduce, Hierarchical => crate::all_reduce::hierarchical;
    AllReduce, Mapped => crate::all_reduce::mapped;
    AllGather, Ring => crate::all_gather::ring;
    AllGather, RecursiveDoubling => crate::all_gather::recursive_doubling;
    AllGather, Bruck => crate::all_gather::bruck;
    AllGather, Hierarchical => crate::all_gather::hierarchical;
    AllGather, Mapped => crate::all_gather::mapped;
    ReduceScatter, Ring => crate::reduce_scatter::ring;
    ReduceScatter, Direct => crate::reduce_scatter::direct;
    ReduceScatter, HalvingDoubling => crate::reduce_scatter::halving_doubling;
    ReduceScatter, Hierarchical => crate::reduce_scatter::hierarchical;
    ReduceScatter, Mapped => crate::reduce_scatter::mapped;
    AllToAll, Pairwise => crate::all_to_all::pairwise;
    AllToAll, Bruck => crate::all_to_all::bruck;
    AllToAll, Hierarchical => crate::all_to_all::hierarchical;
    AllToAll, Mapped => crate::all_to_all::mapped;
    Broadcast, Ring => crate::broadcast::ring;
    Broadcast, Tree => crate::broadcast::tree;
    Broadcast, Mapped => crate::broadcast::mapped;
    Reduce, Ring => crate::reduce::ring;
    Reduce, Tree => crate::reduce::tree;
    Reduce, Mapped => crate::reduce::mapped;
    Barrier, Dissemination => crate::barrier::dissemination;
}

/// The predicted time of `algo` for the call `m` describes, with the profile's efficiency
/// factors for it (those measured between hosts when `m` spans several); `None` if `m.coll`
/// has no such algorithm. A world of one rank and an empty call cost nothing (a barrier of one
/// likewise). A call larger than any the efficiency row measured is priced with the cache
/// curves held at the largest measured size ([`Model::footprint_cap`]): its time per byte is
/// that size's.
pub fn predict(algo: Algorithm, m: &Model<'_>) -> Option<Cost> {
    let f = cost_formula(m.coll, algo)?;
    // Bruck works through a scratch copy of the whole vector either way: in place it runs
    // (and touches) what it runs out of place. (Priced with one buffer's footprint, its
    // in-place all-to-all read 0.75x its time, the out-of-place price 0.93x.)
    let out_of_place;
    let m = if m.in_place && algo == Algorithm::Bruck {
        out_of_place = Model { in_place: false, ..m.clone() };
        &out_of_place
    } else {
        m
    };
    if m.p() <= 1 || (m.bytes == 0 && m.coll != Collective::Barrier) {
        return Some(Cost::default());
    }
    let Some(e) = m.profile.efficiency(m.coll, algo, m.p(), m.num_hosts() > 1) else {
        return Some(f(m));
    };
    // Beyond the largest size measured, every cache curve is read where that size left it
    // (the footprint grows with the bytes, so it scales down by the same ratio).
    let held;
    let m = match e.largest_measured() {
        Some(l) if m.bytes > l => {
            held = Model { footprint_cap: m.footprint() * l as f64 / m.bytes as f64, ..m.clone() };
            &held
        }
        _ => m,
    };
    Some(e.apply(f(m), m.footprint(), m.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The predicted cost of a 2-rank ring all-reduce (sum) of `bytes` bytes of `dtype`.
    fn ring_all_reduce(pr: &crate::cost::Profile, bytes: usize, dtype: crate::dtype::DataType) -> crate::cost::Cost {
        let m = Model {
            coll: Collective::AllReduce,
            bytes,
            dtype,
            op: crate::op::ReduceOp::Sum,
            hosts: &[0, 0],
            profile: pr,
            chunk_bytes: 1 << 18,
            footprint_cap: f64::INFINITY,
            in_place: false,
        };
        predict(Algorithm::Ring, &m).expect("ring all-reduce")
    }

    #[test]
    fn curves_are_not_read_past_the_largest_size_measured() {
        use crate::cost::{Efficiency, RESIDUAL_POINTS};
        use crate::dtype::DataType;
        use crate::op::ReduceOp;
        // A link three times slower out of cache, and a factor falling from 2.5 in cache to
        // 0.25 out of it, halfway at 32 MiB, measured up to 4 KiB (point 4).
        let mut pr = crate::cost::tests::profile();
        pr.intra.beta_cache = pr.intra.beta / 3.0;
        let mut e = Efficiency {
            coll: Collective::AllReduce,
            algo: Algorithm::Ring,
            ranks: 2,
            inter: false,
            latency: 1.0,
            bandwidth_cache: 2.5,
            bandwidth: 0.25,
            cache_bytes: (32 << 20) as f64,
            residual: [0.0; RESIDUAL_POINTS],
        };
        let model = |pr: &crate::cost::Profile, bytes: usize| -> f64 {
            let c = ring_all_reduce(pr, bytes, DataType::F32);
            // The per-byte terms (the latency terms count chunks, not bytes).
            c.transfer + c.reduce
        };
        // Unmeasured: the fitted curves throughout (what calibration fits against), falling
        // well below linear growth from 16 MiB to 64 MiB.
        pr.efficiency = vec![e];
        assert!(model(&pr, 1 << 26) / model(&pr, 1 << 24) < 3.0);
        e.residual[..=4].fill(1.0);
        assert_eq!(e.largest_measured(), Some(4096));
        pr.efficiency = vec![e];
        // Beyond 4 KiB, each byte costs what it did at 4 KiB.
        let base = model(&pr, 4096);
        for bytes in [1 << 16, 1 << 24, 1 << 30] {
            let r = model(&pr, bytes) / base;
            assert!((r - (bytes / 4096) as f64).abs() < 1e-6 * r, "{bytes}: {r}");
        }
        // At and below it the curves are read at the call's own footprint: with the link
        // and the factor's blend at 2 KiB of footprint (1 KiB in, 1 KiB out).
        let w = 2048.0;
        let beta = pr.intra.beta_cache + (pr.intra.beta - pr.intra.beta_cache) * w / (w + pr.intra.cache_bytes);
        let x = w / (w + (32 << 20) as f64);
        let factor = 2.5 * (1.0 - x) + 0.25 * x;
        let expect = (1024.0 * beta + 512.0 * pr.gamma(DataType::F32, ReduceOp::Sum)) * factor;
        assert!((model(&pr, 1024) - expect).abs() < 1e-9 * expect, "{} vs {expect}", model(&pr, 1024));
    }

    /// A type's extra over f32 in the reduction kernel is priced as measured: the
    /// efficiency factors and residuals, fitted to f32 calls, scale f32's price alone.
    #[test]
    fn a_types_reduction_extra_is_left_unscaled() {
        use crate::cost::{Efficiency, RESIDUAL_POINTS};
        use crate::dtype::DataType;
        let mut pr = crate::cost::tests::profile();
        pr.gamma[crate::cost::dtype_index(DataType::Bf16)] = [5e-11; 5];
        let price = |pr: &crate::cost::Profile, dtype: DataType| ring_all_reduce(pr, 1 << 20, dtype).total();
        // The ring reduces (p-1)/p of the vector on each rank: 512 KiB at 3e-11 a byte more.
        let extra = 524288.0 * 3e-11;
        let unfitted = price(&pr, DataType::Bf16) - price(&pr, DataType::F32);
        assert!((unfitted - extra).abs() < 1e-9 * extra, "{unfitted} vs {extra}");
        let mut residual = [0.0; RESIDUAL_POINTS];
        residual.fill(0.8);
        pr.efficiency = vec![Efficiency {
            coll: Collective::AllReduce,
            algo: Algorithm::Ring,
            ranks: 2,
            inter: false,
            latency: 1.0,
            bandwidth_cache: 0.5,
            bandwidth: 0.5,
            cache_bytes: 1e6,
            residual,
        }];
        let fitted = price(&pr, DataType::Bf16) - price(&pr, DataType::F32);
        assert!((fitted - extra).abs() < 1e-9 * extra, "{fitted} vs {extra}");
    }

    #[test]
    fn table_is_consistent() {
        for c in Collective::ALL {
            assert!(!algorithms(c).is_empty(), "{c} has no algorithm");
            for a in Algorithm::ALL {
                assert_eq!(lookup(c, a).is_some(), algorithms(c).contains(&a), "{c} {a}");
                assert_eq!(cost_formula(c, a).is_some(), algorithms(c).contains(&a), "{c} {a}: cost");
            }
        }
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::parse(a.name()), Some(a));
        }
        assert_eq!(Algorithm::parse("Recursive-Doubling"), Some(Algorithm::RecursiveDoubling));
        assert_eq!(Algorithm::parse("bogus"), None);
    }
}
