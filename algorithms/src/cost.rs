//! The alpha-beta-gamma cost model: what an algorithm's run should take, from the world's
//! shape, the message size and a [`Profile`] of the machine.
//!
//! Every algorithm file exposes `cost(&Model) -> Cost`, the formula its opening comment
//! gives, written with the helpers here so that all of them count the same way:
//!
//! * a **message step** on a [`Link`] costs `alpha` (latency of one message, ping-pong half
//!   round trip), plus `gap` for each further message the same rank has in flight in that
//!   step (posted at once to several peers, or the chunks of a pipelined step), plus
//!   `bytes * beta` for the bytes the rank moves, while every rank moves data at once;
//! * a **reduction** of `bytes` costs `bytes * gamma(dtype, op)`;
//! * a **local copy** of `bytes` costs `bytes * copy`;
//! * with more ranks on a host than it has cores ([`Profile::cores`]), the per-byte work of
//!   the ranks on one core is serialised: beta, gamma and copy terms are multiplied by
//!   `ranks_per_host / cores` (at least 1), and each message step costs an extra
//!   `wake` (a descheduled receiver must be woken and scheduled).
//!
//! Predictions are seconds. The selection in the `oxccl` crate takes the algorithm (and,
//! for the pipelined chains and trees, the chunk size) of least predicted time; `oxccl::cost`
//! exposes the same for planning.

use std::fmt;

use crate::ctx::Collective;
use crate::dtype::DataType;
use crate::op::ReduceOp;

/// One level of the machine: between ranks of one host, or between hosts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// Seconds from posting a small message to its arrival (half a ping-pong round trip).
    pub alpha: f64,
    /// Seconds per further message a rank has in flight in the same step (the streaming
    /// gap between small messages).
    pub gap: f64,
    /// Seconds per byte a rank moves while every rank moves data at once, for data far
    /// larger than the caches.
    pub beta: f64,
    /// Seconds per byte for data that stays in cache.
    pub beta_cache: f64,
    /// Bytes touched per core at which the time per byte is halfway between `beta_cache`
    /// and `beta`: the effective per-byte time for a footprint of `w` bytes is
    /// `beta_cache + (beta - beta_cache) * w / (w + cache_bytes)`.
    pub cache_bytes: f64,
    /// Seconds a message step costs extra per unit of oversubscription (ranks per core above
    /// one): waking and scheduling a receiver that was not running.
    pub wake: f64,
}

impl Link {
    /// Bytes per second at which this link moves large messages.
    pub fn bandwidth(&self) -> f64 {
        1.0 / self.beta
    }

    /// Seconds per byte when each core touches `footprint` bytes.
    pub fn beta_at(&self, footprint: f64) -> f64 {
        cache_blend(self.beta_cache, self.beta, footprint, self.cache_bytes)
    }
}

/// A figure between its value in cache and out of it for a footprint of `footprint` bytes
/// per core, halfway at `cache_bytes`: `cache + (memory - cache) · w / (w + cache_bytes)`.
pub fn cache_blend(cache: f64, memory: f64, footprint: f64, cache_bytes: f64) -> f64 {
    cache + (memory - cache) * footprint / (footprint + cache_bytes.max(1.0))
}

/// A machine's costs: two links, the reduction kernels and the cores.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Between ranks of one host (shared memory, or TCP on loopback when that is the
    /// transport).
    pub intra: Link,
    /// Between hosts (TCP).
    pub inter: Link,
    /// Seconds per byte of input reduced, per data type and operator, indexed as
    /// [`DataType::ALL`] and [`ReduceOp::ALL`].
    pub gamma: [[f64; 5]; 10],
    /// What the fused kernel of the `mapped` algorithms spends on each data type beyond
    /// f32 (see [`FusedExtra`]); `None` where the calibration did not measure it: such
    /// profiles price that kernel as the two-input one ([`Model::reduce_fused`]).
    pub fused: Option<FusedExtra>,
    /// Seconds per byte of a local copy (memcpy).
    pub copy: f64,
    /// Cores per host that the ranks share (a fraction where a group of ranks gets only its
    /// share of a host that other groups keep busy at the same time). A communicator sets it
    /// from the CPUs its ranks may use, with hosts that share one machine (containers,
    /// network namespaces) splitting its cores.
    pub cores: f64,
    /// Measured efficiency of each implementation: the formulas give how an algorithm's
    /// time scales with ranks and bytes; these factors, fitted by calibration to the
    /// algorithm's measured times, give what its implementation achieves on this machine
    /// (as NCCL's tuning tables carry a latency and a bandwidth per algorithm).
    pub efficiency: Vec<Efficiency>,
    /// Peers' buffers can be mapped into each rank (the transport says so), which makes the
    /// `mapped` algorithms candidates. Not part of tuning files: a communicator sets it from
    /// its transport.
    pub peer_memory: bool,
}

/// Seconds per byte of input that the fused kernel of the `mapped` algorithms (every source
/// reduced at once in registers, each element read and converted once) spends on a data
/// type beyond what it spends on f32 with the same operator, indexed as [`Profile::gamma`]
/// and then by the number of sources ([`FUSED_SOURCES`]), for data in cache and out of it;
/// between the two, blended by the footprint as [`Link::beta_at`] blends the link's, and
/// between source counts interpolated in their logarithm. The source count matters for the
/// half types: each source after the second rounds the running value once more (in cache
/// bf16 took 1.7x f32's time with 2 sources, 2.3x with 4).
///
/// Measured with every core running the kernel at once, as every rank of a call does (the
/// two-input kernel's `gamma` is measured on one core). In cache the half types'
/// conversions cost about what `gamma` says (the 4-rank bf16 all-reduce of 2 MiB took 2.1x
/// f32's time on the AMD EPYC VM); out of cache, with every core streaming, the memory is
/// the bound and they mostly hide under it (1.1x at 25 MiB, where `gamma` charges 2.1x
/// per byte).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FusedExtra {
    /// Data in cache.
    pub cache: [[[f64; 3]; 5]; 10],
    /// Data out of cache.
    pub memory: [[[f64; 3]; 5]; 10],
}

/// The source counts [`FusedExtra`] is measured at.
pub const FUSED_SOURCES: [usize; 3] = [2, 4, 8];

/// Correction factors for one algorithm at one world size (see [`Profile::efficiency`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Efficiency {
    /// The collective.
    pub coll: Collective,
    /// The algorithm.
    pub algo: crate::registry::Algorithm,
    /// The world size it was measured at.
    pub ranks: usize,
    /// Measured over the link between hosts (it then applies to worlds of several hosts),
    /// rather than the one inside a host.
    pub inter: bool,
    /// Factor on the latency terms.
    pub latency: f64,
    /// Factor on the transfer and reduction terms when the call's data stays in cache.
    pub bandwidth_cache: f64,
    /// Factor on the transfer and reduction terms when it does not.
    pub bandwidth: f64,
    /// The footprint per core ([`Model::footprint`]) halfway between the two: the factor
    /// for footprint `w` is `bandwidth_cache + (bandwidth - bandwidth_cache) * w / (w +
    /// cache_bytes)`, as [`Link::beta_at`] blends per-byte times.
    pub cache_bytes: f64,
    /// What the three factors leave unexplained: at each size of [`residual_bytes`], the
    /// measured time over the factored prediction (0: not measured). Between those sizes the
    /// correction is interpolated in log(bytes); beyond them the nearest is kept. Three
    /// factors cannot follow every algorithm across the cache transition and the protocol
    /// switches (eager to rendezvous, inline to slots), so, as NCCL's tuning tables are
    /// corrected per size by its tuner, the measured points pin the prediction where they
    /// were taken and the formula carries it between them and to other worlds.
    pub residual: [f32; RESIDUAL_POINTS],
}

/// How many sizes the residual correction of an [`Efficiency`] is measured at.
pub const RESIDUAL_POINTS: usize = RESIDUAL_SIZES.len();

/// The call sizes (the model's `bytes`) of the residual points: powers of 4 from 16 B to 4
/// MiB, then powers of 2 to 64 MiB. Between 4 and 64 MiB the calls' buffers leave the last
/// level cache, and there the times bend more sharply than the fitted factors and than a
/// correction interpolated over a factor of 4 (2-rank shm `mapped` all-reduce: 113-122 us
/// at 4 MiB, 986-1713 at 16; with points only at 16 and 64 MiB, a 25 MiB call was priced
/// 1.2-1.5x its time). PyTorch's gradient buckets (25 MiB by default) fall in that range.
pub const RESIDUAL_SIZES: [usize; 14] = [
    16,
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    8 << 20,
    16 << 20,
    32 << 20,
    64 << 20,
];

/// The call size (the model's `bytes`) of residual point `i` ([`RESIDUAL_SIZES`]).
pub fn residual_bytes(i: usize) -> usize {
    RESIDUAL_SIZES[i]
}

/// The residual point nearest `bytes` (in log(bytes); the smaller on a tie).
pub fn residual_index(bytes: usize) -> usize {
    let l = (bytes.max(1) as f64).log2();
    let dist = |i: usize| ((RESIDUAL_SIZES[i] as f64).log2() - l).abs();
    (0..RESIDUAL_POINTS).min_by(|&a, &b| dist(a).total_cmp(&dist(b))).unwrap_or(0)
}

impl Efficiency {
    /// Applies the factors to `c`, a prediction for a call of `bytes` (the model's `n`) whose
    /// footprint per core is `footprint` bytes, then the residual correction at `bytes`.
    ///
    /// Beyond the largest size measured, [`registry::predict`](crate::registry::predict)
    /// passes the footprint of that size ([`Model::footprint_cap`]), so the factors stay
    /// where it left them: the blend from in-cache to out-of-cache factor is a fitted curve,
    /// and extrapolated past its data it can fall on (3 ranks over shared memory, tree
    /// all-reduce: 0.56 at 64 MiB, 0.33 at 256 MiB, pricing the 256 MiB call at 2.9x the 64
    /// MiB one where it took 3.6x and making it the choice at 1.17x the fastest).
    pub fn apply(&self, c: Cost, footprint: f64, bytes: usize) -> Cost {
        let b = cache_blend(self.bandwidth_cache, self.bandwidth, footprint, self.cache_bytes);
        let scaled =
            Cost { latency: c.latency * self.latency, transfer: c.transfer * b, reduce: c.reduce * b, measured: 0.0 };
        Cost { measured: c.measured, ..scaled * self.residual_at(bytes) }
    }

    /// The largest call size a residual was measured at, if any.
    pub fn largest_measured(&self) -> Option<usize> {
        (0..RESIDUAL_POINTS).rev().find(|&i| self.residual[i].is_finite() && self.residual[i] > 0.0).map(residual_bytes)
    }

    /// The residual correction at a call of `bytes` (1 where none was measured).
    pub fn residual_at(&self, bytes: usize) -> f64 {
        let b = bytes.max(1) as f64;
        // The measured points just below and just above `bytes`.
        let (mut below, mut above) = (None, None);
        for (i, &r) in self.residual.iter().enumerate() {
            if !(r.is_finite() && r > 0.0) {
                continue;
            }
            let point = (residual_bytes(i) as f64, f64::from(r));
            if point.0 <= b {
                below = Some(point);
            } else if above.is_none() {
                above = Some(point);
            }
        }
        match (below, above) {
            (Some((s0, r0)), Some((s1, r1))) => r0 + (r1 - r0) * (b / s0).ln() / (s1 / s0).ln(),
            (Some((_, r)), None) | (None, Some((_, r))) => r,
            (None, None) => 1.0,
        }
    }
}

impl Profile {
    /// Seconds per byte reduced for `dtype` and `op`.
    pub fn gamma(&self, dtype: DataType, op: ReduceOp) -> f64 {
        self.gamma[dtype_index(dtype)][op_index(op)]
    }

    /// Seconds per byte of input the fused kernel spends on `dtype` beyond f32 with `op`
    /// reducing `sources` operands at once, in cache and out of it (see [`Profile::fused`]),
    /// if measured: between the measured source counts interpolated in log(sources), beyond
    /// them the nearest one's.
    pub fn fused_extra(&self, dtype: DataType, op: ReduceOp, sources: f64) -> Option<(f64, f64)> {
        let (d, o) = (dtype_index(dtype), op_index(op));
        let at = |row: &[f64; 3]| {
            let x = (sources.max(1.0).log2() - 1.0).clamp(0.0, 2.0);
            let i = (x.floor() as usize).min(1);
            row[i] + (row[i + 1] - row[i]) * (x - i as f64)
        };
        self.fused.map(|f| (at(&f.cache[d][o]), at(&f.memory[d][o])))
    }

    /// The efficiency factors of `algo` for `coll` measured over the inter-host link
    /// (`inter`) or the intra-host one, at the world size nearest `p` (the smaller on a
    /// tie), if any were.
    pub fn efficiency(
        &self,
        coll: Collective,
        algo: crate::registry::Algorithm,
        p: usize,
        inter: bool,
    ) -> Option<&Efficiency> {
        self.efficiency
            .iter()
            .filter(|e| e.coll == coll && e.algo == algo && e.inter == inter)
            .min_by_key(|e| (e.ranks.abs_diff(p), e.ranks))
    }

    /// Sets the reduction cost of `dtype` and `op`.
    pub fn set_gamma(&mut self, dtype: DataType, op: ReduceOp, secs_per_byte: f64) {
        self.gamma[dtype_index(dtype)][op_index(op)] = secs_per_byte;
    }
}

/// Position of `d` in [`DataType::ALL`].
pub fn dtype_index(d: DataType) -> usize {
    DataType::ALL.iter().position(|&x| x == d).expect("every data type is in ALL")
}

/// Position of `o` in [`ReduceOp::ALL`].
pub fn op_index(o: ReduceOp) -> usize {
    ReduceOp::ALL.iter().position(|&x| x == o).expect("every operator is in ALL")
}

/// A prediction, in seconds, split by what the time goes to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    /// Message latencies (alpha, gap and wake terms).
    pub latency: f64,
    /// Moving bytes (beta and copy terms).
    pub transfer: f64,
    /// Reducing (gamma terms).
    pub reduce: f64,
    /// Terms measured as they are rather than given by a formula: a data type's extra over
    /// f32 in the reduction kernels ([`Model::reduce`], [`Model::reduce_fused`]). The
    /// efficiency factors and residuals, fitted to f32 calls against the formulas, leave
    /// them as they are.
    pub measured: f64,
}

impl Cost {
    /// The predicted time in seconds.
    pub fn total(&self) -> f64 {
        self.latency + self.transfer + self.reduce + self.measured
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            latency: self.latency + o.latency,
            transfer: self.transfer + o.transfer,
            reduce: self.reduce + o.reduce,
            measured: self.measured + o.measured,
        }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

impl std::ops::Mul<f64> for Cost {
    type Output = Cost;
    fn mul(self, k: f64) -> Cost {
        Cost {
            latency: self.latency * k,
            transfer: self.transfer * k,
            reduce: self.reduce * k,
            measured: self.measured * k,
        }
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.1} us (latency {:.1}, transfer {:.1}, reduce {:.1}",
            self.total() * 1e6,
            self.latency * 1e6,
            self.transfer * 1e6,
            self.reduce * 1e6
        )?;
        if self.measured != 0.0 {
            write!(f, ", data type {:.1}", self.measured * 1e6)?;
        }
        write!(f, ")")
    }
}

/// Which link a term is priced on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Between ranks of one host.
    Intra,
    /// Between hosts.
    Inter,
    /// The slowest link any pair of ranks uses: what a flat (host-unaware) algorithm sees.
    Flat,
}

/// One call to price: the collective, its size, the world and the machine.
#[derive(Debug, Clone)]
pub struct Model<'a> {
    /// The collective.
    pub coll: Collective,
    /// The call's bytes: per rank's vector for all-reduce, broadcast and reduce; the gathered
    /// (all-gather) or scattered (reduce-scatter input, all-to-all send) total otherwise.
    pub bytes: usize,
    /// The element type (reduction cost).
    pub dtype: DataType,
    /// The operator (reduction cost).
    pub op: ReduceOp,
    /// The host of every rank (`hosts.len()` is the world size).
    pub hosts: &'a [usize],
    /// The machine.
    pub profile: &'a Profile,
    /// The pipeline chunk size in bytes.
    pub chunk_bytes: usize,
    /// The largest footprint per core the cache curves (the link's [`Link::beta_at`], an
    /// efficiency's blend) are read at; `f64::INFINITY` for none.
    /// [`registry::predict`](crate::registry::predict) sets it for a call larger than any the
    /// profile measured the algorithm at, to the footprint of the largest one measured: a
    /// curve fitted to data is not carried past it. (Carried past it, the shm link's curve,
    /// halfway at 64 MiB of footprint, priced 256 MiB calls at 1.1-1.4x their time, where the
    /// measured time per byte had gone flat.)
    pub footprint_cap: f64,
    /// The call is made in place (output and input one buffer): the footprint counts one
    /// buffer, and each algorithm prices the form it runs in place (its file's cost line:
    /// the own block's copy gone or, for the ring all-gather, the part of it that did not
    /// hide behind the first send; pairwise and mapped all-to-all swap through scratch;
    /// Bruck, which works through a scratch copy of the whole vector either way, as out of
    /// place: [`registry::predict`](crate::registry::predict)).
    /// Only predictions read it: the automatic choice prices calls out of place, since ranks
    /// may differ in the form they call with and must still choose alike.
    pub in_place: bool,
}

impl Model<'_> {
    /// The world size.
    pub fn p(&self) -> usize {
        self.hosts.len()
    }

    /// `n` of the formulas, as a float.
    pub fn n(&self) -> f64 {
        self.bytes as f64
    }

    /// The number of ranks on each host, hosts in order of first appearance.
    pub fn host_sizes(&self) -> Vec<usize> {
        let h = self.hosts.iter().max().map_or(0, |m| m + 1);
        let mut sizes = vec![0; h];
        for &x in self.hosts {
            sizes[x] += 1;
        }
        sizes.retain(|&s| s > 0);
        sizes
    }

    /// The number of hosts.
    pub fn num_hosts(&self) -> usize {
        self.host_sizes().len().max(1)
    }

    /// The most ranks on one host.
    pub fn max_local(&self) -> usize {
        self.host_sizes().into_iter().max().unwrap_or(1)
    }

    /// Bytes each core touches in the call: a rank's input and output (one buffer in place),
    /// times the ranks sharing a core. What decides whether the data stays in cache. At most
    /// [`Model::footprint_cap`].
    pub fn footprint(&self) -> f64 {
        let (n, p) = (self.n(), self.p().max(1) as f64);
        let per_rank = match self.coll {
            _ if self.in_place => n,
            Collective::AllGather | Collective::ReduceScatter => n + n / p,
            _ => 2.0 * n,
        };
        (per_rank * self.oversubscription()).min(self.footprint_cap)
    }

    /// How oversubscribed the busiest host is: ranks per core, at least 1.
    pub fn oversubscription(&self) -> f64 {
        (self.max_local() as f64 / self.profile.cores.max(1e-3)).max(1.0)
    }

    /// The link of `level`.
    pub fn link(&self, level: Level) -> Link {
        match level {
            Level::Intra => self.profile.intra,
            Level::Inter => self.profile.inter,
            Level::Flat if self.num_hosts() > 1 => self.profile.inter,
            Level::Flat => self.profile.intra,
        }
    }

    /// `steps` message steps on `level`, each with `msgs` messages in flight per rank and
    /// `bytes` moved per rank (in all of them together).
    pub fn steps(&self, level: Level, steps: f64, msgs: f64, bytes: f64) -> Cost {
        let l = self.link(level);
        let f = self.oversubscription();
        Cost {
            latency: steps * (l.alpha + (msgs - 1.0).max(0.0) * l.gap + (f - 1.0) * l.wake),
            transfer: steps * bytes * l.beta_at(self.footprint()) * f,
            reduce: 0.0,
            measured: 0.0,
        }
    }

    /// Reducing `bytes` bytes of input: at f32's `gamma` for the operator, which the
    /// efficiency factors (fitted to f32 calls) scale, plus the type's own extra over f32's
    /// kernel as measured ([`Cost::measured`]), which they leave. Scaled with the rest, the
    /// half types' extra came out at half or less of what it costs: 2-rank shm
    /// halving-doubling all-reduce of 16 MiB, bf16 357 us over f32 (`oxccl-bench
    /// --compare`, `-n 20`) where the kernels' speeds give 384 and the scaled price gave 200;
    /// at 4 ranks on 2 cores 1.9-2.5 ms, priced 0.62.
    pub fn reduce(&self, bytes: f64) -> Cost {
        let f = self.oversubscription();
        let (own, f32) = (self.profile.gamma(self.dtype, self.op), self.profile.gamma(DataType::F32, self.op));
        Cost { reduce: bytes * f32 * f, measured: bytes * (own - f32) * f, ..Cost::default() }
    }

    /// Reducing `bytes` bytes of input, `sources` operands at once, in the fused kernel of
    /// the `mapped` algorithms: `(sources - 1) / sources · bytes` reduced at f32's price for
    /// the operator, plus the type's own extra per byte of input ([`Profile::fused`]) at
    /// the call's footprint. Profiles without that figure price it as `reduce` does.
    pub fn reduce_fused(&self, sources: f64, bytes: f64) -> Cost {
        let share = (sources - 1.0).max(0.0) / sources.max(1.0) * bytes;
        match self.profile.fused_extra(self.dtype, self.op, sources) {
            Some((cache, memory)) => Cost {
                reduce: share * self.profile.gamma(DataType::F32, self.op) * self.oversubscription(),
                measured: bytes
                    * cache_blend(cache, memory, self.footprint(), self.profile.intra.cache_bytes)
                    * self.oversubscription(),
                ..Cost::default()
            },
            None => self.reduce(share),
        }
    }

    /// Copying `bytes` bytes locally.
    pub fn copy(&self, bytes: f64) -> Cost {
        Cost { transfer: bytes * self.profile.copy * self.oversubscription(), ..Cost::default() }
    }

    /// How far the call's footprint is out of cache: `w / (w + cache_bytes)` of the flat
    /// link's curve ([`Link::beta_at`]'s blend), from 0 (all in cache) towards 1.
    pub fn out_of_cache_share(&self) -> f64 {
        let w = self.footprint();
        w / (w + self.link(Level::Flat).cache_bytes.max(1.0))
    }

    /// Copying the rank's own block of `bytes` bytes from its input into its output: a local
    /// copy out of place, nothing in place (the block is already where it belongs).
    pub fn place_own(&self, bytes: f64) -> Cost {
        if self.in_place {
            Cost::default()
        } else {
            self.copy(bytes)
        }
    }

    /// How many chunks of at most `chunk_bytes` a message of `bytes` is cut into (at least 1).
    pub fn chunks(&self, bytes: f64) -> f64 {
        (bytes / self.chunk_bytes.max(1) as f64).ceil().max(1.0)
    }

    /// A pipeline of `hops` hops on `level` carrying `bytes` in chunks, each chunk forwarded
    /// as soon as it arrives, with `fanout` sends of each chunk per forwarding rank: the first
    /// chunk crosses every hop, then the others follow one per chunk time.
    ///
    /// Two bounds keep the fill from being priced as a saving. The busiest rank sends
    /// `fanout` copies of every chunk, so the transfer takes at least `fanout · bytes` worth
    /// of sends however few chunks there are (without it, one chunk crossing two hops was
    /// priced at half the steady pipeline). And with more ranks than cores, the ranks that
    /// wait for the first chunk give their core to the ranks that work: the fill's idle time
    /// shrinks by the oversubscription. (Measured: the 3-rank shm tree all-reduce of 4 MiB
    /// took 2.3-2.6 ms at every chunk size from 64 KiB to 2 MiB, where the formula without
    /// the bounds priced 2 MiB chunks at 0.6x 512 KiB ones; at 8 ranks 16 MiB chunks of 8 MiB
    /// were as fast as any.)
    pub fn pipeline(&self, level: Level, hops: f64, fanout: f64, bytes: f64) -> Cost {
        if hops <= 0.0 {
            return Cost::default();
        }
        let k = self.chunks(bytes);
        let c = bytes / k;
        let l = self.link(level);
        let f = self.oversubscription();
        let chunk_times = (hops / f + (k - 1.0) * fanout).max(k * fanout);
        Cost {
            latency: hops * (l.alpha + (f - 1.0) * l.wake) + (k - 1.0) * fanout * l.gap,
            transfer: chunk_times * c * l.beta_at(self.footprint()) * f,
            reduce: 0.0,
            measured: 0.0,
        }
    }

    /// `ceil(lg p)`.
    pub fn log2_ceil(&self) -> f64 {
        ceil_log2(self.p()) as f64
    }

    /// The largest power of two not above p, and whether p is one.
    pub fn pow2(&self) -> (f64, bool) {
        let p = self.p().max(1);
        let q = 1usize << (usize::BITS - 1 - p.leading_zeros());
        (q as f64, q == p)
    }
}

/// `ceil(lg p)` (0 for p <= 1).
pub fn ceil_log2(p: usize) -> u32 {
    if p <= 1 {
        0
    } else {
        usize::BITS - (p - 1).leading_zeros()
    }
}

/// A cost formula, one per algorithm of each collective.
pub type CostFn = fn(&Model<'_>) -> Cost;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn profile() -> Profile {
        let link = Link { alpha: 1e-6, gap: 0.2e-6, beta: 1e-10, beta_cache: 1e-10, cache_bytes: 1e6, wake: 5e-6 };
        Profile {
            intra: link,
            inter: Link { alpha: 10e-6, beta: 1e-9, ..link },
            gamma: [[2e-11; 5]; 10],
            fused: None,
            copy: 5e-11,
            cores: 2.0,
            efficiency: Vec::new(),
            peer_memory: false,
        }
    }

    #[test]
    fn residuals_pin_measured_sizes_and_interpolate_between() {
        let mut e = Efficiency {
            coll: Collective::AllReduce,
            algo: crate::registry::Algorithm::Ring,
            ranks: 2,
            inter: false,
            latency: 2.0,
            bandwidth_cache: 1.0,
            bandwidth: 1.0,
            cache_bytes: 1.0,
            residual: [0.0; RESIDUAL_POINTS],
        };
        let c = Cost { latency: 1.0, transfer: 1.0, ..Cost::default() };
        assert_eq!(e.apply(c, 0.0, 1 << 20).total(), 3.0, "no residuals: the factors alone");
        e.residual[2] = 0.5; // 256 B
        e.residual[4] = 2.0; // 4 KiB
        assert_eq!(e.residual_at(256), 0.5);
        assert_eq!(e.residual_at(4096), 2.0);
        assert_eq!(e.residual_at(1), 0.5, "below the first point: the first");
        assert_eq!(e.residual_at(1 << 30), 2.0, "beyond the last: the last");
        // 1 KiB is halfway between 256 B and 4 KiB in log(bytes).
        assert!((e.residual_at(1024) - 1.25).abs() < 1e-12);
        assert_eq!(e.apply(c, 0.0, 4096).total(), 6.0);
        // Measured terms pass as they are.
        assert_eq!(e.apply(Cost { measured: 0.5, ..c }, 0.0, 4096).total(), 6.5);
        for i in 0..RESIDUAL_POINTS {
            assert_eq!(residual_index(residual_bytes(i)), i);
            assert_eq!(residual_index(residual_bytes(i) * 13 / 10), i, "rounded in log(bytes)");
            assert_eq!(residual_index(residual_bytes(i) * 10 / 13), i, "rounded in log(bytes)");
        }
        // 6 MiB lies nearer 8 MiB than 4 in log(bytes); 1.5 KiB nearer 1 KiB than 4.
        assert_eq!(residual_bytes(residual_index(6 << 20)), 8 << 20);
        assert_eq!(residual_bytes(residual_index(1536)), 1 << 10);
        // Every power of 4 up to 64 MiB (the points of tuning files of version 1) is a point.
        for k in 0..12 {
            assert_eq!(residual_bytes(residual_index(16 << (2 * k))), 16 << (2 * k));
        }
        assert_eq!(residual_index(0), 0);
        assert_eq!(residual_index(1 << 40), RESIDUAL_POINTS - 1);
    }

    #[test]
    fn helpers_count_as_documented() {
        let pr = profile();
        let hosts = [0, 0];
        let m = Model {
            coll: Collective::AllReduce,
            bytes: 1 << 20,
            dtype: DataType::F32,
            op: ReduceOp::Sum,
            hosts: &hosts,
            profile: &pr,
            chunk_bytes: 1 << 18,
            footprint_cap: f64::INFINITY,
            in_place: false,
        };
        assert_eq!(m.oversubscription(), 1.0);
        let s = m.steps(Level::Intra, 2.0, 3.0, 1000.0);
        assert!((s.latency - 2.0 * (1e-6 + 2.0 * 0.2e-6)).abs() < 1e-15);
        assert!((s.transfer - 2.0 * 1000.0 * 1e-10).abs() < 1e-18);
        assert_eq!(m.chunks(1.0), 1.0);
        assert_eq!(m.chunks((1 << 20) as f64), 4.0);
        let p = m.pipeline(Level::Intra, 3.0, 1.0, (1 << 20) as f64);
        // First chunk over 3 hops, then 3 more chunks one chunk time each.
        let c = (1 << 18) as f64;
        assert!((p.transfer - 6.0 * c * 1e-10).abs() < 1e-15);
        // Two sends of each chunk per rank, two hops: never less than two sends of every
        // chunk, however few chunks (one chunk would otherwise cost two hops of one send).
        for k in [1.0, 2.0, 4.0] {
            let t = m.pipeline(Level::Intra, 2.0, 2.0, k * c).transfer;
            assert!((t - 2.0 * k * c * 1e-10).abs() < 1e-15, "{k} chunks: {t}");
        }
        // Deeper than the sends: the fill shows.
        let t = m.pipeline(Level::Intra, 6.0, 2.0, c).transfer;
        assert!((t - 6.0 * c * 1e-10).abs() < 1e-15);
        assert_eq!(ceil_log2(1), 0);
        assert_eq!(ceil_log2(5), 3);
        assert_eq!(ceil_log2(8), 3);
        let four = [0, 0, 0, 0];
        let m4 = Model { hosts: &four, ..m.clone() };
        assert_eq!(m4.oversubscription(), 2.0);
        // Oversubscribed twice over (per-byte work twice as slow): the six hops' fill counts
        // for three chunk times, then one more chunk of two sends.
        let t = m4.pipeline(Level::Intra, 6.0, 2.0, 2.0 * c).transfer;
        assert!((t - 2.0 * 5.0 * c * 1e-10).abs() < 1e-15, "{t}");
        // Two hops of two sends: the fill (one chunk time) is below the busiest rank's sends.
        let t = m4.pipeline(Level::Intra, 2.0, 2.0, 2.0 * c).transfer;
        assert!((t - 2.0 * 4.0 * c * 1e-10).abs() < 1e-15, "{t}");
        assert_eq!(m4.pow2(), (4.0, true));
        let two_hosts = [0, 1, 0, 1, 1];
        let mh = Model { hosts: &two_hosts, ..m };
        assert_eq!(mh.host_sizes(), vec![2, 3]);
        assert_eq!(mh.link(Level::Flat), pr.inter);
        assert_eq!(mh.pow2(), (4.0, false));
    }

    #[test]
    fn fused_reduction_charges_f32_then_the_types_measured_extra() {
        let mut pr = profile();
        pr.gamma[dtype_index(DataType::Bf16)] = [8e-11; 5];
        let hosts = [0, 0, 0, 0];
        let m = |pr: &Profile, dtype| {
            let m = Model {
                coll: Collective::AllReduce,
                bytes: 1 << 20,
                dtype,
                op: ReduceOp::Max,
                hosts: &hosts,
                profile: pr,
                chunk_bytes: 1 << 18,
                footprint_cap: f64::INFINITY,
                in_place: false,
            };
            (m.reduce_fused(4.0, 1000.0), m.reduce(750.0))
        };
        // Without the figure: the two-input kernel's price of the same reduction, f32's
        // (2e-11 a byte) with the formula's terms and bf16's extra over it measured.
        let (fused, pair) = m(&pr, DataType::Bf16);
        assert_eq!(fused, pair);
        assert!((fused.reduce - 2.0 * 750.0 * 2e-11).abs() < 1e-20, "oversubscribed twice: {fused}");
        assert!((fused.measured - 2.0 * 750.0 * 6e-11).abs() < 1e-20, "{fused}");
        // With it: f32's price for 3/4 of the bytes, then the extra on every byte of input.
        let mut extra = FusedExtra { cache: [[[0.0; 3]; 5]; 10], memory: [[[0.0; 3]; 5]; 10] };
        extra.cache[dtype_index(DataType::Bf16)][op_index(ReduceOp::Max)] = [1e-12, 3e-12, 5e-12];
        extra.memory[dtype_index(DataType::Bf16)][op_index(ReduceOp::Max)] = [0.0, 1e-12, 4e-12];
        pr.fused = Some(extra);
        // Read at the source count, interpolated in its logarithm, the nearest beyond.
        let at = |s: f64| pr.fused_extra(DataType::Bf16, ReduceOp::Max, s).unwrap();
        assert_eq!(at(4.0), (3e-12, 1e-12));
        assert!((at(2f64.powf(1.5)).0 - 2e-12).abs() < 1e-24 && (at(2f64.powf(2.5)).1 - 2.5e-12).abs() < 1e-24);
        assert_eq!((at(1.0), at(2.0), at(8.0), at(64.0)), ((1e-12, 0.0), (1e-12, 0.0), (5e-12, 4e-12), (5e-12, 4e-12)));
        // 1 MiB in and out on each of 2 ranks per core: a footprint of 4 MiB, 4x the
        // link's halfway point, so 4/5 of the way from the in-cache figure.
        // The extra is measured, apart from the formula's terms.
        let (fused, _) = m(&pr, DataType::Bf16);
        let per_byte = 3e-12 - 2e-12 * 4.0 * 1048576.0 / (4.0 * 1048576.0 + 1e6);
        assert!((fused.reduce - 2.0 * 750.0 * 2e-11).abs() < 1e-20, "{fused}");
        assert!((fused.measured - 2.0 * 1000.0 * per_byte).abs() < 1e-20, "{fused}");
        let (f32_fused, f32_pair) = m(&pr, DataType::F32);
        assert_eq!(f32_fused, f32_pair, "f32 prices as before");
        // The three mapped formulas, which run the fused kernel, charge it: the extra on the
        // call's n bytes of input from its p sources; f32 none.
        for (coll, cost) in [
            (Collective::AllReduce, crate::all_reduce::mapped::cost as CostFn),
            (Collective::ReduceScatter, crate::reduce_scatter::mapped::cost),
            (Collective::Reduce, crate::reduce::mapped::cost),
        ] {
            for dtype in [DataType::Bf16, DataType::F32] {
                let m = Model {
                    coll,
                    bytes: 1 << 20,
                    dtype,
                    op: ReduceOp::Max,
                    hosts: &hosts,
                    profile: &pr,
                    chunk_bytes: 1 << 18,
                    footprint_cap: f64::INFINITY,
                    in_place: false,
                };
                let want = m.reduce_fused(4.0, m.n()).measured;
                assert_eq!(cost(&m).measured, want, "{coll} {dtype}");
                assert_eq!(want > 0.0, dtype == DataType::Bf16, "{coll} {dtype}: {want}");
            }
        }
    }

    #[test]
    fn calls_in_place_are_priced_in_their_own_form() {
        use crate::registry::{algorithms, cost_formula, Algorithm};
        fn at<'a>(pr: &'a Profile, coll: Collective, hosts: &'a [usize], in_place: bool) -> Model<'a> {
            Model {
                coll,
                bytes: 12 << 20,
                dtype: DataType::F32,
                op: ReduceOp::Sum,
                hosts,
                profile: pr,
                chunk_bytes: 1 << 18,
                footprint_cap: f64::INFINITY,
                in_place,
            }
        }
        let pr = profile();
        let model = |coll, hosts, in_place| at(&pr, coll, hosts, in_place);
        let (two, three, four, eight) = ([0usize; 2], [0usize; 3], [0usize; 4], [0usize; 8]);
        let four = &four[..];
        let n = (12 << 20) as f64;
        // One buffer in place; out of place the input and output (the block's share where it
        // is a block).
        for (coll, out) in [
            (Collective::AllReduce, 2.0 * n),
            (Collective::AllGather, n + n / 2.0),
            (Collective::ReduceScatter, n + n / 2.0),
            (Collective::AllToAll, 2.0 * n),
        ] {
            assert_eq!(model(coll, &two, false).footprint(), out, "{coll}");
            assert_eq!(model(coll, &two, true).footprint(), n, "{coll}");
        }
        // The test profile's link costs the same in cache and out of it, so what differs is
        // the form alone.
        let (m, mi) = (model(Collective::AllGather, four, false), model(Collective::AllGather, four, true));
        let diff = |f: CostFn| f(&m).total() - f(&mi).total();
        let own = m.copy(n / 4.0).total();
        // The ring's own copy hides behind its first send in cache: in place saves its
        // out-of-cache share only (one buffer of 12 MiB per rank, two ranks per core of the
        // profile's two, against the curve's 1 MB).
        let share = (24 << 20) as f64 / ((24 << 20) as f64 + 1e6);
        assert_eq!(mi.out_of_cache_share(), share);
        assert!((diff(crate::all_gather::ring::cost) - own * share).abs() < 1e-15, "the ring's own block");
        assert!((diff(crate::all_gather::mapped::cost) - own).abs() < 1e-15, "mapped: the own block");
        assert!((diff(crate::all_gather::mapped_ring::cost) - own).abs() < 1e-15, "mapped ring: the own block");
        let (m, mi) = (model(Collective::ReduceScatter, four, false), model(Collective::ReduceScatter, four, true));
        let rs = crate::reduce_scatter::mapped_ring::cost;
        assert!((rs(&m).total() - rs(&mi).total() - own).abs() < 1e-15, "mapped ring reduce-scatter");
        // Pairwise all-to-all in place: one pair at a time, p-1 steps, every block sent
        // through scratch; dearer than posting every exchange at once.
        let (m, mi) = (model(Collective::AllToAll, four, false), model(Collective::AllToAll, four, true));
        let pw = crate::all_to_all::pairwise::cost;
        let want = mi.steps(Level::Flat, 3.0, mi.chunks(n / 4.0), n / 4.0) + mi.copy(0.75 * n);
        assert_eq!(pw(&mi), want);
        assert!(pw(&mi).total() > pw(&m).total());
        // Small calls in place on more than 2 ranks copy the whole vector and exchange as
        // out of place; at 2 ranks they swap, the one round that is.
        let small = |hosts, in_place| Model { bytes: 64 << 10, ..at(&pr, Collective::AllToAll, hosts, in_place) };
        let (so, si) = (small(four, false), small(four, true));
        let k = (64 << 10) as f64;
        assert_eq!(pw(&si), so.steps(Level::Flat, 1.0, 3.0 * so.chunks(k / 4.0), 0.75 * k) + si.copy(k));
        assert_eq!(pw(&si).total() - pw(&so).total(), so.copy(k - k / 4.0).total());
        let si = small(&two, true);
        assert_eq!(pw(&si), si.steps(Level::Flat, 1.0, si.chunks(k / 2.0), k / 2.0) + si.copy(k / 2.0));
        // Mapped all-to-all in place: half of each pair's two blocks, three copies each.
        let ma = crate::all_to_all::mapped::cost;
        assert!((ma(&mi).total() - ma(&m).total() - m.copy(1.125 * n - n).total()).abs() < 1e-15);
        // Bruck runs through a full scratch copy in either form: priced alike, even where the
        // link's time per byte depends on the footprint.
        let mut curved = profile();
        curved.intra.beta_cache = curved.intra.beta / 3.0;
        for coll in [Collective::AllGather, Collective::AllToAll] {
            let (o, i) = (at(&curved, coll, four, false), at(&curved, coll, four, true));
            let bruck = |m: &Model<'_>| crate::registry::predict(Algorithm::Bruck, m).expect("bruck");
            assert_eq!(bruck(&i), bruck(&o), "{coll}");
        }
        // Every other formula is no dearer in place (the own copy, if any, goes) and changes
        // by nothing else at 2-8 ranks on one host.
        for coll in [Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter, Collective::Broadcast] {
            for &algo in algorithms(coll) {
                if algo == Algorithm::Hierarchical {
                    continue;
                }
                for hosts in [&two[..], &three, four, &eight] {
                    let f = cost_formula(coll, algo).expect("a formula");
                    let (o, i) = (f(&model(coll, hosts, false)), f(&model(coll, hosts, true)));
                    assert!(i.total() <= o.total(), "{coll} {algo:?} at {}: {i} > {o}", hosts.len());
                    assert_eq!((i.latency, i.reduce), (o.latency, o.reduce), "{coll} {algo:?}");
                }
            }
        }
    }
}
