//! [`Communicator`]: a group of ranks and the collectives they run together.

mod cores;
mod device_api;
mod raw;
pub use raw::RawP2p;
mod split;
mod trials;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oxccl_algorithms::registry::{self, Algorithm};
use oxccl_algorithms::{CollArgs, Collective, Ctx, DataType, Element, HostReducer, ReduceOp};
use oxccl_transport::auth::Secret;
use oxccl_transport::{
    Capabilities, LoopbackTransport, MemoryKind, MemoryStore, PrefixStore, Region, RegionMut, Router, ShmOptions,
    ShmTransport, Store, Tag, TcpOptions, TcpTransport, Transport,
};
use sha2::{Digest, Sha256};

use crate::bootstrap::env::{LaunchEnv, StoreHost};
use crate::bootstrap::tcp_store::{TcpStore, TcpStoreServer};
use crate::config::{AlgoOverrides, Config, TransportKind};
use crate::cost::{self, Profile, TuningFile};
use crate::error::{Error, Result};
use crate::select::{self, Choice};
use crate::UniqueId;

/// After a mapped call falls back (some rank's buffers are ordinary memory), the next
/// `skip` calls that would run it go straight to the fallback, without the round of keys;
/// `window` doubles with each fallback in a row, up to [`MAX_BACKOFF`], and a mapped call
/// resets it. Every rank sees the same fallbacks (the keys decide them for all), so every
/// rank skips the same calls.
#[derive(Default)]
struct Backoff {
    skip: u32,
    window: u32,
}

/// The most calls skipped after a fallback: a program that moves to shared buffers pays at
/// most this many calls of the slower path; one that never does pays a round of keys once
/// per this many calls.
const MAX_BACKOFF: u32 = 64;

/// Cached choices, and the (collective, size class) pairs already logged.
#[derive(Default)]
struct Choices {
    /// The last call's shape and choice: a loop of equal calls skips the hashing.
    last: Option<(ChoiceKey, Choice)>,
    made: HashMap<ChoiceKey, Choice>,
    logged: HashSet<(Collective, u32)>,
    /// Trial calls, by call shape (`trials.rs`); changed only inside calls.
    trials: HashMap<trials::TrialKey, trials::Trials>,
    /// The last fixed shape that ran, for loops of equal calls.
    last_fixed: Option<(trials::TrialKey, Choice)>,
}

/// A call's shape, as far as choosing goes: collective, bytes, type, operator, overrides.
type ChoiceKey = (Collective, usize, DataType, ReduceOp, u64);

/// The operator as a call shape counts it: collectives that do not reduce run with `Sum`
/// whatever a caller names.
fn shape_op(coll: Collective, op: ReduceOp) -> ReduceOp {
    match coll {
        Collective::AllReduce | Collective::ReduceScatter | Collective::Reduce => op,
        _ => ReduceOp::Sum,
    }
}

struct State {
    seq: u64,
    poisoned: Option<Error>,
    p2p_sent: Vec<u64>,
    p2p_received: Vec<u64>,
}

/// A group of ranks that run collectives together: NCCL's `ncclComm_t`, Gloo's context.
///
/// Collectives on one communicator run one at a time, in the same order on every rank (calls
/// from several threads are serialised). Every call has a deadline ([`Config::timeout`]).
/// After any error the communicator is poisoned: every later call returns that first error at
/// once, and the communicator must be rebuilt.
///
/// ```
/// use oxccl::{Communicator, Config, ReduceOp};
///
/// // Two ranks as threads of this process (real jobs use `Communicator::init` or
/// // `Communicator::from_env`, one process per rank).
/// let comms = Communicator::local_world(2, Config::default()).unwrap();
/// std::thread::scope(|s| {
///     for comm in &comms {
///         s.spawn(move || {
///             let mut v = vec![comm.rank() as f32 + 1.0; 1000];
///             comm.all_reduce(&mut v, ReduceOp::Sum).unwrap();
///             assert!(v.iter().all(|&x| x == 3.0));
///         });
///     }
/// });
/// ```
pub struct Communicator {
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    /// The host of every rank, numbered from 0 in order of first appearance.
    hosts: Vec<usize>,
    config: Config,
    net: Arc<dyn Transport>,
    /// `net`'s capabilities, fixed once it is built.
    caps: Capabilities,
    /// The transport's single-copy threshold where every rank's transport has single copy at
    /// that same threshold and tries it lower in trials
    /// ([`crate::Config::shm_single_copy_trials`], [`select::EARLY_SINGLE_COPY_MIN`]); 0
    /// where any rank would not. Agreed at init, so every rank tries the same candidates.
    single_copy_trials_below: usize,
    /// What the machine's links and kernels cost: the algorithm choice prices with it. Rank
    /// 0's, so every rank chooses alike.
    profile: Profile,
    /// Choices made so far, by call shape (the cost model is priced once per shape).
    choices: Mutex<Choices>,
    /// Calls that would run `mapped` but go straight to its fallback (see `run`).
    mapped_backoff: Mutex<Backoff>,
    /// Forced algorithms (`AlgoOverrides::pack`): the configuration's, changed by
    /// [`Communicator::set_algorithms`].
    forced: AtomicU64,
    /// A chunk size every call takes whatever the selection chose (0: none); see
    /// [`Communicator::fix_chunk_bytes`].
    chunk_fixed: AtomicUsize,
    reducer: HostReducer,
    /// The reducers of the GPUs this rank's device buffers were on, made on first use.
    #[cfg(feature = "cuda")]
    device_reducers: Mutex<std::collections::HashMap<u32, Arc<oxccl_algorithms::kernels::cuda::CudaReducer>>>,
    /// How calls on device buffers ran, per collective, logged once each (`OXCCL_DEBUG=INFO`).
    #[cfg(feature = "cuda")]
    device_paths: Mutex<std::collections::HashSet<(Collective, &'static str)>>,
    state: Mutex<State>,
    /// How to build new connections (for `split`); `None` for communicators over a
    /// caller-made transport.
    boot: Option<Boot>,
}

/// What a communicator needs to build new connections later (for `split`): the store, the
/// secret, the address to listen on, and the key prefix that keeps its worlds apart.
#[derive(Clone)]
struct Boot {
    store: Arc<dyn Store>,
    secret: Secret,
    bind: IpAddr,
    prefix: String,
    local_size_hint: Option<usize>,
    /// Keeps the store server alive (on the rank that hosts it) while any communicator made
    /// through it lives.
    _server: Option<Arc<TcpStoreServer>>,
}

/// Fails the transport if an algorithm panics, so no request outlives the buffers it points
/// into while the panic unwinds through the caller.
struct FailOnUnwind<'a> {
    net: &'a dyn Transport,
    armed: bool,
}

impl Drop for FailOnUnwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.net.fail(Error::internal("a collective panicked"));
        }
    }
}

/// Puts back the forced algorithms and fixed chunk size a communicator had when
/// [`Communicator::choose_automatically`] made it.
pub(crate) struct KeptChoiceSettings<'a> {
    comm: &'a Communicator,
    forced: u64,
    chunk: usize,
}

impl Drop for KeptChoiceSettings<'_> {
    fn drop(&mut self) {
        self.comm.forced.store(self.forced, Ordering::Relaxed);
        self.comm.chunk_fixed.store(self.chunk, Ordering::Relaxed);
    }
}

fn host_key() -> u64 {
    let id = std::env::var("OXCCL_HOST_ID").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "localhost".into())
    });
    let d = Sha256::digest(id.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Numbers hosts from 0 in order of first appearance: `keys[r]` is rank r's host key.
fn host_indices(keys: &[u64]) -> Vec<usize> {
    let mut seen: Vec<u64> = Vec::new();
    keys.iter()
        .map(|k| match seen.iter().position(|s| s == k) {
            Some(i) => i,
            None => {
                seen.push(*k);
                seen.len() - 1
            }
        })
        .collect()
}

/// The profile a communicator over `transport` starts with: from the tuning file the
/// configuration names, else the built-in one (rank 0's then replaces every rank's).
fn initial_profile(config: &Config, transport: &str) -> Result<Profile> {
    let file = match &config.tuning_file {
        Some(p) => TuningFile::load(p)?,
        None => TuningFile::builtin(),
    };
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    // Behind a router, ranks of one host share memory.
    let intra = if transport == "router" { "shm" } else { transport };
    static TOLD: std::sync::Once = std::sync::Once::new();
    TOLD.call_once(|| {
        let (e, cpu) = (file.intra_entry(&host, intra), cost::cpu_model());
        let other = if e.cpu.is_empty() || cost::cpu_matches(&e.cpu, &cpu) {
            ""
        } else {
            " (another processor's: oxccl-bench --calibrate measures this one)"
        };
        tracing::info!(
            "prices from the tuning entry for host '{}', processor '{}', transport '{}'{other}; this machine: '{host}', '{cpu}'",
            e.host,
            e.cpu,
            e.transport
        );
    });
    Ok(file.profile(&host, intra))
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A region over a typed slice.
fn region<T: Element>(s: &[T]) -> Region {
    // SAFETY: the slice is borrowed for the whole collective call, and a call never returns
    // while a request on the region is pending: it completes them all, or fails the
    // transport, which drops them untouched.
    unsafe { Region::from_raw_parts(s.as_ptr().cast(), std::mem::size_of_val(s), MemoryKind::Host) }
}

/// A writable region over a typed slice.
fn region_mut<T: Element>(s: &mut [T]) -> RegionMut {
    // SAFETY: as for `region`, with the slice borrowed mutably for the call.
    unsafe { RegionMut::from_raw_parts(s.as_mut_ptr().cast(), std::mem::size_of_val(s), MemoryKind::Host) }
}

impl Communicator {
    /// Joins the world of `size` ranks that `id` names, as rank `rank`. Blocks until every
    /// rank has joined, or `config.timeout` passes (then `Error::Timeout` names the missing
    /// ranks).
    pub fn init(id: &UniqueId, rank: usize, size: usize, config: Config) -> Result<Communicator> {
        check_world(rank, size)?;
        let deadline = Instant::now() + config.timeout;
        let store = TcpStore::connect(id.addr, id.secret, Some(rank), deadline).map_err(|e| e.on_rank(rank))?;
        let fallback = if id.addr.ip().is_loopback() { None } else { Some(store.local_addr().ip()) };
        let bind = crate::bootstrap::net::bind_address(config.socket_ifname.as_deref(), fallback)?;
        let boot = Boot {
            store: Arc::new(store),
            secret: id.secret,
            bind,
            prefix: "oxccl/world".into(),
            local_size_hint: None,
            _server: None,
        };
        Self::connect(boot, rank, size, config, deadline)
    }

    /// Joins the world described by the launcher's environment (oxrun, torchrun, mpirun,
    /// srun: see [`bootstrap::env`](crate::bootstrap::env)), with [`Config::from_env`].
    pub fn from_env() -> Result<Communicator> {
        let config = Config::from_env()?;
        let env = LaunchEnv::from_process()?;
        Self::from_launch_env(&env, config)
    }

    /// Joins the world `env` describes.
    pub fn from_launch_env(env: &LaunchEnv, config: Config) -> Result<Communicator> {
        let deadline = Instant::now() + config.timeout;
        let (server, store) = if env.rank == 0 && env.store_host == StoreHost::Rank0 {
            let (server, at) = start_store(env).map_err(|e| e.on_rank(0))?;
            let store = TcpStore::connect(at, env.secret, Some(0), deadline).map_err(|e| e.on_rank(0))?;
            (Some(server), store)
        } else {
            let addrs: Vec<_> = std::iter::once(env.addr).chain(env.alternates.iter().copied()).collect();
            let store =
                TcpStore::connect_any(&addrs, env.secret, Some(env.rank), deadline).map_err(|e| e.on_rank(env.rank))?;
            (None, store)
        };
        let fallback = if env.addr.ip().is_loopback() { None } else { Some(store.local_addr().ip()) };
        let bind = crate::bootstrap::net::bind_address(config.socket_ifname.as_deref(), fallback)?;
        let boot = Boot {
            store: Arc::new(store),
            secret: env.secret,
            bind,
            prefix: "oxccl/world".into(),
            local_size_hint: env.local_world_size,
            _server: server.map(Arc::new),
        };
        Self::connect(boot, env.rank, env.world_size, config, deadline)
    }

    /// Joins a world through any [`Store`] (a [`FileStore`](crate::FileStore) on a shared
    /// file system, say), listening on `bind`.
    pub fn init_with_store(
        store: Arc<dyn Store>,
        secret: Secret,
        bind: IpAddr,
        rank: usize,
        size: usize,
        config: Config,
    ) -> Result<Communicator> {
        check_world(rank, size)?;
        let deadline = Instant::now() + config.timeout;
        let boot = Boot { store, secret, bind, prefix: "oxccl/world".into(), local_size_hint: None, _server: None };
        Self::connect(boot, rank, size, config, deadline)
    }

    fn connect(boot: Boot, rank: usize, size: usize, config: Config, deadline: Instant) -> Result<Communicator> {
        let net = build_transport(&boot, rank, size, &config, deadline)?;
        let profile = initial_profile(&config, net.name()).map_err(|e| e.on_rank(rank))?;
        let mut comm = Communicator::assemble(rank, size, config, net, Some(boot), profile);
        comm.discover_hosts(deadline)?;
        comm.tune_at_init()?;
        Ok(comm)
    }

    fn assemble(
        rank: usize,
        size: usize,
        config: Config,
        net: Arc<dyn Transport>,
        boot: Option<Boot>,
        profile: Profile,
    ) -> Communicator {
        let mut c = Communicator {
            rank,
            size,
            local_rank: rank,
            local_size: size,
            hosts: vec![0; size],
            config,
            caps: net.capabilities(),
            single_copy_trials_below: 0,
            profile: Profile::clone(&TuningFile::builtin().profile("", "shm")),
            choices: Mutex::new(Choices::default()),
            mapped_backoff: Mutex::new(Backoff::default()),
            forced: AtomicU64::new(0),
            chunk_fixed: AtomicUsize::new(0),
            net,
            reducer: HostReducer::new(),
            #[cfg(feature = "cuda")]
            device_reducers: Mutex::new(Default::default()),
            #[cfg(feature = "cuda")]
            device_paths: Mutex::new(Default::default()),
            state: Mutex::new(State { seq: 0, poisoned: None, p2p_sent: vec![0; size], p2p_received: vec![0; size] }),
            boot,
        };
        c.forced = AtomicU64::new(c.config.algorithms.pack());
        crate::device::note_cuda_if_loaded();
        c.profile = profile;
        c.profile.peer_memory = c.caps.peer_memory_mappable;
        c
    }

    /// Gathers every rank's host key (sequence number 0, before any user call), to learn the
    /// local rank and the ranks per host. Completing it also proves every rank is done with
    /// the store, so rank 0 may drop it.
    fn discover_hosts(&mut self, deadline: Instant) -> Result<()> {
        // Each rank's host key, the single-copy threshold below which it would try single
        // copy (0: none), then the processors it may use ([`cores::CpuReport`]).
        const WORDS: usize = 2 + cores::REPORT_WORDS;
        let key = host_key();
        let mut mine = [0u64; WORDS];
        mine[0] = key;
        let early = self.config.shm_single_copy_trials && self.caps.single_copy;
        mine[1] = if early { self.caps.single_copy_min as u64 } else { 0 };
        mine[2..].copy_from_slice(&cores::CpuReport::mine(key).to_words());
        let mut gathered = vec![0u64; self.size * WORDS];
        let args = CollArgs {
            send: region(&mine),
            recv: region_mut(&mut gathered),
            in_place: false,
            count: WORDS,
            dtype: DataType::U64,
            op: ReduceOp::Sum,
            root: 0,
        };
        let ctx = self.ctx(Collective::AllGather, 0, deadline, 0, self.config.chunk_bytes, 0, &self.reducer);
        let r = oxccl_algorithms::all_gather::ring::run(&ctx, &args);
        r.map_err(|e| {
            let e = e.in_collective("init", 0).on_rank(self.rank);
            self.net.fail(e.clone());
            e
        })?;
        let all: Vec<u64> = gathered.chunks_exact(WORDS).map(|w| w[0]).collect();
        let reports: Vec<cores::CpuReport> =
            gathered.chunks_exact(WORDS).map(|w| cores::CpuReport::from_words(&w[2..])).collect();
        // Trials try single copy below the threshold only where every rank would, at the same
        // one: every rank must try the same candidates.
        let thresholds: Vec<u64> = gathered.chunks_exact(WORDS).map(|w| w[1]).collect();
        self.single_copy_trials_below =
            if thresholds.iter().all(|&t| t == thresholds[0]) { thresholds[0] as usize } else { 0 };
        self.local_rank = all[..self.rank].iter().filter(|&&h| h == key).count();
        self.local_size = all.iter().filter(|&&h| h == key).count();
        self.hosts = host_indices(&all);
        // Rank 0's profile is the one every rank prices with, so all choose alike.
        let mut words = cost::to_words(&self.profile);
        let buf = region_mut(&mut words);
        let args = CollArgs {
            send: if self.rank == 0 { buf.as_region() } else { Region::empty() },
            recv: buf,
            in_place: self.rank == 0,
            count: cost::PROFILE_WORDS,
            dtype: DataType::U64,
            op: ReduceOp::Sum,
            root: 0,
        };
        let ctx = self.ctx(Collective::Broadcast, 0, deadline, 0, self.config.chunk_bytes, 0, &self.reducer);
        oxccl_algorithms::broadcast::tree::run(&ctx, &args).map_err(|e| {
            let e = e.in_collective("init", 0).on_rank(self.rank);
            self.net.fail(e.clone());
            e
        })?;
        self.profile = cost::from_words(&words);
        self.profile.peer_memory = self.caps.peer_memory_mappable;
        // Priced with the cores these ranks have, not those of the machine the profile was
        // measured on; every rank computes it from the same reports.
        self.profile.cores = cores::cores_per_host(&reports, &self.hosts);
        Ok(())
    }

    /// With `OXCCL_TUNE=quick`: times the all-reduce at three sizes and scales the profile's
    /// latency and per-byte terms to match ([`cost::quick_rescale`]); prices with it from
    /// now on. The algorithms forced by the configuration are kept.
    fn tune_at_init(&mut self) -> Result<()> {
        if !self.config.tune_at_init || self.size < 2 {
            return Ok(());
        }
        let t0 = Instant::now();
        let scale = cost::quick_rescale(self)?;
        scale.apply(&mut self.profile);
        *self.choices.lock().unwrap_or_else(|e| e.into_inner()) = Choices::default();
        let probes: Vec<String> = scale
            .probes
            .iter()
            .map(|(b, a, t, p)| format!("{b} B {a} {:.1} us against {:.1}", t * 1e6, p * 1e6))
            .collect();
        tracing::info!(
            rank = self.rank,
            "quick calibration in {:.1} ms ({} ranks over {}): latency x{:.2}, bandwidth x{:.2} (all-reduce {})",
            t0.elapsed().as_secs_f64() * 1e3,
            self.size,
            self.transport_name(),
            scale.latency,
            scale.bandwidth,
            probes.join(", "),
        );
        Ok(())
    }

    /// A world of `hosts.len()` ranks as threads of this process, over the in-process
    /// transport, that behaves as if rank r ran on host `hosts[r]`: hierarchical algorithms
    /// group ranks by those hosts. For testing multi-host behaviour on one machine.
    ///
    /// ```
    /// # use oxccl::{Communicator, Config};
    /// let comms = Communicator::local_world_on_hosts(&[0, 0, 1], Config::default()).unwrap();
    /// assert_eq!(comms[2].local_size(), 1);
    /// ```
    pub fn local_world_on_hosts(hosts: &[usize], config: Config) -> Result<Vec<Communicator>> {
        let mut comms = Communicator::local_world(hosts.len(), config)?;
        let keys: Vec<u64> = hosts.iter().map(|&h| h as u64).collect();
        let idx = host_indices(&keys);
        for c in &mut comms {
            c.local_rank = hosts[..c.rank].iter().filter(|&&h| h == hosts[c.rank]).count();
            c.local_size = hosts.iter().filter(|&&h| h == hosts[c.rank]).count();
            c.hosts = idx.clone();
        }
        Ok(comms)
    }

    /// A world of `size` ranks as threads of this process, over the in-process transport:
    /// hand one communicator to each thread. For tests and for programs that parallelise
    /// within one process.
    pub fn local_world(size: usize, config: Config) -> Result<Vec<Communicator>> {
        if size == 0 {
            return Err(Error::invalid_argument("a world needs at least one rank"));
        }
        // Splits of a local world connect over TCP on loopback, through an in-process store.
        let boot = Boot {
            store: Arc::new(MemoryStore::new()),
            secret: oxccl_transport::auth::random_bytes()?,
            bind: IpAddr::from([127, 0, 0, 1]),
            prefix: "oxccl/local".into(),
            local_size_hint: Some(size),
            _server: None,
        };
        let profile = initial_profile(&config, "loopback")?;
        Ok(LoopbackTransport::world(size)
            .into_iter()
            .enumerate()
            .map(|(rank, t)| {
                Communicator::assemble(rank, size, config.clone(), Arc::new(t), Some(boot.clone()), profile.clone())
            })
            .collect())
    }

    /// A communicator over a transport the caller built: for custom transports, or for a
    /// [`Router`](oxccl_transport::Router) that reaches each peer its own way. Every rank
    /// must call it with an endpoint of the same world. Such a communicator cannot `split`
    /// (it has no rendezvous store to build new connections through).
    pub fn from_transport(net: Arc<dyn Transport>, config: Config) -> Result<Communicator> {
        let (rank, size) = (net.rank(), net.size());
        check_world(rank, size)?;
        let profile = initial_profile(&config, net.name()).map_err(|e| e.on_rank(rank))?;
        let mut comm = Communicator::assemble(rank, size, config, net, None, profile);
        let deadline = Instant::now() + comm.config.timeout;
        comm.discover_hosts(deadline)?;
        comm.tune_at_init()?;
        Ok(comm)
    }

    /// This rank, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }
    /// This rank's index among the ranks of its host.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// The number of ranks on this rank's host.
    pub fn local_size(&self) -> usize {
        self.local_size
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The name of the transport (`tcp`, `loopback`).
    pub fn transport_name(&self) -> &'static str {
        self.net.name()
    }
    /// The sequence number the next collective will have.
    pub fn next_seq(&self) -> u64 {
        self.lock().seq + 1
    }

    /// Aborts the communicator from any thread: a call blocked on it returns
    /// `Error::Aborted` promptly, peers see this rank leave, and every later call fails.
    pub fn abort(&self) {
        self.net.abort();
    }

    /// The first error this communicator failed with, if it has failed (NCCL's
    /// `ncclCommGetAsyncError`).
    pub fn error(&self) -> Option<Error> {
        self.lock().poisoned.clone()
    }

    /// Forces algorithms from now on, as `OXCCL_ALGO` does at start (`ring`, or
    /// `all_reduce:tree;all_gather:bruck`); an empty spec or `auto` lets the selection table
    /// choose again. Takes effect for the next call; every rank must make the same change
    /// between the same two calls (ranks running different algorithms fail with a mismatch).
    ///
    /// ```
    /// # use oxccl::{Communicator, Config, Collective};
    /// let comms = Communicator::local_world(1, Config::default()).unwrap();
    /// comms[0].set_algorithms("all_reduce:tree").unwrap();
    /// assert_eq!(comms[0].algorithm_for(Collective::AllReduce, 1 << 20).name(), "tree");
    /// comms[0].set_algorithms("auto").unwrap();
    /// ```
    pub fn set_algorithms(&self, spec: &str) -> Result<()> {
        let o = if spec.trim() == "auto" { AlgoOverrides::default() } else { AlgoOverrides::parse(spec)? };
        self.forced.store(o.pack(), Ordering::Relaxed);
        Ok(())
    }

    /// The algorithm an f32 sum collective of `bytes` bytes would use now (see
    /// [`Communicator::choice_for`]).
    pub fn algorithm_for(&self, coll: Collective, bytes: usize) -> Algorithm {
        self.choice_for(coll, bytes, DataType::F32, ReduceOp::Sum).algo
    }

    /// The algorithm, chunk size and predicted time a collective of `bytes` bytes (nccl-tests'
    /// size: the gathered or scattered total for all-gather, reduce-scatter and all-to-all)
    /// would run with now: the forced algorithm, else the one trial calls fixed for calls
    /// of this shape ([`Config::trial_calls`]), else the cost model's fastest
    /// ([`crate::select`]).
    pub fn choice_for(&self, coll: Collective, bytes: usize, dtype: DataType, op: ReduceOp) -> Choice {
        self.choice_state(coll, bytes, dtype, op).0
    }

    /// [`Communicator::choice_for`], and whether the shape is the one that last ran with its
    /// choice fixed (by trials, or by the model where there was nothing to try): a loop of
    /// equal calls then skips the trials' bookkeeping. Once fixed, a shape stays fixed, so
    /// reading this outside a call is safe.
    fn choice_state(&self, coll: Collective, bytes: usize, dtype: DataType, op: ReduceOp) -> (Choice, bool) {
        let (mut c, fixed) = self.chosen_state(coll, bytes, dtype, op);
        match self.chunk_fixed.load(Ordering::Relaxed) {
            0 => {}
            chunk => c.chunk_bytes = chunk,
        }
        (c, fixed)
    }

    /// Calls run with chunks of `chunk` bytes whatever the selection chose (`None`: as it
    /// chose). Calibration times the pipelined algorithms at the chunk size its fit prices
    /// them at (`cost::Call::new`'s, the default), not at the one the profile being replaced
    /// would pick.
    /// Every rank must make the same change between the same two calls.
    pub(crate) fn fix_chunk_bytes(&self, chunk: Option<usize>) {
        self.chunk_fixed.store(chunk.unwrap_or(0), Ordering::Relaxed);
    }

    /// Lets the selection choose (no forced algorithm, no fixed chunk size) until the returned
    /// guard drops, which puts back what was forced and fixed before: calibration runs its
    /// own small collectives with the automatic choice and forces each algorithm in turn,
    /// and a program that calls it (or `OXCCL_TUNE=quick` at start) gets back the choices it
    /// had, whether calibration succeeded or failed.
    pub(crate) fn choose_automatically(&self) -> KeptChoiceSettings<'_> {
        KeptChoiceSettings {
            comm: self,
            forced: self.forced.swap(AlgoOverrides::default().pack(), Ordering::Relaxed),
            chunk: self.chunk_fixed.swap(0, Ordering::Relaxed),
        }
    }

    /// [`Communicator::choice_state`] before a fixed chunk size.
    fn chosen_state(&self, coll: Collective, bytes: usize, dtype: DataType, op: ReduceOp) -> (Choice, bool) {
        let forced = self.forced.load(Ordering::Relaxed);
        let key = (coll, bytes, dtype, shape_op(coll, op), forced);
        let mut cache = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, c)) = cache.last_fixed {
            if k == (key, false) {
                return (c, true);
            }
        }
        if let Some((k, c)) = cache.last {
            if k == key {
                return (c, false);
            }
        }
        if let Some(&c) = cache.made.get(&key) {
            cache.last = Some((key, c));
            return (c, false);
        }
        let mut c = match cache.trials.get(&(key, false)) {
            // Calls of this shape fixed their algorithm by trials.
            Some(trials::Trials::Fixed(c)) => *c,
            _ => select::choose(
                coll,
                bytes,
                dtype,
                op,
                &self.hosts,
                &self.profile,
                AlgoOverrides::unpack(forced, coll),
                &self.config,
            ),
        };
        if let Some(trials::Trials::Fixed(f)) = cache.trials.get(&(key, true)) {
            // Calls of this shape on buffers that cannot be mapped fixed their algorithm by
            // trials (`run`): what they run from now on.
            if c.algo == Algorithm::Mapped {
                (c.fallback, c.chunk_bytes, c.single_copy_min) = (f.algo, f.chunk_bytes, f.single_copy_min);
            }
        }
        // Bounded: a program with endlessly many sizes re-prices instead of growing.
        if cache.made.len() >= 4096 {
            cache.made.clear();
        }
        cache.made.insert(key, c);
        cache.last = Some((key, c));
        let class = usize::BITS - bytes.leading_zeros();
        if cache.logged.insert((coll, class)) {
            tracing::info!(
                rank = self.rank,
                "{coll} of {bytes} B ({dtype}, {op}): {}{} with {} KiB chunks, predicted {}",
                c.algo,
                if c.fallback != c.algo {
                    format!(" (where some rank's buffers cannot be mapped: {})", c.fallback)
                } else {
                    String::new()
                },
                c.chunk_bytes >> 10,
                c.predicted
            );
        }
        (c, false)
    }

    /// The machine profile this communicator prices algorithms with (rank 0's).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The host of every rank, numbered from 0 in order of first appearance.
    pub fn hosts(&self) -> &[usize] {
        &self.hosts
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[allow(clippy::too_many_arguments)]
    fn ctx<'a>(
        &'a self,
        collective: Collective,
        seq: u64,
        deadline: Instant,
        fingerprint: u64,
        chunk_bytes: usize,
        call_bytes: usize,
        reducer: &'a dyn oxccl_algorithms::Reducer,
    ) -> Ctx<'a> {
        Ctx {
            net: &*self.net,
            reducer,
            rank: self.rank,
            size: self.size,
            seq,
            collective,
            deadline,
            chunk_bytes,
            pipeline_depth: self.config.pipeline_depth,
            recv_sink: self.caps.recv_sink,
            single_copy_min: if self.caps.single_copy { self.caps.single_copy_min } else { 0 },
            call_bytes,
            hosts: &self.hosts,
            fingerprint,
        }
    }

    fn poison(&self, st: &mut State, e: Error) -> Error {
        self.net.fail(e.clone());
        if st.poisoned.is_none() {
            tracing::error!(rank = self.rank, error = %e, "communicator failed; it must be rebuilt");
            st.poisoned = Some(e.clone());
        }
        e
    }

    /// Runs one collective: numbers it, runs `body` under the deadline, checks nothing was
    /// left pending, and poisons the communicator on failure. `fingerprint` (see
    /// [`oxccl_algorithms::ctx::fingerprint`]) goes into every tag of the call.
    fn execute(
        &self,
        coll: Collective,
        fingerprint: u64,
        chunk_bytes: usize,
        call_bytes: usize,
        body: impl FnOnce(&Ctx<'_>) -> Result<()>,
    ) -> Result<()> {
        self.execute_with(coll, fingerprint, chunk_bytes, call_bytes, &self.reducer, body)
    }

    /// [`Communicator::execute`] with the reducer of the call's memory.
    fn execute_with(
        &self,
        coll: Collective,
        fingerprint: u64,
        chunk_bytes: usize,
        call_bytes: usize,
        reducer: &dyn oxccl_algorithms::Reducer,
        body: impl FnOnce(&Ctx<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut st = self.lock();
        if let Some(e) = &st.poisoned {
            return Err(e.clone());
        }
        st.seq += 1;
        let seq = st.seq;
        // Peers read this to tell a stuck rank from a slow one: 2s+1 inside call s, 2s after.
        self.net.set_progress(2 * seq + 1);
        let ctx =
            self.ctx(coll, seq, Instant::now() + self.config.timeout, fingerprint, chunk_bytes, call_bytes, reducer);
        let mut guard = FailOnUnwind { net: &*self.net, armed: true };
        let mut r = if self.config.verify_calls {
            oxccl_algorithms::verify::verify_call(&ctx).and_then(|()| body(&ctx))
        } else {
            body(&ctx)
        };
        if r.is_ok() && self.net.pending() != 0 {
            r = Err(Error::internal(format!("{coll} returned with requests pending")));
        }
        guard.armed = false;
        if r.is_ok() {
            self.net.set_progress(2 * seq);
        }
        r.map_err(|e| {
            let mut e =
                e.in_collective(coll.name(), seq).on_rank(self.rank).map_msg(oxccl_algorithms::ctx::explain_tags);
            // A timeout here, or a peer's relayed from there: say where everyone is.
            if matches!(e.kind(), crate::ErrorKind::Timeout | crate::ErrorKind::Remote) {
                if let Some(report) = self.progress_report(seq) {
                    e = e.map_msg(|m| format!("{m}; {report}"));
                }
            }
            self.poison(&mut st, e)
        })
    }

    /// Where every peer is, for a timeout in call `seq`: inside it, or done with an earlier
    /// one (then it never started this call: the stuck rank). Over shared memory this is the
    /// peer's state now; over TCP as of its last frame to this rank, so a peer that sent
    /// nothing in this call yet also shows as not seen. `None` when the transport carries no
    /// progress.
    fn progress_report(&self, seq: u64) -> Option<String> {
        let mut parts = Vec::new();
        let mut absent = Vec::new();
        for p in (0..self.size).filter(|&p| p != self.rank) {
            let m = self.net.peer_progress(p)?;
            let (s, inside) = (m / 2, m % 2 == 1);
            // Over TCP markers are 32 bits: compare in that width.
            let here = (2 * seq + 1) & u64::from(u32::MAX);
            if !(inside && (m == 2 * seq + 1 || m == here)) {
                absent.push(p);
            }
            parts.push(format!("{p}: {} #{s}", if inside { "in" } else { "done with" }));
        }
        let who = if absent.is_empty() {
            "every peer was seen in this call".to_string()
        } else {
            format!("not seen in this call: peers {absent:?}")
        };
        // Shared memory shows a peer's progress as it is; TCP as of its last frame here.
        Some(format!("{who} (peers' progress as last heard: {})", parts.join(", ")))
    }

    /// A call's size as nccl-tests counts it (and the cost formulas take it): the whole
    /// vector, `size` blocks for the collectives whose `count` is per rank.
    fn call_bytes(&self, coll: Collective, args: &CollArgs) -> usize {
        let per = match coll {
            Collective::AllGather | Collective::ReduceScatter | Collective::AllToAll => self.size,
            _ => 1,
        };
        args.count.saturating_mul(args.dtype.size()).saturating_mul(per)
    }

    /// Runs one collective with the algorithm the configuration or the size picks.
    fn run(&self, coll: Collective, args: CollArgs) -> Result<()> {
        if let Some(ordinal) = self.device_of(coll, &args)? {
            return self.run_device(coll, args, ordinal);
        }
        let bytes = self.call_bytes(coll, &args);
        let (choice, fixed) = self.choice_state(coll, bytes, args.dtype, args.op);
        let find = |algo: Algorithm| {
            registry::lookup(coll, algo).ok_or_else(|| Error::internal(format!("{coll} has no {algo} algorithm")))
        };
        let (f, fallback) = (find(choice.algo)?, find(choice.fallback)?);
        let fp = oxccl_algorithms::ctx::fingerprint(coll, args.count, args.dtype, args.op, args.root);
        let forced = AlgoOverrides::unpack(self.forced.load(Ordering::Relaxed), coll).is_some();
        let trials_on = !forced && self.config.trial_calls > 0 && self.size > 1;
        let trial_key = |fallback_of_mapped: bool| {
            let shape = (coll, bytes, args.dtype, shape_op(coll, args.op));
            ((shape.0, shape.1, shape.2, shape.3, self.forced.load(Ordering::Relaxed)), fallback_of_mapped)
        };
        if choice.algo == Algorithm::Mapped && choice.fallback != Algorithm::Mapped && !forced {
            // Where some rank's buffers cannot be mapped, the algorithms after `mapped` are
            // tried like any close call (their own trials, so `mapped` stays the choice for
            // buffers that can be): the fallback the model picked is only its guess.
            let model = Choice { algo: choice.fallback, fallback: choice.fallback, ..choice };
            let key = trial_key(true);
            let fall_back = |ctx: &oxccl_algorithms::Ctx<'_>, a: &CollArgs| {
                if trials_on {
                    self.run_trials(ctx, key, a, model)
                } else {
                    fallback(ctx, a)
                }
            };
            // Decided inside the call, under its sequence number, so that calls from several
            // threads take the same decisions in the same order on every rank.
            return self.execute(coll, fp, choice.chunk_bytes, bytes, |ctx| {
                let probe = {
                    let mut b = self.mapped_backoff.lock().unwrap_or_else(|e| e.into_inner());
                    b.skip = b.skip.saturating_sub(1);
                    b.skip == 0
                };
                if !probe {
                    return fall_back(ctx, &args);
                }
                let ran = oxccl_algorithms::mapped::run_with_fallback(ctx, &args, &fall_back)?;
                let mut b = self.mapped_backoff.lock().unwrap_or_else(|e| e.into_inner());
                match ran {
                    Some(true) => *b = Backoff::default(),
                    Some(false) => {
                        b.window = (b.window * 2).clamp(1, MAX_BACKOFF);
                        b.skip = b.window + 1;
                    }
                    None => {}
                }
                Ok(())
            });
        }
        if trials_on && !fixed {
            let key = trial_key(false);
            return self.execute(coll, fp, choice.chunk_bytes, bytes, |ctx| self.run_trials(ctx, key, &args, choice));
        }
        let single_copy_min = choice.single_copy_min_in(coll, args.in_place);
        if single_copy_min != 0 {
            return self.execute(coll, fp, choice.chunk_bytes, bytes, |ctx| {
                f(&ctx.with_single_copy_min(single_copy_min), &args)
            });
        }
        self.execute(coll, fp, choice.chunk_bytes, bytes, |ctx| f(ctx, &args))
    }

    fn bad(&self, coll: Collective, msg: String) -> Error {
        Error::invalid_argument(msg).in_collective(coll.name(), self.next_seq()).on_rank(self.rank)
    }

    fn check_root(&self, coll: Collective, root: usize) -> Result<()> {
        if root >= self.size {
            return Err(self.bad(coll, format!("root {root} is not a rank of this world of {}", self.size)));
        }
        Ok(())
    }

    // The typed API checks lengths (the one thing slices add) and hands the buffers to the
    // untyped entry points in `raw.rs`, which own the in-place conventions and build the
    // arguments: one path per collective.

    /// Sums (or otherwise reduces) `buf` across all ranks, in place: afterwards every rank
    /// holds the same, bitwise identical, result.
    pub fn all_reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the slice is valid for reads and writes of its length for the whole call.
        unsafe { self.all_reduce_raw(p, p, buf.len(), T::DTYPE, op) }
    }

    /// Reduces `send` across all ranks into `recv` (same length).
    pub fn all_reduce_into<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<()> {
        if send.len() != recv.len() {
            return Err(self
                .bad(Collective::AllReduce, format!("send has {} elements but recv has {}", send.len(), recv.len())));
        }
        // SAFETY: both slices are valid for the call; borrows keep them apart.
        unsafe { self.all_reduce_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE, op) }
    }

    /// Gathers every rank's `send` into `recv`, in rank order: `recv` holds
    /// `send.len() * size()` elements.
    pub fn all_gather_into<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        if Some(recv.len()) != send.len().checked_mul(self.size) {
            return Err(self.bad(
                Collective::AllGather,
                format!("recv has {} elements, not send's {} times {} ranks", recv.len(), send.len(), self.size),
            ));
        }
        // SAFETY: both slices are valid for the call, of the lengths the collective needs.
        unsafe { self.all_gather_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE) }
    }

    /// All-gather in place: `buf` holds `size()` blocks, this rank's block (block `rank()`)
    /// is the input, and afterwards every block holds its rank's input.
    pub fn all_gather<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        let count = self.blocks(Collective::AllGather, buf.len())?;
        let p = buf.as_mut_ptr();
        // SAFETY: the slice is valid for the call; block `rank` lies inside it.
        unsafe { self.all_gather_raw(p.add(self.rank * count).cast(), p.cast(), count, T::DTYPE) }
    }

    /// Reduces `send` (`recv.len() * size()` elements) across ranks and leaves block
    /// `rank()` of the result in `recv`.
    pub fn reduce_scatter_into<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp) -> Result<()> {
        if Some(send.len()) != recv.len().checked_mul(self.size) {
            return Err(self.bad(
                Collective::ReduceScatter,
                format!("send has {} elements, not recv's {} times {} ranks", send.len(), recv.len(), self.size),
            ));
        }
        // SAFETY: both slices are valid for the call, of the lengths the collective needs.
        unsafe { self.reduce_scatter_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), recv.len(), T::DTYPE, op) }
    }

    /// Reduce-scatter in place: afterwards block `rank()` of `buf` holds that block of the
    /// reduction; the other blocks are left as they were.
    pub fn reduce_scatter<T: Element>(&self, buf: &mut [T], op: ReduceOp) -> Result<()> {
        let count = self.blocks(Collective::ReduceScatter, buf.len())?;
        let p = buf.as_mut_ptr();
        // SAFETY: the slice is valid for the call; block `rank` lies inside it.
        unsafe { self.reduce_scatter_raw(p.cast(), p.add(self.rank * count).cast(), count, T::DTYPE, op) }
    }

    /// Sends block `j` of `send` to rank `j` and receives rank `j`'s block for this rank into
    /// block `j` of `recv`. Both hold `size()` equal blocks.
    pub fn all_to_all_into<T: Element>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        if send.len() != recv.len() || !send.len().is_multiple_of(self.size) {
            return Err(self.bad(
                Collective::AllToAll,
                format!(
                    "send ({}) and recv ({}) must have the same length, divisible by {} ranks",
                    send.len(),
                    recv.len(),
                    self.size
                ),
            ));
        }
        let count = send.len() / self.size;
        // SAFETY: both slices are valid for the call, of the lengths the collective needs.
        unsafe { self.all_to_all_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), count, T::DTYPE) }
    }

    /// All-to-all in place.
    pub fn all_to_all<T: Element>(&self, buf: &mut [T]) -> Result<()> {
        let count = self.blocks(Collective::AllToAll, buf.len())?;
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the slice is valid for the call.
        unsafe { self.all_to_all_raw(p, p, count, T::DTYPE) }
    }

    /// All-to-all with per-peer counts and displacements (in elements): `send_counts[j]`
    /// elements from `send[send_displs[j]..]` go to rank `j`, which receives them into
    /// `recv[recv_displs[j]..]` (its `recv_counts[r]` must match). Counts that disagree
    /// between a sender and its receiver are an `InvalidUsage` error on both, before any data
    /// moves.
    pub fn all_to_allv_into<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
        send_displs: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
        recv_displs: &[usize],
    ) -> Result<()> {
        use oxccl_algorithms::all_to_all::pairwise_v::Layout;
        // The raw entry point trusts the extents it is given; slices know theirs.
        let (s, r) = (region(send), region_mut(recv));
        Layout { counts: send_counts, displs: send_displs }
            .check("send layout", self.size, s.len(), T::DTYPE)
            .and_then(|_| {
                Layout { counts: recv_counts, displs: recv_displs }.check("recv layout", self.size, r.len(), T::DTYPE)
            })
            .map_err(|e| e.in_collective("all_to_allv", self.next_seq()).on_rank(self.rank))?;
        // SAFETY: both slices are valid for the call and every block lies inside them (checked).
        unsafe {
            self.all_to_allv_raw(
                send.as_ptr().cast(),
                send_counts,
                send_displs,
                recv.as_mut_ptr().cast(),
                recv_counts,
                recv_displs,
                T::DTYPE,
            )
        }
    }

    /// Copies `root`'s `buf` into every rank's `buf` (same length everywhere).
    pub fn broadcast<T: Element>(&self, buf: &mut [T], root: usize) -> Result<()> {
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the slice is valid for the call.
        unsafe { self.broadcast_raw(p, p, buf.len(), T::DTYPE, root) }
    }

    /// Copies `root`'s `send` into every rank's `recv` (`send` is read on the root only; pass
    /// an empty slice elsewhere). `recv` has the same length on every rank.
    pub fn broadcast_into<T: Element>(&self, send: &[T], recv: &mut [T], root: usize) -> Result<()> {
        self.check_root(Collective::Broadcast, root)?;
        if self.rank == root && send.len() != recv.len() {
            return Err(self.bad(
                Collective::Broadcast,
                format!("at the root, send has {} elements but recv has {}", send.len(), recv.len()),
            ));
        }
        // SAFETY: both slices are valid for the call; `send` is read on the root only, where
        // its length was checked.
        unsafe { self.broadcast_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), recv.len(), T::DTYPE, root) }
    }

    /// Reduces every rank's `buf` into `root`'s `buf`, in place. Other ranks' buffers are
    /// left as they were.
    pub fn reduce<T: Element>(&self, buf: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the slice is valid for the call.
        unsafe { self.reduce_raw(p, p, buf.len(), T::DTYPE, op, root) }
    }

    /// Reduces every rank's `send` into `recv` on `root`. `recv` must have `send.len()`
    /// elements on the root and is not touched on other ranks (pass an empty slice there).
    pub fn reduce_into<T: Element>(&self, send: &[T], recv: &mut [T], op: ReduceOp, root: usize) -> Result<()> {
        self.check_root(Collective::Reduce, root)?;
        if self.rank == root && recv.len() != send.len() {
            return Err(self.bad(
                Collective::Reduce,
                format!("at the root, recv has {} elements but send has {}", recv.len(), send.len()),
            ));
        }
        // SAFETY: both slices are valid for the call; `recv` is written on the root only,
        // where its length was checked.
        unsafe { self.reduce_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE, op, root) }
    }

    /// The block count of a buffer of `len` elements split over the ranks.
    fn blocks(&self, coll: Collective, len: usize) -> Result<usize> {
        if !len.is_multiple_of(self.size) {
            return Err(
                self.bad(coll, format!("buffer of {len} elements does not split into {} equal blocks", self.size))
            );
        }
        Ok(len / self.size)
    }

    /// Returns once every rank has called `barrier`.
    pub fn barrier(&self) -> Result<()> {
        let args = CollArgs {
            send: Region::empty(),
            recv: RegionMut::empty(),
            in_place: true,
            count: 0,
            dtype: DataType::U8,
            op: ReduceOp::Sum,
            root: 0,
        };
        self.run(Collective::Barrier, args)
    }

    fn p2p_tag(counter: u64) -> Tag {
        Tag((((counter & ((1 << 40) - 1)) << 24) | ((Collective::SendRecv as u64) << 16)) as u128)
    }

    fn check_peer(&self, what: &'static str, peer: usize) -> Result<()> {
        if peer >= self.size || peer == self.rank {
            return Err(Error::invalid_argument(format!(
                "peer {peer} is not another rank of this world of {}",
                self.size
            ))
            .in_collective(what, 0)
            .on_rank(self.rank));
        }
        Ok(())
    }

    fn p2p(&self, sends: &[(usize, Region)], recvs: &[(usize, RegionMut)]) -> Result<()> {
        let mut st = self.lock();
        if let Some(e) = &st.poisoned {
            return Err(e.clone());
        }
        let what = match (sends.is_empty(), recvs.is_empty()) {
            (false, true) => "send",
            (true, false) => "recv",
            _ => "sendrecv",
        };
        let deadline = Instant::now() + self.config.timeout;
        let mut reqs = Vec::new();
        let mut first_seq = None;
        let mut guard = FailOnUnwind { net: &*self.net, armed: true };
        let mut r = Ok(());
        for &(peer, buf) in recvs {
            let k = st.p2p_received[peer];
            st.p2p_received[peer] += 1;
            first_seq.get_or_insert(k);
            match self.net.post_recv(peer, Self::p2p_tag(k), buf) {
                Ok(q) => reqs.push(q),
                Err(e) => r = Err(e),
            }
        }
        for &(peer, buf) in sends {
            let k = st.p2p_sent[peer];
            st.p2p_sent[peer] += 1;
            first_seq.get_or_insert(k);
            if r.is_ok() {
                match self.net.post_send(peer, Self::p2p_tag(k), buf) {
                    Ok(q) => reqs.push(q),
                    Err(e) => r = Err(e),
                }
            }
        }
        if r.is_ok() {
            r = self.net.wait_all(&reqs, deadline);
        }
        guard.armed = false;
        r.map_err(|e| {
            let e = e.in_collective(what, first_seq.unwrap_or(0)).on_rank(self.rank);
            self.poison(&mut st, e)
        })
    }

    /// Sends `buf` to `peer`, which must call [`recv`](Self::recv) with the same length.
    /// Messages between two ranks arrive in the order they were sent. May block until the
    /// peer posts its receive; to exchange with a peer use [`sendrecv`](Self::sendrecv).
    pub fn send<T: Element>(&self, buf: &[T], peer: usize) -> Result<()> {
        self.check_peer("send", peer)?;
        self.p2p(&[(peer, region(buf))], &[])
    }

    /// Receives `buf.len()` elements from `peer` into `buf`.
    pub fn recv<T: Element>(&self, buf: &mut [T], peer: usize) -> Result<()> {
        self.check_peer("recv", peer)?;
        self.p2p(&[], &[(peer, region_mut(buf))])
    }

    /// Sends `send` to `to` and receives `recv` from `from` at the same time, so two ranks
    /// can exchange without deadlock.
    pub fn sendrecv<T: Element>(&self, send: &[T], to: usize, recv: &mut [T], from: usize) -> Result<()> {
        self.check_peer("sendrecv", to)?;
        self.check_peer("sendrecv", from)?;
        self.p2p(&[(to, region(send))], &[(from, region_mut(recv))])
    }
}

fn check_world(rank: usize, size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid_argument("the world size is 0"));
    }
    if rank >= size {
        return Err(Error::invalid_argument(format!("rank {rank} is not below the world size {size}")));
    }
    Ok(())
}

/// The key ranks that can share memory have in common: `OXCCL_HOST_ID` when set (so tests
/// can pretend to be on several hosts), else this kernel's boot id, this process's PID
/// namespace and the host name: peers map each other's segments through `/proc/<pid>`,
/// which only works among processes that see each other's pids (two containers on one host
/// usually do not), and ranks whose host names differ are treated as different hosts even
/// where they could share memory (network namespaces standing in for hosts).
fn shm_key() -> String {
    std::env::var("OXCCL_HOST_ID").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let pidns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
        let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        format!("{} {pidns} {host}", boot.trim())
    })
}

/// Starts rank 0's store at `env.addr`, or where that port is taken, at the first of
/// `env.alternates` that is free; returns it and the address clients reach it at.
fn start_store(env: &LaunchEnv) -> Result<(TcpStoreServer, std::net::SocketAddr)> {
    let mut first_err = None;
    for at in std::iter::once(env.addr).chain(env.alternates.iter().copied()) {
        let bind =
            if at.ip().is_loopback() { at } else { std::net::SocketAddr::new(IpAddr::from([0, 0, 0, 0]), at.port()) };
        match TcpStoreServer::start(bind, env.secret) {
            Ok(server) => {
                if at != env.addr {
                    tracing::info!(taken = %env.addr, %at, "the derived store port is taken; the store moved");
                }
                return Ok((server, at));
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let e = first_err.expect("at least env.addr was tried");
    if env.alternates.is_empty() {
        Err(e)
    } else {
        let n = env.alternates.len();
        Err(e.map_msg(|m| format!("{m}; and the {n} alternate ports derived from the job are taken too")))
    }
}

/// Builds the transport `config` asks for: TCP; shared memory (every rank on this host);
/// or, for `auto`, shared memory when every rank is on this host and TCP otherwise.
fn build_transport(
    boot: &Boot,
    rank: usize,
    size: usize,
    config: &Config,
    deadline: Instant,
) -> Result<Arc<dyn Transport>> {
    let scoped = PrefixStore::new(boot.prefix.clone(), boot.store.clone());
    let init_err = |e: Error| e.in_collective("init", 0).on_rank(rank);
    // Every rank's host (its shared-memory key) and processors: the ranks that share this
    // host's memory (this one included), and the CPUs they may use between them.
    let mut local: Vec<usize> = vec![rank];
    let mine = cores::CpuReport::mine(host_key());
    let mut local_cpus = vec![mine];
    let mut elsewhere = Vec::new();
    let me = shm_key();
    let words: Vec<String> = mine.to_words().iter().map(|w| w.to_string()).collect();
    scoped.set(&format!("host/{rank}"), format!("{me}\n{}", words.join(",")).as_bytes()).map_err(init_err)?;
    for r in 0..size {
        match scoped.get(&format!("host/{r}"), deadline) {
            Ok(v) => {
                let v = String::from_utf8_lossy(&v).into_owned();
                let (key, report) = v.split_once('\n').unwrap_or((&v, ""));
                if key != me {
                    elsewhere.push(r);
                } else if r != rank {
                    local.push(r);
                    let words: Vec<u64> = report.split(',').filter_map(|w| w.parse().ok()).collect();
                    if words.len() == cores::REPORT_WORDS {
                        local_cpus.push(cores::CpuReport::from_words(&words));
                    }
                }
            }
            Err(e) if e.kind() == crate::ErrorKind::Timeout => {
                // Name every rank that is missing, not only the first.
                let now = Instant::now();
                let missing: Vec<usize> =
                    (r..size).filter(|q| scoped.get(&format!("host/{q}"), now).is_err()).collect();
                return Err(init_err(Error::timeout(
                    format!("ranks {missing:?} never joined the world of {size}"),
                    config.timeout,
                )));
            }
            Err(e) => return Err(init_err(e)),
        }
    }
    local.sort_unstable();
    let use_shm = match config.transport {
        TransportKind::Tcp => false,
        TransportKind::Shm | TransportKind::Auto => {
            if !elsewhere.is_empty() && config.transport == TransportKind::Shm {
                return Err(init_err(Error::unsupported(format!(
                    "the shared-memory transport needs every rank on this host, and ranks {elsewhere:?} are not \
                     (use OXCCL_TRANSPORT=auto or tcp)"
                ))));
            }
            elsewhere.is_empty() && size > 1
        }
    };
    let ranks_here =
        if config.transport == TransportKind::Tcp { boot.local_size_hint.unwrap_or(local.len()) } else { local.len() };
    let cores_shared = cores::ranks_share_cpus(ranks_here, &local_cpus, cores());
    // Decided from the exchange alone, so every rank of the host decides alike (each waits
    // for the others' boards): TCP carrying this host's ranks, a core for each.
    let tcp_board = config.transport == TransportKind::Tcp
        && local.len() > 1
        && local_cpus.len() == local.len()
        && !cores::ranks_share_cpus(local.len(), &local_cpus, 0);
    let spin = config.spin.unwrap_or_else(|| default_spin(cores_shared));
    let shm_opts = ShmOptions {
        slots: config.shm_slots,
        slot_bytes: config.shm_slot_bytes,
        spin,
        yield_for: config.yield_for,
        single_copy_min: config.shm_single_copy_min,
        single_copy_timed: config.shm_single_copy_timed,
        slot_stores: config.shm_slot_stores,
        // The same test as the spin's: where ranks wait for cores, `Auto` times its copies
        // by the thread's CPU clock.
        cores_shared,
    };
    if use_shm {
        let net = ShmTransport::connect(rank, size, &scoped, shm_opts, deadline).map_err(init_err)?;
        tracing::info!(rank, size, cores_shared, "transport: shared memory");
        return Ok(Arc::new(net));
    }
    let opts = TcpOptions {
        bind: boot.bind,
        conns_per_peer: config.tcp_conns_per_peer,
        socket_buffer: config.socket_buffer,
        stripe_min_bytes: TcpOptions::default().stripe_min_bytes,
        spin,
        yield_for: config.yield_for,
        congestion: config.tcp_congestion.clone(),
        cpu_board_ranks: if tcp_board { local.clone() } else { Vec::new() },
    };
    let tcp: Arc<dyn Transport> =
        Arc::new(TcpTransport::connect(rank, size, &scoped, boot.secret, opts, deadline).map_err(init_err)?);
    if config.transport != TransportKind::Auto || local.len() < 2 {
        tracing::info!(rank, size, cores_shared, cpu_board = tcp_board, "transport: tcp");
        return Ok(tcp);
    }
    // Several hosts, and peers on this one: shared memory to them, TCP to the rest.
    let shm_store = PrefixStore::new(format!("{}/h{}", boot.prefix, local[0]), boot.store.clone());
    let shm: Arc<dyn Transport> =
        Arc::new(ShmTransport::connect_members(rank, size, &local, &shm_store, shm_opts, deadline).map_err(init_err)?);
    let route: Vec<usize> = (0..size).map(|p| usize::from(local.binary_search(&p).is_ok())).collect();
    tracing::info!(rank, size, local = ?local, "transport: shared memory on this host, tcp to other hosts");
    Ok(Arc::new(Router::new(vec![tcp, shm], route).map_err(init_err)?))
}

/// Spin briefly when every rank has a core; not at all when ranks outnumber cores, where a
/// spinning waiter steals the time slice of the rank it waits for: such a waiter goes
/// straight to yielding its core ([`Config::yield_for`]) after its first few passes.
///
/// A spin of 2 us (the default until the thirty-seventh session) still cost that on every
/// wait, where the peer it waited for needed the core: shared memory on 2 cores, medians of
/// three alternated runs, 3 ranks 8-byte all-reduce 8.8 -> 5.3 us, 4 ranks 4 KiB
/// all-to-all 10.1 -> 6.2, 8 ranks 512 B all-gather 47.6 -> 28.9; over 63 cells of 3, 4 and 8
/// ranks, the four core collectives, 8 B-256 KiB, 0.73x on average and none slower by 5%.
/// TCP did not change (0.99x over 22 cells of 3 and 4 ranks).
fn default_spin(cores_shared: bool) -> Duration {
    if cores_shared {
        Duration::ZERO
    } else {
        Duration::from_micros(50)
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .field("local_rank", &self.local_rank)
            .field("transport", &self.net.name())
            .finish()
    }
}

/// Calls on device buffers.
impl Communicator {
    /// Where a call's buffers are: `None` for host memory, the GPU for device memory (both
    /// buffers on one device, else InvalidArgument).
    fn device_of(&self, coll: Collective, args: &CollArgs) -> Result<Option<u32>> {
        // The common case first, without a look at lengths: host memory on both sides.
        if args.send.kind() == MemoryKind::Host && args.recv.kind() == MemoryKind::Host {
            return Ok(None);
        }
        let parts = [(args.send.len(), args.send.kind()), (args.recv.len(), args.recv.kind())];
        let device = parts.iter().find_map(|(len, k)| match k {
            MemoryKind::Device { ordinal } if *len > 0 => Some(*ordinal),
            _ => None,
        });
        match device {
            Some(o) if parts.iter().all(|(len, k)| *len == 0 || *k == MemoryKind::Device { ordinal: o }) => Ok(Some(o)),
            Some(_) => {
                Err(self.bad(coll, format!("{coll}: sendbuff and recvbuff are in different memories ({parts:?})")))
            }
            None => Ok(None),
        }
    }

    /// Runs a call on device buffers. Where every rank can open every other's buffers (one
    /// host: CUDA IPC), the `mapped` algorithm: each GPU reads its share of every input and
    /// writes it into every output, reductions in the device's kernels. Otherwise (ranks on
    /// several hosts), or where another algorithm is forced, the buffers are staged: copied to
    /// host memory, the host algorithm the cost model picks (or the forced one) runs on them,
    /// and the results are copied back. Every wait on the GPU has the call's deadline.
    #[cfg(feature = "cuda")]
    fn run_device(&self, coll: Collective, args: CollArgs, ordinal: u32) -> Result<()> {
        let forced = AlgoOverrides::unpack(self.forced.load(Ordering::Relaxed), coll);
        let reducer = self
            .device_reducer(ordinal)
            .map_err(|e| e.in_collective(coll.name(), self.next_seq()).on_rank(self.rank))?;
        // Peers' buffers are opened in the context current on this thread.
        reducer.context().make_current()?;
        let fp = oxccl_algorithms::ctx::fingerprint(coll, args.count, args.dtype, args.op, args.root);
        self.execute_with(coll, fp, self.config.chunk_bytes, self.call_bytes(coll, &args), &*reducer, |ctx| {
            let staged_by = match forced {
                Some(Algorithm::Mapped) | None => match oxccl_algorithms::mapped::try_run_collective(ctx, &args)? {
                    // The trivial calls (one rank, nothing to move) queue a copy and no done
                    // round: fence them too.
                    Ok(()) => {
                        self.log_device_path(coll, "mapped through CUDA IPC (direct: every rank reads its share)");
                        return ctx.reducer.fence(ctx.deadline);
                    }
                    Err(why) if forced.is_some() => {
                        return Err(Error::invalid_usage(format!(
                            "mapped was forced for {coll} on device buffers, but {why}: every rank must be on \
                             one host (CUDA IPC), or let oxccl stage the buffers"
                        )))
                    }
                    Err(why) => {
                        tracing::debug!(rank = self.rank, "{coll} #{}: device buffers staged: {why}", ctx.seq);
                        None
                    }
                },
                // A forced ring runs over CUDA IPC too where it can (all-reduce, all-gather,
                // reduce-scatter): each step a kernel on peers' buffers, chained by messages.
                Some(Algorithm::Ring) => match oxccl_algorithms::mapped::try_run_ring_collective(ctx, &args) {
                    Some(ran) => match ran? {
                        Ok(()) => {
                            self.log_device_path(coll, "ring over CUDA IPC");
                            return ctx.reducer.fence(ctx.deadline);
                        }
                        Err(why) => {
                            tracing::debug!(
                                rank = self.rank,
                                "{coll} #{}: ring on device buffers staged: {why}",
                                ctx.seq
                            );
                            Some(Algorithm::Ring)
                        }
                    },
                    None => Some(Algorithm::Ring),
                },
                Some(algo) => Some(algo),
            };
            self.run_staged(ctx, &args, reducer.context(), staged_by)
        })
    }

    /// Logs (at INFO, once per collective and path) how calls on device buffers run.
    #[cfg(feature = "cuda")]
    fn log_device_path(&self, coll: Collective, path: &'static str) {
        if self.device_paths.lock().unwrap_or_else(|e| e.into_inner()).insert((coll, path)) {
            tracing::info!(rank = self.rank, "{coll} on device buffers: {path}");
        }
    }

    /// The reducer of device `ordinal` (its kernels loaded on first use).
    #[cfg(feature = "cuda")]
    fn device_reducer(&self, ordinal: u32) -> Result<Arc<oxccl_algorithms::kernels::cuda::CudaReducer>> {
        let mut m = self.device_reducers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get(&ordinal) {
            return Ok(r.clone());
        }
        let r = Arc::new(oxccl_algorithms::kernels::cuda::CudaReducer::new(ordinal)?);
        m.insert(ordinal, r.clone());
        Ok(r)
    }

    /// Loads the GPU kernels (compiling them, the first time in this process) and makes the
    /// scratch of device `ordinal` ready now, rather than in the first call on its buffers,
    /// as NCCL does its setup at init. Bindings whose calls are ordered on streams need it:
    /// loading a module may wait for every stream of the device, and one of them may by then
    /// be waiting for a collective that needs this very rank.
    pub fn prepare_device(&self, ordinal: u32) -> Result<()> {
        #[cfg(feature = "cuda")]
        {
            self.device_reducer(ordinal).map(|_| ())
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(Error::unsupported("this build of oxccl has no CUDA support"))
        }
    }

    /// A call on device buffers through host memory (see [`Communicator::run_device`]):
    /// `algo`, or the cost model's choice for host buffers (never `mapped`).
    #[cfg(feature = "cuda")]
    fn run_staged(
        &self,
        ctx: &Ctx<'_>,
        args: &CollArgs,
        dev: &oxccl_transport::cuda::DeviceContext,
        algo: Option<Algorithm>,
    ) -> Result<()> {
        let coll = ctx.collective;
        let algo = algo.unwrap_or_else(|| {
            let c = self.choice_for(coll, self.call_bytes(coll, args), args.dtype, args.op);
            if c.algo == Algorithm::Mapped {
                c.fallback
            } else {
                c.algo
            }
        });
        let f = registry::lookup(coll, algo)
            .ok_or_else(|| Error::invalid_usage(format!("{coll} has no {algo} algorithm")))?;
        self.log_device_path(coll, "staged through host memory (the host algorithm's choice is logged apart)");
        // Host copies, 8-byte aligned (every element type's alignment). In place the two
        // regions overlap (equal, or one a block of the other: all-gather's input in its
        // output, reduce-scatter's output in its input): one copy of their union serves both.
        let (s0, sl) = (args.send.as_ptr() as usize, args.send.len());
        let (r0, rl) = (args.recv.as_mut_ptr() as usize, args.recv.len());
        let (lo, hi) = if args.in_place { (s0.min(r0), (s0 + sl).max(r0 + rl)) } else { (r0, r0 + rl) };
        let mut union_h = vec![0u64; (hi - lo).div_ceil(8)];
        let mut send_h = vec![0u64; if args.in_place { 0 } else { sl.div_ceil(8) }];
        // SAFETY: each vector holds at least the bytes sliced from it (zeroed), and lives to
        // the end of this function, after the algorithm (which completes or fails its
        // transport); the two slices are of different vectors.
        let (union_b, send_own) = unsafe {
            (
                std::slice::from_raw_parts_mut(union_h.as_mut_ptr().cast::<u8>(), hi - lo),
                std::slice::from_raw_parts_mut(send_h.as_mut_ptr().cast::<u8>(), if args.in_place { 0 } else { sl }),
            )
        };
        if args.in_place {
            // SAFETY: the call's device regions, whose union this is, valid for the call.
            unsafe { dev.copy_to_host(union_b, lo as *const u8, ctx.deadline)? };
        } else {
            // SAFETY: the call's device input, valid for the call.
            unsafe { dev.copy_to_host(send_own, args.send.as_ptr(), ctx.deadline)? };
        }
        let host_args = if args.in_place {
            CollArgs {
                send: region(&union_b[s0 - lo..s0 - lo + sl]),
                recv: region_mut(&mut union_b[r0 - lo..r0 - lo + rl]),
                ..*args
            }
        } else {
            CollArgs { send: region(send_own), recv: region_mut(&mut union_b[..rl]), ..*args }
        };
        let host_ctx = Ctx {
            net: ctx.net,
            reducer: &self.reducer,
            rank: ctx.rank,
            size: ctx.size,
            seq: ctx.seq,
            collective: coll,
            deadline: ctx.deadline,
            chunk_bytes: ctx.chunk_bytes,
            pipeline_depth: ctx.pipeline_depth,
            recv_sink: ctx.recv_sink,
            single_copy_min: ctx.single_copy_min,
            call_bytes: ctx.call_bytes,
            hosts: ctx.hosts,
            fingerprint: ctx.fingerprint,
        };
        f(&host_ctx, &host_args)?;
        let out = &union_b[r0 - lo..r0 - lo + rl];
        // SAFETY: the call's device output, valid for the call.
        unsafe { dev.copy_to_device(args.recv.as_mut_ptr(), out, ctx.deadline) }
    }

    #[cfg(not(feature = "cuda"))]
    fn run_device(&self, coll: Collective, _args: CollArgs, _ordinal: u32) -> Result<()> {
        Err(Error::unsupported("this build of oxccl has no CUDA support")
            .in_collective(coll.name(), self.next_seq())
            .on_rank(self.rank))
    }
}
