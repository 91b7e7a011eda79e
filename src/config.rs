//! [`Config`]: how a communicator runs. Built in code, or read from `OXCCL_*` variables by
//! [`Config::from_env`].
//!
//! | variable | field | example |
//! | --- | --- | --- |
//! | `OXCCL_TRANSPORT` | [`Config::transport`] | `tcp`, `auto` |
//! | `OXCCL_ALGO` | [`Config::algorithms`] | `ring`, `all_reduce:recursive_doubling;all_gather:ring` |
//! | `OXCCL_TIMEOUT_MS` | [`Config::timeout`] | `600000` (10 minutes, the default) |
//! | `OXCCL_CHUNK_BYTES` | [`Config::chunk_bytes`] | `512K` |
//! | `OXCCL_PIPELINE_DEPTH` | [`Config::pipeline_depth`] | `4` |
//! | `OXCCL_SOCKET_IFNAME` | [`Config::socket_ifname`] | `eth0`, `^docker,lo` |
//! | `OXCCL_TCP_CONNS` | [`Config::tcp_conns_per_peer`] | `2` |
//! | `OXCCL_SOCKET_BUF` | [`Config::socket_buffer`] | `4M` |
//! | `OXCCL_TCP_CONGESTION` | [`Config::tcp_congestion`] | `cubic,reno` (the default), `system` |
//! | `OXCCL_SPIN_US` | [`Config::spin`] | `50`, `0` |
//! | `OXCCL_SMALL_BYTES` | [`Config::small_bytes`] | the cost model's choice |
//! | `OXCCL_TUNING_FILE` | [`Config::tuning_file`] | `/etc/oxccl/tuning.json` |
//! | `OXCCL_TUNE` | [`Config::tune_at_init`] | `quick`, `off` |
//! | `OXCCL_SHM_SLOTS`, `OXCCL_SHM_SLOT_BYTES` | [`Config::shm_slots`], [`Config::shm_slot_bytes`] | `8`, `64K` |
//! | `OXCCL_SHM_SINGLE_COPY` | [`Config::shm_single_copy_min`] (and [`Config::shm_single_copy_trials`] off) | `1M`, `64K`, `off` |
//! | `OXCCL_SHM_SINGLE_COPY_CHOICE` | [`Config::shm_single_copy_timed`] | `timed` (the default), `always` |
//! | `OXCCL_SHM_STORES` | [`Config::shm_slot_stores`] | `auto`, `cached`, `streaming` |
//! | `OXCCL_YIELD_US` (or `OXCCL_SHM_YIELD_US`) | [`Config::yield_for`] | `200` |
//! | `OXCCL_VERIFY_CALLS` | [`Config::verify_calls`] | `1`, `0` (the default) |
//! | `OXCCL_TRIAL_CALLS` | [`Config::trial_calls`] | `3` (the default), `0` (the model alone) |

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::Collective;

use crate::error::{Error, Result};

/// Which transport carries data between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// Shared memory when every rank is on this host, TCP otherwise.
    #[default]
    Auto,
    /// TCP for every pair.
    Tcp,
    /// Shared memory; every rank must be on this host (else an `Unsupported` error, never a
    /// silent fallback).
    Shm,
}

impl TransportKind {
    /// Parses `auto`, `tcp` or `shm`.
    pub fn parse(s: &str) -> Result<TransportKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(TransportKind::Auto),
            "tcp" => Ok(TransportKind::Tcp),
            "shm" => Ok(TransportKind::Shm),
            other => Err(Error::invalid_argument(format!("unknown transport '{other}' (valid: auto, tcp, shm)"))),
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Auto => "auto",
            TransportKind::Tcp => "tcp",
            TransportKind::Shm => "shm",
        })
    }
}

/// Forced algorithms, per collective. Collectives not named are chosen by size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlgoOverrides {
    map: HashMap<Collective, Algorithm>,
}

fn valid_names() -> String {
    Algorithm::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

impl AlgoOverrides {
    /// Parses `NAME` (every collective that has that algorithm uses it) or
    /// `COLLECTIVE:NAME;COLLECTIVE:NAME` (NCCL_ALGO's per-collective form). An unknown name,
    /// or one that no named collective has, is an error that lists the valid ones.
    pub fn parse(spec: &str) -> Result<AlgoOverrides> {
        let mut map = HashMap::new();
        for part in spec.split([';', ',']).map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once(':') {
                Some((c, a)) => {
                    let coll = Collective::parse(c).ok_or_else(|| {
                        let all: Vec<_> = Collective::ALL.iter().map(|c| c.name()).collect();
                        Error::invalid_argument(format!(
                            "unknown collective '{c}' in OXCCL_ALGO (valid: {})",
                            all.join(", ")
                        ))
                    })?;
                    let algo = Algorithm::parse(a).ok_or_else(|| {
                        Error::invalid_argument(format!("unknown algorithm '{a}' (valid: {})", valid_names()))
                    })?;
                    if registry::lookup(coll, algo).is_none() {
                        let have: Vec<_> = registry::algorithms(coll).iter().map(|a| a.name()).collect();
                        return Err(Error::invalid_argument(format!(
                            "{coll} has no '{algo}' algorithm (valid for {coll}: {})",
                            have.join(", ")
                        )));
                    }
                    map.insert(coll, algo);
                }
                None => {
                    let algo = Algorithm::parse(part).ok_or_else(|| {
                        Error::invalid_argument(format!("unknown algorithm '{part}' (valid: {})", valid_names()))
                    })?;
                    let mut any = false;
                    for c in Collective::ALL {
                        if registry::lookup(c, algo).is_some() {
                            map.insert(c, algo);
                            any = true;
                        }
                    }
                    if !any {
                        return Err(Error::invalid_argument(format!("no collective has algorithm '{algo}'")));
                    }
                }
            }
        }
        Ok(AlgoOverrides { map })
    }

    /// The forced algorithm of `coll`, if any.
    pub fn get(&self, coll: Collective) -> Option<Algorithm> {
        self.map.get(&coll).copied()
    }

    /// Forces `algo` for `coll`; an error if `coll` has no such algorithm.
    pub fn set(&mut self, coll: Collective, algo: Algorithm) -> Result<()> {
        if registry::lookup(coll, algo).is_none() {
            return Err(Error::invalid_argument(format!("{coll} has no '{algo}' algorithm")));
        }
        self.map.insert(coll, algo);
        Ok(())
    }

    /// Whether nothing is forced.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The overrides packed in one word (4 bits per collective: 0 for none, else the
    /// algorithm's index in [`Algorithm::ALL`] plus one), for lock-free reads per call.
    pub(crate) fn pack(&self) -> u64 {
        self.map.iter().fold(0, |w, (&c, &a)| {
            let i = Algorithm::ALL.iter().position(|&x| x == a).expect("a known algorithm") as u64 + 1;
            w | (i << (4 * c as u64))
        })
    }

    /// The override for `coll` in a word made by [`AlgoOverrides::pack`].
    pub(crate) fn unpack(word: u64, coll: Collective) -> Option<Algorithm> {
        match (word >> (4 * coll as u64)) & 0xf {
            0 => None,
            i => Algorithm::ALL.get(i as usize - 1).copied(),
        }
    }
}

/// How a communicator runs.
///
/// ```
/// use std::time::Duration;
/// let cfg = oxccl::Config::default()
///     .with_timeout(Duration::from_secs(30))
///     .with_chunk_bytes(1 << 20)
///     .with_algorithm("all_reduce:ring")
///     .unwrap();
/// assert_eq!(cfg.timeout, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The transport.
    pub transport: TransportKind,
    /// Forced algorithms; others are chosen by size.
    pub algorithms: AlgoOverrides,
    /// Every blocking wait ends with `Error::Timeout` after this long. Default 10 minutes.
    pub timeout: Duration,
    /// Pipeline chunk size in bytes. Default 512 KiB.
    pub chunk_bytes: usize,
    /// Whether the cost model may choose the chunk size of the broadcast and reduce chains
    /// and trees (true by default; [`Config::with_chunk_bytes`] and `OXCCL_CHUNK_BYTES` fix
    /// it).
    pub chunk_auto: bool,
    /// The tuning file (from `oxccl-bench --calibrate`) whose profile prices the algorithms;
    /// `None`: the built-in profile. Rank 0's profile is used by every rank.
    pub tuning_file: Option<std::path::PathBuf>,
    /// At start-up, time the all-reduce at three sizes and scale the profile's latency and
    /// per-byte terms to what it measured (`OXCCL_TUNE=quick`, under 200 ms; see
    /// [`crate::cost::quick_rescale`]): for a machine busier or slower than its profile.
    /// Where the profile was measured on this machine lately, leave it off: on the development
    /// VM its probes' noise made the predictions worse on the day of the calibration (63% within
    /// 25% against 88%) and better a day later, once the machine had drifted (74% against 65%;
    /// benches/COST_MODEL.md).
    pub tune_at_init: bool,
    /// Chunks in flight per pipelined stream. Default 4.
    pub pipeline_depth: usize,
    /// Network interfaces to listen on, in `NCCL_SOCKET_IFNAME` syntax.
    pub socket_ifname: Option<String>,
    /// TCP connections per pair of ranks. Default 1.
    pub tcp_conns_per_peer: usize,
    /// Socket buffer size; `None` (the default) keeps the kernel's autotuning.
    pub socket_buffer: Option<usize>,
    /// TCP congestion-control algorithms to ask for, first accepted wins; empty keeps the
    /// system's. Default `cubic`, then `reno`: pacing ones (BBR) slow the bursts of a
    /// collective ([`oxccl_transport::tcp::TcpOptions::congestion`]).
    pub tcp_congestion: Vec<String>,
    /// How long a waiter spins before it yields its core and then sleeps; `None` picks by
    /// ranks per core: 50 us where every rank has a core, none where ranks outnumber cores.
    pub spin: Option<Duration>,
    /// All-reduces of at most this many bytes use recursive doubling (latency-bound), larger
    /// ones another algorithm, unless an algorithm is forced. `None` (the default): the cost
    /// model decides.
    pub small_bytes: Option<usize>,
    /// Shared memory: slots per FIFO (per ordered pair of ranks). Default 8.
    pub shm_slots: usize,
    /// Shared memory: bytes per slot, header included. Default 64 KiB.
    pub shm_slot_bytes: usize,
    /// Shared memory: messages of at least this many bytes are copied once, by the receiver
    /// reading the sender's buffer (process_vm_readv), where the kernel allows it; `None`
    /// keeps every message in the FIFO. Default 1 MiB.
    ///
    /// Why not smaller: a program's data is freshly written (gradients, updated parameters),
    /// and each line a peer reads from the sender's buffer must be won back when the sender
    /// writes it again, while the FIFO's extra copy runs from the sender's own cache. With
    /// `oxccl-bench --fresh 1` (input rewritten before every call) at 2 ranks on this VM, the
    /// all-reduce of 256 KiB took 47 us with a 64 KiB threshold and 36 us with this one, the
    /// reduce-scatter of 1 MiB 114 and 89 us, the all-to-all 147 and 117 us; at 4 ranks the
    /// all-reduce of 1 MiB 986 and 659 us. nccl-tests' convention (input written once, so a
    /// send buffer read again and again stays in every cache) favours single copy from
    /// 64 KiB: the 2-rank all-gather of 1 MiB in place took 27 us there, 61 us here.
    pub shm_single_copy_min: Option<usize>,
    /// Shared memory: whether a receiver times its single-copy reads and, after a run of
    /// slow ones, has their sender use the FIFO for a while (`timed`, the default), or every
    /// message of at least [`Config::shm_single_copy_min`] bytes goes by single copy
    /// (`always`). See [`oxccl_transport::ShmOptions::single_copy_timed`].
    pub shm_single_copy_timed: bool,
    /// Shared memory: whether trial calls ([`Config::trial_calls`]) also try the chosen
    /// algorithm with its messages by single copy from
    /// [`crate::select::EARLY_SINGLE_COPY_MIN`] bytes, below [`Config::shm_single_copy_min`],
    /// and keep that where it ran faster (a program that sends the same unchanged buffer
    /// again and again; see there). On by default; `OXCCL_SHM_SINGLE_COPY` turns it off:
    /// the threshold it sets holds for every call.
    pub shm_single_copy_trials: bool,
    /// Shared memory: how a sender writes its peers' FIFO slots: `Auto` (the default) times
    /// its ordinary stores and streams for a while after a run of slow ones, as when a VM's
    /// vCPUs sit on core complexes that share no cache (see
    /// [`oxccl_transport::SlotStores`]); `Cached` and `Streaming` fix the choice.
    pub shm_slot_stores: oxccl_transport::SlotStores,
    /// Shared memory and TCP: after spinning, how long a waiter keeps checking between
    /// yields of its core before it sleeps (on its futex, or in `poll`). A wake-up is slow on
    /// a busy machine (tens of microseconds in a VM), while a yield hands the core to a rank
    /// that shares it at once: 3 ranks on 2 cores over TCP, an 8-byte recursive-doubling
    /// all-reduce took 11 us with the default and 23-62 us with 0. Default 200 us.
    pub yield_for: Duration,
    /// Before every collective, the ranks exchange what they are calling (collective, count,
    /// type, operator, root) and fail together, naming each call and its ranks, if they
    /// disagree ([`oxccl_algorithms::verify`]). Off by default: it costs ceil(lg p) message
    /// latencies per call, and the fingerprint in every message already catches a
    /// disagreement wherever a rank receives; what only verification catches in the call
    /// itself is ranks that only send in it, such as two roots of one broadcast (otherwise
    /// caught in their next call).
    pub verify_calls: bool,
    /// The fewest trial calls per candidate before a call shape's algorithm is fixed by
    /// measurement (`OXCCL_TRIAL_CALLS`); 0 leaves the choice to the cost model alone.
    /// Default 3; short calls get more, up to a budget ([`crate::select::trial_rounds`]).
    ///
    /// Where the cost model prices several algorithms of a call within
    /// [`crate::select::TRIAL_WINDOW`] of the best (and the best under
    /// [`crate::select::TRIAL_MAX_SECONDS`]), the first calls of that shape, after
    /// [`crate::select::TRIAL_WARM_CALLS`] warm-up calls of the model's choice, run each of
    /// them for a block of calls (the first of each block untimed), in two passes the second
    /// of which runs them in reverse order, and the next call fixes the
    /// one whose slowest rank's typical call was fastest, weighed against the model's prices
    /// by how steady the runs were, on every rank alike ([`crate::select::trial_candidates`],
    /// [`crate::select::measured_best`]). The model's error is largest exactly there
    /// (close candidates, and small calls, where the scheduler's placement of ranks on cores
    /// swings times by 2x for a process's life), and a few measured calls settle it. The
    /// price: those first calls run the slower candidates, and a floating-point reduction's
    /// rounding may differ between them (every rank of one call still gets the same bits);
    /// set 0 for the same algorithm, so the same rounding, in every run.
    pub trial_calls: u32,
}

impl Default for Config {
    fn default() -> Self {
        // The shared-memory transport's own defaults, stated once (ShmOptions).
        let shm = oxccl_transport::ShmOptions::default();
        Config {
            transport: TransportKind::Auto,
            algorithms: AlgoOverrides::default(),
            timeout: Duration::from_secs(600),
            chunk_bytes: 512 << 10,
            chunk_auto: true,
            tuning_file: None,
            tune_at_init: false,
            pipeline_depth: 4,
            socket_ifname: None,
            tcp_conns_per_peer: 1,
            socket_buffer: None,
            tcp_congestion: oxccl_transport::tcp::default_congestion(),
            spin: None,
            small_bytes: None,
            shm_slots: shm.slots,
            shm_slot_bytes: shm.slot_bytes,
            shm_single_copy_min: shm.single_copy_min,
            shm_single_copy_timed: shm.single_copy_timed,
            shm_single_copy_trials: true,
            shm_slot_stores: shm.slot_stores,
            yield_for: Duration::from_micros(200),
            verify_calls: false,
            trial_calls: 3,
        }
    }
}

/// Parses a byte size: `4096`, `512K`, `4M`, `1G` (binary units).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()?.to_ascii_uppercase() {
        'K' => (&s[..s.len() - 1], 1usize << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<usize>().ok()?.checked_mul(mult)
}

/// Parses `OXCCL_TCP_CONGESTION`: `system` (keep the system's algorithm), or names of
/// congestion-control algorithms separated by commas, tried in order.
pub fn parse_congestion(s: &str) -> Result<Vec<String>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("system") {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(str::trim)
        .map(|name| {
            // TCP_CA_NAME_MAX is 16 bytes with the terminating NUL.
            if !name.is_empty() && name.len() < 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                Ok(name.to_string())
            } else {
                Err(Error::invalid_argument(format!(
                    "OXCCL_TCP_CONGESTION='{s}': '{name}' is not a congestion-control name (like cubic, reno, bbr; or 'system')"
                )))
            }
        })
        .collect()
}

impl Config {
    /// The defaults overlaid with every `OXCCL_*` variable that is set. A malformed value is
    /// an error naming the variable.
    pub fn from_env() -> Result<Config> {
        Config::default().overlay(&|k| std::env::var(k).ok())
    }

    /// The defaults overlaid with the variables `env` returns (for tests).
    pub fn overlay(mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let bytes = |k: &str, v: String| {
            parse_bytes(&v)
                .ok_or_else(|| Error::invalid_argument(format!("{k}='{v}' is not a byte size (like 4096, 512K, 4M)")))
        };
        let int = |k: &str, v: String| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::invalid_argument(format!("{k}='{v}' is not a non-negative integer")))
        };
        if let Some(v) = var("OXCCL_TRANSPORT") {
            self.transport =
                TransportKind::parse(&v).map_err(|e| Error::invalid_argument(format!("OXCCL_TRANSPORT: {e}")))?;
        }
        if let Some(v) = var("OXCCL_ALGO") {
            self.algorithms =
                AlgoOverrides::parse(&v).map_err(|e| Error::invalid_argument(format!("OXCCL_ALGO: {e}")))?;
        }
        if let Some(v) = var("OXCCL_TIMEOUT_MS") {
            let ms = int("OXCCL_TIMEOUT_MS", v)?;
            if ms == 0 {
                return Err(Error::invalid_argument("OXCCL_TIMEOUT_MS must be above 0"));
            }
            self.timeout = Duration::from_millis(ms);
        }
        if let Some(v) = var("OXCCL_CHUNK_BYTES") {
            self = self.with_chunk_bytes(bytes("OXCCL_CHUNK_BYTES", v)?);
        }
        if let Some(v) = var("OXCCL_PIPELINE_DEPTH") {
            self.pipeline_depth = int("OXCCL_PIPELINE_DEPTH", v)?.clamp(1, 64) as usize;
        }
        if let Some(v) = var("OXCCL_SOCKET_IFNAME") {
            self.socket_ifname = Some(v);
        }
        if let Some(v) = var("OXCCL_TCP_CONNS") {
            let n = int("OXCCL_TCP_CONNS", v)?;
            if !(1..=16).contains(&n) {
                return Err(Error::invalid_argument(format!("OXCCL_TCP_CONNS={n} is not between 1 and 16")));
            }
            self.tcp_conns_per_peer = n as usize;
        }
        if let Some(v) = var("OXCCL_SOCKET_BUF") {
            self.socket_buffer = Some(bytes("OXCCL_SOCKET_BUF", v)?);
        }
        if let Some(v) = var("OXCCL_TCP_CONGESTION") {
            self.tcp_congestion = parse_congestion(&v)?;
        }
        if let Some(v) = var("OXCCL_SPIN_US") {
            self.spin = Some(Duration::from_micros(int("OXCCL_SPIN_US", v)?));
        }
        if let Some(v) = var("OXCCL_SHM_SLOTS") {
            let n = int("OXCCL_SHM_SLOTS", v)?;
            if !(1..=1024).contains(&n) {
                return Err(Error::invalid_argument(format!("OXCCL_SHM_SLOTS={n} is not between 1 and 1024")));
            }
            self.shm_slots = n as usize;
        }
        if let Some(v) = var("OXCCL_SHM_SLOT_BYTES") {
            let b = bytes("OXCCL_SHM_SLOT_BYTES", v)?;
            if b < 128 || b % 64 != 0 {
                return Err(Error::invalid_argument(format!(
                    "OXCCL_SHM_SLOT_BYTES={b} is not a multiple of 64 of at least 128"
                )));
            }
            self.shm_slot_bytes = b;
        }
        if let Some(v) = var("OXCCL_SHM_SINGLE_COPY") {
            self.shm_single_copy_min = match v.trim() {
                "off" | "0" => None,
                other => Some(bytes("OXCCL_SHM_SINGLE_COPY", other.to_string())?),
            };
            self.shm_single_copy_trials = false;
        }
        if let Some(v) = var("OXCCL_SHM_SINGLE_COPY_CHOICE") {
            self.shm_single_copy_timed = match v.trim().to_ascii_lowercase().as_str() {
                "timed" => true,
                "always" => false,
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "OXCCL_SHM_SINGLE_COPY_CHOICE='{v}' is not timed or always"
                    )))
                }
            };
        }
        if let Some(v) = var("OXCCL_SHM_STORES") {
            self.shm_slot_stores = match v.trim().to_ascii_lowercase().as_str() {
                "auto" => oxccl_transport::SlotStores::Auto,
                "cached" => oxccl_transport::SlotStores::Cached,
                "streaming" => oxccl_transport::SlotStores::Streaming,
                _ => {
                    return Err(Error::invalid_argument(format!(
                        "OXCCL_SHM_STORES='{v}' is not auto, cached or streaming"
                    )))
                }
            };
        }
        // OXCCL_SHM_YIELD_US: its name from when only shared memory yielded.
        for name in ["OXCCL_SHM_YIELD_US", "OXCCL_YIELD_US"] {
            if let Some(v) = var(name) {
                self.yield_for = Duration::from_micros(int(name, v)?);
            }
        }
        if let Some(v) = var("OXCCL_TUNING_FILE") {
            self.tuning_file = Some(v.into());
        }
        if let Some(v) = var("OXCCL_TUNE") {
            self.tune_at_init = match v.trim().to_ascii_lowercase().as_str() {
                "quick" | "1" | "on" => true,
                "off" | "0" => false,
                _ => return Err(Error::invalid_argument(format!("OXCCL_TUNE='{v}' is not quick or off"))),
            };
        }
        if let Some(v) = var("OXCCL_VERIFY_CALLS") {
            self.verify_calls = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "on" | "yes" => true,
                "0" | "off" | "no" => false,
                _ => return Err(Error::invalid_argument(format!("OXCCL_VERIFY_CALLS='{v}' is not 1 or 0"))),
            };
        }
        if let Some(v) = var("OXCCL_TRIAL_CALLS") {
            self.trial_calls = int("OXCCL_TRIAL_CALLS", v)?.min(64) as u32;
        }
        if let Some(v) = var("OXCCL_SMALL_BYTES") {
            self.small_bytes = Some(bytes("OXCCL_SMALL_BYTES", v)?);
        }
        Ok(self)
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the pipeline chunk size (at least 64 bytes).
    #[must_use]
    pub fn with_chunk_bytes(mut self, b: usize) -> Self {
        self.chunk_bytes = b.max(64);
        self.chunk_auto = false;
        self
    }

    /// Sets the transport.
    #[must_use]
    pub fn with_transport(mut self, t: TransportKind) -> Self {
        self.transport = t;
        self
    }

    /// Forces algorithms, in `OXCCL_ALGO` syntax.
    pub fn with_algorithm(mut self, spec: &str) -> Result<Self> {
        self.algorithms = AlgoOverrides::parse(spec)?;
        Ok(self)
    }

    /// Turns call verification on or off (see [`Config::verify_calls`]).
    #[must_use]
    pub fn with_verify_calls(mut self, on: bool) -> Self {
        self.verify_calls = on;
        self
    }

    /// Sets the trial calls per candidate algorithm (see [`Config::trial_calls`]; 0: the
    /// cost model alone).
    #[must_use]
    pub fn with_trial_calls(mut self, n: u32) -> Self {
        self.trial_calls = n.min(64);
        self
    }

    /// Sets the TCP connections per pair of ranks (1 to 16).
    #[must_use]
    pub fn with_tcp_conns(mut self, n: usize) -> Self {
        self.tcp_conns_per_peer = n.clamp(1, 16);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::default().overlay(&move |k| m.get(k).cloned())
    }

    #[test]
    fn env_overlay_and_errors_name_the_variable() {
        let c = with(&[("OXCCL_TIMEOUT_MS", "1500"), ("OXCCL_CHUNK_BYTES", "1M"), ("OXCCL_TCP_CONNS", "2")]).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.chunk_bytes, 1 << 20);
        assert_eq!(c.tcp_conns_per_peer, 2);
        assert_eq!(Config::default().timeout, Duration::from_secs(600));
        assert!(!Config::default().verify_calls);
        assert!(with(&[("OXCCL_VERIFY_CALLS", "1")]).unwrap().verify_calls);
        assert_eq!(Config::default().trial_calls, 3);
        assert_eq!(with(&[("OXCCL_TRIAL_CALLS", "0")]).unwrap().trial_calls, 0);
        assert_eq!(with(&[("OXCCL_TRIAL_CALLS", "1000")]).unwrap().trial_calls, 64);
        assert!(with(&[("OXCCL_TRIAL_CALLS", "some")]).is_err());
        assert_eq!(Config::default().tcp_congestion, ["cubic", "reno"]);
        assert_eq!(with(&[("OXCCL_TCP_CONGESTION", " bbr , reno")]).unwrap().tcp_congestion, ["bbr", "reno"]);
        assert!(with(&[("OXCCL_TCP_CONGESTION", "System")]).unwrap().tcp_congestion.is_empty());
        assert_eq!(Config::default().yield_for, Duration::from_micros(200));
        assert_eq!(with(&[("OXCCL_YIELD_US", "7")]).unwrap().yield_for, Duration::from_micros(7));
        assert_eq!(with(&[("OXCCL_SHM_YIELD_US", "9")]).unwrap().yield_for, Duration::from_micros(9));
        assert_eq!(Config::default().shm_slot_stores, oxccl_transport::SlotStores::Auto);
        assert!(Config::default().shm_single_copy_timed);
        assert!(Config::default().shm_single_copy_trials);
        let fixed = with(&[("OXCCL_SHM_SINGLE_COPY", "1M")]).unwrap();
        assert_eq!((fixed.shm_single_copy_min, fixed.shm_single_copy_trials), (Some(1 << 20), false));
        assert!(!with(&[("OXCCL_SHM_SINGLE_COPY_CHOICE", "Always")]).unwrap().shm_single_copy_timed);
        assert!(with(&[("OXCCL_SHM_SINGLE_COPY_CHOICE", "timed")]).unwrap().shm_single_copy_timed);
        assert!(with(&[("OXCCL_SHM_SINGLE_COPY_CHOICE", "sometimes")]).is_err());
        let streaming = with(&[("OXCCL_SHM_STORES", "Streaming")]).unwrap();
        assert_eq!(streaming.shm_slot_stores, oxccl_transport::SlotStores::Streaming);
        assert_eq!(
            with(&[("OXCCL_SHM_STORES", "cached")]).unwrap().shm_slot_stores,
            oxccl_transport::SlotStores::Cached
        );
        let both = with(&[("OXCCL_SHM_YIELD_US", "9"), ("OXCCL_YIELD_US", "0")]).unwrap();
        assert_eq!(both.yield_for, Duration::ZERO, "the new name wins");
        for (k, v) in [
            ("OXCCL_TIMEOUT_MS", "soon"),
            ("OXCCL_CHUNK_BYTES", "big"),
            ("OXCCL_TCP_CONNS", "99"),
            ("OXCCL_TRANSPORT", "carrier-pigeon"),
            ("OXCCL_VERIFY_CALLS", "maybe"),
            ("OXCCL_YIELD_US", "-1"),
            ("OXCCL_SHM_STORES", "sometimes"),
            ("OXCCL_TCP_CONGESTION", "cubic,,reno"),
            ("OXCCL_TCP_CONGESTION", "a-very-long-name-indeed"),
        ] {
            let e = with(&[(k, v)]).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
    }

    #[test]
    fn algorithm_overrides() {
        let o = AlgoOverrides::parse("ring").unwrap();
        assert_eq!(o.get(Collective::AllReduce), Some(Algorithm::Ring));
        assert_eq!(o.get(Collective::AllToAll), None, "a global name applies where it exists");
        let o = AlgoOverrides::parse("all_reduce:recursive_doubling;allgather:ring").unwrap();
        assert_eq!(o.get(Collective::AllReduce), Some(Algorithm::RecursiveDoubling));
        assert_eq!(o.get(Collective::AllGather), Some(Algorithm::Ring));
        let e = AlgoOverrides::parse("warp_drive").unwrap_err().to_string();
        assert!(e.contains("valid: ring, recursive_doubling"), "{e}");
        let e = AlgoOverrides::parse("all_to_all:ring").unwrap_err().to_string();
        assert!(e.contains("valid for all_to_all: pairwise"), "{e}");
        assert!(AlgoOverrides::parse("all_frobnicate:ring").is_err());
        assert_eq!(parse_bytes("512K"), Some(512 << 10));
        assert_eq!(parse_bytes("x"), None);
    }
}
