//! The C ABI of oxccl, shaped like NCCL: `liboxccl.so`, `liboxccl.a` and `include/oxccl.h`
//! (generated from this crate by cbindgen; see `ffi/cbindgen.toml`).
//!
//! Every export runs behind a panic boundary and checks its arguments before it touches any
//! memory: NULL pointers, counts whose byte size overflows, unknown data types or operators,
//! destroyed or foreign communicators, and buffers that overlap without being exactly in
//! place all return `oxcclInvalidArgument`, with the reason in `oxcclGetLastError`.
//! Out-parameters are written only on success.

#![allow(non_camel_case_types, non_snake_case, clippy::missing_safety_doc)]

mod boundary;
mod group;
mod stream;
mod types;

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::time::Duration;

use oxccl_rs::bootstrap::env::LaunchEnv;
use oxccl_rs::bootstrap::unique_id::UNIQUE_ID_BYTES;
use oxccl_rs::config::{AlgoOverrides, TransportKind};
use oxccl_rs::{Communicator, Config, DataType, Error, ReduceOp, UniqueId};

use boundary::{guard, lookup, register, unregister};
pub use types::*;

/// `major * 10000 + minor * 100 + patch`, as NCCL's `NCCL_VERSION_CODE`.
const VERSION_CODE: c_int = 100;
/// The `magic` field of a valid `oxcclConfig_t`.
const CONFIG_MAGIC: u32 = 0x0c0f_fee0;

fn dtype(v: oxcclDataType_t) -> Result<DataType, Error> {
    u8::try_from(v)
        .ok()
        .and_then(DataType::from_nccl)
        .ok_or_else(|| Error::invalid_argument(format!("unknown datatype {v}")))
}

fn redop(v: oxcclRedOp_t) -> Result<ReduceOp, Error> {
    u8::try_from(v).ok().and_then(ReduceOp::from_nccl).ok_or_else(|| Error::invalid_argument(format!("unknown op {v}")))
}

fn index(what: &str, v: c_int, size: usize) -> Result<usize, Error> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v < size)
        .ok_or_else(|| Error::invalid_argument(format!("{what} {v} is not a rank of this world of {size}")))
}

fn out<T>(p: *mut T, what: &str) -> Result<*mut T, Error> {
    if p.is_null() {
        Err(Error::invalid_argument(format!("{what} is NULL")))
    } else {
        Ok(p)
    }
}

/// Reads `config` over the defaults and the environment.
unsafe fn read_config(config: *const oxcclConfig_t) -> Result<Config, Error> {
    let mut cfg = Config::from_env()?;
    if config.is_null() {
        return Ok(cfg);
    }
    // SAFETY: non-NULL, and the caller passes a config made from OXCCL_CONFIG_INITIALIZER;
    // the size and magic fields are read first and checked before anything else is trusted.
    let (size, magic) = unsafe { ((*config).size, (*config).magic) };
    if magic != CONFIG_MAGIC || size < std::mem::size_of::<oxcclConfig_t>() {
        return Err(Error::invalid_argument(
            "config was not initialised with OXCCL_CONFIG_INITIALIZER (bad size or magic)",
        ));
    }
    // SAFETY: checked above: a whole, initialised oxcclConfig_t.
    let c = unsafe { *config };
    if c.timeoutMs > 0 {
        cfg.timeout = Duration::from_millis(c.timeoutMs as u64);
    } else if c.timeoutMs != -1 {
        return Err(Error::invalid_argument(format!("config.timeoutMs {} is neither positive nor -1", c.timeoutMs)));
    }
    if c.chunkBytes > 0 {
        cfg = cfg.with_chunk_bytes(c.chunkBytes);
    }
    if c.tcpConnsPerPeer != -1 {
        if !(1..=16).contains(&c.tcpConnsPerPeer) {
            return Err(Error::invalid_argument(format!(
                "config.tcpConnsPerPeer {} is not 1 to 16",
                c.tcpConnsPerPeer
            )));
        }
        cfg.tcp_conns_per_peer = c.tcpConnsPerPeer as usize;
    }
    let text = |p: *const c_char, what: &str| -> Result<Option<String>, Error> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-NULL string field must be NUL-terminated (header contract).
        let s = unsafe { CStr::from_ptr(p) };
        s.to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| Error::invalid_argument(format!("config.{what} is not UTF-8")))
    };
    if let Some(a) = text(c.algo, "algo")? {
        cfg.algorithms = AlgoOverrides::parse(&a)?;
    }
    if let Some(t) = text(c.transport, "transport")? {
        cfg.transport = TransportKind::parse(&t)?;
    }
    Ok(cfg)
}

/// Writes the library version (`major * 10000 + minor * 100 + patch`) to `*version`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclGetVersion(version: *mut c_int) -> oxcclResult_t {
    guard(None, || {
        let v = out(version, "version")?;
        // SAFETY: non-NULL, and the caller passes a writable int.
        unsafe { *v = VERSION_CODE };
        Ok(())
    })
}

/// Creates a unique id on this rank: it starts the rendezvous server in this process (on
/// loopback, or on `OXCCL_SOCKET_IFNAME`'s interface) and draws a fresh secret. Send the id
/// to every rank and call `oxcclCommInitRank` everywhere. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclGetUniqueId(uniqueId: *mut oxcclUniqueId) -> oxcclResult_t {
    guard(None, || {
        let p = out(uniqueId, "uniqueId")?;
        let bytes = UniqueId::new()?.to_bytes();
        let mut id = oxcclUniqueId { internal: [0; 128] };
        for (d, s) in id.internal.iter_mut().zip(bytes) {
            *d = s as c_char;
        }
        // SAFETY: non-NULL, and the caller passes a writable oxcclUniqueId.
        unsafe { *p = id };
        Ok(())
    })
}

unsafe fn init_rank(
    comm: *mut oxcclComm_t,
    nranks: c_int,
    commId: oxcclUniqueId,
    rank: c_int,
    config: *const oxcclConfig_t,
) -> oxcclResult_t {
    guard(None, || {
        let slot = out(comm, "comm")?;
        let size = usize::try_from(nranks)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::invalid_argument(format!("nranks {nranks} is not positive")))?;
        let rank = index("rank", rank, size)?;
        // SAFETY: the caller's config pointer (NULL allowed).
        let cfg = unsafe { read_config(config) }?;
        let mut bytes = [0u8; UNIQUE_ID_BYTES];
        for (d, s) in bytes.iter_mut().zip(commId.internal) {
            *d = s as u8;
        }
        let id = UniqueId::from_bytes(&bytes)?;
        let c = Communicator::init(&id, rank, size, cfg)?;
        // SAFETY: non-NULL, and the caller passes a writable handle.
        unsafe { *slot = register(c) };
        Ok(())
    })
}

/// Joins the world of `nranks` ranks named by `commId` as `rank`; blocks until every rank has
/// joined or the timeout passes. Thread-safe (each call creates its own communicator).
#[no_mangle]
pub unsafe extern "C" fn oxcclCommInitRank(
    comm: *mut oxcclComm_t,
    nranks: c_int,
    commId: oxcclUniqueId,
    rank: c_int,
) -> oxcclResult_t {
    // SAFETY: forwarded.
    unsafe { init_rank(comm, nranks, commId, rank, std::ptr::null()) }
}

/// As `oxcclCommInitRank`, with settings (`config` may be NULL for the defaults).
#[no_mangle]
pub unsafe extern "C" fn oxcclCommInitRankConfig(
    comm: *mut oxcclComm_t,
    nranks: c_int,
    commId: oxcclUniqueId,
    rank: c_int,
    config: *mut oxcclConfig_t,
) -> oxcclResult_t {
    // SAFETY: forwarded.
    unsafe { init_rank(comm, nranks, commId, rank, config) }
}

/// Joins the world the launcher's environment describes: oxrun's `OXCCL_*`, torchrun's
/// `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`, Open MPI's `OMPI_COMM_WORLD_*` or Slurm's
/// `SLURM_*` variables, as the Rust `Communicator::from_env`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommInitFromEnv(comm: *mut oxcclComm_t) -> oxcclResult_t {
    guard(None, || {
        let slot = out(comm, "comm")?;
        let env = LaunchEnv::from_process()?;
        let c = Communicator::from_launch_env(&env, Config::from_env()?)?;
        // SAFETY: non-NULL, and the caller passes a writable handle.
        unsafe { *slot = register(c) };
        Ok(())
    })
}

/// Splits `comm`: ranks passing the same `color` form `*newcomm`, ranked by `key` (ties by
/// rank). `color == OXCCL_SPLIT_NOCOLOR` (-1) takes part but gets `*newcomm = NULL`. Every
/// rank of `comm` must call it. `config` may be NULL (the parent's settings).
#[no_mangle]
pub unsafe extern "C" fn oxcclCommSplit(
    comm: oxcclComm_t,
    color: c_int,
    key: c_int,
    newcomm: *mut oxcclComm_t,
    config: *mut oxcclConfig_t,
) -> oxcclResult_t {
    guard(Some(comm), || {
        let e = lookup(comm)?;
        let slot = out(newcomm, "newcomm")?;
        let color = match color {
            -1 => None,
            c if c >= 0 => Some(c as u32),
            c => return Err(Error::invalid_argument(format!("color {c} is negative (and not OXCCL_SPLIT_NOCOLOR)"))),
        };
        if !config.is_null() {
            // Validated for the caller's sake; the new communicator takes the parent's settings.
            // SAFETY: the caller's config pointer.
            unsafe { read_config(config) }?;
        }
        let child = e.comm.split(color, key as i64)?;
        // SAFETY: non-NULL, and the caller passes a writable handle.
        unsafe { *slot = child.map_or(std::ptr::null_mut(), register) };
        Ok(())
    })
}

/// Destroys `comm` (after its calls in flight on other threads return). Not thread-safe with
/// respect to new calls on the same communicator.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommDestroy(comm: oxcclComm_t) -> oxcclResult_t {
    guard(None, || unregister(comm).map(drop))
}

/// Aborts `comm` and destroys it: a call blocked on it in another thread returns promptly
/// with an error, and peers see this rank leave. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommAbort(comm: oxcclComm_t) -> oxcclResult_t {
    guard(None, || {
        let e = unregister(comm)?;
        e.comm.abort();
        Ok(())
    })
}

/// Writes the number of ranks of `comm` to `*count`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommCount(comm: oxcclComm_t, count: *mut c_int) -> oxcclResult_t {
    guard(Some(comm), || {
        let e = lookup(comm)?;
        let p = out(count, "count")?;
        // SAFETY: non-NULL, and the caller passes a writable int.
        unsafe { *p = e.comm.size() as c_int };
        Ok(())
    })
}

/// Writes this rank in `comm` to `*rank`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommUserRank(comm: oxcclComm_t, rank: *mut c_int) -> oxcclResult_t {
    guard(Some(comm), || {
        let e = lookup(comm)?;
        let p = out(rank, "rank")?;
        // SAFETY: non-NULL, and the caller passes a writable int.
        unsafe { *p = e.comm.rank() as c_int };
        Ok(())
    })
}

/// Writes `oxcclSuccess` to `*asyncError` while `comm` is healthy, else the code of the error
/// that failed it (after which it must be destroyed and rebuilt). Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclCommGetAsyncError(comm: oxcclComm_t, asyncError: *mut oxcclResult_t) -> oxcclResult_t {
    guard(Some(comm), || {
        let e = lookup(comm)?;
        let p = out(asyncError, "asyncError")?;
        // A call on device buffers fails after it returned: the stream proxy keeps its error.
        let v = e.async_error().or_else(|| e.comm.error()).map_or(types::SUCCESS, |err| boundary::code(&err));
        // SAFETY: non-NULL, and the caller passes a writable result.
        unsafe { *p = v };
        Ok(())
    })
}

/// A short, static description of a result code. Thread-safe.
#[no_mangle]
pub extern "C" fn oxcclGetErrorString(result: oxcclResult_t) -> *const c_char {
    let s: &'static [u8] = match result {
        0 => b"no error\0",
        1 => b"unhandled cuda error\0",
        2 => b"unhandled system error (see oxcclGetLastError)\0",
        3 => b"internal error - please report this issue\0",
        4 => b"invalid argument (see oxcclGetLastError)\0",
        5 => b"invalid usage (see oxcclGetLastError)\0",
        6 => b"remote process exited or there was a network error\0",
        7 => b"operation in progress\0",
        8 => b"timeout: a peer did not answer in time (see oxcclGetLastError)\0",
        9 => b"the communicator was aborted\0",
        _ => b"unknown result code\0",
    };
    s.as_ptr() as *const c_char
}

/// The full message of the last failure on `comm` (which collective, its sequence number,
/// which rank and peer), or of this thread's last failure when `comm` is NULL. Valid until
/// the next failure on the same communicator (or thread), or the communicator's destruction.
#[no_mangle]
pub extern "C" fn oxcclGetLastError(comm: oxcclComm_t) -> *const c_char {
    boundary::last_error(comm)
}

/// The body of a collective export: looks the communicator up and names the collective, its
/// sequence number and this rank in any argument error. On device buffers the call is handed
/// to the communicator's stream proxy and ordered on `stream` (see `stream.rs`), returning at
/// once; where streams cannot wait on host memory, it waits for the stream's earlier work and
/// runs at once. On host buffers it runs at once, after the calls handed to the proxy (a
/// stream other than NULL is refused).
macro_rules! collective {
    ($name:expr, $comm:expr, $stream:expr, [$($buf:expr),*], |$e:ident| $body:expr) => {{
        let (comm, stream) = ($comm, $stream);
        guard(Some(comm), || {
            let $e = lookup(comm)?;
            let bufs: &[*const u8] = &[$($buf as *const u8),*];
            let device = bufs.iter().find_map(|p| oxccl_rs::device::device_of_pointer(*p));
            let proxy = match device {
                Some(ordinal) => match $e.proxy(ordinal) {
                    Ok(p) => Some(p),
                    Err(err) if err.kind() == oxccl_rs::ErrorKind::Unsupported => None,
                    Err(err) => return Err(err),
                },
                None => None,
            };
            let r: Result<(), Error> = match proxy {
                Some(proxy) => {
                    let owner = $e.clone();
                    let work = stream::AssertSend(move || {
                        let $e = owner;
                        let r: Result<(), Error> = $body;
                        r.map_err(|err| err.in_collective($name, $e.comm.next_seq()).on_rank($e.comm.rank()))
                    });
                    // SAFETY: the caller passes NULL or a live stream of the buffers' device,
                    // and keeps the buffers valid until the stream has passed the call (the
                    // header's contract, as NCCL's).
                    unsafe { proxy.submit(stream, Box::new(move || work.call())) }
                }
                None => {
                    $e.drain()?;
                    // Host buffers and no stream: nothing to wait for (and the buffers were
                    // classified above already).
                    let waited = if device.is_none() && stream.is_null() {
                        Ok(())
                    } else {
                        // SAFETY: as above.
                        unsafe { $e.comm.wait_for_stream(stream, bufs) }
                    };
                    waited.and_then(|()| $body)
                }
            };
            r.map_err(|err| err.in_collective($name, $e.comm.next_seq()).on_rank($e.comm.rank()))
        })
    }};
}

/// All-reduce of `count` elements; in place when `sendbuff == recvbuff`. Calls on one
/// communicator must come in the same order on every rank; calls from several threads on
/// one communicator are serialised.
#[no_mangle]
pub unsafe extern "C" fn oxcclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: oxcclDataType_t,
    op: oxcclRedOp_t,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("all_reduce", comm, stream, [sendbuff, recvbuff], |e| {
        let (d, o) = (dtype(datatype)?, redop(op)?);
        // SAFETY: the caller passes buffers of `count` elements (the header's contract).
        unsafe { e.comm.all_reduce_raw(sendbuff.cast(), recvbuff.cast(), count, d, o) }
    })
}

/// All-gather of `sendcount` elements per rank into `recvbuff` (`sendcount * nranks`); in
/// place when `sendbuff == recvbuff + rank * sendcount`.
#[no_mangle]
pub unsafe extern "C" fn oxcclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: oxcclDataType_t,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("all_gather", comm, stream, [sendbuff, recvbuff], |e| {
        let d = dtype(datatype)?;
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.all_gather_raw(sendbuff.cast(), recvbuff.cast(), sendcount, d) }
    })
}

/// Reduce-scatter of `recvcount * nranks` elements into `recvcount` per rank; in place when
/// `recvbuff == sendbuff + rank * recvcount`.
#[no_mangle]
pub unsafe extern "C" fn oxcclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: oxcclDataType_t,
    op: oxcclRedOp_t,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("reduce_scatter", comm, stream, [sendbuff, recvbuff], |e| {
        let (d, o) = (dtype(datatype)?, redop(op)?);
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.reduce_scatter_raw(sendbuff.cast(), recvbuff.cast(), recvcount, d, o) }
    })
}

/// All-to-all of `count` elements per peer (`count * nranks` in each buffer); in place when
/// `sendbuff == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn oxcclAlltoAll(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: oxcclDataType_t,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("all_to_all", comm, stream, [sendbuff, recvbuff], |e| {
        let d = dtype(datatype)?;
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.all_to_all_raw(sendbuff.cast(), recvbuff.cast(), count, d) }
    })
}

/// All-to-all with per-peer counts and displacements (arrays of `nranks` entries, in
/// elements). Counts that disagree between a sender and its receiver fail both with
/// `oxcclInvalidUsage`. Not in place.
#[no_mangle]
pub unsafe extern "C" fn oxcclAlltoAllv(
    sendbuff: *const c_void,
    sendcounts: *const usize,
    sdispls: *const usize,
    recvbuff: *mut c_void,
    recvcounts: *const usize,
    rdispls: *const usize,
    datatype: oxcclDataType_t,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("all_to_allv", comm, stream, [sendbuff, recvbuff], |e| {
        let d = dtype(datatype)?;
        let p = e.comm.size();
        let arr = |ptr: *const usize, what: &str| -> Result<&[usize], Error> {
            if ptr.is_null() {
                return Err(Error::invalid_argument(format!("{what} is NULL")));
            }
            // SAFETY: non-NULL; the caller passes arrays of nranks entries.
            Ok(unsafe { std::slice::from_raw_parts(ptr, p) })
        };
        let (sc, sd) = (arr(sendcounts, "sendcounts")?, arr(sdispls, "sdispls")?);
        let (rc, rd) = (arr(recvcounts, "recvcounts")?, arr(rdispls, "rdispls")?);
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.all_to_allv_raw(sendbuff.cast(), sc, sd, recvbuff.cast(), rc, rd, d) }
    })
}

/// Broadcast of `count` elements from `root`'s `sendbuff` into every rank's `recvbuff`
/// (`sendbuff` is read on the root only); in place when `sendbuff == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn oxcclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: oxcclDataType_t,
    root: c_int,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("broadcast", comm, stream, [sendbuff, recvbuff], |e| {
        let d = dtype(datatype)?;
        let root = index("root", root, e.comm.size())?;
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.broadcast_raw(sendbuff.cast(), recvbuff.cast(), count, d, root) }
    })
}

/// Reduce of `count` elements into `root`'s `recvbuff` (used on the root only); in place
/// when `sendbuff == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn oxcclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: oxcclDataType_t,
    op: oxcclRedOp_t,
    root: c_int,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("reduce", comm, stream, [sendbuff, recvbuff], |e| {
        let (d, o) = (dtype(datatype)?, redop(op)?);
        let root = index("root", root, e.comm.size())?;
        // SAFETY: the caller's buffers, per the header's contract.
        unsafe { e.comm.reduce_raw(sendbuff.cast(), recvbuff.cast(), count, d, o, root) }
    })
}

/// Returns once every rank of `comm` has called it.
#[no_mangle]
pub unsafe extern "C" fn oxcclBarrier(comm: oxcclComm_t, stream: *mut c_void) -> oxcclResult_t {
    collective!("barrier", comm, stream, [], |e| e.comm.barrier())
}

/// Sends `count` elements to `peer`, which must post a matching `oxcclRecv`. Outside a group
/// it may block until the peer receives; inside `oxcclGroupStart`/`oxcclGroupEnd` it is
/// queued and runs at `oxcclGroupEnd` together with the group's other sends and receives.
#[no_mangle]
pub unsafe extern "C" fn oxcclSend(
    sendbuff: *const c_void,
    count: usize,
    datatype: oxcclDataType_t,
    peer: c_int,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("send", comm, stream, [sendbuff], |e| {
        let d = dtype(datatype)?;
        let peer = index("peer", peer, e.comm.size())?;
        let bytes = count.checked_mul(d.size()).ok_or_else(|| Error::invalid_argument("count overflows"))?;
        group::submit(comm, &e, oxccl_rs::RawP2p::Send { peer, ptr: sendbuff.cast(), bytes })
    })
}

/// Receives `count` elements from `peer` (see `oxcclSend`).
#[no_mangle]
pub unsafe extern "C" fn oxcclRecv(
    recvbuff: *mut c_void,
    count: usize,
    datatype: oxcclDataType_t,
    peer: c_int,
    comm: oxcclComm_t,
    stream: *mut c_void,
) -> oxcclResult_t {
    collective!("recv", comm, stream, [recvbuff], |e| {
        let d = dtype(datatype)?;
        let peer = index("peer", peer, e.comm.size())?;
        let bytes = count.checked_mul(d.size()).ok_or_else(|| Error::invalid_argument("count overflows"))?;
        group::submit(comm, &e, oxccl_rs::RawP2p::Recv { peer, ptr: recvbuff.cast(), bytes })
    })
}

/// Shared buffers handed out by `oxcclMemAlloc`, by address.
static SHARED: std::sync::Mutex<Option<std::collections::HashMap<usize, oxccl_rs::SharedBuffer<u8>>>> =
    std::sync::Mutex::new(None);

/// Allocates `size` zeroed bytes (page-aligned) that the other ranks on this host map
/// directly, and writes their address to `*ptr`. Collectives whose buffers lie in such memory
/// on every rank move their bytes with plain loads and stores (the `mapped` algorithms);
/// ordinary memory works too, through the other algorithms. Free with `oxcclMemFree`. As
/// NCCL's `ncclMemAlloc`. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclMemAlloc(ptr: *mut *mut c_void, size: usize) -> oxcclResult_t {
    guard(None, || {
        let p = out(ptr, "ptr")?;
        let mut buf = oxccl_rs::SharedBuffer::<u8>::new(size)?;
        let addr = buf.as_mut_ptr();
        SHARED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Default::default)
            .insert(addr as usize, buf);
        // SAFETY: non-NULL, and the caller passes a writable pointer.
        unsafe { *p = addr.cast() };
        Ok(())
    })
}

/// Frees memory from `oxcclMemAlloc` (NULL does nothing). The memory must not be in use by a
/// collective. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn oxcclMemFree(ptr: *mut c_void) -> oxcclResult_t {
    guard(None, || {
        if ptr.is_null() {
            return Ok(());
        }
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        match shared.as_mut().and_then(|m| m.remove(&(ptr as usize))) {
            Some(buf) => {
                drop(buf);
                Ok(())
            }
            None => Err(Error::invalid_argument(format!("{ptr:p} was not returned by oxcclMemAlloc (or is freed)"))),
        }
    })
}

/// Starts a group (groups nest): sends and receives issued until the matching
/// `oxcclGroupEnd` are queued and then posted together, so ranks can exchange in any order
/// without deadlock. Collectives inside a group run at once, in order. Per thread.
#[no_mangle]
pub extern "C" fn oxcclGroupStart() -> oxcclResult_t {
    guard(None, || {
        group::start();
        Ok(())
    })
}

/// Ends a group; at the outermost end, runs the queued sends and receives (per communicator,
/// in the order the communicators were first used in the group) and returns the first error.
#[no_mangle]
pub extern "C" fn oxcclGroupEnd() -> oxcclResult_t {
    let mut failed_comm = None;
    let r = guard(None, || group::end(&mut failed_comm));
    if r != types::SUCCESS {
        if let Some(h) = failed_comm {
            // Keep the message on the communicator too.
            if let Ok(e) = lookup(h) {
                let msg = unsafe { CStr::from_ptr(boundary::last_error(std::ptr::null_mut())) }.to_owned();
                *e.last_error.lock().unwrap_or_else(|e| e.into_inner()) = msg;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbering_matches_nccl() {
        // ncclDataType_t: ncclInt8 0, ncclUint8 1, ncclInt32 2, ncclUint32 3, ncclInt64 4,
        // ncclUint64 5, ncclFloat16 6, ncclFloat32 7, ncclFloat64 8, ncclBfloat16 9.
        let want = [
            DataType::I8,
            DataType::U8,
            DataType::I32,
            DataType::U32,
            DataType::I64,
            DataType::U64,
            DataType::F16,
            DataType::F32,
            DataType::F64,
            DataType::Bf16,
        ];
        for (i, d) in want.iter().enumerate() {
            assert_eq!(dtype(i as c_int).unwrap(), *d);
        }
        assert!(dtype(10).is_err() && dtype(-1).is_err() && dtype(256).is_err());
        // ncclRedOp_t: ncclSum 0, ncclProd 1, ncclMax 2, ncclMin 3, ncclAvg 4.
        let ops = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Max, ReduceOp::Min, ReduceOp::Avg];
        for (i, o) in ops.iter().enumerate() {
            assert_eq!(redop(i as c_int).unwrap(), *o);
        }
        assert!(redop(5).is_err());
        // ncclResult_t: success 0, unhandled cuda 1, system 2, internal 3, invalid argument 4,
        // invalid usage 5, remote 6, in progress 7.
        assert_eq!(
            [SUCCESS, SYSTEM_ERROR, INTERNAL_ERROR, INVALID_ARGUMENT, INVALID_USAGE, REMOTE_ERROR, IN_PROGRESS],
            [0, 2, 3, 4, 5, 6, 7]
        );
        assert_eq!([TIMEOUT, ABORTED, NUM_RESULTS], [8, 9, 10]);
    }

    /// Device buffers through the C ABI follow NCCL's stream semantics: three all-reduces
    /// queued on a stream without a wait between them, each returning at
    /// once, give the closed-form result once the stream is synchronised. Skipped (saying why)
    /// where there is no CUDA driver; `scripts/gpu-check.sh` runs it on a GPU.
    #[test]
    fn device_buffers_follow_stream_order() {
        let n = 1 << 20;
        if let Err(e) = oxccl_rs::DeviceBuffer::<f32>::new(1, 0) {
            assert_eq!(e.kind(), oxccl_rs::ErrorKind::Unsupported, "{e}");
            eprintln!("skipped: {e}");
            return;
        }
        let mut id = oxcclUniqueId { internal: [0; 128] };
        // SAFETY: a writable id.
        assert_eq!(unsafe { oxcclGetUniqueId(&mut id) }, SUCCESS);
        // Every buffer is made before any call is ordered on a stream, as with NCCL: a stream
        // waiting on a collective blocks the legacy default stream, and so anything that
        // synchronises with it (a cudaMemcpy, a cudaFree) in a thread whose rank the
        // collective waits for.
        let made = std::sync::Barrier::new(2);
        let made = &made;
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|rank| {
                    s.spawn(move || {
                        // cudaSetDevice(0), as an NCCL program does before the init, which then
                        // sets the device up.
                        oxccl_transport::cuda::context(0).unwrap().make_current().unwrap();
                        let mut comm: oxcclComm_t = std::ptr::null_mut();
                        // SAFETY: a writable handle; the id from oxcclGetUniqueId.
                        assert_eq!(unsafe { oxcclCommInitRank(&mut comm, 2, id, rank) }, SUCCESS);
                        let mut buf =
                            oxccl_rs::DeviceBuffer::<f32>::from_slice(&vec![rank as f32 + 1.0; n], 0).unwrap();
                        made.wait();
                        let p = buf.as_mut_ptr().cast::<c_void>();
                        // Each rank its own stream (CUDA's per-thread default stream): ranks that
                        // are threads of one process must not share one, as in NCCL.
                        let stream = 2usize as *mut c_void;
                        for _ in 0..3 {
                            // SAFETY: a live device buffer of `n` floats, kept until the stream
                            // is synchronised below.
                            let r = unsafe { oxcclAllReduce(p, p, n, 7, 0, comm, stream) };
                            assert_eq!(r, SUCCESS);
                        }
                        let ctx = oxccl_transport::cuda::context(0).unwrap();
                        let deadline = std::time::Instant::now() + Duration::from_secs(60);
                        ctx.sync_stream(stream, deadline, "the test's stream").unwrap();
                        let mut err = SUCCESS;
                        // SAFETY: a live handle and a writable result.
                        assert_eq!(unsafe { oxcclCommGetAsyncError(comm, &mut err) }, SUCCESS);
                        assert_eq!(err, SUCCESS);
                        let host = buf.to_vec().unwrap();
                        // SAFETY: a live handle, destroyed once.
                        assert_eq!(unsafe { oxcclCommDestroy(comm) }, SUCCESS);
                        host
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // 1 + 2 = 3, then 6, then 12.
        for (rank, host) in results.iter().enumerate() {
            let wrong = host.iter().filter(|&&x| x != 12.0).count();
            assert_eq!(wrong, 0, "rank {rank}: {wrong} wrong elements");
        }
    }

    #[test]
    fn panics_become_internal_errors() {
        let r = guard(None, || panic!("boom"));
        assert_eq!(r, INTERNAL_ERROR);
        let msg = unsafe { CStr::from_ptr(oxcclGetLastError(std::ptr::null_mut())) }.to_string_lossy().into_owned();
        assert!(msg.contains("boom"), "{msg}");
    }
}
