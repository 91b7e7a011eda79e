//! Predicting collectives without running them: the alpha-beta-gamma model of
//! [`oxccl_algorithms::cost`], the machine profiles it is priced with, and their calibration.
//!
//! A [`Profile`] holds what a machine's links and kernels cost: for the link between ranks
//! of one host and the link between hosts, `alpha` (latency of a message), `gap` (each
//! further message in flight), `beta` (seconds per byte) and `wake` (scheduling a descheduled
//! receiver when ranks outnumber cores); `gamma` per data type and operator (reduction), a
//! copy cost and the cores. Profiles are measured by `oxccl-bench --calibrate`, which writes
//! a [`TuningFile`] (JSON, one entry per host and transport); a communicator loads the file
//! named by `OXCCL_TUNING_FILE`, else the built-in profile measured on the development
//! machine ([`TuningFile::builtin`]), and every rank uses rank 0's profile so that all
//! choose alike.
//!
//! ```
//! use oxccl::cost::{self, TuningFile};
//! use oxccl::{Collective, DataType, ReduceOp};
//!
//! // 8 ranks on 2 hosts of 4: this machine's shared memory inside each host (the built-in
//! // profile), and between hosts a network with a tenth of its bandwidth and 20 us latency.
//! let mut profile = TuningFile::builtin().profile("any-host", "shm");
//! profile.inter.alpha = 20e-6;
//! profile.inter.beta = 10.0 * profile.intra.beta;
//! profile.inter.beta_cache = 10.0 * profile.intra.beta_cache;
//! let hosts = [0, 0, 0, 0, 1, 1, 1, 1];
//! let call = cost::Call::new(Collective::AllReduce, 64 << 20, DataType::F32, ReduceOp::Sum);
//! let (algo, t) = cost::best(&call, &hosts, &profile);
//! assert_eq!(algo.name(), "hierarchical");
//! let ring = cost::predict(&call, oxccl::Algorithm::Ring, &hosts, &profile).unwrap();
//! assert!(t.total() < ring.total());
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::SharedBuffer;
pub use oxccl_algorithms::cost::{
    ceil_log2, residual_bytes, residual_index, Cost, Efficiency, FusedExtra, Level, Link, Model, Profile,
    FUSED_SOURCES, RESIDUAL_POINTS, RESIDUAL_SIZES,
};
use oxccl_algorithms::registry;
use oxccl_algorithms::{Algorithm, Collective, DataType, ReduceOp};
use serde::{Deserialize, Serialize};

use crate::communicator::Communicator;
use crate::error::{Error, Result};

/// One collective call to price.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Call {
    /// The collective.
    pub coll: Collective,
    /// Its bytes: per rank's vector for all-reduce, broadcast and reduce; the gathered or
    /// scattered total for all-gather, reduce-scatter and all-to-all (nccl-tests' size).
    pub bytes: usize,
    /// The element type.
    pub dtype: DataType,
    /// The operator (ignored by collectives that do not reduce).
    pub op: ReduceOp,
    /// Pipeline chunk size in bytes.
    pub chunk_bytes: usize,
    /// Made in place (output and input one buffer, as DDP's all-reduce and FSDP's
    /// all-gather are). Priced by each algorithm's in-place form; the automatic choice
    /// itself prices calls out of place, since ranks may mix the two forms (see
    /// [`Model::in_place`]).
    pub in_place: bool,
}

/// The configuration's default chunk size, which [`Call::new`] prices at and calibration
/// measures at.
fn default_chunk_bytes() -> usize {
    crate::Config::default().chunk_bytes
}

impl Call {
    /// An out-of-place call with the default chunk size (512 KiB).
    pub fn new(coll: Collective, bytes: usize, dtype: DataType, op: ReduceOp) -> Call {
        Call { coll, bytes, dtype, op, chunk_bytes: default_chunk_bytes(), in_place: false }
    }

    /// The same call made in place (`true`) or out of place.
    ///
    /// ```
    /// use oxccl::cost::{self, Call, TuningFile};
    /// use oxccl::{Algorithm, Collective, DataType, ReduceOp};
    ///
    /// let profile = TuningFile::builtin().profile("any-host", "shm");
    /// let hosts = [0, 0, 0, 0];
    /// let out = Call::new(Collective::AllGather, 64 << 20, DataType::F32, ReduceOp::Sum);
    /// let ring = |c: &Call| cost::predict(c, Algorithm::Ring, &hosts, &profile).unwrap().total();
    /// // In place the ring has no own block to copy, a copy that at 64 MiB (out of cache)
    /// // does not hide behind its sends.
    /// assert!(ring(&out.with_in_place(true)) < ring(&out));
    /// ```
    pub fn with_in_place(self, in_place: bool) -> Call {
        Call { in_place, ..self }
    }

    fn model<'a>(&self, hosts: &'a [usize], profile: &'a Profile) -> Model<'a> {
        Model {
            coll: self.coll,
            bytes: self.bytes,
            dtype: self.dtype,
            op: self.op,
            hosts,
            profile,
            chunk_bytes: self.chunk_bytes,
            footprint_cap: f64::INFINITY,
            in_place: self.in_place,
        }
    }
}

/// The predicted time of `algo` for `call` in a world whose rank r runs on host `hosts[r]`;
/// `None` if the collective has no such algorithm.
pub fn predict(call: &Call, algo: Algorithm, hosts: &[usize], profile: &Profile) -> Option<Cost> {
    registry::predict(algo, &call.model(hosts, profile))
}

/// Whether `algo` is a candidate on this world: the hierarchical algorithms only where
/// there are several hosts (on one they are a slower flat algorithm), the mapped ones only
/// on one host whose transport maps peers' memory ([`Profile::peer_memory`]).
pub fn applies(algo: Algorithm, hosts: &[usize], profile: &Profile) -> bool {
    let one_host = hosts.iter().all(|&h| h == hosts[0]);
    match algo {
        Algorithm::Hierarchical => !one_host,
        Algorithm::Mapped => one_host && profile.peer_memory,
        _ => true,
    }
}

/// Every candidate algorithm of `call.coll` with its predicted time at `call.chunk_bytes`,
/// fastest first (the communicator's choice, [`crate::select::candidates`], with that
/// chunk size fixed). A call in place is priced in place, each algorithm at the chunk size
/// the choice takes for it.
pub fn rank_algorithms(call: &Call, hosts: &[usize], profile: &Profile) -> Vec<(Algorithm, Cost)> {
    let cfg = crate::Config::default().with_chunk_bytes(call.chunk_bytes);
    let mut ranked: Vec<(Algorithm, Cost)> =
        crate::select::candidates(call.coll, call.bytes, call.dtype, call.op, hosts, profile, &cfg)
            .into_iter()
            .map(|c| {
                let priced = if call.in_place {
                    predict(&Call { chunk_bytes: c.chunk_bytes, ..*call }, c.algo, hosts, profile)
                } else {
                    None
                };
                (c.algo, priced.unwrap_or(c.predicted))
            })
            .collect();
    ranked.sort_by(|a, b| a.1.total().total_cmp(&b.1.total()));
    ranked
}

/// The algorithm of least predicted time for `call`, and that time.
pub fn best(call: &Call, hosts: &[usize], profile: &Profile) -> (Algorithm, Cost) {
    rank_algorithms(call, hosts, profile)
        .into_iter()
        .next()
        .unwrap_or((registry::algorithms(call.coll).first().copied().unwrap_or(Algorithm::Ring), Cost::default()))
}

/// The format version of the tuning files this build writes. Version 1 files (residuals
/// and calibration times at powers of 4 from 16 B to 64 MiB only) are read and brought to
/// it: their points move to where those sizes sit now, and the sizes they lack (8 and 32
/// MiB) stay unmeasured (0), so the correction is interpolated there as before.
pub const TUNING_VERSION: u32 = 2;

/// How many residual points files of version 1 carried: powers of 4 from 16 B to 64 MiB,
/// each of them a size of [`RESIDUAL_SIZES`] still.
const RESIDUAL_POINTS_V1: usize = 12;

/// A tuning file: measured profiles, one entry per host and transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningFile {
    /// The format version ([`TUNING_VERSION`]; files of version 1 are read too).
    pub oxccl_tuning: u32,
    /// The entries.
    pub entries: Vec<TuningEntry>,
}

/// What one transport on one host costs, as measured by [`calibrate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningEntry {
    /// The host name (`*`: any host).
    pub host: String,
    /// The processor it was measured on, as [`cpu_model`] names it (`AMD EPYC`, `Intel
    /// Xeon`); it applies to every machine whose processor's name contains it. Empty: any
    /// processor (files from before processors were recorded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
    /// The transport: `shm`, `tcp`, `loopback`.
    pub transport: String,
    /// Cores per host on the machine measured, as the calibrating communicator counted them
    /// (its ranks' CPUs, a host's share where several hosts shared the machine): what the
    /// oversubscription terms were fitted with. A communicator prices with the cores its own
    /// ranks have instead.
    pub cores: f64,
    /// Latency of a small message, microseconds (half a ping-pong round trip).
    pub alpha_us: f64,
    /// Each further small message in flight, microseconds.
    pub gap_us: f64,
    /// Extra per message step per unit of oversubscription, microseconds.
    pub wake_us: f64,
    /// The world size `wake_us` was measured at (0: not measured, a default).
    #[serde(default)]
    pub wake_ranks: usize,
    /// Bytes per second (in GB/s) one rank moves while its peer moves as many back, for
    /// messages far larger than the caches.
    pub bandwidth_gbs: f64,
    /// The same for messages that stay in cache.
    pub cache_bandwidth_gbs: f64,
    /// Footprint per core (KiB) halfway between the two bandwidths (see [`Link::beta_at`]).
    pub cache_kib: f64,
    /// Local copy speed, GB/s.
    pub copy_gbs: f64,
    /// Reduction speed in GB/s of input, keyed `type.op` (`float.sum`, `bfloat16.max`).
    pub reduce_gbs: BTreeMap<String, f64>,
    /// Speed of the fused kernel of the `mapped` algorithms (s sources reduced into s
    /// destinations) in GB/s of input per core, with every core running it at once, keyed
    /// as `reduce_gbs`: `[in cache, out of cache]` at each of 2, 4 and 8 sources. What a
    /// type costs beyond f32 there prices those algorithms
    /// ([`oxccl_algorithms::cost::Profile::fused`]). Empty in files from before it was
    /// measured.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fused_gbs: BTreeMap<String, FusedSpeeds>,
    /// Measured efficiency of each algorithm (see [`Profile::efficiency`]), keyed
    /// `collective.algorithm`: `[ranks, latency factor, in-cache bandwidth factor,
    /// out-of-cache bandwidth factor, halfway footprint in bytes, residual...]` per world
    /// size calibrated, where the optional residuals are [`Efficiency::residual`] at the
    /// sizes of [`residual_bytes`] (0: not measured).
    #[serde(default)]
    pub efficiency: BTreeMap<String, Vec<Vec<f64>>>,
    /// How and when it was measured: `oxccl-bench --calibrate` writes
    /// [`TuningEntry::describe_runs`] here; edit it to say more (the build, what else ran).
    #[serde(default)]
    pub measured: String,
    /// How many calibrations the efficiency rows of each world size (the key) average (see
    /// [`TuningEntry::average_with`]); a world size not listed: one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, u32>,
    /// The raw measurements the figures above are fitted to, every run's, so that runs
    /// averaged by [`TuningEntry::average_with`] are refitted on each point's median.
    #[serde(default, skip_serializing_if = "Samples::is_empty")]
    pub samples: Samples,
}

/// The fused kernel's speeds for one type and operator (see [`TuningEntry::fused_gbs`]):
/// `[in cache, out of cache]` GB/s at each of [`FUSED_SOURCES`].
pub type FusedSpeeds = [[f64; 2]; 3];

/// What calibrations measured, before fitting (see [`TuningEntry::samples`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// The link and copy figures of each run that measured them: `[alpha_us, gap_us,
    /// bandwidth_gbs, cache_bandwidth_gbs, cache_kib, copy_gbs]`.
    #[serde(default)]
    pub link: Vec<[f64; 6]>,
    /// Microseconds per call (f32 sum, out of place, the slowest rank's), keyed as
    /// [`TuningEntry::efficiency`]: one row per run, `[ranks, hosts, time at each size of
    /// residual_bytes...]` (0: not measured); the ranks are taken to be spread over the
    /// hosts evenly, in blocks.
    #[serde(default)]
    pub times: BTreeMap<String, Vec<Vec<f64>>>,
    /// The fused kernel's speeds ([`TuningEntry::fused_gbs`]) of each run that measured
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fused: Vec<BTreeMap<String, FusedSpeeds>>,
    /// `[ranks, nanoseconds]` for each run that recorded it: the slowest cache-line round
    /// trip between the machine's CPUs just before the run ([`crate::probe`]). Where a VM's
    /// cores sat far apart, every transfer of that run was slower; the fit does not use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_trip: Vec<[f64; 2]>,
    /// `[ranks, seconds since the Unix epoch]`: when each run that recorded it started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started: Vec<[f64; 2]>,
    /// `[ranks, points timed, timed far, timed again near, left out]` for each run that
    /// recorded it: of the run's (collective, size) points, how many calibration found timed
    /// with the cores far apart (the cache-line round trip probed before or after the point
    /// over twice the run's fastest and 100 ns beyond it), how many of those it timed again
    /// once they were near, and how many it left out (0 in `times`) after waiting in vain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<[f64; 5]>,
}

/// `secs` since the Unix epoch as a UTC date and time, `2026-12-07 11:00`.
fn utc_minute(secs: f64) -> String {
    let secs = secs.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to the civil date (Howard Hinnant's days_from_civil, inverted):
    // eras of 400 years of 146,097 days each, years starting on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// Round trips (ns) as groups split where consecutive ones differ by over 2x (the widest
/// such gap: near and far placements of a VM's cores), each `lo-hi ns in N runs`.
fn round_trip_groups(mut ns: Vec<f64>) -> String {
    ns.sort_by(f64::total_cmp);
    let cut = ns
        .windows(2)
        .filter(|w| w[0] > 0.0 && w[1] / w[0] > 2.0)
        .max_by(|a, b| (a[1] / a[0]).total_cmp(&(b[1] / b[0])))
        .map(|w| w[1]);
    let (near, far): (Vec<f64>, Vec<f64>) = ns.iter().partition(|&&x| cut.is_none_or(|c| x < c));
    [near, far]
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| {
            let (lo, hi) = (g[0], g[g.len() - 1]);
            let range = if hi - lo < 0.5 { format!("{lo:.0}") } else { format!("{lo:.0}-{hi:.0}") };
            format!("{range} ns in {} run{}", g.len(), if g.len() == 1 { "" } else { "s" })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl TuningEntry {
    /// How the entry was measured, for [`TuningEntry::measured`]: `how` (the command),
    /// the transport and processor, the runs pooled per world size ([`TuningEntry::runs`]),
    /// when the runs that recorded it started, and the cache-line round trips before them
    /// (a VM's cores far apart make every transfer of a run slower), and where the runs
    /// probed them between sizes ([`Samples::placement`]), how many points they timed far
    /// apart and what became of them.
    ///
    /// ```
    /// use oxccl::cost::TuningFile;
    /// let mut e = TuningFile::builtin().entry_for("h", "AMD EPYC", "shm").unwrap().clone();
    /// e.runs = [("2".to_string(), 2), ("4".to_string(), 1)].into();
    /// e.efficiency.clear();
    /// e.samples.started = vec![[2.0, 1_796_641_200.0], [2.0, 1_796_641_260.0], [4.0, 1_796_641_800.0]];
    /// e.samples.round_trip = vec![[2.0, 61.0], [2.0, 306.0], [4.0, 63.0]];
    /// e.samples.placement.clear();
    /// assert_eq!(
    ///     e.describe_runs("oxccl-bench --calibrate --average"),
    ///     "oxccl-bench --calibrate --average over shm, AMD EPYC, 2 cores: 3 runs pooled (2 at 2 ranks, \
    ///      1 at 4); started 2026-12-07 11:00 to 11:10 UTC; cache-line round trip before the runs \
    ///      61-63 ns in 2 runs, 306 ns in 1 run"
    /// );
    /// ```
    pub fn describe_runs(&self, how: &str) -> String {
        // Every world size calibrated, with its count of runs (`runs`; one where unlisted).
        let sizes: std::collections::BTreeSet<usize> = self
            .efficiency
            .values()
            .flatten()
            .filter_map(|row| row.first().map(|&p| p as usize))
            .chain(self.runs.keys().filter_map(|k| k.parse().ok()))
            .collect();
        let per: Vec<(usize, u32)> =
            sizes.into_iter().map(|p| (p, self.runs.get(&p.to_string()).copied().unwrap_or(1))).collect();
        let total: u32 = per.iter().map(|&(_, n)| n).sum();
        let cpu = if self.cpu.is_empty() { "any processor" } else { &self.cpu };
        let mut s = format!("{how} over {}, {cpu}, {} cores: ", self.transport, self.cores);
        let list = per
            .iter()
            .enumerate()
            .map(|(i, &(p, n))| if i == 0 { format!("{n} at {p} ranks") } else { format!("{n} at {p}") })
            .collect::<Vec<_>>()
            .join(", ");
        s += &format!("{total} run{} pooled ({list})", if total == 1 { "" } else { "s" });
        let starts: Vec<f64> = self.samples.started.iter().map(|r| r[1]).collect();
        if let (Some(a), Some(b)) = (starts.iter().copied().reduce(f64::min), starts.iter().copied().reduce(f64::max)) {
            let (a, b) = (utc_minute(a), utc_minute(b));
            // Runs pooled from files that did not record it have no start time.
            let which =
                if starts.len() < total as usize { format!("{} of them ", starts.len()) } else { String::new() };
            s += &if a == b {
                format!("; {which}started {a} UTC")
            } else if a[..10] == b[..10] {
                format!("; {which}started {a} to {} UTC", &b[11..])
            } else {
                format!("; {which}started {a} to {b} UTC")
            };
        }
        if !self.samples.round_trip.is_empty() {
            let ns = self.samples.round_trip.iter().map(|r| r[1]).collect();
            s += &format!("; cache-line round trip before the runs {}", round_trip_groups(ns));
        }
        let probed = &self.samples.placement;
        if !probed.is_empty() {
            let sum = |i: usize| probed.iter().map(|r| r[i]).sum::<f64>();
            let runs = if probed.len() == 1 { "1 run".to_string() } else { format!("{} runs", probed.len()) };
            s += &format!(
                "; cores probed between sizes in {runs}: {:.0} of {:.0} points timed far apart, {:.0} timed again near, {:.0} left out",
                sum(2),
                sum(1),
                sum(3),
                sum(4)
            );
        }
        s
    }
}

impl Samples {
    /// Whether nothing was recorded (files from before samples were kept).
    pub fn is_empty(&self) -> bool {
        self.link.is_empty() && self.times.is_empty() && self.fused.is_empty()
    }
}

/// Per-run rows (`[ranks, ...]`) of runs pooled at `ranks`: `earlier`'s of that world size
/// before this run's; `mine`'s rows of other world sizes stay (this entry started as a copy
/// of the earlier one).
fn pool_rows<const N: usize>(mine: &mut Vec<[f64; N]>, earlier: &[[f64; N]], ranks: usize) {
    let (here, others): (Vec<[f64; N]>, Vec<[f64; N]>) = mine.iter().partition(|r| r[0] as usize == ranks);
    *mine = others;
    mine.extend(earlier.iter().filter(|r| r[0] as usize == ranks));
    mine.extend(here);
}

/// The median of `xs` (of the middle two, their geometric mean: the figures are ratios
/// at heart); `None` when empty.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] * xs[n / 2]).sqrt()),
    }
}

/// The exact size in bytes [`calibrate`] times `coll` at, for the nominal `size`, over `p`
/// ranks (f32 elements; divided among the ranks where the collective splits its buffer).
fn calibration_bytes(coll: Collective, size: usize, p: usize) -> usize {
    let split = matches!(coll, Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll);
    4 * if split { (size / 4 / p).max(1) * p } else { (size / 4).max(1) }
}

fn gamma_key(d: DataType, o: ReduceOp) -> String {
    format!("{}.{}", d.name(), o.name())
}

impl TuningEntry {
    /// The efficiency table as the model takes it (unknown names are skipped). Keys ending
    /// in `@hosts` were measured on worlds of several hosts.
    pub fn efficiencies(&self) -> Vec<Efficiency> {
        let mut v = Vec::new();
        for (k, rows) in &self.efficiency {
            let (k, inter) = match k.strip_suffix("@hosts") {
                Some(k) => (k, true),
                None => (k.as_str(), false),
            };
            let Some((c, a)) = k.split_once('.') else { continue };
            let (Some(coll), Some(algo)) = (Collective::parse(c), Algorithm::parse(a)) else { continue };
            for row in rows {
                let [ranks, latency, bandwidth_cache, bandwidth, cache_bytes] = match row.get(..5) {
                    Some(&[a, b, c, d, e]) => [a, b, c, d, e],
                    _ => continue,
                };
                let mut residual = [0f32; RESIDUAL_POINTS];
                for (r, &x) in residual.iter_mut().zip(&row[5..]) {
                    *r = x as f32;
                }
                v.push(Efficiency {
                    coll,
                    algo,
                    ranks: ranks as usize,
                    inter,
                    latency,
                    bandwidth_cache,
                    bandwidth,
                    cache_bytes,
                    residual,
                });
            }
        }
        v
    }

    /// Records `e`, replacing a row of the same collective, algorithm and world size.
    pub fn set_efficiency(&mut self, e: &Efficiency) {
        let hosts = if e.inter { "@hosts" } else { "" };
        let rows = self.efficiency.entry(format!("{}.{}{hosts}", e.coll.name(), e.algo.name())).or_default();
        rows.retain(|r| r[0] as usize != e.ranks);
        let mut row = vec![e.ranks as f64, e.latency, e.bandwidth_cache, e.bandwidth, e.cache_bytes];
        if e.residual.iter().any(|&r| r != 0.0) {
            // Four significant digits are plenty for a correction (and keep the file legible).
            row.extend(e.residual.iter().map(|&r| (f64::from(r) * 1e4).round() / 1e4));
        }
        rows.push(row);
        rows.sort_by(|a, b| a[0].total_cmp(&b[0]));
    }

    /// Averages this entry (a calibration at world size `ranks` just made) with `earlier`,
    /// which may average several runs already. Where both carry [`Samples`], the runs are
    /// pooled and refitted: every link figure becomes the median over the runs that measured
    /// the link, every algorithm's time at each size the median over its runs, and every
    /// efficiency row is fitted again to those times against those links. A median, not a
    /// mean, because on this 2-core machine one run now and then is off by 2x for a whole
    /// world size (the scheduler's placement of the ranks holds for the process's life):
    /// of three runs, one bad one then moves nothing. Reduction speeds and the wake cost
    /// are geometric means over the runs. Rows without samples (files from before they
    /// were kept) are averaged as geometric means at `ranks`, each run weighted alike.
    /// Rows `earlier` lacks are kept as they are.
    pub fn average_with(&mut self, earlier: &TuningEntry, ranks: usize) {
        let key = ranks.to_string();
        let k = f64::from(earlier.runs.get(&key).copied().unwrap_or(1));
        let mean = |old: f64, new: &mut f64| {
            if old > 0.0 && *new > 0.0 {
                *new = ((k * old.ln() + new.ln()) / (k + 1.0)).exp();
            }
        };
        let sampled = !earlier.samples.is_empty() && !self.samples.is_empty();
        if sampled {
            // This run's link sample, where it measured the link (a run that reused the
            // earlier figures carries the earlier samples unchanged).
            if self.samples.link != earlier.samples.link {
                let mut link = earlier.samples.link.clone();
                link.extend(self.samples.link.iter().copied());
                self.samples.link = link;
            }
            if self.samples.fused != earlier.samples.fused {
                let mut fused = earlier.samples.fused.clone();
                fused.extend(self.samples.fused.iter().cloned());
                self.samples.fused = fused;
            }
            for (name, rows) in &earlier.samples.times {
                let mine = self.samples.times.entry(name.clone()).or_default();
                // This world size: the earlier runs and this one. Others: this entry's rows
                // where it has any (it usually starts as a copy of `earlier`), else earlier's.
                let mut merged: Vec<Vec<f64>> = Vec::new();
                for r in rows {
                    let here = r[0] as usize == ranks;
                    if here || !mine.iter().any(|m| m[0] == r[0]) {
                        merged.push(r.clone());
                    }
                }
                mine.retain(|r| r[0] as usize == ranks || !merged.iter().any(|m| m[0] == r[0]));
                mine.extend(merged);
                mine.sort_by(|a, b| a[0].total_cmp(&b[0]));
            }
            // The earlier runs' placement tallies of this world size, before this run's.
            pool_rows(&mut self.samples.placement, &earlier.samples.placement, ranks);
            self.apply_link_samples();
        } else {
            mean(earlier.alpha_us, &mut self.alpha_us);
            mean(earlier.gap_us, &mut self.gap_us);
            mean(earlier.bandwidth_gbs, &mut self.bandwidth_gbs);
            mean(earlier.cache_bandwidth_gbs, &mut self.cache_bandwidth_gbs);
            mean(earlier.cache_kib, &mut self.cache_kib);
            mean(earlier.copy_gbs, &mut self.copy_gbs);
        }
        mean(earlier.wake_us, &mut self.wake_us);
        for (name, gbs) in self.reduce_gbs.iter_mut() {
            if let Some(&old) = earlier.reduce_gbs.get(name) {
                mean(old, gbs);
            }
        }
        // Unsampled, the fused kernel's speeds as the two-input kernels' (a run that reused
        // the earlier kernels carries them unchanged); where the earlier runs did not measure
        // them, this run's stand alone. Sampled, they are the runs' medians (above).
        if !sampled {
            if self.fused_gbs.is_empty() {
                self.fused_gbs = earlier.fused_gbs.clone();
            } else {
                for (name, gbs) in self.fused_gbs.iter_mut() {
                    if let Some(old) = earlier.fused_gbs.get(name) {
                        for (o, g) in old.iter().flatten().zip(gbs.iter_mut().flatten()) {
                            mean(*o, g);
                        }
                    }
                }
            }
        }
        let mut averaged = false;
        for (name, rows) in self.efficiency.iter_mut() {
            if sampled && self.samples.times.contains_key(name) {
                continue;
            }
            let Some(old) = earlier.efficiency.get(name).and_then(|r| r.iter().find(|r| r[0] as usize == ranks)) else {
                continue;
            };
            for row in rows.iter_mut().filter(|r| r[0] as usize == ranks) {
                for (i, x) in row.iter_mut().enumerate().skip(1) {
                    // A residual the earlier run did not measure (0) leaves this run's.
                    if let Some(&o) = old.get(i) {
                        mean(o, x);
                    }
                }
                averaged = true;
            }
        }
        // When the pooled runs started and the round trips before them, sampled or not.
        pool_rows(&mut self.samples.round_trip, &earlier.samples.round_trip, ranks);
        pool_rows(&mut self.samples.started, &earlier.samples.started, ranks);
        let mut runs = earlier.runs.clone();
        runs.extend(self.runs.clone());
        if sampled {
            self.fit_samples();
            let pooled = self.samples.times.values().flatten().filter(|r| r[0] as usize == ranks).count();
            let algos = self.samples.times.values().filter(|rows| rows.iter().any(|r| r[0] as usize == ranks)).count();
            if algos > 0 && pooled > algos {
                runs.insert(key, (pooled / algos) as u32);
            }
        } else if averaged {
            runs.insert(key, k as u32 + 1);
        }
        self.runs = runs;
    }

    /// Sets the link and copy figures from [`Samples::link`] (if any): alpha, gap and the
    /// copy speed each their median; the bandwidth curve (its two bandwidths and halfway
    /// point, which only make sense together) the median run's, ranked by its mean log time
    /// per byte over footprints of 64 KiB to 128 MiB.
    fn apply_link_samples(&mut self) {
        // The fused kernel's speeds: each one's median over the runs that measured it.
        if !self.samples.fused.is_empty() {
            let names: std::collections::BTreeSet<&String> = self.samples.fused.iter().flat_map(|f| f.keys()).collect();
            let runs = &self.samples.fused;
            let at = |k: &String, s: usize, i: usize| {
                median(runs.iter().filter_map(|f| f.get(k)).map(|g| g[s][i]).collect())
            };
            let speeds = |k: &String| -> Option<FusedSpeeds> {
                Some([[at(k, 0, 0)?, at(k, 0, 1)?], [at(k, 1, 0)?, at(k, 1, 1)?], [at(k, 2, 0)?, at(k, 2, 1)?]])
            };
            self.fused_gbs = names.into_iter().filter_map(|k| Some((k.clone(), speeds(k)?))).collect();
        }
        let links = &self.samples.link;
        let at = |i: usize| median(links.iter().map(|l| l[i]).collect());
        let (Some(a), Some(g), Some(copy)) = (at(0), at(1), at(5)) else { return };
        let slowness = |l: &[f64; 6]| -> f64 {
            let (bc, b, c) = (1.0 / l[3].max(1e-9), 1.0 / l[2].max(1e-9), l[4] * 1024.0);
            (16..=27).map(|k| f64::from(1u32 << k)).map(|w| (bc + (b - bc) * w / (w + c)).ln()).sum()
        };
        let mut ranked: Vec<&[f64; 6]> = links.iter().collect();
        ranked.sort_by(|x, y| slowness(x).total_cmp(&slowness(y)));
        let curve = ranked[(ranked.len() - 1) / 2];
        self.alpha_us = a;
        self.gap_us = g;
        self.bandwidth_gbs = curve[2];
        self.cache_bandwidth_gbs = curve[3];
        self.cache_kib = curve[4];
        self.copy_gbs = copy;
    }

    /// Fits the whole entry again from its [`Samples`]: the link figures from
    /// [`Samples::link`] (medians, and the median run's bandwidth curve), then every row
    /// with times ([`TuningEntry::fit_samples`]). `oxccl-bench --refit FILE` runs it on
    /// every entry of a file.
    pub fn refit(&mut self) {
        self.apply_link_samples();
        self.fit_samples();
    }

    /// Fits every efficiency row that has [`Samples::times`] again, to each size's median
    /// time over the runs, against this entry's link and kernel figures (see
    /// [`fit_efficiency`]); the rows' residuals are what the factors leave unexplained.
    pub fn fit_samples(&mut self) {
        let mut bare = self.clone();
        bare.efficiency.clear();
        let profile =
            TuningFile { oxccl_tuning: TUNING_VERSION, entries: vec![bare] }.profile(&self.host, &self.transport);
        let mut fitted = Vec::new();
        for (name, rows) in &self.samples.times {
            let (base, inter) = match name.strip_suffix("@hosts") {
                Some(b) => (b, true),
                None => (name.as_str(), false),
            };
            let Some((c, a)) = base.split_once('.') else { continue };
            let (Some(coll), Some(algo)) = (Collective::parse(c), Algorithm::parse(a)) else { continue };
            let mut worlds: Vec<(usize, usize)> =
                rows.iter().filter(|r| r.len() >= 2).map(|r| (r[0] as usize, r[1] as usize)).collect();
            worlds.sort_unstable();
            worlds.dedup();
            for (p, nhosts) in worlds {
                if p == 0 {
                    continue;
                }
                let nhosts = nhosts.clamp(1, p);
                let hosts: Vec<usize> = (0..p).map(|i| i * nhosts / p).collect();
                let runs: Vec<&Vec<f64>> =
                    rows.iter().filter(|r| r.len() >= 2 && r[0] as usize == p && r[1] as usize == nhosts).collect();
                let mut pts = Vec::new();
                for i in 0..RESIDUAL_POINTS {
                    let Some(t) =
                        median(runs.iter().filter_map(|r| r.get(2 + i).copied()).filter(|&t| t > 0.0).collect())
                    else {
                        continue;
                    };
                    let call =
                        Call::new(coll, calibration_bytes(coll, residual_bytes(i), p), DataType::F32, ReduceOp::Sum);
                    if let Some(cost) = predict(&call, algo, &hosts, &profile) {
                        pts.push((i, cost, call.model(&hosts, &profile).footprint(), t * 1e-6));
                    }
                }
                if pts.is_empty() {
                    continue;
                }
                fitted.push(fit_row(coll, algo, p, inter, &pts));
            }
        }
        for e in &fitted {
            self.set_efficiency(e);
        }
    }

    /// The link this entry describes.
    pub fn link(&self) -> Link {
        Link {
            alpha: self.alpha_us * 1e-6,
            gap: self.gap_us * 1e-6,
            beta: 1e-9 / self.bandwidth_gbs.max(1e-9),
            beta_cache: 1e-9 / self.cache_bandwidth_gbs.max(1e-9),
            cache_bytes: self.cache_kib * 1024.0,
            wake: self.wake_us * 1e-6,
        }
    }

    fn check(&self) -> Result<()> {
        let nums = [
            self.alpha_us,
            self.gap_us,
            self.wake_us,
            self.bandwidth_gbs,
            self.cache_bandwidth_gbs,
            self.cache_kib,
            self.copy_gbs,
        ];
        let factors = self.efficiency.values().flatten().flatten();
        if let Some(row) = self.efficiency.values().flatten().find(|r| r.len() < 5 || r.len() > 5 + RESIDUAL_POINTS) {
            return Err(Error::invalid_argument(format!(
                "tuning entry for host '{}' transport '{}' has an efficiency row of {} figures (5, or 5 and up to {} residuals)",
                self.host,
                self.transport,
                row.len(),
                RESIDUAL_POINTS
            )));
        }
        if nums.iter().chain(self.reduce_gbs.values()).chain(factors).any(|x| !x.is_finite() || *x < 0.0)
            || self.bandwidth_gbs <= 0.0
            || self.cache_bandwidth_gbs <= 0.0
            || self.copy_gbs <= 0.0
            || !self.cores.is_finite()
            || self.cores <= 0.0
        {
            return Err(Error::invalid_argument(format!(
                "tuning entry for host '{}' transport '{}' has a negative, zero or non-finite figure",
                self.host, self.transport
            )));
        }
        Ok(())
    }
}

impl TuningFile {
    /// The built-in profile, measured on the 2-core development VM (`benches/tuning.json`).
    pub fn builtin() -> TuningFile {
        static BUILTIN: std::sync::OnceLock<TuningFile> = std::sync::OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                TuningFile::parse(include_str!("../benches/tuning.json")).expect("the built-in tuning file parses")
            })
            .clone()
    }

    /// Parses a tuning file's text.
    pub fn parse(text: &str) -> Result<TuningFile> {
        let mut f: TuningFile =
            serde_json::from_str(text).map_err(|e| Error::invalid_argument(format!("tuning file: {e}")))?;
        match f.oxccl_tuning {
            TUNING_VERSION => {}
            1 => f.upgrade_version_1(),
            v => {
                return Err(Error::invalid_argument(format!(
                    "tuning file: version {v} (this build reads versions 1 and {TUNING_VERSION})"
                )))
            }
        }
        f.entries.iter().try_for_each(TuningEntry::check)?;
        Ok(f)
    }

    /// Brings a version 1 file to [`TUNING_VERSION`]: each efficiency row's residuals and
    /// each calibration time row's times move from the powers of 4 they were measured at to
    /// those sizes' places among [`residual_bytes`]; the other sizes are unmeasured (0).
    fn upgrade_version_1(&mut self) {
        let spread = |row: &mut Vec<f64>, head: usize| {
            if row.len() <= head {
                return;
            }
            let mut points = vec![0.0; RESIDUAL_POINTS];
            for (i, &x) in row[head..].iter().enumerate().take(RESIDUAL_POINTS_V1) {
                points[residual_index(16 << (2 * i))] = x;
            }
            row.truncate(head);
            row.extend(points);
        };
        for e in &mut self.entries {
            e.efficiency.values_mut().flatten().for_each(|row| spread(row, 5));
            e.samples.times.values_mut().flatten().for_each(|row| spread(row, 2));
        }
        self.oxccl_tuning = TUNING_VERSION;
    }

    /// Reads a tuning file.
    pub fn load(path: &Path) -> Result<TuningFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid_argument(format!("tuning file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| e.map_msg(|m| format!("{m} ({})", path.display())))
    }

    /// Writes the file (pretty JSON).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a tuning file serialises");
        std::fs::write(path, text + "\n")
            .map_err(|e| Error::invalid_argument(format!("tuning file {}: {e}", path.display())))
    }

    /// Adds `e`, replacing an entry of the same host, processor and transport.
    pub fn upsert(&mut self, e: TuningEntry) {
        self.entries.retain(|x| !(x.host == e.host && x.cpu == e.cpu && x.transport == e.transport));
        self.entries.push(e);
    }

    /// The entry for `transport` on `host`, a machine with this machine's processor
    /// ([`cpu_model`]); see [`TuningFile::entry_for`].
    pub fn entry(&self, host: &str, transport: &str) -> Option<&TuningEntry> {
        self.entry_for(host, &cpu_model(), transport)
    }

    /// The entry for `transport` on `host` whose processor is named `cpu`. Entries measured
    /// on another processor come last (another machine type's profile misprices: see
    /// benches/COST_MODEL.md, eleventh session); among the others, that host's first, then
    /// those naming the processor (the most specific name first) before those naming none,
    /// an entry for any host (`*`) before one for another host.
    ///
    /// ```
    /// use oxccl::cost::TuningFile;
    /// let f = TuningFile::builtin();
    /// assert_eq!(f.entry_for("any-host", "AMD EPYC 7B13", "shm").unwrap().cpu, "AMD EPYC");
    /// assert_eq!(f.entry_for("any-host", "Intel(R) Xeon(R) Processor @ 2.90GHz", "shm").unwrap().cpu, "Intel Xeon");
    /// ```
    pub fn entry_for(&self, host: &str, cpu: &str, transport: &str) -> Option<&TuningEntry> {
        self.entries.iter().filter(|e| e.transport == transport).min_by_key(|e| {
            let other_cpu = !e.cpu.is_empty() && !cpu_matches(&e.cpu, cpu);
            (other_cpu, e.host != host, e.cpu.is_empty(), e.host != "*", std::cmp::Reverse(e.cpu.len()))
        })
    }

    /// The entry [`TuningFile::profile`] prices the link inside `host` with: this file's for
    /// `intra`, else the built-in file's, else the same for shared memory.
    pub fn intra_entry(&self, host: &str, intra: &str) -> TuningEntry {
        let builtin = TuningFile::builtin();
        let find = |t: &str| self.entry(host, t).or_else(|| builtin.entry(host, t)).cloned();
        find(intra).or_else(|| find("shm")).expect("the built-in file has a shm entry")
    }

    /// The profile of `host` whose ranks talk over `intra` (`shm`, `tcp`, `loopback`) among
    /// themselves and over TCP between hosts. Missing entries fall back to the built-in
    /// file's (loopback to shared memory).
    pub fn profile(&self, host: &str, intra: &str) -> Profile {
        let builtin = TuningFile::builtin();
        let find = |t: &str| self.entry(host, t).or_else(|| builtin.entry(host, t)).cloned();
        let intra_e = self.intra_entry(host, intra);
        let inter_e = find("tcp").expect("the built-in file has a tcp entry");
        let mut p = Profile {
            intra: intra_e.link(),
            inter: inter_e.link(),
            gamma: [[0.0; 5]; 10],
            fused: None,
            copy: 1e-9 / intra_e.copy_gbs.max(1e-9),
            cores: intra_e.cores.max(1.0),
            // Measured on one host: the intra transport's entry. Measured across hosts (a
            // calibration over the router that joins shared memory and TCP): that entry's.
            // Worlds of several hosts without such figures are priced by the formulas alone,
            // never with factors measured for another link.
            efficiency: intra_e
                .efficiencies()
                .into_iter()
                .chain(find("router").map(|e| e.efficiencies()).unwrap_or_default())
                .collect(),
            // Shared memory and threads of one process map peers' memory; a communicator
            // sets this from its transport in the end.
            peer_memory: matches!(intra, "shm" | "loopback"),
        };
        // Reduction speeds: this entry's, else the built-in shm entry's, else f32 sum's.
        let fallback = builtin.entry(host, "shm").expect("the built-in file has a shm entry");
        let base = intra_e.reduce_gbs.get("float.sum").copied().unwrap_or(5.0);
        for d in DataType::ALL {
            for o in ReduceOp::ALL {
                let k = gamma_key(d, o);
                let gbs = intra_e.reduce_gbs.get(&k).or_else(|| fallback.reduce_gbs.get(&k)).copied().unwrap_or(base);
                p.set_gamma(d, o, 1e-9 / gbs.max(1e-9));
            }
        }
        // The fused kernel's figures: this entry's, else the built-in shm entry's (both
        // relative to f32 on the same machine), else none.
        let fused = [&intra_e, fallback].into_iter().map(|e| &e.fused_gbs).find(|f| !f.is_empty());
        p.fused = fused.map(|f| {
            let mut extra = FusedExtra { cache: [[[0.0; 3]; 5]; 10], memory: [[[0.0; 3]; 5]; 10] };
            for o in ReduceOp::ALL {
                let secs = |d: DataType, s: usize, i: usize| f.get(&gamma_key(d, o)).map(|g| 1e-9 / g[s][i].max(1e-9));
                for d in DataType::ALL {
                    let (di, oi) = (oxccl_algorithms::cost::dtype_index(d), oxccl_algorithms::cost::op_index(o));
                    for (i, table) in [&mut extra.cache, &mut extra.memory].into_iter().enumerate() {
                        for (s, extra) in table[di][oi].iter_mut().enumerate() {
                            let f32_secs = secs(DataType::F32, s, i).unwrap_or(0.0);
                            *extra = (secs(d, s, i).unwrap_or(f32_secs) - f32_secs).max(0.0);
                        }
                    }
                }
            }
            extra
        });
        p
    }
}

/// This machine's processor as tuning entries name it: the model name of `/proc/cpuinfo`
/// without trademarks or clock (`AMD EPYC`, `Intel Xeon Processor`); empty where unknown.
pub fn cpu_model() -> String {
    static CPU: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CPU.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("model name")?.trim_start().strip_prefix(':'))
            .map(normal_cpu_name)
            .unwrap_or_default()
    })
    .clone()
}

/// A processor name without trademarks, clock or repeated spaces: `Intel(R) Xeon(R)
/// Processor @ 2.90GHz` is `Intel Xeon Processor`.
fn normal_cpu_name(name: &str) -> String {
    let name = name.split(" @ ").next().unwrap_or_default();
    let name = name.replace("(R)", " ").replace("(r)", " ").replace("(TM)", " ").replace("(tm)", " ");
    name.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether an entry measured on `entry_cpu` applies to a machine whose processor is `cpu`:
/// the machine's name contains the entry's (case aside).
pub(crate) fn cpu_matches(entry_cpu: &str, cpu: &str) -> bool {
    let (e, c) = (normal_cpu_name(entry_cpu).to_lowercase(), normal_cpu_name(cpu).to_lowercase());
    !e.is_empty() && c.contains(&e)
}

/// The profile as words, to send rank 0's to every rank at start-up.
pub(crate) fn to_words(p: &Profile) -> Vec<u64> {
    let mut w = Vec::new();
    for l in [p.intra, p.inter] {
        w.extend([l.alpha, l.gap, l.beta, l.beta_cache, l.cache_bytes, l.wake].map(f64::to_bits));
    }
    w.push(p.copy.to_bits());
    w.push(p.cores.to_bits());
    w.extend(p.gamma.iter().flatten().map(|g| g.to_bits()));
    let eff = &p.efficiency[..p.efficiency.len().min(MAX_EFFICIENCY)];
    w.push(eff.len() as u64);
    for e in eff {
        let a = Algorithm::ALL.iter().position(|&x| x == e.algo).expect("a known algorithm") as u64;
        w.extend([
            u64::from(e.inter),
            e.coll as u64,
            a,
            e.ranks as u64,
            e.latency.to_bits(),
            e.bandwidth_cache.to_bits(),
            e.bandwidth.to_bits(),
            e.cache_bytes.to_bits(),
        ]);
        // Residuals as f32, two to a word.
        w.extend(e.residual.chunks(2).map(|c| u64::from(c[0].to_bits()) | u64::from(c[1].to_bits()) << 32));
    }
    w.resize(FUSED_WORD, 0);
    w.push(u64::from(p.fused.is_some()));
    if let Some(f) = &p.fused {
        w.extend(f.cache.iter().chain(&f.memory).flatten().flatten().map(|g| g.to_bits()));
    }
    w.resize(PROFILE_WORDS, 0);
    w
}

/// Efficiency rows a profile carries at most when it is sent to every rank.
const MAX_EFFICIENCY: usize = 512;

/// Words per efficiency row in [`to_words`].
const ROW_WORDS: usize = 8 + RESIDUAL_POINTS / 2;
const _: () = assert!(RESIDUAL_POINTS.is_multiple_of(2), "residuals travel two to a word");

/// Where [`to_words`] puts the fused kernel's figures: a flag, then 150 words in cache and
/// 150 out of it.
const FUSED_WORD: usize = 12 + 2 + 50 + 1 + ROW_WORDS * MAX_EFFICIENCY;

/// The number of words [`to_words`] makes.
pub(crate) const PROFILE_WORDS: usize = FUSED_WORD + 1 + 300;

/// The inverse of [`to_words`].
pub(crate) fn from_words(w: &[u64]) -> Profile {
    let f = |i: usize| f64::from_bits(w[i]);
    let link = |o: usize| Link {
        alpha: f(o),
        gap: f(o + 1),
        beta: f(o + 2),
        beta_cache: f(o + 3),
        cache_bytes: f(o + 4),
        wake: f(o + 5),
    };
    let mut gamma = [[0.0; 5]; 10];
    for (i, g) in gamma.iter_mut().flatten().enumerate() {
        *g = f(14 + i);
    }
    let n = (w[64] as usize).min(MAX_EFFICIENCY);
    let efficiency = (0..n)
        .filter_map(|i| {
            let row = &w[65 + ROW_WORDS * i..65 + ROW_WORDS * (i + 1)];
            let (inter, e) = (row[0] == 1, &row[1..8]);
            let mut residual = [0f32; RESIDUAL_POINTS];
            for (pair, &word) in residual.chunks_mut(2).zip(&row[8..]) {
                pair[0] = f32::from_bits(word as u32);
                pair[1] = f32::from_bits((word >> 32) as u32);
            }
            let coll = Collective::ALL.into_iter().find(|&c| c as u64 == e[0])?;
            let algo = *Algorithm::ALL.get(e[1] as usize)?;
            Some(Efficiency {
                coll,
                algo,
                ranks: e[2] as usize,
                inter,
                latency: f64::from_bits(e[3]),
                bandwidth_cache: f64::from_bits(e[4]),
                bandwidth: f64::from_bits(e[5]),
                cache_bytes: f64::from_bits(e[6]),
                residual,
            })
        })
        .collect();
    let fused = (w[FUSED_WORD] == 1).then(|| {
        let mut extra = FusedExtra { cache: [[[0.0; 3]; 5]; 10], memory: [[[0.0; 3]; 5]; 10] };
        for (i, g) in extra.cache.iter_mut().chain(&mut extra.memory).flatten().flatten().enumerate() {
            *g = f(FUSED_WORD + 1 + i);
        }
        extra
    });
    // Whether peers' memory maps is the receiving communicator's transport's business.
    Profile { intra: link(0), inter: link(6), gamma, fused, copy: f(12), cores: f(13), efficiency, peer_memory: false }
}

/// Least-squares line through `(x, y)` points: `(intercept, slope)`.
pub fn fit_line(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    if points.is_empty() {
        return (0.0, 0.0);
    }
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|&(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|&(x, y)| (x - mx) * (y - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (my - slope * mx, slope)
}

/// Fits `y = bc + (b - bc) * w / (w + c)` to `(w, y)` points (per-byte time against the
/// footprint): least squares in relative error over `bc` and `b` for each `c` among powers
/// of two up to half the widest footprint, the best `c` kept. Returns `(bc, b, c)`.
///
/// The bound keeps `b` on the measurements: where the per-byte time barely grows over the
/// measured range (TCP over loopback), a halfway point far beyond it fits as well and makes
/// `b` an extrapolation (0.3-1.3 GB/s in three runs, where 64 MiB messages moved 1.8 GB/s),
/// which then prices larger calls at several times their time.
pub fn fit_cache_curve(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let mut best = (f64::INFINITY, 0.0, 0.0, 0.0);
    let widest = points.iter().map(|p| p.0).fold(0.0, f64::max);
    for k in 14..=30 {
        let c = f64::from(1u32 << k);
        if k > 14 && c > widest / 2.0 {
            break;
        }
        // Relative error of y = bc (1 - x) + b x: rows scaled by 1/y.
        let rows: Vec<[f64; 2]> = points
            .iter()
            .map(|&(w, y)| {
                let x = w / (w + c);
                [(1.0 - x) / y, x / y]
            })
            .collect();
        let Some([bc, b]) = least_squares::<2>(&rows) else { continue };
        let bc = bc.max(1e-13);
        let b = b.max(bc);
        let err: f64 = points
            .iter()
            .map(|&(w, y)| {
                let x = w / (w + c);
                ((bc * (1.0 - x) + b * x) / y - 1.0).powi(2)
            })
            .sum();
        if err < best.0 {
            best = (err, bc, b, c);
        }
    }
    (best.1, best.2, best.3)
}

fn secs_per_iter(iters: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let t0 = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok(t0.elapsed().as_secs_f64() / iters.max(1) as f64)
}

/// Measures this communicator's transport between ranks 0 and 1 (ping-pong for alpha, a
/// burst of small messages for the gap, both ranks streaming at once for beta at sizes from
/// 64 KiB to 64 MiB, fitted to the cache curve of [`Link::beta_at`]), its oversubscription
/// cost with a barrier of every rank (when ranks outnumber cores), this host's reduction
/// and copy kernels, and every algorithm of every collective at every size of
/// [`RESIDUAL_SIZES`] (16 B to 64 MiB), whose times against the formulas give each
/// algorithm's efficiency at this world size and what its factors leave unexplained at each
/// size ([`Profile::efficiency`], [`Efficiency::residual`]). Between sizes rank 0 probes
/// where the machine's cores sit ([`crate::probe`]); a size timed with them far apart is
/// timed again once they are near, or left out ([`Samples::placement`]).
///
/// When ranks outnumber cores, the link between ranks 0 and 1 is disturbed by the idle
/// ranks; with a `base` entry (rank 0's, measured with fewer ranks: `oxccl-bench --ranks 2
/// --calibrate FILE` first) its link figures are kept and only the wake cost and the
/// efficiencies are measured. Collective: every rank must call it; rank 0's return value is
/// the complete entry, with this run's start in [`Samples::started`]. Needs at least two
/// ranks. Whatever algorithms the program forced, it times each one itself and runs its own
/// small collectives with the automatic choice; the forced ones are back when it returns.
pub fn calibrate(comm: &Communicator, base: Option<&TuningEntry>) -> Result<TuningEntry> {
    let (r, p) = (comm.rank(), comm.size());
    if p < 2 {
        return Err(Error::invalid_argument("calibration needs at least two ranks"));
    }
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    // Its own collectives (the broadcasts below and between points, of stack buffers) run
    // with the automatic choice, not with what the program forced (a forced mapped broadcast
    // refuses them); the program's settings come back when it returns.
    let _kept = comm.choose_automatically();
    // alpha, gap, beta, barrier, beta_cache, cache_bytes
    let mut figures = [0f64; 6];
    // Rank 0 decides whether the link figures come from the base entry. Ranks per core as
    // the communicator counts them (its ranks' CPUs, hosts sharing a machine splitting it):
    // the same on every rank, so every rank takes the same branches below.
    let over = ranks_per_core(comm);
    let mut reuse = [u8::from(over > 1.0 && base.is_some())];
    comm.broadcast(&mut reuse, 0)?;
    let reuse = reuse[0] == 1;
    if let (true, Some(b)) = (reuse, base.filter(|_| r == 0)) {
        let l = b.link();
        figures = [l.alpha, l.gap, l.beta, 0.0, l.beta_cache, l.cache_bytes];
    }
    comm.barrier()?;
    if r < 2 && !reuse {
        let peer = 1 - r;
        // Ping-pong: half a round trip against the message size.
        let sizes: &[usize] = &[8, 64, 512, 4096];
        let reps = 400;
        let mut pts = Vec::new();
        let mut buf = vec![0u8; 4096];
        for &s in sizes {
            let mut pp = || -> Result<()> {
                if r == 0 {
                    comm.send(&buf[..s], peer)?;
                    comm.recv(&mut buf[..s], peer)
                } else {
                    comm.recv(&mut buf[..s], peer)?;
                    comm.send(&buf[..s], peer)
                }
            };
            secs_per_iter(reps / 10, &mut pp)?;
            // Best of three rounds: a round the scheduler disturbed says nothing of the link.
            let mut t = f64::INFINITY;
            for _ in 0..3 {
                t = t.min(secs_per_iter(reps / 3, &mut pp)? / 2.0);
            }
            pts.push((s as f64, t));
        }
        let (alpha, _) = fit_line(&pts);
        figures[0] = alpha.max(pts[0].1 * 0.5);
        // Gap: a burst of small messages, then one back; per message beyond the round trip.
        let burst = 256;
        let mut one = || -> Result<()> {
            if r == 0 {
                for _ in 0..burst {
                    comm.send(&buf[..8], peer)?;
                }
                comm.recv(&mut buf[..8], peer)
            } else {
                for _ in 0..burst {
                    comm.recv(&mut buf[..8], peer)?;
                }
                comm.send(&buf[..8], peer)
            }
        };
        one()?;
        let t = secs_per_iter(10, &mut one)?;
        figures[1] = ((t - 2.0 * pts[0].1) / burst as f64).max(0.0);
        // Streaming both ways at once: time per exchange against its size.
        let big: &[usize] = &[64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
        let max = *big.last().expect("sizes");
        let send = vec![1u8; max];
        let mut recv = vec![0u8; max];
        let mut pts = Vec::new();
        for &s in big {
            let reps = ((256 << 20) / s).clamp(3, 200);
            let mut x = || comm.sendrecv(&send[..s], peer, &mut recv[..s], peer);
            x()?;
            // Best of a few rounds: the figure is what the link can do, not the noise.
            let mut t = f64::INFINITY;
            for _ in 0..3 {
                t = t.min(secs_per_iter(reps, &mut x)?);
            }
            pts.push((s as f64, t));
        }
        // Per byte, after the message latency, against the footprint (send and receive
        // buffers: 2s per rank).
        let per_byte: Vec<(f64, f64)> =
            pts.iter().map(|&(s, t)| (2.0 * s, ((t - figures[0]) / s).max(t / s * 0.5))).collect();
        let (bc, b, c) = fit_cache_curve(&per_byte);
        figures[2] = b;
        figures[4] = bc;
        figures[5] = c;
    }
    comm.barrier()?;
    if over > 1.0 {
        let reps = 500;
        figures[3] = secs_per_iter(reps, &mut || comm.barrier())?;
    }
    comm.broadcast(&mut figures, 0)?;
    let [alpha, gap, beta, barrier, beta_cache, cache_bytes] = figures;
    // Measured once, at the first calibration with more ranks than cores, and kept after
    // (the efficiencies of every world size are fitted against the same figure).
    let measure_wake = over > 1.0 && base.is_none_or(|b| b.wake_ranks == 0);
    // A barrier step faster than alpha says alpha was measured in a disturbed moment (a
    // 55 us shared-memory ping-pong was seen once against 0.3 us usually), not that waking
    // is free: keep the earlier figure and measure again next time.
    let measured = if measure_wake { (barrier / f64::from(ceil_log2(p)) - alpha) / (over - 1.0) } else { 0.0 };
    let fallback = base.or(TuningFile::builtin().entry("", comm.transport_name())).map_or(0.0, |e| e.wake_us * 1e-6);
    let mut wake = [if measured > 0.0 { measured } else { fallback }];
    comm.broadcast(&mut wake, 0)?;
    let wake = wake[0];
    let wake_ranks = if measured > 0.0 { p } else { base.map_or(0, |b| b.wake_ranks) };
    // The two-input kernels (50), the copy, then the fused kernel, at each source count in
    // cache (50) and out of it (50; 0: not measured).
    let mut kernels = [0f64; KERNEL_FIGURES];
    if r == 0 {
        match base.filter(|_| reuse) {
            Some(b) => {
                for d in DataType::ALL {
                    for o in ReduceOp::ALL {
                        let i = dtype_op_index(d, o);
                        kernels[i] = b.reduce_gbs.get(&gamma_key(d, o)).copied().unwrap_or(5.0);
                        let fused = b.fused_gbs.get(&gamma_key(d, o)).copied().unwrap_or_default();
                        for (s, speeds) in fused.into_iter().enumerate() {
                            for (level, gbs) in speeds.into_iter().enumerate() {
                                kernels[fused_slot(s, level, i)] = gbs;
                            }
                        }
                    }
                }
                kernels[50] = b.copy_gbs;
            }
            None => {
                let cores = comm.profile().cores.round().clamp(1.0, MAX_FUSED_THREADS as f64) as usize;
                measure_kernels(&mut kernels, cores);
            }
        }
    }
    comm.broadcast(&mut kernels, 0)?;
    let mut reduce_gbs = BTreeMap::new();
    let mut fused_gbs = BTreeMap::new();
    for d in DataType::ALL {
        for o in ReduceOp::ALL {
            let i = dtype_op_index(d, o);
            reduce_gbs.insert(gamma_key(d, o), kernels[i]);
            let speeds: FusedSpeeds =
                std::array::from_fn(|s| std::array::from_fn(|level| kernels[fused_slot(s, level, i)]));
            if speeds.iter().flatten().all(|&g| g > 0.0) {
                fused_gbs.insert(gamma_key(d, o), speeds);
            }
        }
    }
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "*".into());
    let mut entry = TuningEntry {
        host,
        cpu: cpu_model(),
        transport: comm.transport_name().to_string(),
        cores: comm.profile().cores,
        alpha_us: alpha * 1e6,
        gap_us: gap * 1e6,
        wake_us: wake * 1e6,
        wake_ranks,
        bandwidth_gbs: 1e-9 / beta.max(1e-15),
        cache_bandwidth_gbs: 1e-9 / beta_cache.max(1e-15),
        cache_kib: cache_bytes / 1024.0,
        copy_gbs: kernels[50],
        reduce_gbs,
        fused_gbs,
        efficiency: base.map(|b| b.efficiency.clone()).unwrap_or_default(),
        measured: format!("Full calibration, {p} ranks over {}", comm.transport_name()),
        runs: base.map(|b| b.runs.clone()).unwrap_or_default(),
        samples: base.map(|b| b.samples.clone()).unwrap_or_default(),
    };
    if !reuse {
        // A plain calibration's link and kernels are this run's alone
        // (TuningEntry::average_with pools).
        entry.samples.fused = vec![entry.fused_gbs.clone()];
        entry.samples.link = vec![[
            entry.alpha_us,
            entry.gap_us,
            entry.bandwidth_gbs,
            entry.cache_bandwidth_gbs,
            entry.cache_kib,
            entry.copy_gbs,
        ]];
    }
    measure_algorithms(comm, &mut entry)?;
    // This world size's rows are one run's now (TuningEntry::average_with merges runs): its
    // start, and no round trip (the launcher's probe before the run, where it made one, is
    // the caller's to add).
    entry.runs.remove(&p.to_string());
    entry.samples.started.retain(|r| r[0] as usize != p);
    entry.samples.started.push([p as f64, started]);
    entry.samples.round_trip.retain(|r| r[0] as usize != p);
    Ok(entry)
}

/// What [`quick_rescale`] measured and the factors it fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct QuickScale {
    /// Factor on the latency terms (alpha, gap and wake of both links).
    pub latency: f64,
    /// Factor on the per-byte terms (beta of both links, copy, every gamma).
    pub bandwidth: f64,
    /// Each probe: the call's bytes, the algorithm it ran, its measured time (the slowest
    /// rank's best round) and the profile's price before scaling, in seconds.
    pub probes: Vec<(usize, Algorithm, f64, f64)>,
}

impl QuickScale {
    /// Scales `profile`'s latency terms by [`QuickScale::latency`] and its per-byte terms
    /// by [`QuickScale::bandwidth`]; its efficiencies stay as calibrated.
    pub fn apply(&self, profile: &mut Profile) {
        for l in [&mut profile.intra, &mut profile.inter] {
            l.alpha *= self.latency;
            l.gap *= self.latency;
            l.wake *= self.latency;
            l.beta *= self.bandwidth;
            l.beta_cache *= self.bandwidth;
        }
        profile.copy *= self.bandwidth;
        let fused = profile.fused.iter_mut().flat_map(|f| f.cache.iter_mut().chain(&mut f.memory)).flatten().flatten();
        for g in profile.gamma.iter_mut().flatten().chain(fused) {
            *g *= self.bandwidth;
        }
    }
}

/// The all-reduce sizes [`quick_rescale`] times: one priced almost all in latency, two
/// mostly in bandwidth. (A 4 MiB probe cost 110 ms of the budget at 8 ranks over TCP.)
const QUICK_PROBES: [usize; 3] = [16, 64 << 10, 1 << 20];

/// Rounds [`quick_rescale`] times each probe in, the best kept, each of about
/// [`QUICK_ROUND_SECS`].
const QUICK_ROUNDS: usize = 8;

/// Seconds of calls in one round of one probe of [`quick_rescale`].
const QUICK_ROUND_SECS: f64 = 2e-3;

/// The factors [`quick_rescale`] may fit: a larger miss is a probe gone wrong, not a machine.
const QUICK_SCALE_RANGE: (f64, f64) = (0.1, 10.0);

/// Times the all-reduce (f32 sum, out of place, on ordinary memory) at 16 B, 64 KiB and 1 MiB
/// under the algorithm the communicator's profile prices best there, the best of eight rounds
/// of about 2 ms each (the probes taken in turn), and from them two factors: one on the
/// profile's latency terms (the smallest probe's time over its price) and one on its per-byte
/// terms (the larger probes' times over their prices); each clamped to 0.1-10. Apply them
/// with [`QuickScale::apply`].
///
/// This is what `OXCCL_TUNE=quick` does at start-up: it keeps what a full calibration
/// measured (every algorithm's efficiency, the cache curve, the kernels' relative speeds)
/// and corrects only the machine's overall speed, which is what differs between a
/// calibrated machine and the same kind of machine on a busier day. Measuring the link
/// afresh instead (as this did before) replaced figures fitted with a full calibration's
/// method by 40 ms of raw readings: the profile's efficiencies no longer matched them.
///
/// Collective: every rank must call it, and every rank gets the same factors. Forces the
/// all-reduce's algorithm while it runs; the algorithms forced before are back after.
pub fn quick_rescale(comm: &Communicator) -> Result<QuickScale> {
    let _kept = comm.choose_automatically();
    let profile = comm.profile().clone();
    let hosts = comm.hosts().to_vec();
    let mut bufs = CalibrationBuffers::default();
    let mut probes = Vec::new();
    for size in QUICK_PROBES {
        let bytes = calibration_bytes(Collective::AllReduce, size, comm.size());
        let call = Call::new(Collective::AllReduce, bytes, DataType::F32, ReduceOp::Sum);
        // The best-priced algorithm on ordinary memory, as a full calibration times them and
        // programs mostly pass it: `mapped` (shared buffers) swings with where the scheduler
        // put the ranks (1 MiB at 4 ranks on 2 cores: 154-171 us in seven runs, 279-300 in
        // three), and its factor then mispriced every other algorithm by 1.4-1.9x.
        let (algo, price) = rank_algorithms(&call, &hosts, &profile)
            .into_iter()
            .find(|(a, _)| *a != Algorithm::Mapped)
            .ok_or_else(|| Error::internal("no all-reduce algorithm runs on ordinary memory"))?;
        probes.push((bytes, algo, f64::INFINITY, price.total()));
    }
    // The rounds go through the probes in turn, so that each probe's rounds are spread over
    // the whole calibration. The 1 MiB ring probe at 4 ranks on 2 cores has a slow state of
    // tens of milliseconds (700-1030 us against 470-590): with its three rounds one after
    // another it fell in it in 14 of 90 runs (bandwidth x1.5-2.4); with eight rounds in turn,
    // in none of 90 (x1.43 at most) and in one of 36 runs of the planner. The first round
    // warms up and is not kept (one warm-up call left the probes 10-40% slower than the same
    // calls later on in the process); every round starts with a call of its own, since the
    // probes switch algorithms and the first call after a switch runs slow.
    for round in 0..=QUICK_ROUNDS {
        for (size, probe) in QUICK_PROBES.into_iter().zip(probes.iter_mut()) {
            let algo = probe.1;
            comm.set_algorithms(&format!("all_reduce:{algo}"))?;
            let r = Round { warm_up: 1, secs: if round == 0 { 3e-3 } else { QUICK_ROUND_SECS }, min_calls: 1 };
            let secs = time_collective(comm, Collective::AllReduce, size, &mut bufs, &profile, algo, r)?;
            if round > 0 {
                probe.2 = probe.2.min(secs);
            }
        }
    }
    comm.set_algorithms("auto")?;
    let (lo, hi) = QUICK_SCALE_RANGE;
    // The smallest probe is priced almost all in latency: its time over its price is the
    // latency factor; the larger ones' pooled times over their pooled prices (the largest
    // weighs most) the bandwidth factor. Each from its own probes: a least-squares fit of
    // both, or the larger probes' time beyond their scaled latency terms, let one disturbed
    // probe trade one factor against the other (latency x3.4 with bandwidth x0.26 when the
    // 16 B probe alone ran in the slow placement, 19 us against 7 us usually, 4 ranks over
    // shared memory).
    let ratio = |ps: &[(usize, Algorithm, f64, f64)]| {
        let (t, p) = ps.iter().fold((0.0, 0.0), |(t, p), x| (t + x.2, p + x.3));
        (t / f64::max(p, 1e-12)).clamp(lo, hi)
    };
    let (latency, bandwidth) = (ratio(&probes[..1]), ratio(&probes[1..]));
    Ok(QuickScale { latency, bandwidth, probes })
}

/// Runs every algorithm of every collective at every size of [`residual_bytes`] (powers of
/// 4 from 16 B to 4 MiB, then of 2 to 64 MiB) and records, in `entry`, the factors that
/// best bring the formulas' latency and bandwidth terms to the measured times (least squares
/// in relative error), and at each size what they leave unexplained
/// ([`Efficiency::residual`]).
fn measure_algorithms(comm: &Communicator, entry: &mut TuningEntry) -> Result<()> {
    // The fit prices every call at the default chunk size (`Call::new`): the pipelined
    // algorithms run at it here too, not at the size the profile being replaced would pick
    // (whose time the fit would otherwise read as the default size's).
    comm.fix_chunk_bytes(Some(default_chunk_bytes()));
    measure_algorithms_at_default_chunk(comm, entry)
}

fn measure_algorithms_at_default_chunk(comm: &Communicator, entry: &mut TuningEntry) -> Result<()> {
    let p = comm.size();
    let mut bare = entry.clone();
    bare.efficiency.clear();
    let mut profile =
        TuningFile { oxccl_tuning: TUNING_VERSION, entries: vec![bare] }.profile(&entry.host, &entry.transport);
    profile.peer_memory = comm.profile().peer_memory;
    let hosts = comm.hosts().to_vec();
    let mut nhosts = hosts.clone();
    nhosts.sort_unstable();
    nhosts.dedup();
    let nhosts = nhosts.len();
    // Every (collective, size) the run times, each algorithm's best, and the slowest
    // cache-line round trip probed just before and just after it.
    let colls: Vec<(Collective, Vec<Algorithm>)> = Collective::ALL
        .into_iter()
        .filter(|&c| c != Collective::Barrier)
        .map(|c| (c, registry::algorithms(c).iter().copied().filter(|&a| applies(a, &hosts, &profile)).collect()))
        .collect();
    // (index into colls, size index)
    let points: Vec<(usize, usize)> =
        (0..colls.len()).flat_map(|c| (0..RESIDUAL_POINTS).map(move |i| (c, i))).collect();
    let mut bufs = CalibrationBuffers::default();
    // Each size's algorithms in turn, three rounds, each one's best kept: this machine drifts
    // over seconds, and measuring the candidates of one size together keeps their order
    // (what the choice rests on) from following the drift. Seconds per call, per algorithm.
    let mut time_point = |k: usize| -> Result<Vec<f64>> {
        let (c, i) = points[k];
        let (coll, algos) = (colls[c].0, &colls[c].1);
        let mut best = vec![f64::INFINITY; algos.len()];
        for _ in 0..CALIBRATION_ROUNDS {
            for (&algo, b) in algos.iter().zip(best.iter_mut()) {
                comm.set_algorithms(&format!("{coll}:{algo}"))?;
                // Two warm-up calls in every round: the rounds interleave the algorithms,
                // and the first calls after a switch run slow, where a round at 16 MiB
                // times little more than them (2-rank shm all-gather of 16 MiB,
                // `oxccl-bench --compare ring,bruck,...` out of place, ms: ring 2.19 in 3
                // calls with no warm-up, 1.65 after one, 1.52 after two, 1.46 in 20 after
                // five; Bruck 4.14, 3.68, 3.19, 2.83. Rounds without a warm-up read
                // 1.76-1.87 and 3.4-4.9, and priced those calls 1.3-1.5x their time in the
                // benchmark.)
                let r = Round { warm_up: 2, secs: 8e-3, min_calls: 3 };
                let t = time_collective(comm, coll, residual_bytes(i), &mut bufs, &profile, algo, r)?;
                *b = b.min(t);
            }
        }
        // Back to the automatic choice: the probes between points broadcast a stack buffer,
        // which a forced mapped broadcast would refuse.
        comm.set_algorithms("auto")?;
        Ok(best)
    };
    let mut probe = |pause: bool| placement_probe(comm, pause);
    let mut timed = Vec::with_capacity(points.len());
    let mut before = probe(false)?;
    for k in 0..points.len() {
        let best = time_point(k)?;
        let after = probe(false)?;
        timed.push(TimedPoint { best, round_trip: before.max(after) });
        before = after;
    }
    let tally = retime_far(&mut timed, &mut time_point, &mut probe)?;
    if comm.rank() == 0 && tally.far > 0 {
        let slowdown = median(tally.slowdowns.clone()).map_or(String::new(), |m| {
            let lo = tally.slowdowns.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = tally.slowdowns.iter().copied().fold(0.0, f64::max);
            format!(" (their first time over the near one: median {m:.2}x, {lo:.2}-{hi:.2})")
        });
        println!(
            "# {} of {} sizes timed with the cores far apart (cache-line round trip up to {:.0} ns, fastest seen {:.0}): \
             {} timed again near{slowdown}, {} left out",
            tally.far,
            points.len(),
            tally.slowest,
            tally.floor,
            tally.retimed,
            tally.left_out
        );
    }
    // This run's tally replaces the earlier ones of this world size, as its times do
    // (pooled again by TuningEntry::average_with).
    entry.samples.placement.retain(|r| r[0] as usize != p);
    entry.samples.placement.push([
        p as f64,
        points.len() as f64,
        tally.far as f64,
        tally.retimed as f64,
        tally.left_out as f64,
    ]);
    for (c, (coll, algos)) in colls.iter().enumerate() {
        for (a, &algo) in algos.iter().enumerate() {
            let mut row = vec![p as f64, nhosts as f64];
            row.extend(
                points.iter().zip(&timed).filter(|((pc, _), _)| *pc == c).map(|(_, t)| (t.best[a] * 1e9).round() / 1e3),
            );
            let name = format!("{}.{}{}", coll.name(), algo.name(), if nhosts > 1 { "@hosts" } else { "" });
            // This run's times replace the earlier ones of this world size (pooled again
            // by TuningEntry::average_with).
            let rows = entry.samples.times.entry(name).or_default();
            rows.retain(|r| r[0] as usize != p);
            rows.push(row);
        }
    }
    entry.fit_samples();
    Ok(())
}

/// The slowest cache-line round trip between this machine's CPUs in nanoseconds, probed by
/// rank 0 ([`crate::probe::placement`], 0.5 ms per CPU, up to 8) while the others wait, and
/// handed to every rank, so that all take the same branches on it; after 20 ms more with
/// `pause`. 0 where it cannot be probed (one CPU).
fn placement_probe(comm: &Communicator, pause: bool) -> Result<f64> {
    let wait = std::time::Duration::from_micros(if pause { 20_000 } else { 500 });
    let probed = crate::probe::placement_from_rank0(comm, wait)?;
    // The others wait for rank 0 in the broadcast.
    let mut ns = [probed.and_then(|p| p.slowest()).map_or(0.0, |t| t.as_secs_f64() * 1e9)];
    comm.broadcast(&mut ns, 0)?;
    Ok(ns[0])
}

/// One (collective, size) point of a calibration: each algorithm's best seconds per call
/// (0: left out), and the slowest cache-line round trip probed before and after it (ns).
#[derive(Debug, Clone, PartialEq)]
struct TimedPoint {
    best: Vec<f64>,
    round_trip: f64,
}

/// What [`retime_far`] did.
#[derive(Debug, Clone, PartialEq, Default)]
struct RetimeTally {
    /// The fastest and slowest round trips probed (ns).
    floor: f64,
    slowest: f64,
    /// Points timed far, of them timed again near, and left out.
    far: usize,
    retimed: usize,
    left_out: usize,
    /// For each point timed again: its first time over the new one (summed over the
    /// algorithms), what the far placement had cost it.
    slowdowns: Vec<f64>,
}

/// Whether a cache-line round trip of `ns` says the cores sat far apart, against `floor`,
/// the fastest of the run: over twice it and 100 ns beyond it. (Twice alone would call the
/// usual 59-66 ns far where a probe caught the two vCPUs on one core's two hardware
/// threads, 26 ns; far apart they take 290-360.) 0: not probed, never far.
fn is_far(ns: f64, floor: f64) -> bool {
    ns > 0.0 && floor > 0.0 && ns > 2.0 * floor && ns > floor + 100.0
}

/// Times per point at most: the first timing and this many more while the cores stay far.
const RETIMES: usize = 3;

/// Probes, 20 ms apart, a calibration waits at most in all for the cores to come near again
/// (about 20 s).
const PATIENCE_PROBES: usize = 1000;

/// Times again the points timed with the cores far apart: on a VM whose host moves the
/// vCPUs, a stretch of seconds to minutes far apart slows every transfer (2-rank TCP calls
/// of 64 KiB-1 MiB ran 2.5x slower), and a point timed then would price the usual machine at
/// the unusual one. Far is judged against the fastest round trip of the whole run (probed
/// before the first point and after each), so a run that began far still finds its early
/// points. Each far point waits until a probe says near, is timed again and kept when the
/// probe after it says near too; after [`RETIMES`] tries, or when the run's patience
/// ([`PATIENCE_PROBES`]) is spent, it is left out (0), and the fit prices its size from the
/// others. `probe(pause)` and `time(k)` must give every rank the same answers (rank 0's
/// probe broadcast), so that the ranks call collectives in step.
fn retime_far(
    points: &mut [TimedPoint],
    time: &mut dyn FnMut(usize) -> Result<Vec<f64>>,
    probe: &mut dyn FnMut(bool) -> Result<f64>,
) -> Result<RetimeTally> {
    let seen = points.iter().map(|p| p.round_trip).filter(|&ns| ns > 0.0);
    let mut tally = RetimeTally {
        floor: seen.clone().fold(f64::INFINITY, f64::min),
        slowest: seen.fold(0.0, f64::max),
        ..RetimeTally::default()
    };
    if !tally.floor.is_finite() {
        tally.floor = 0.0;
        return Ok(tally);
    }
    let mut patience = PATIENCE_PROBES;
    for (k, point) in points.iter_mut().enumerate() {
        if !is_far(point.round_trip, tally.floor) {
            continue;
        }
        tally.far += 1;
        let mut kept = None;
        for _ in 0..RETIMES {
            let mut ns = probe(false)?;
            while is_far(ns, tally.floor) && patience > 0 {
                patience -= 1;
                ns = probe(true)?;
            }
            if is_far(ns, tally.floor) {
                break;
            }
            let t = time(k)?;
            let after = probe(false)?;
            if !is_far(after, tally.floor) {
                kept = Some((t, ns.max(after)));
                break;
            }
        }
        match kept {
            Some((best, round_trip)) => {
                let sum = |t: &[f64]| t.iter().sum::<f64>();
                tally.slowdowns.push(sum(&point.best) / sum(&best).max(f64::MIN_POSITIVE));
                *point = TimedPoint { best, round_trip };
                tally.retimed += 1;
            }
            None => {
                point.best.iter_mut().for_each(|t| *t = 0.0);
                tally.left_out += 1;
            }
        }
    }
    Ok(tally)
}

/// Rounds each algorithm is timed in at each size by [`calibrate`], its best kept, as
/// `oxccl-bench` keeps its best round: a round the machine disturbed says nothing of the
/// algorithm. (The median fitted worse: against later benchmark runs, predictions came out
/// 10% high over TCP.)
const CALIBRATION_ROUNDS: usize = 3;

/// A residual correction as stored: clamped to [0.2, 5] (a larger miss is a measurement
/// gone wrong, not something to build a prediction on).
fn residual(ratio: f64) -> f32 {
    ratio.clamp(0.2, 5.0) as f32
}

/// An efficiency row for `algo` at `p` ranks from points `(size index, formula's cost,
/// footprint, measured seconds)`: the factors of [`fit_efficiency`], then at each size what
/// they leave unexplained.
fn fit_row(coll: Collective, algo: Algorithm, p: usize, inter: bool, pts: &[(usize, Cost, f64, f64)]) -> Efficiency {
    let fit: Vec<(Cost, f64, f64)> = pts.iter().map(|&(_, c, w, t)| (c, w, t)).collect();
    let (cache_bytes, [latency, bandwidth_cache, bandwidth]) = fit_efficiency(&fit);
    let mut e = Efficiency {
        coll,
        algo,
        ranks: p,
        inter,
        latency,
        bandwidth_cache,
        bandwidth,
        cache_bytes,
        residual: [0.0; RESIDUAL_POINTS],
    };
    // Against the factors alone: `apply` also takes the residuals already set (the one at
    // the first size, for a call of 0 bytes), so they are collected first and set after.
    // (Setting each as it came scaled every size's by the first one's: a 16 B point 1.9x
    // off put a whole row's predictions at half the measured times.)
    let mut residuals = [0.0; RESIDUAL_POINTS];
    for &(i, c, w, t) in pts {
        let factored = e.apply(c, w, 0).total();
        if factored > 0.0 && t > 0.0 {
            residuals[i] = residual(t / factored);
        }
    }
    e.residual = residuals;
    e
}

/// Fits an algorithm's efficiency to points `(cost, footprint, measured seconds)`: for each
/// halfway footprint `c` among powers of two from 16 KiB to half the largest footprint
/// measured (so that the out-of-cache factor rests on measurements, not on extrapolation),
/// the factors of [`fit_factors`] with `x = footprint / (footprint + c)`; the `c` of least
/// relative error wins. Returns `(c, [latency, in-cache, out-of-cache])`.
pub fn fit_efficiency(points: &[(Cost, f64, f64)]) -> (f64, [f64; 3]) {
    let mut best = (f64::INFINITY, 1.0, [1.0; 3]);
    let widest = points.iter().map(|p| p.1).fold(0.0, f64::max);
    for k in 14..=30 {
        let c = f64::from(1u32 << k);
        if k > 14 && c > widest / 2.0 {
            break;
        }
        let with_x: Vec<(Cost, f64, f64)> = points.iter().map(|&(cost, w, t)| (cost, w / (w + c), t)).collect();
        let f = fit_factors(&with_x);
        let err: f64 = with_x
            .iter()
            .filter(|(_, _, t)| *t > 0.0)
            .map(|(cost, x, t)| {
                let b = f[1] * (1.0 - x) + f[2] * x;
                ((f[0] * cost.latency + b * (cost.transfer + cost.reduce)) / t - 1.0).powi(2)
            })
            .sum();
        if err < best.0 {
            best = (err, c, f);
        }
    }
    (best.1, best.2)
}

/// `[a, b1, b2]` minimising the sum over points `(cost, x, t)` of
/// `((a * latency + (b1 (1 - x) + b2 x) * (transfer + reduce)) / t - 1)^2`, each clamped to
/// [0.05, 50]. Where the points cannot tell factors apart (all latency-bound, say), fewer
/// factors are fitted and shared.
pub fn fit_factors(points: &[(Cost, f64, f64)]) -> [f64; 3] {
    let rows: Vec<[f64; 3]> = points
        .iter()
        .filter(|(_, _, t)| *t > 0.0)
        .map(|(c, x, t)| {
            let w = (c.transfer + c.reduce) / t;
            [c.latency / t, w * (1.0 - x), w * x]
        })
        .collect();
    let clamp = |x: f64| if x.is_finite() { x.clamp(0.05, 50.0) } else { 1.0 };
    if let Some(f) = least_squares::<3>(&rows) {
        if f.iter().all(|&v| v > 0.0) {
            return f.map(clamp);
        }
    }
    // Latency and one bandwidth factor.
    let two: Vec<[f64; 2]> = rows.iter().map(|r| [r[0], r[1] + r[2]]).collect();
    if let Some([a, b]) = least_squares::<2>(&two) {
        if a > 0.0 && b > 0.0 {
            return [clamp(a), clamp(b), clamp(b)];
        }
    }
    let one: Vec<[f64; 1]> = rows.iter().map(|r| [r[0] + r[1] + r[2]]).collect();
    let k = least_squares::<1>(&one).map_or(1.0, |[k]| clamp(k));
    [k, k, k]
}

/// Solves `min sum_i (sum_j f_j r_ij - 1)^2` by the normal equations (Gaussian elimination
/// with partial pivoting); `None` when they are singular.
fn least_squares<const N: usize>(rows: &[[f64; N]]) -> Option<[f64; N]> {
    let mut a = [[0.0; N]; N];
    let mut b = [0.0; N];
    for r in rows {
        for i in 0..N {
            b[i] += r[i];
            for j in 0..N {
                a[i][j] += r[i] * r[j];
            }
        }
    }
    let scale = (0..N).map(|i| a[i][i]).fold(0.0f64, f64::max);
    for col in 0..N {
        let piv = (col..N).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() <= 1e-12 * scale.max(1e-300) {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let (pivot_row, b_col) = (a[col], b[col]);
        for (row, (ar, br)) in a.iter_mut().zip(b.iter_mut()).enumerate() {
            if row != col {
                let k = ar[col] / pivot_row[col];
                for (x, p) in ar.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *x -= k * p;
                }
                *br -= k * b_col;
            }
        }
    }
    Some(std::array::from_fn(|i| b[i] / a[i][i]))
}

/// `slot` holding at least `len` elements, filled with `value` (a shared buffer, so that
/// the mapped algorithms are measured as they run on such memory).
fn shared_at_least(slot: &mut Option<SharedBuffer<f32>>, len: usize, value: f32) -> Result<&mut [f32]> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = Some(SharedBuffer::new(len)?);
    }
    let b = &mut slot.as_mut().expect("just made")[..len];
    b.fill(value);
    Ok(b)
}

/// `v` holding at least `len` elements, filled with `value`: its first `len`.
fn heap_at_least(v: &mut Vec<f32>, len: usize, value: f32) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, value);
    }
    let b = &mut v[..len];
    b.fill(value);
    b
}

/// The buffers [`time_collective`] times calls on, kept from call to call: ordinary memory
/// for every algorithm but `mapped`, which needs buffers the other ranks map. Programs
/// mostly pass ordinary memory, and over shared memory it is the faster of the two for the
/// other algorithms: the receiver reads the sender's buffer with `process_vm_readv`, which
/// took 1.2x as long from a shared mapping (2-rank shm reduce-scatter of 1 MiB, `oxccl-bench
/// --compare ring -n 100`: 50 us on the heap, 60 with `-R 1`; 4 MiB 360 and 396); measured on
/// shared buffers, the profile priced calls on ordinary buffers that much too high.
#[derive(Default)]
struct CalibrationBuffers {
    shared: (Option<SharedBuffer<f32>>, Option<SharedBuffer<f32>>),
    heap: (Vec<f32>, Vec<f32>),
}

impl CalibrationBuffers {
    /// A send buffer of `send` ones and a receive buffer of `recv` zeros for `algo`.
    fn for_call(&mut self, algo: Algorithm, send: usize, recv: usize) -> Result<(&[f32], &mut [f32])> {
        if algo == Algorithm::Mapped {
            let s = shared_at_least(&mut self.shared.0, send, 1.0)?;
            Ok((s, shared_at_least(&mut self.shared.1, recv, 0.0)?))
        } else {
            let s = heap_at_least(&mut self.heap.0, send, 1.0);
            Ok((s, heap_at_least(&mut self.heap.1, recv, 0.0)))
        }
    }
}

/// How [`time_collective`] times: after how many calls to warm up, about how long, and at
/// least how many calls.
#[derive(Debug, Clone, Copy)]
struct Round {
    warm_up: usize,
    secs: f64,
    min_calls: usize,
}

/// Times one round of a collective of [`calibration_bytes`] for `size` (f32 sum, out of
/// place, the slowest rank's time): seconds per call.
fn time_collective(
    comm: &Communicator,
    coll: Collective,
    size: usize,
    bufs: &mut CalibrationBuffers,
    profile: &Profile,
    algo: Algorithm,
    round: Round,
) -> Result<f64> {
    let p = comm.size();
    let total = calibration_bytes(coll, size, p) / 4;
    let (send, recv) = match coll {
        Collective::AllGather => (total / p, total),
        Collective::ReduceScatter => (total, total / p),
        _ => (total, total),
    };
    let (s, d) = bufs.for_call(algo, send, recv)?;
    let bytes = total * 4;
    // Iterations from the uncorrected prediction, the same on every rank: about `round.secs`.
    let guess = predict(&Call::new(coll, bytes, DataType::F32, ReduceOp::Sum), algo, comm.hosts(), profile)
        .map_or(1e-3, |c| c.total());
    let iters = ((round.secs / guess.max(1e-7)) as usize).clamp(round.min_calls, 500);
    let mut one = || -> Result<()> {
        match coll {
            Collective::AllReduce => comm.all_reduce_into(s, d, ReduceOp::Sum),
            Collective::AllGather => comm.all_gather_into(s, d),
            Collective::ReduceScatter => comm.reduce_scatter_into(s, d, ReduceOp::Sum),
            Collective::AllToAll => comm.all_to_all_into(s, d),
            Collective::Broadcast => comm.broadcast(d, 0),
            _ => comm.reduce_into(s, &mut d[..if comm.rank() == 0 { recv } else { 0 }], ReduceOp::Sum, 0),
        }
    };
    for _ in 0..round.warm_up {
        one()?;
    }
    comm.barrier()?;
    let best = secs_per_iter(iters, &mut one)?;
    // The slowest rank's time, by whatever algorithm suits this small call (a forced mapped
    // all-reduce would refuse this stack buffer), then the algorithm under test again.
    let forced = registry::algorithms(coll).contains(&algo).then(|| format!("{coll}:{algo}"));
    let mut t = [best];
    comm.set_algorithms("auto")?;
    comm.all_reduce(&mut t, ReduceOp::Max)?;
    if let Some(spec) = forced {
        comm.set_algorithms(&spec)?;
    }
    Ok(t[0])
}

fn dtype_op_index(d: DataType, o: ReduceOp) -> usize {
    oxccl_algorithms::cost::dtype_index(d) * 5 + oxccl_algorithms::cost::op_index(o)
}

/// The communicator's ranks per core on its busiest host (at least 1), as the cost model
/// prices it ([`oxccl_algorithms::cost::Model::oversubscription`]).
fn ranks_per_core(comm: &Communicator) -> f64 {
    let call = Call::new(Collective::AllReduce, 0, DataType::F32, ReduceOp::Sum);
    call.model(comm.hosts(), comm.profile()).oversubscription()
}

/// Times the reduction kernels (GB/s of input, into `out[dtype*5+op]`) and a copy
/// (`out[50]`).
///
/// A kernel is timed twice: on buffers larger than the caches, as a whole large call streams
/// them, and on buffers that stay in cache, as the algorithms reduce a chunk that just
/// landed. Out of cache every type runs near memory speed (f32 and bf16 sum within 1.3x of
/// each other); in cache the conversions of the half types show (bf16 a third of f32's
/// speed). f32 sum keeps its out-of-cache figure: it is the reference the efficiencies are
/// fitted with, and its time is mostly memory traffic, which the other types share. Another
/// kernel costs f32 sum's time per byte plus its extra time per byte over f32 sum, in cache
/// or out of it, whichever is more: the extra is the work its conversions add, the same
/// bytes moving either way. (Pricing bf16 by its out-of-cache speed alone put 4-rank shm
/// halving-doubling at 0.8x f32's price relative to its time; by its in-cache speed relative
/// to f32's alone, 1.2-1.3x.)
/// Threads [`measure_kernels`] runs the fused kernel on at most (one per core).
const MAX_FUSED_THREADS: usize = 8;

/// Figures [`measure_kernels`] measures: 50 two-input kernels, the copy, and the fused kernel
/// at each of [`FUSED_SOURCES`] in cache and out of it.
const KERNEL_FIGURES: usize = 51 + 100 * FUSED_SOURCES.len();

/// Where [`measure_kernels`] puts the fused kernel's figure for source count `s` (an index
/// of [`FUSED_SOURCES`]), `level` (0 in cache, 1 out of it) and case `i` (`dtype_op_index`).
const fn fused_slot(s: usize, level: usize, i: usize) -> usize {
    51 + 100 * s + 50 * level + i
}

fn measure_kernels(out: &mut [f64; KERNEL_FIGURES], cores: usize) {
    use oxccl_algorithms::{HostReducer, Reducer};
    use oxccl_transport::{MemoryKind, Region, RegionMut};
    let big = 16 << 20;
    let a = vec![1u64; big / 8];
    // Written at creation (not zeroed pages mapped on first touch), so the first kernel timed
    // does not pay for the page faults: int8 sum, timed first, read 9.5 GB/s beside 14 for
    // uint8 with a zeroed destination.
    let mut dst = vec![1u64; big / 8];
    let red = HostReducer::new();
    // SAFETY: both vectors live, unaliased, until the end of this function, and the regions
    // are used only within it.
    let (ra, rd) = unsafe {
        (
            Region::from_raw_parts(a.as_ptr().cast(), big, MemoryKind::Host),
            RegionMut::from_raw_parts(dst.as_mut_ptr().cast(), big, MemoryKind::Host),
        )
    };
    // The best of three rounds: the first kernel timed after the ranks' set-up read 0.7x the
    // speed of the same loop on another type with a single round.
    let time = |bytes: usize, reps: usize, f: &mut dyn FnMut(usize)| {
        f(bytes);
        (0..3)
            .map(|_| {
                let t0 = Instant::now();
                for _ in 0..reps {
                    f(bytes);
                }
                bytes as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    };
    // In cache: 128 KiB operands (a pipeline chunk's share, under the kernels' prefetch size).
    let (small, small_reps) = (128 << 10, 200);
    let mut rates = [[0f64; 2]; 50];
    for (d, o) in DataType::ALL.iter().flat_map(|&d| ReduceOp::ALL.map(|o| (d, o))) {
        // dst = dst op a: the in-place form the algorithms use most.
        let mut k = |bytes: usize| {
            let dr = rd.slice(0..bytes);
            red.reduce(d, o, dr, dr.as_region(), ra.slice(0..bytes)).expect("aligned, equal lengths");
        };
        rates[dtype_op_index(d, o)] = [time(big, 3, &mut k), time(small, small_reps, &mut k)];
    }
    let [mem_ref, cache_ref] = rates[dtype_op_index(DataType::F32, ReduceOp::Sum)];
    for (o, [mem, cache]) in out.iter_mut().zip(rates) {
        let extra = (1.0 / mem - 1.0 / mem_ref).max(1.0 / cache - 1.0 / cache_ref).max(0.0);
        *o = 1.0 / (1.0 / mem_ref + extra);
    }
    out[50] = time(big, 3, &mut |_| red.copy(rd, ra).expect("equal lengths"));
    drop(dst);
    for (s, sources) in FUSED_SOURCES.into_iter().enumerate() {
        let (cache, memory) = (fused_slot(s, 0, 0), fused_slot(s, 1, 0));
        measure_fused(&mut out[cache..cache + 50], sources, (128 << 10) / sources, 32, cores);
        measure_fused(&mut out[memory..memory + 50], sources, (16 << 20) / sources, 2, cores);
    }
}

/// The fused kernel of the `mapped` algorithms (`sources` sources of `slice` bytes reduced
/// into as many destinations, as one rank of a call at that many ranks does; `reps` calls
/// timed together), on `threads` threads at once, each on buffers of its own: GB/s of input
/// per thread (the slowest thread's time), the best of five rounds, for every type and
/// operator (indexed as `dtype_op_index`); 0 (not measured) for a case whose kernel failed.
///
/// Every core at once because every rank of a call runs it at once: out of cache the
/// memory is shared then, and the half types' conversions mostly hide under it. With 4
/// MiB slices, the 4-source bf16 kernel took 1.4-1.8x f32's time on one core of the AMD
/// EPYC VM, 1.1-1.35x on two at once, and the 4-rank bf16 all-reduce of 25 MiB 1.1x f32's.
fn measure_fused(out: &mut [f64], sources: usize, slice: usize, reps: usize, threads: usize) {
    use oxccl_algorithms::{HostReducer, Reducer};
    use oxccl_transport::{MemoryKind, Region, RegionMut};
    const ROUNDS: usize = 5;
    let cases: Vec<(DataType, ReduceOp)> = DataType::ALL.iter().flat_map(|&d| ReduceOp::ALL.map(|o| (d, o))).collect();
    let barrier = std::sync::Barrier::new(threads);
    // Per thread, per case, per round: seconds per call.
    let secs: Vec<Vec<[f64; ROUNDS]>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // 0x3c in every byte is a normal number in every type (0.0115 as f32 and
                    // bf16, 1.06 as f16, 60 as int8), so no kernel meets denormals, and 4
                    // of them never overflow; written, so no page is first touched timed.
                    let srcs: Vec<Vec<u8>> = (0..sources).map(|_| vec![0x3c; slice]).collect();
                    let mut dsts: Vec<Vec<u8>> = (0..sources).map(|_| vec![0x3c; slice]).collect();
                    // SAFETY: the vectors live, unaliased, until the end of this closure,
                    // and the regions are used only within it.
                    let (ins, outs): (Vec<Region>, Vec<RegionMut>) = unsafe {
                        (
                            srcs.iter().map(|v| Region::from_raw_parts(v.as_ptr(), slice, MemoryKind::Host)).collect(),
                            dsts.iter_mut()
                                .map(|v| RegionMut::from_raw_parts(v.as_mut_ptr(), slice, MemoryKind::Host))
                                .collect(),
                        )
                    };
                    let red = HostReducer::new();
                    // Every case in turn in each round, so that the machine's drift over
                    // seconds reaches them all alike; the first round warms up. A failed call
                    // marks its case and the thread goes on: a thread that left the loop
                    // would leave the others waiting at the barrier for good.
                    let mut mine = vec![[0.0; ROUNDS]; cases.len()];
                    for round in 0..=ROUNDS {
                        for (&(d, o), times) in cases.iter().zip(&mut mine) {
                            barrier.wait();
                            let t0 = Instant::now();
                            let ok = (0..reps).all(|_| red.reduce_into_all(d, o, &outs, &ins, false).is_ok());
                            let secs = t0.elapsed().as_secs_f64() / reps as f64;
                            if round > 0 {
                                times[round - 1] = if ok { secs } else { f64::NAN };
                            }
                        }
                    }
                    drop(dsts);
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a kernel thread panicked")).collect()
    });
    for (i, &(d, o)) in cases.iter().enumerate() {
        let failed = secs.iter().any(|t| t[i].iter().any(|x| x.is_nan()));
        let best = (0..ROUNDS).map(|r| secs.iter().map(|t| t[i][r]).fold(0.0, f64::max)).fold(f64::INFINITY, f64::min);
        out[dtype_op_index(d, o)] = if failed { 0.0 } else { (sources * slice) as f64 / best / 1e9 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_described_with_their_dates_and_placements() {
        // Leap days, century rules and the epoch (checked against `date -u -d @SECS`).
        assert_eq!(utc_minute(0.0), "1970-01-01 00:00");
        assert_eq!(utc_minute(951_782_400.0), "2000-02-29 00:00");
        assert_eq!(utc_minute(4_107_542_399.0), "2100-02-28 23:59");
        assert_eq!(utc_minute(4_107_542_400.0), "2100-03-01 00:00");
        assert_eq!(utc_minute(1_796_641_259.9), "2026-12-07 11:00");
        // No gap over 2x: one group; a gap: near and far apart.
        assert_eq!(round_trip_groups(vec![88.0, 49.0, 61.0]), "49-88 ns in 3 runs");
        assert_eq!(round_trip_groups(vec![306.0, 61.0, 330.0, 26.0]), "26-61 ns in 2 runs, 306-330 ns in 2 runs");
        // World sizes calibrated but not counted in `runs` count one run each.
        let mut e = TuningFile::builtin().entry_for("h", "AMD EPYC", "tcp").unwrap().clone();
        e.runs = [("2".to_string(), 2)].into();
        e.efficiency = [("all_reduce.ring".to_string(), vec![vec![2.0, 1.0], vec![4.0, 1.0]])].into();
        e.samples.started = vec![[2.0, 1_796_641_200.0], [2.0, 1_796_641_230.0], [4.0, 1_796_727_600.0]];
        e.samples.round_trip.clear();
        e.samples.placement.clear();
        assert!(e.describe_runs("cmd").ends_with("; started 2026-12-07 11:00 to 2026-12-08 11:00 UTC"));
        e.samples.started = vec![[2.0, 1_796_641_200.0], [2.0, 1_796_641_230.0], [4.0, 1_796_641_259.0]];
        assert!(e.describe_runs("cmd").ends_with("; started 2026-12-07 11:00 UTC"));
        e.samples.started.pop();
        assert!(e.describe_runs("cmd").ends_with("; 2 of them started 2026-12-07 11:00 UTC"));
        e.samples.started = vec![[2.0, 1_796_641_200.0], [2.0, 1_796_641_230.0], [4.0, 1_796_727_600.0]];
        assert_eq!(
            e.describe_runs("cmd"),
            "cmd over tcp, AMD EPYC, 2 cores: 3 runs pooled (2 at 2 ranks, 1 at 4); started 2026-12-07 11:00 to \
             2026-12-08 11:00 UTC"
        );
        // Runs that probed the cores between sizes: their tallies summed.
        e.samples.placement = vec![[2.0, 84.0, 5.0, 4.0, 1.0], [4.0, 84.0, 2.0, 2.0, 0.0]];
        assert!(
            e.describe_runs("cmd").ends_with(
                "UTC; cores probed between sizes in 2 runs: 7 of 168 points timed far apart, 6 timed again near, 1 left out"
            ),
            "{}",
            e.describe_runs("cmd")
        );
        e.samples.placement.pop();
        assert!(e
            .describe_runs("cmd")
            .ends_with("in 1 run: 5 of 84 points timed far apart, 4 timed again near, 1 left out"));
    }

    #[test]
    fn far_is_twice_the_fastest_and_100_ns_beyond() {
        assert!(is_far(306.0, 63.0) && is_far(128.0, 27.0) && !is_far(126.0, 27.0));
        // Hardware threads of one core (26 ns) beside the usual near placement (63): not far.
        assert!(!is_far(63.0, 26.0));
        assert!(!is_far(120.0, 63.0), "under 2x");
        assert!(!is_far(0.0, 63.0) && !is_far(306.0, 0.0), "not probed");
    }

    /// A scripted calibration: points first timed `k + 1` seconds with the round trips given;
    /// the probes [`retime_far`] makes answer far (306 ns) at the indices in `far_probes`,
    /// near (63) at the others; a point timed again takes `100 + k` and `200 + k`. Returns
    /// the points, the tally, the points timed again and the probes made with a pause.
    fn retime_script(round_trips: &[f64], far_probes: &[usize]) -> (Vec<TimedPoint>, RetimeTally, Vec<usize>, usize) {
        let mut points: Vec<TimedPoint> = round_trips
            .iter()
            .enumerate()
            .map(|(k, &ns)| TimedPoint { best: vec![k as f64 + 1.0; 2], round_trip: ns })
            .collect();
        let probes = std::cell::Cell::new(0usize);
        let mut timed = Vec::new();
        let mut pauses = 0;
        let tally = retime_far(
            &mut points,
            &mut |k| {
                timed.push(k);
                Ok(vec![100.0 + k as f64, 200.0 + k as f64])
            },
            &mut |pause| {
                pauses += usize::from(pause);
                let n = probes.get();
                probes.set(n + 1);
                Ok(if far_probes.contains(&n) { 306.0 } else { 63.0 })
            },
        )
        .expect("scripted");
        (points, tally, timed, pauses)
    }

    #[test]
    fn points_timed_far_are_timed_again_near_or_left_out() {
        // Nothing far: nothing timed again, nothing probed.
        let (points, tally, timed, _) = retime_script(&[63.0, 61.0, 66.0], &[]);
        assert_eq!((tally.far, tally.retimed, tally.left_out, timed.len()), (0, 0, 0, 0));
        assert_eq!(points[2].best, vec![3.0, 3.0]);
        assert_eq!((tally.floor, tally.slowest), (61.0, 66.0));
        // The run's first point timed far (it began far; later points show near is 63):
        // timed again once near, and kept.
        let (points, tally, timed, pauses) = retime_script(&[306.0, 63.0, 306.0], &[]);
        assert_eq!((tally.far, tally.retimed, tally.left_out), (2, 2, 0));
        assert_eq!(timed, vec![0, 2]);
        assert_eq!(pauses, 0);
        assert_eq!(points[0], TimedPoint { best: vec![100.0, 200.0], round_trip: 63.0 });
        assert_eq!(tally.slowdowns, vec![2.0 / 300.0, 6.0 / 304.0]);
        assert_eq!(points[1].best, vec![2.0, 2.0], "a near point stays as timed");
        assert_eq!(points[2].best, vec![102.0, 202.0]);
        // Still far when the retry begins: it waits (probes with pauses) for near, then times.
        // Probe 0 (before the retry) and 1, 2 (waiting) far; 3 near; time; probe 4 near.
        let (points, tally, timed, pauses) = retime_script(&[63.0, 306.0], &[0, 1, 2]);
        assert_eq!((tally.retimed, tally.left_out, pauses), (1, 0, 3));
        assert_eq!(timed, vec![1]);
        assert_eq!(points[1].best, vec![101.0, 201.0]);
        // Far again right after each retry: tried RETIMES times, then left out (0s), which
        // the fit skips.
        let after_each: Vec<usize> = (0..RETIMES).map(|i| 2 * i + 1).collect();
        let (points, tally, timed, _) = retime_script(&[63.0, 306.0], &after_each);
        assert_eq!((tally.far, tally.retimed, tally.left_out), (1, 0, 1));
        assert_eq!(timed, vec![1; RETIMES]);
        assert_eq!(points[1].best, vec![0.0, 0.0]);
        assert_eq!(points[0].best, vec![1.0, 1.0], "a near point stays as timed");
        // Far for longer than the run's patience: left out without timing it again, and the
        // patience stays spent for the next far point.
        let all: Vec<usize> = (0..PATIENCE_PROBES + 10).collect();
        let (points, tally, timed, pauses) = retime_script(&[63.0, 306.0, 306.0], &all);
        assert_eq!((tally.far, tally.retimed, tally.left_out), (2, 0, 2));
        assert!(timed.is_empty());
        assert_eq!(pauses, PATIENCE_PROBES);
        assert!(points[1..].iter().all(|p| p.best == vec![0.0, 0.0]));
        // One CPU (no probe answered): nothing judged far.
        let (_, tally, timed, _) = retime_script(&[0.0, 0.0], &[]);
        assert_eq!((tally.far, tally.floor, timed.len()), (0, 0.0, 0));
    }

    #[test]
    fn builtin_parses_and_words_round_trip() {
        let f = TuningFile::builtin();
        assert_eq!(TuningFile::parse(&serde_json::to_string(&f).unwrap()).unwrap(), f);
        for t in ["shm", "tcp", "loopback", "nonexistent"] {
            let p = f.profile("some-host", t);
            // Whether peers' memory maps is each rank's own transport's, not rank 0's word.
            assert_eq!(Profile { peer_memory: p.peer_memory, ..from_words(&to_words(&p)) }, p);
            assert_eq!(to_words(&p).len(), PROFILE_WORDS);
            assert!(p.intra.beta > 0.0 && p.inter.alpha > 0.0 && p.gamma(DataType::Bf16, ReduceOp::Max) > 0.0);
            // With and without the fused kernel's figures.
            let mut q = p.clone();
            q.fused = match p.fused {
                Some(_) => None,
                None => Some(FusedExtra { cache: [[[1.5e-12, 2e-12, 3e-12]; 5]; 10], memory: [[[0.5e-12; 3]; 5]; 10] }),
            };
            assert_eq!(Profile { peer_memory: q.peer_memory, ..from_words(&to_words(&q)) }, q);
        }
    }

    /// Every built-in entry, priced as a communicator prices it, reproduces its own
    /// calibration: at each size and world it measured, every algorithm's prediction is the
    /// median of its samples (the residual pins it there). Whatever the fit and the
    /// prediction compute differently shows up here as a miss.
    #[test]
    fn builtin_entries_reproduce_their_samples() {
        let mut misses = Vec::new();
        let mut checked = 0;
        for entry in TuningFile::builtin().entries {
            let file = TuningFile { oxccl_tuning: TUNING_VERSION, entries: vec![entry.clone()] };
            let mut profile = file.profile(&entry.host, &entry.transport);
            profile.cores = entry.cores.max(1.0);
            for (name, rows) in &entry.samples.times {
                let Some((c, a)) = name.split_once('.') else { continue };
                let (Some(coll), Some(algo)) = (Collective::parse(c), Algorithm::parse(a)) else { continue };
                let mut worlds: Vec<usize> =
                    rows.iter().filter(|r| r[1] as usize == 1).map(|r| r[0] as usize).collect();
                worlds.sort_unstable();
                worlds.dedup();
                for p in worlds {
                    let hosts = vec![0; p];
                    for i in 0..RESIDUAL_POINTS {
                        let times: Vec<f64> = rows
                            .iter()
                            .filter(|r| r[0] as usize == p && r[1] as usize == 1)
                            .filter_map(|r| r.get(2 + i).copied())
                            .filter(|&t| t > 0.0)
                            .collect();
                        let Some(t) = median(times) else { continue };
                        let bytes = calibration_bytes(coll, residual_bytes(i), p);
                        // Where the call's size is not the point's (a few bytes rounded to
                        // whole elements per rank), the prediction interpolates residuals.
                        if bytes != residual_bytes(i) {
                            continue;
                        }
                        // At the default chunk size, as the fit prices it.
                        let call = Call::new(coll, bytes, DataType::F32, ReduceOp::Sum);
                        let Some(cost) = predict(&call, algo, &hosts, &profile) else { continue };
                        checked += 1;
                        let ratio = cost.total() * 1e6 / t;
                        // Residuals are stored to four digits.
                        if !(0.98..=1.02).contains(&ratio) {
                            misses.push(format!(
                                "{} {}: {name} at {p} ranks, {} B: predicted {:.1} us, sampled {t:.1} ({ratio:.3})",
                                entry.cpu,
                                entry.transport,
                                residual_bytes(i),
                                cost.total() * 1e6
                            ));
                        }
                    }
                }
            }
        }
        assert!(checked > 1000, "only {checked} points checked");
        assert!(misses.is_empty(), "{} of {checked} points:\n{}", misses.len(), misses.join("\n"));
    }

    #[test]
    fn residuals_survive_the_file_and_the_words() {
        let mut f = TuningFile::builtin();
        // This machine's entry: the one `entry` and `profile` read back below.
        let mut entry = f.entry("", "shm").unwrap().clone();
        let mut e = entry.efficiencies()[0];
        e.residual = std::array::from_fn(|i| if i == 3 { 0.0 } else { 0.5 + i as f32 / 8.0 });
        entry.set_efficiency(&e);
        f.upsert(entry.clone());
        let back = TuningFile::parse(&serde_json::to_string(&f).unwrap()).unwrap();
        let got = back.entry(&entry.host, &entry.transport).unwrap().efficiencies();
        let g = got.iter().find(|x| x.coll == e.coll && x.algo == e.algo && x.ranks == e.ranks).unwrap();
        assert_eq!(g.residual, e.residual);
        let p = back.profile(&entry.host, &entry.transport);
        let w = from_words(&to_words(&p));
        let g = w.efficiency.iter().find(|x| x.coll == e.coll && x.algo == e.algo && x.ranks == e.ranks).unwrap();
        assert_eq!(g.residual, e.residual);
        // A row of the old form (five figures) reads as "no residuals"; a malformed one is refused.
        let mut old = entry.clone();
        old.efficiency.values_mut().flatten().for_each(|r| r.truncate(5));
        assert!(old.efficiencies().iter().all(|x| x.residual == [0.0; RESIDUAL_POINTS]));
        old.efficiency.values_mut().next().unwrap()[0].truncate(3);
        let mut bad = TuningFile::builtin();
        bad.upsert(old);
        let err = TuningFile::parse(&serde_json::to_string(&bad).unwrap()).unwrap_err().to_string();
        assert!(err.contains("efficiency row of 3 figures"), "{err}");
    }

    #[test]
    fn version_1_files_keep_their_points_at_their_sizes() {
        // A version 1 row: residuals and times at powers of 4 from 16 B to 64 MiB.
        let mut entry = TuningFile::builtin().entry("", "shm").unwrap().clone();
        let key = "all_reduce.ring".to_string();
        let mut row = vec![2.0, 1.1, 0.9, 1.3, 65536.0];
        row.extend((0..RESIDUAL_POINTS_V1).map(|i| 1.0 + i as f64 / 100.0));
        entry.efficiency = BTreeMap::from([(key.clone(), vec![row])]);
        let mut times = vec![2.0, 1.0];
        times.extend((0..RESIDUAL_POINTS_V1).map(|i| 10.0 * 4f64.powi(i as i32)));
        entry.samples.times = BTreeMap::from([(key.clone(), vec![times])]);
        let mut text = serde_json::to_value(TuningFile { oxccl_tuning: 1, entries: vec![entry] }).unwrap();
        text["oxccl_tuning"] = 1.into();
        let f = TuningFile::parse(&text.to_string()).unwrap();
        assert_eq!(f.oxccl_tuning, TUNING_VERSION);
        let e = &f.entries[0];
        let (row, times) = (&e.efficiency[&key][0], &e.samples.times[&key][0]);
        assert_eq!(row.len(), 5 + RESIDUAL_POINTS);
        assert_eq!(times.len(), 2 + RESIDUAL_POINTS);
        for i in 0..RESIDUAL_POINTS {
            let b = residual_bytes(i);
            // The powers of 4 keep their figures; 8 and 32 MiB are unmeasured.
            let k = (0..RESIDUAL_POINTS_V1).find(|&k| 16usize << (2 * k) == b);
            let (r, t) = k.map_or((0.0, 0.0), |k| (1.0 + k as f64 / 100.0, 10.0 * 4f64.powi(k as i32)));
            assert_eq!(row[5 + i], r, "residual at {b} B");
            assert_eq!(times[2 + i], t, "time at {b} B");
        }
        // Between 4 and 16 MiB the correction is interpolated as in the old file.
        let x = e.efficiencies()[0];
        assert!((x.residual_at(8 << 20) - 1.095).abs() < 1e-6, "{}", x.residual_at(8 << 20));
        // Written out, the file is of the current version and reads back the same.
        let again = TuningFile::parse(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(again, f);
    }

    #[test]
    fn averaging_runs_takes_the_geometric_mean_weighted_by_runs() {
        // Files from before samples were kept: the geometric mean of the fitted rows.
        let mut earlier = TuningFile::builtin().entries[0].clone();
        earlier.efficiency.clear();
        earlier.runs.clear();
        earlier.samples = Samples::default();
        // Nor the fused kernel's speeds (which the fused cases below set themselves).
        earlier.fused_gbs.clear();
        let row = |f: f64, r: f64| {
            let mut v = vec![4.0, f, f, f, 1024.0];
            v.extend([r; RESIDUAL_POINTS]);
            v
        };
        earlier.efficiency.insert(
            "all_reduce.ring".into(),
            vec![row(1.0, 2.0), {
                let mut r = row(9.0, 9.0);
                r[0] = 2.0;
                r
            }],
        );
        let mut now = earlier.clone();
        now.efficiency.insert(
            "all_reduce.ring".into(),
            vec![row(4.0, 0.5), {
                let mut r = row(3.0, 3.0);
                r[0] = 2.0;
                r
            }],
        );
        now.efficiency.insert("all_gather.ring".into(), vec![row(7.0, 7.0)]);
        let mut a = now.clone();
        a.average_with(&earlier, 4);
        let ring = &a.efficiency["all_reduce.ring"];
        // One earlier run and this one: sqrt(1 * 4) = 2, sqrt(2 * 0.5) = 1.
        assert!(ring[0][1..4].iter().all(|&x| (x - 2.0).abs() < 1e-12), "{ring:?}");
        assert!(ring[0][5..].iter().all(|&x| (x - 1.0).abs() < 1e-12), "{ring:?}");
        assert_eq!(ring[0][4], 1024.0);
        assert_eq!(ring[1], now.efficiency["all_reduce.ring"][1], "another world size is left alone");
        assert_eq!(a.efficiency["all_gather.ring"], now.efficiency["all_gather.ring"], "nothing earlier to average");
        assert_eq!(a.runs.get("4"), Some(&2));
        assert!((a.alpha_us / now.alpha_us - 1.0).abs() < 1e-12, "the same link figures stay");
        let mut faster = now.clone();
        faster.bandwidth_gbs = 4.0 * earlier.bandwidth_gbs;
        faster.average_with(&earlier, 4);
        assert!((faster.bandwidth_gbs / earlier.bandwidth_gbs - 2.0).abs() < 1e-9, "the links the factors rest on too");
        // A third run weighs the two before it twice: (2^2 * 16)^(1/3) = 4.
        let mut third = now.clone();
        third.efficiency.insert("all_reduce.ring".into(), vec![row(16.0, 1.0)]);
        third.average_with(&a, 4);
        assert!((third.efficiency["all_reduce.ring"][0][1] - 4.0).abs() < 1e-9);
        assert_eq!(third.runs.get("4"), Some(&3));
        // An earlier residual not measured (0) leaves this run's.
        let mut unmeasured = earlier.clone();
        unmeasured.efficiency.get_mut("all_reduce.ring").unwrap()[0][5] = 0.0;
        let mut b = now.clone();
        b.average_with(&unmeasured, 4);
        assert_eq!(b.efficiency["all_reduce.ring"][0][5], 0.5);
        // The fused kernel's speeds: this run's where the earlier runs lack them, the
        // earlier ones' where this run lacks them, else averaged as the two-input kernels'.
        let mut fused = now.clone();
        fused.fused_gbs = BTreeMap::from([("float.sum".to_string(), [[16.0, 2.0]; 3])]);
        let mut only_now = fused.clone();
        only_now.average_with(&earlier, 4);
        assert_eq!(only_now.fused_gbs, fused.fused_gbs);
        let mut only_earlier = now.clone();
        only_earlier.average_with(&fused, 4);
        assert_eq!(only_earlier.fused_gbs, fused.fused_gbs);
        let mut both = fused.clone();
        both.fused_gbs.insert("float.sum".into(), [[4.0, 8.0]; 3]);
        both.average_with(&fused, 4);
        let g = both.fused_gbs["float.sum"][2];
        assert!((g[0] - 8.0).abs() < 1e-9 && (g[1] - 4.0).abs() < 1e-9, "sqrt(16 * 4), sqrt(2 * 8): {g:?}");
        // Sampled runs: each speed is its median over the runs that measured it.
        let sampled = |gbs: f64| {
            let mut e = now.clone();
            e.fused_gbs = BTreeMap::from([("float.sum".to_string(), [[gbs, 1.0 / gbs], [1.0, 2.0], [gbs, gbs]])]);
            e.samples.fused = vec![e.fused_gbs.clone()];
            e
        };
        let mut pooled = sampled(4.0);
        for gbs in [100.0, 5.0] {
            let mut next = sampled(gbs);
            next.average_with(&pooled, 2);
            pooled = next;
        }
        assert_eq!(pooled.samples.fused.len(), 3);
        assert_eq!(pooled.fused_gbs["float.sum"], [[5.0, 0.2], [1.0, 2.0], [5.0, 5.0]], "each figure's median");
        // A run that reused the kernels (its samples the earlier ones') adds none.
        let mut reused = pooled.clone();
        reused.average_with(&pooled, 3);
        assert_eq!(reused.samples.fused.len(), 3);
    }

    #[test]
    fn the_fused_kernels_extra_is_its_time_beyond_f32s() {
        let mut f = TuningFile::builtin();
        for e in &mut f.entries {
            e.fused_gbs.clear();
        }
        // Not measured in this file: the built-in entry's figures (none where the built-in
        // entry for this processor has none either).
        let p = f.profile("some-host", "shm");
        assert_eq!(p.fused, TuningFile::builtin().profile("some-host", "shm").fused);
        let e = f.entries.iter_mut().find(|e| e.transport == "shm").unwrap();
        // The last source count differs: each is priced against f32's at the same count.
        e.fused_gbs = BTreeMap::from([
            ("float.sum".to_string(), [[10.0, 4.0], [10.0, 4.0], [5.0, 4.0]]),
            ("bfloat16.sum".to_string(), [[5.0, 4.0], [5.0, 4.0], [5.0, 4.0]]),
            ("half.sum".to_string(), [[20.0, 2.0], [20.0, 2.0], [20.0, 2.0]]),
        ]);
        let (host, cpu) = (e.host.clone(), e.cpu.clone());
        f.entries.retain(|e| e.host == host && e.cpu == cpu || e.transport != "shm");
        let fused = f.profile(&host, "shm").fused.expect("measured");
        let at = |d, o| {
            let (d, o) = (oxccl_algorithms::cost::dtype_index(d), oxccl_algorithms::cost::op_index(o));
            assert_eq!(fused.cache[d][o][0], fused.cache[d][o][1]);
            assert_eq!(fused.memory[d][o][0], fused.memory[d][o][1]);
            (fused.cache[d][o][0], fused.memory[d][o][0])
        };
        let bf16 = oxccl_algorithms::cost::dtype_index(DataType::Bf16);
        assert_eq!(fused.cache[bf16][oxccl_algorithms::cost::op_index(ReduceOp::Sum)][2], 0.0, "as fast as f32 at 8");
        let (cache, memory) = at(DataType::Bf16, ReduceOp::Sum);
        assert!((cache - 1e-10).abs() < 1e-22 && memory == 0.0, "1/5 - 1/10 ns per byte in cache, none out");
        let (cache, memory) = at(DataType::F16, ReduceOp::Sum);
        assert!(cache == 0.0 && (memory - 2.5e-10).abs() < 1e-22, "faster than f32 in cache: no extra");
        assert_eq!(at(DataType::F32, ReduceOp::Sum), (0.0, 0.0));
        assert_eq!(at(DataType::I8, ReduceOp::Sum), (0.0, 0.0), "not measured: as f32");
    }

    #[test]
    fn averaging_sampled_runs_refits_on_medians() {
        // Three runs at 4 ranks, the second one 2x slow throughout and with a disturbed
        // ping-pong (55 us): the pooled entry must predict the other runs' times.
        let mut base = TuningFile::builtin().entry("", "shm").unwrap().clone();
        base.efficiency.clear();
        base.runs.clear();
        base.samples = Samples::default();
        let truth = |i: usize| 2.0 + residual_bytes(i) as f64 / 1500.0; // microseconds
        let run = |slow: f64, alpha: f64| {
            let mut e = base.clone();
            e.alpha_us = alpha;
            // Each run's bandwidth curve its own: slower runs, lower bandwidths, and a halfway
            // point that differs (the pooled curve must be one run's, not a mix).
            e.bandwidth_gbs /= slow;
            e.cache_bandwidth_gbs /= slow * slow;
            e.cache_kib *= slow;
            e.samples.link = vec![[alpha, e.gap_us, e.bandwidth_gbs, e.cache_bandwidth_gbs, e.cache_kib, e.copy_gbs]];
            let mut row = vec![4.0, 1.0];
            row.extend((0..RESIDUAL_POINTS).map(|i| truth(i) * slow));
            e.samples.times.insert("all_reduce.ring".into(), vec![row]);
            e.fit_samples();
            e
        };
        // Each run's start and round trip before it, as `calibrate` and its caller leave them.
        let stamped = |mut e: TuningEntry, k: f64| {
            e.samples.started = vec![[4.0, 1000.0 * k]];
            e.samples.round_trip = vec![[4.0, 100.0 * k]];
            e
        };
        let first = stamped(run(1.0, 0.3), 1.0);
        let mut second = stamped(run(2.0, 55.0), 2.0);
        second.average_with(&first, 4);
        assert_eq!(second.runs.get("4"), Some(&2));
        assert_eq!(second.samples.link.len(), 2);
        let mut third = stamped(run(1.02, 0.31), 3.0);
        third.average_with(&second, 4);
        assert_eq!(third.runs.get("4"), Some(&3));
        assert_eq!(third.samples.times["all_reduce.ring"].len(), 3);
        assert_eq!(third.samples.started, [[4.0, 1000.0], [4.0, 2000.0], [4.0, 3000.0]], "every run's, in order");
        assert_eq!(third.samples.round_trip, [[4.0, 100.0], [4.0, 200.0], [4.0, 300.0]]);
        assert!((third.alpha_us - 0.31).abs() < 1e-12, "the median alpha, not the outlier's: {}", third.alpha_us);
        let l = third.samples.link[2];
        assert_eq!(
            [third.bandwidth_gbs, third.cache_bandwidth_gbs, third.cache_kib],
            [l[2], l[3], l[4]],
            "the median run's curve, whole"
        );
        let profile = TuningFile { oxccl_tuning: TUNING_VERSION, entries: vec![third.clone()] }.profile("", "shm");
        let hosts = [0usize; 4];
        for i in 0..RESIDUAL_POINTS {
            let call = Call::new(Collective::AllReduce, residual_bytes(i), DataType::F32, ReduceOp::Sum);
            let us = predict(&call, Algorithm::Ring, &hosts, &profile).unwrap().total() * 1e6;
            let want = truth(i) * 1.02;
            assert!(
                (us / want - 1.0).abs() < 0.01,
                "size {}: predicted {us:.3} us, median run {want:.3} us",
                residual_bytes(i)
            );
        }
        // Geometric mean of the three (the old way) would be 1.27x the truth.
        // A run that reused the earlier link figures adds no link sample.
        let mut reused = run(1.0, 0.3);
        reused.samples.link = third.samples.link.clone();
        reused.average_with(&third, 4);
        assert_eq!(reused.samples.link.len(), 3);
        // Another world size's samples are kept apart.
        let mut two = run(1.0, 0.3);
        two.samples.times.get_mut("all_reduce.ring").unwrap()[0][0] = 2.0;
        // As calibrate leaves a run at 2 ranks that started from the pooled entry.
        two.samples.started = [&third.samples.started[..], &[[2.0, 5000.0]]].concat();
        two.samples.round_trip = [&third.samples.round_trip[..], &[[2.0, 500.0]]].concat();
        two.average_with(&third, 2);
        let rows = &two.samples.times["all_reduce.ring"];
        assert_eq!(rows.iter().filter(|r| r[0] == 4.0).count(), 3);
        assert_eq!(rows.iter().filter(|r| r[0] == 2.0).count(), 1);
        assert_eq!(two.samples.started, [[4.0, 1000.0], [4.0, 2000.0], [4.0, 3000.0], [2.0, 5000.0]]);
        assert_eq!(two.samples.round_trip, [[4.0, 100.0], [4.0, 200.0], [4.0, 300.0], [2.0, 500.0]]);
        assert_eq!(two.efficiency["all_reduce.ring"].len(), 2, "rows at 2 and 4 ranks");
    }

    #[test]
    fn bad_files_are_refused_with_reasons() {
        let e = TuningFile::parse("{\"oxccl_tuning\": 3, \"entries\": []}").unwrap_err().to_string();
        assert!(e.contains("version 3"), "{e}");
        let mut f = TuningFile::builtin();
        f.entries[0].bandwidth_gbs = -1.0;
        let e = TuningFile::parse(&serde_json::to_string(&f).unwrap()).unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        assert!(TuningFile::parse("not json").is_err());
    }

    #[test]
    fn entries_fall_back_from_host_to_any() {
        let mut f = TuningFile::builtin();
        let mut mine = f.entry("x", "tcp").unwrap().clone();
        mine.host = "big-box".into();
        mine.alpha_us = 123.0;
        f.upsert(mine.clone());
        assert_eq!(f.entry("big-box", "tcp").unwrap().alpha_us, 123.0);
        assert_ne!(f.entry("other", "tcp").unwrap().alpha_us, 123.0);
        f.upsert(mine);
        assert_eq!(f.entries.iter().filter(|e| e.host == "big-box").count(), 1);
        assert!((f.profile("big-box", "tcp").intra.alpha - 123e-6).abs() < 1e-12);
    }

    #[test]
    fn entries_of_another_processor_come_last() {
        let base = TuningFile::builtin().entries[0].clone();
        let mk = |host: &str, cpu: &str, alpha_us: f64| TuningEntry {
            host: host.into(),
            cpu: cpu.into(),
            transport: "shm".into(),
            alpha_us,
            ..base.clone()
        };
        let mut f = TuningFile { oxccl_tuning: TUNING_VERSION, entries: Vec::new() };
        f.upsert(mk("box", "Intel Xeon", 1.0));
        f.upsert(mk("*", "AMD EPYC", 2.0));
        f.upsert(mk("*", "", 3.0));
        f.upsert(mk("*", "AMD EPYC 7B13", 4.0));
        let alpha = |f: &TuningFile, host: &str, cpu: &str| f.entry_for(host, cpu, "shm").unwrap().alpha_us;
        // This host's entry, but measured on another processor: this processor's wins, the
        // most specific name first.
        assert_eq!(alpha(&f, "box", "AMD EPYC 7B13 64-Core Processor"), 4.0);
        assert_eq!(alpha(&f, "box", "AMD EPYC"), 2.0);
        assert_eq!(alpha(&f, "box", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"), 1.0);
        assert_eq!(alpha(&f, "elsewhere", "Intel(R) Xeon(R) Processor"), 1.0);
        // No entry of this processor: one that names none, else any.
        assert_eq!(alpha(&f, "box", "ARM Neoverse-V2"), 3.0);
        f.entries.retain(|e| !e.cpu.is_empty());
        assert!(f.entry_for("box", "ARM Neoverse-V2", "shm").is_some());
        assert!(f.entry_for("box", "AMD EPYC", "tcp").is_none());
        // Calibrations of one host name on two processors are kept apart.
        f.upsert(mk("box", "AMD EPYC", 5.0));
        assert_eq!(f.entries.iter().filter(|e| e.host == "box").count(), 2);
        assert_eq!(alpha(&f, "box", "AMD EPYC"), 5.0);
        assert_eq!(alpha(&f, "box", "Intel Xeon Processor"), 1.0);
    }

    #[test]
    fn processor_names_lose_trademarks_and_clock() {
        assert_eq!(normal_cpu_name(" Intel(R) Xeon(R)  Processor @ 2.90GHz"), "Intel Xeon Processor");
        assert_eq!(normal_cpu_name("AMD EPYC"), "AMD EPYC");
        assert!(cpu_matches("Intel Xeon", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"));
        assert!(cpu_matches("amd epyc", "AMD EPYC 9654 96-Core Processor"));
        assert!(!cpu_matches("AMD EPYC", "Intel(R) Xeon(R) Processor"));
        assert!(!cpu_matches("", "AMD EPYC"));
        // Whatever this machine is, the built-in file answers for it.
        assert!(TuningFile::builtin().entry("any", "shm").is_some());
    }

    #[test]
    fn cache_curve_fit_recovers_its_parameters() {
        let (bc, b, c) = (1e-10, 4e-10, f64::from(1u32 << 21));
        let pts: Vec<(f64, f64)> = (16..28)
            .map(|k| {
                let w = f64::from(1u32 << k);
                (w, bc + (b - bc) * w / (w + c))
            })
            .collect();
        let (fbc, fb, fc) = fit_cache_curve(&pts);
        assert!((fbc / bc - 1.0).abs() < 1e-6 && (fb / b - 1.0).abs() < 1e-6 && fc == c, "{fbc} {fb} {fc}");
    }

    #[test]
    fn factor_fit_recovers_its_factors() {
        let c = |l: f64, w: f64| Cost { latency: l, transfer: w, ..Cost::default() };
        let pts: Vec<(Cost, f64, f64)> = [(1e-6, 0.0, 0.0), (1e-6, 1e-5, 0.1), (2e-6, 1e-3, 0.5), (1e-6, 1e-2, 0.9)]
            .iter()
            .map(|&(l, w, x)| (c(l, w), x, 3.0 * l + (0.5 * (1.0 - x) + 2.0 * x) * w))
            .collect();
        let [a, b1, b2] = fit_factors(&pts);
        assert!((a - 3.0).abs() < 1e-6 && (b1 - 0.5).abs() < 1e-6 && (b2 - 2.0).abs() < 1e-6, "{a} {b1} {b2}");
        // Only latency-bound points: one factor for all.
        let [a, b1, b2] = fit_factors(&[(c(1e-6, 0.0), 0.0, 2e-6), (c(2e-6, 0.0), 0.0, 4e-6)]);
        assert!((a - 2.0).abs() < 1e-9 && a == b1 && a == b2, "{a} {b1} {b2}");
    }

    #[test]
    fn a_fixed_chunk_size_overrides_the_selections() {
        let comms = crate::Communicator::local_world(2, crate::Config::default()).unwrap();
        let c = &comms[0];
        c.set_algorithms("all_reduce:tree").unwrap();
        let chosen =
            |c: &crate::Communicator| c.choice_for(Collective::AllReduce, 64 << 20, DataType::F32, ReduceOp::Sum);
        let auto = chosen(c).chunk_bytes;
        let other = if auto == 64 << 10 { 128 << 10 } else { 64 << 10 };
        c.fix_chunk_bytes(Some(other));
        assert_eq!(chosen(c).chunk_bytes, other);
        assert_eq!(chosen(c).algo, Algorithm::Tree);
        c.fix_chunk_bytes(None);
        assert_eq!(chosen(c).chunk_bytes, auto);
    }

    #[test]
    fn line_fit() {
        let (a, b) = fit_line(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]);
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
    }
}
