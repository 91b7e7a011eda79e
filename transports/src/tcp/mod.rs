//! TCP transport: any two ranks that can reach each other over IP.
//!
//! Setup: every rank listens on its bind address and publishes `ip:port` in the store; each
//! rank connects to every lower rank (`conns_per_peer` connections per pair) and accepts from
//! every higher one. Every connection opens with the authenticated handshake of
//! [`crate::auth`]; a connection that does not know the secret is refused, logged and ignored,
//! and setup goes on waiting for the real peer.
//!
//! Data: frames of [`wire`] on non-blocking sockets, progressed by the waiting thread
//! (`engine`). Messages of at least `stripe_min_bytes` are split into one part per
//! connection, so several connections carry one large message side by side.

mod engine;
pub mod wire;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::auth::{self, Hello, Purpose, Secret};
use crate::error::{Error, ErrorKind, Result};
use crate::placement::CpuBoard;
use crate::region::{MemoryKind, Region, RegionMut};
use crate::store::Store;
use crate::transport::{Capabilities, ReqId, Tag, Transport};

use engine::{Conn, Engine, ReqInfo};

/// Settings of the TCP transport.
#[derive(Debug, Clone)]
pub struct TcpOptions {
    /// The local address to listen on (port chosen by the OS).
    pub bind: IpAddr,
    /// Connections per pair of ranks (1 to 16).
    pub conns_per_peer: usize,
    /// `SO_SNDBUF`/`SO_RCVBUF` in bytes; `None` leaves the kernel's autotuning on, which on
    /// Linux grows buffers further than an explicit setting may.
    pub socket_buffer: Option<usize>,
    /// Messages of at least this many bytes are striped over all connections of the pair.
    pub stripe_min_bytes: usize,
    /// How long a waiter polls the sockets without sleeping before it blocks in `poll`
    /// (then [`TcpOptions::yield_for`] more).
    pub spin: Duration,
    /// After spinning, how long a waiter keeps polling the sockets between yields of its core
    /// before it blocks in `poll`.
    pub yield_for: Duration,
    /// Congestion-control algorithms (`TCP_CONGESTION`) to ask for on every data connection,
    /// in order: the first the kernel accepts is used, and where it accepts none the system's
    /// stays. Empty: the system's. The default, `cubic` then `reno`, avoids pacing ones such
    /// as BBR: a collective's traffic comes in bursts after bulk transfers, and BBR paces each
    /// burst at the bandwidth it estimated during the bulk; over loopback on a 2-core host
    /// that made a 256 KiB all-gather after a 64 MiB one 2x slower, and the 64 MiB one itself
    /// 1.5x slower, than with cubic.
    ///
    /// It is asked for on the listening socket and on each connecting socket before the
    /// connection is made, never after: a connection that starts under BBR keeps BBR's
    /// request for kernel pacing when it is switched, and is then paced at cubic's rate
    /// (about cwnd / RTT), which over loopback cost a 2-rank 256 KiB all-gather 55 us
    /// against 30, and a 16 MiB one 5.0 ms against 2.5.
    pub congestion: Vec<String>,
    /// The ranks of this host (ascending, this one among them) whose traffic this transport
    /// carries, where each has a core of its own: their waiters then keep off each other's
    /// CPUs through a [`CpuBoard`] (see [`crate::placement`]). Empty: no board, as where
    /// ranks outnumber cores or the host's other ranks talk through shared memory.
    pub cpu_board_ranks: Vec<usize>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            bind: IpAddr::from([127, 0, 0, 1]),
            conns_per_peer: 1,
            socket_buffer: None,
            stripe_min_bytes: 256 << 10,
            spin: Duration::from_micros(50),
            yield_for: Duration::from_micros(200),
            congestion: default_congestion(),
            cpu_board_ranks: Vec::new(),
        }
    }
}

/// The congestion-control algorithms asked for by default (see [`TcpOptions::congestion`]).
pub fn default_congestion() -> Vec<String> {
    vec!["cubic".into(), "reno".into()]
}

/// One rank's endpoint of a TCP world. Build it with [`TcpTransport::connect`].
pub struct TcpTransport {
    rank: usize,
    size: usize,
    opts: TcpOptions,
    engine: Mutex<Engine>,
    wake: OwnedFd,
    aborted: AtomicBool,
    socket_fds: Vec<RawFd>,
    /// This rank's progress marker, stamped on every frame it sends.
    progress: AtomicU64,
    /// Where this host's ranks last waited ([`TcpOptions::cpu_board_ranks`]).
    board: Option<CpuBoard>,
}

fn new_eventfd() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the returned descriptor is owned by the OwnedFd below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::io("creating an eventfd", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A TCP socket for `addr`'s family with the first of [`TcpOptions::congestion`] the kernel
/// accepts already chosen, so that the connection starts under it (a listening socket's
/// choice is inherited by the connections it accepts). Not an error when all are refused:
/// the module may be missing, or (unprivileged) not in net.ipv4.tcp_allowed_congestion_control;
/// the system's algorithm still works.
fn data_socket(addr: &SocketAddr, opts: &TcpOptions) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| Error::io("creating a socket", e))?;
    if let Some(name) = opts.congestion.iter().find(|name| sock.set_tcp_congestion(name.as_bytes()).is_ok()) {
        tracing::trace!(%name, "tcp: congestion control chosen before connecting");
    }
    Ok(sock)
}

/// The congestion control `sock` runs with (`TCP_CONGESTION`).
fn congestion_of_socket(sock: socket2::SockRef<'_>) -> Option<String> {
    let n = sock.tcp_congestion().ok()?;
    let end = n.iter().position(|&b| b == 0).unwrap_or(n.len());
    Some(String::from_utf8_lossy(&n[..end]).into_owned())
}

/// Sets a data connection's options; returns the congestion control it runs with, where it
/// is one of [`TcpOptions::congestion`].
fn set_data_options(sock: &TcpStream, opts: &TcpOptions) -> Result<Option<String>> {
    let s = socket2::SockRef::from(sock);
    s.set_nodelay(true).map_err(|e| Error::io("setting TCP_NODELAY", e))?;
    if let Some(b) = opts.socket_buffer {
        s.set_send_buffer_size(b).map_err(|e| Error::io("setting SO_SNDBUF", e))?;
        s.set_recv_buffer_size(b).map_err(|e| Error::io("setting SO_RCVBUF", e))?;
    }
    Ok(congestion_of_socket(s).filter(|r| opts.congestion.contains(r)))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// How long one handshake may take: a stranger that connects and says nothing must not hold
/// up the real peers for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

fn accept_peers(
    listener: TcpListener,
    rank: usize,
    size: usize,
    secret: Secret,
    k: usize,
    deadline: Instant,
) -> Result<Vec<(usize, usize, TcpStream)>> {
    let expected = (size - rank - 1) * k;
    let mut got: Vec<(usize, usize, TcpStream)> = Vec::with_capacity(expected);
    listener.set_nonblocking(true).map_err(|e| Error::io("listener", e))?;
    while got.len() < expected {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| Error::io("accepted socket", e))?;
                let t = HANDSHAKE_TIMEOUT.min(remaining(deadline)).max(Duration::from_millis(1));
                let _ = s.set_read_timeout(Some(t));
                let _ = s.set_write_timeout(Some(t));
                match auth::accept_handshake(&mut s, &secret) {
                    Ok(h) => {
                        let (peer, idx) = (h.from as usize, h.index as usize);
                        let valid = h.purpose == Purpose::Data
                            && h.to as usize == rank
                            && h.world as usize == size
                            && peer > rank
                            && peer < size
                            && idx < k
                            && !got.iter().any(|(p, i, _)| (*p, *i) == (peer, idx));
                        if valid {
                            got.push((peer, idx, s));
                        } else {
                            tracing::warn!(rank, %from, ?h, "refused a data connection that does not fit this world");
                        }
                    }
                    Err(e) => tracing::warn!(rank, %from, error = %e, "refused a data connection"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> =
                        (rank + 1..size).filter(|p| got.iter().filter(|(q, _, _)| q == p).count() < k).collect();
                    return Err(Error::timeout(
                        format!("ranks {missing:?} never opened their data connections to this rank"),
                        Duration::ZERO,
                    )
                    .on_rank(rank));
                }
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                let ms = remaining(deadline).as_millis().clamp(1, 100) as i32;
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("accepting data connections", e).on_rank(rank)),
        }
    }
    Ok(got)
}

/// Connects to `addr` (the rank `hello.to`) and opens the connection with `hello`.
fn connect_peer(
    addr: SocketAddr,
    hello: Hello,
    secret: &Secret,
    opts: &TcpOptions,
    deadline: Instant,
) -> Result<TcpStream> {
    let (rank, peer) = (hello.from as usize, hello.to as usize);
    let mut backoff = Duration::from_millis(1);
    loop {
        let t = remaining(deadline).max(Duration::from_millis(1));
        let sock = data_socket(&addr, opts)?;
        match sock.connect_timeout(&addr.into(), t.min(HANDSHAKE_TIMEOUT)).map(|()| TcpStream::from(sock)) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(HANDSHAKE_TIMEOUT.min(t)));
                let _ = s.set_write_timeout(Some(HANDSHAKE_TIMEOUT.min(t)));
                auth::connect_handshake(&mut s, secret, hello).map_err(|e| e.on_rank(rank).with_peer(peer))?;
                return Ok(s);
            }
            Err(e) => {
                if Instant::now() + backoff >= deadline {
                    return Err(Error::io(format!("connecting to peer {peer} at {addr}"), e)
                        .on_rank(rank)
                        .with_peer(peer));
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
        }
    }
}

impl TcpTransport {
    /// Connects this rank to every other rank of a world of `size`, rendezvousing through
    /// `store`, and proving knowledge of `secret` on every connection. Fails with
    /// `Error::Timeout` naming the missing ranks when some never arrive by `deadline`.
    pub fn connect(
        rank: usize,
        size: usize,
        store: &dyn Store,
        secret: Secret,
        opts: TcpOptions,
        deadline: Instant,
    ) -> Result<TcpTransport> {
        if size == 0 || rank >= size {
            return Err(Error::invalid_argument(format!("rank {rank} is not in a world of {size}")));
        }
        if opts.conns_per_peer == 0 || opts.conns_per_peer > 16 {
            return Err(Error::invalid_argument(format!(
                "connections per peer must be 1 to 16, not {}",
                opts.conns_per_peer
            )));
        }
        let k = opts.conns_per_peer;
        // The congestion control before `listen`: accepted connections start under it.
        let sock = data_socket(&SocketAddr::new(opts.bind, 0), &opts)?;
        sock.set_reuse_address(true).map_err(|e| Error::io("SO_REUSEADDR", e))?;
        sock.bind(&SocketAddr::new(opts.bind, 0).into())
            .map_err(|e| Error::io(format!("binding to {}", opts.bind), e).on_rank(rank))?;
        sock.listen(1024).map_err(|e| Error::io("listen", e))?;
        let listener: TcpListener = sock.into();
        let local = listener.local_addr().map_err(|e| Error::io("listener address", e))?;
        store.set(&format!("tcp/addr/{rank}"), local.to_string().as_bytes())?;

        let acceptor = std::thread::Builder::new()
            .name(format!("oxccl-accept-{rank}"))
            .spawn(move || accept_peers(listener, rank, size, secret, k, deadline))
            .map_err(|e| Error::io("spawning the accept thread", e))?;

        let mut conns: Vec<Vec<Option<TcpStream>>> = (0..size).map(|_| (0..k).map(|_| None).collect()).collect();
        let mut connect_err = None;
        for (peer, peer_conns) in conns.iter_mut().enumerate().take(rank) {
            let addr = match store.get(&format!("tcp/addr/{peer}"), deadline) {
                Ok(a) => a,
                Err(e) if e.kind() == ErrorKind::Timeout => {
                    connect_err = Some(
                        Error::timeout(format!("rank {peer} never published its address"), Duration::ZERO)
                            .on_rank(rank)
                            .with_peer(peer),
                    );
                    break;
                }
                Err(e) => {
                    connect_err = Some(e);
                    break;
                }
            };
            let addr: SocketAddr = match std::str::from_utf8(&addr).ok().and_then(|a| a.parse().ok()) {
                Some(a) => a,
                None => {
                    connect_err = Some(Error::invalid_usage(format!("rank {peer} published a bad address")));
                    break;
                }
            };
            for (idx, slot) in peer_conns.iter_mut().enumerate() {
                match connect_peer(
                    addr,
                    Hello {
                        purpose: Purpose::Data,
                        from: rank as u32,
                        to: peer as u32,
                        index: idx as u32,
                        world: size as u32,
                    },
                    &secret,
                    &opts,
                    deadline,
                ) {
                    Ok(s) => *slot = Some(s),
                    Err(e) => {
                        connect_err = Some(e);
                        break;
                    }
                }
            }
            if connect_err.is_some() {
                break;
            }
        }
        let accepted = acceptor.join().map_err(|_| Error::internal("the accept thread panicked"))?;
        if let Some(e) = connect_err {
            return Err(e);
        }
        for (peer, idx, s) in accepted? {
            conns[peer][idx] = Some(s);
        }

        let mut socket_fds = Vec::new();
        let mut engine_conns = Vec::with_capacity(size);
        let mut congestion = None;
        for (peer, peer_conns) in conns.into_iter().enumerate() {
            let mut v = Vec::new();
            if peer != rank {
                for s in peer_conns {
                    let s = s.ok_or_else(|| Error::internal(format!("no connection to peer {peer}")))?;
                    s.set_read_timeout(None).map_err(|e| Error::io("socket", e))?;
                    s.set_write_timeout(None).map_err(|e| Error::io("socket", e))?;
                    s.set_nonblocking(true).map_err(|e| Error::io("socket", e))?;
                    congestion = set_data_options(&s, &opts)?;
                    socket_fds.push(s.as_raw_fd());
                    v.push(Conn::new(s, peer));
                }
            }
            engine_conns.push(v);
        }
        if congestion.is_none() && !opts.congestion.is_empty() && size > 1 {
            tracing::info!(rank, asked = ?opts.congestion, "tcp: congestion control not accepted; the system's stays");
        }
        tracing::debug!(rank, size, %local, conns_per_peer = k, ?congestion, "tcp transport connected");
        let board = if opts.cpu_board_ranks.len() > 1 {
            Some(CpuBoard::connect(rank, size, &opts.cpu_board_ranks, store, deadline)?)
        } else {
            None
        };
        Ok(TcpTransport {
            rank,
            size,
            opts,
            engine: Mutex::new(Engine::new(rank, engine_conns)),
            wake: new_eventfd()?,
            aborted: AtomicBool::new(false),
            socket_fds,
            progress: AtomicU64::new(0),
            board,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, e: &mut Engine) -> Result<()> {
        if self.aborted.load(Ordering::Acquire) && e.failed.is_none() {
            return Err(e.fail(Error::aborted("the communicator was aborted")));
        }
        match &e.failed {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn parts(&self, len: usize) -> usize {
        if self.opts.conns_per_peer > 1 && len >= self.opts.stripe_min_bytes {
            self.opts.conns_per_peer
        } else {
            1
        }
    }

    fn advance(&self, e: &mut Engine) -> Result<bool> {
        e.progress().map_err(|err| e.fail(err))
    }
}

/// The byte range of part `i` of `n` of a message of `len` bytes.
fn part_range(len: usize, n: usize, i: usize) -> (usize, usize) {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    (start, base + usize::from(i < extra))
}

impl Transport for TcpTransport {
    fn name(&self) -> &'static str {
        "tcp"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            peer_memory_mappable: false,
            device_memory: false,
            eager_sends: true,
            inter_host: true,
            single_copy: false,
            single_copy_min: 0,
            recv_sink: false,
        }
    }

    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        if buf.kind() != MemoryKind::Host {
            return Err(Error::unsupported("the tcp transport moves host memory only"));
        }
        let mut e = self.lock();
        self.check(&mut e)?;
        let id = e.next_id;
        e.next_id += 1;
        let n = self.parts(buf.len());
        for i in 0..n {
            let (start, len) = part_range(buf.len(), n, i);
            let progress = self.progress.load(Ordering::Relaxed) as u32;
            e.conns[peer][i].push_send(id, tag, i as u16, buf.as_ptr().wrapping_add(start), len, progress);
        }
        e.reqs.insert(id, ReqInfo { peer, tag, is_send: true, parts_left: n as u32 });
        self.advance(&mut e)?;
        Ok(ReqId(id))
    }

    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        if buf.kind() != MemoryKind::Host {
            return Err(Error::unsupported("the tcp transport moves host memory only"));
        }
        let mut e = self.lock();
        self.check(&mut e)?;
        let id = e.next_id;
        e.next_id += 1;
        let n = self.parts(buf.len());
        for i in 0..n {
            let (start, len) = part_range(buf.len(), n, i);
            e.conns[peer][i].recvq.push_back(engine::RecvPart {
                req: id,
                tag,
                part: i as u16,
                ptr: buf.as_mut_ptr().wrapping_add(start),
                len,
                off: 0,
                hdr_ok: false,
            });
        }
        e.reqs.insert(id, ReqInfo { peer, tag, is_send: false, parts_left: n as u32 });
        self.advance(&mut e)?;
        Ok(ReqId(id))
    }

    fn test(&self, req: ReqId) -> Result<bool> {
        let mut e = self.lock();
        self.check(&mut e)?;
        if req.0 == 0 || req.0 >= e.next_id {
            return Err(Error::internal(format!("unknown request {}", req.0)));
        }
        if !e.reqs.contains_key(&req.0) {
            return Ok(true);
        }
        self.advance(&mut e)?;
        Ok(!e.reqs.contains_key(&req.0))
    }

    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()> {
        let start = Instant::now();
        // Spinning and yielding are one phase here (a pass is a few system calls, and the
        // spin yields too); they differ on shared memory.
        let yield_until = start + self.opts.spin + self.opts.yield_for;
        let mut spins = 0u32;
        let mut e = self.lock();
        if req.0 == 0 || req.0 >= e.next_id {
            return Err(Error::internal(format!("unknown request {}", req.0)));
        }
        loop {
            self.check(&mut e)?;
            if !e.reqs.contains_key(&req.0) {
                return Ok(());
            }
            let moved = self.advance(&mut e)?;
            if !e.reqs.contains_key(&req.0) {
                return Ok(());
            }
            if moved {
                continue;
            }
            // A pass is a few system calls; read the clock every 4 of them.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(4) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            // The deadline first: a waiter preempted past it must not move again before it
            // looks (a 2-rank test waiting half a move interval moved twice under load).
            if now >= deadline {
                let (peer, what) = e.describe(req.0);
                let err = Error::timeout(what, now - start).with_peer(peer);
                return Err(e.fail(err));
            }
            // A waiter whose peer runs on its own CPU moves to a free one (see
            // `crate::placement`): over loopback such a pair ran 2-rank 4 KiB all-reduces at
            // 16-19 us instead of 7-12 until the load balancer parted it.
            // (The request's peer is looked up only where there is a board.)
            if let Some(board) = &self.board {
                if e.peer_of(req.0).is_some_and(|peer| board.on_wait(peer, now)) {
                    continue;
                }
            }
            if now < yield_until {
                // Let a peer that shares this core run: when the scheduler puts both ranks
                // of a pair on one core (another process holds the other), a spin that never
                // yields holds the peer off for the whole spin, and every message then costs
                // the spin (56 us per 8-byte all-reduce over loopback, against 3 us). Past the
                // spin, keep yielding rather than sleep at once: a rank that sleeps in `poll`
                // pays a wake-up per message (3 ranks on 2 cores: an 8-byte all-reduce took
                // 23-62 us that way, 11 us yielding).
                drop(e);
                std::thread::yield_now();
                e = self.lock();
                continue;
            }
            let ms = (deadline - now).as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            if let Err(err) = e.poll_wait(self.wake.as_raw_fd(), ms) {
                return Err(e.fail(err));
            }
        }
    }

    fn pending(&self) -> usize {
        self.lock().reqs.len()
    }

    fn progress(&self, max_wait: Duration) -> Result<()> {
        let mut e = self.lock();
        self.check(&mut e)?;
        if self.advance(&mut e)? || max_wait.is_zero() || e.reqs.is_empty() {
            return Ok(());
        }
        let ms = max_wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        if let Err(err) = e.poll_wait(self.wake.as_raw_fd(), ms) {
            return Err(e.fail(err));
        }
        self.check(&mut e)?;
        self.advance(&mut e).map(|_| ())
    }

    fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd, which lives as long as `self`.
        unsafe { libc::write(self.wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
        for &fd in &self.socket_fds {
            // SAFETY: the descriptors stay open until `self` drops; shutdown only ends the
            // streams, so a thread blocked in poll on them wakes and peers see the end.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    fn fail(&self, err: Error) {
        let mut e = self.lock();
        e.fail(err);
    }

    fn set_progress(&self, marker: u64) {
        self.progress.store(marker, Ordering::Relaxed);
    }

    fn peer_progress(&self, peer: usize) -> Option<u64> {
        let e = self.lock();
        let conns = e.conns.get(peer)?;
        conns.iter().map(|c| c.peer_progress as u64).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use std::sync::Arc;

    fn world(size: usize, opts: TcpOptions, secret: Secret) -> Vec<Result<TcpTransport>> {
        let store = Arc::new(MemoryStore::new());
        let hs: Vec<_> = (0..size)
            .map(|r| {
                let store = store.clone();
                let opts = opts.clone();
                std::thread::spawn(move || {
                    TcpTransport::connect(r, size, &*store, secret, opts, Instant::now() + Duration::from_secs(20))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    }

    /// A TCP waiter whose peer of this host last waited on its own CPU moves to a free one,
    /// once, through the transport's board; without a board nothing moves. As the shared-memory
    /// test does, one thread stands for both ranks: pinned to one CPU while both publish it,
    /// then allowed every CPU again (a fresh world per attempt, the scheduler may move the
    /// thread before the wait looks).
    #[test]
    fn a_waiter_on_its_peers_cpu_moves_with_a_board() {
        use crate::placement::pin::{allowed_cpus, run_on};
        use crate::placement::MOVE_INTERVAL;
        let all = allowed_cpus();
        for with_board in [true, false] {
            let expect_move = all.len() > 1 && with_board;
            let opts = TcpOptions {
                spin: Duration::from_micros(5),
                cpu_board_ranks: if with_board { vec![0, 1] } else { Vec::new() },
                ..TcpOptions::default()
            };
            let mut moved = false;
            for attempt in 0..5u8 {
                let ts: Vec<_> = world(2, opts.clone(), [30 + attempt; 16]).into_iter().map(Result::unwrap).collect();
                assert_eq!(ts[0].board.is_some(), with_board);
                run_on(&all[..1]);
                if let (Some(b0), Some(b1)) = (&ts[0].board, &ts[1].board) {
                    assert!(!b1.shares_cpu_with(0), "rank 0 has published nothing yet");
                    assert!(b0.shares_cpu_with(1), "both ranks on one CPU");
                }
                run_on(&all);
                let mut got = [0u8; 1];
                // SAFETY: `got` outlives the request, which the failed wait drops.
                let req = unsafe { ts[0].post_recv(1, Tag(3), RegionMut::from_slice(&mut got)).unwrap() };
                // Shorter than MOVE_INTERVAL: one move at most.
                let e = ts[0].wait(req, Instant::now() + MOVE_INTERVAL / 2).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
                let moves = ts[0].board.as_ref().map_or(0, |b| b.moves());
                assert!(moves <= u64::from(expect_move), "{moves} moves, board: {with_board}");
                if moves == 1 || !expect_move {
                    moved = moves == 1;
                    break;
                }
            }
            assert_eq!(moved, expect_move, "{} CPUs, board: {with_board}", all.len());
            assert_eq!(allowed_cpus(), all, "the thread's own mask is given back");
        }
    }

    /// A wait whose deadline has passed times out without moving, even where its peer
    /// published this rank's CPU.
    #[test]
    fn a_wait_past_its_deadline_does_not_move() {
        use crate::placement::pin::{allowed_cpus, run_on};
        let all = allowed_cpus();
        let opts = TcpOptions { spin: Duration::from_micros(5), cpu_board_ranks: vec![0, 1], ..TcpOptions::default() };
        let ts: Vec<_> = world(2, opts, [29; 16]).into_iter().map(Result::unwrap).collect();
        run_on(&all[..1]);
        let (b0, b1) = (ts[0].board.as_ref().unwrap(), ts[1].board.as_ref().unwrap());
        assert!(!b1.shares_cpu_with(0));
        assert!(b0.shares_cpu_with(1), "both ranks published one CPU");
        run_on(&all);
        let mut got = [0u8; 1];
        // SAFETY: `got` outlives the request, which the failed wait drops.
        let req = unsafe { ts[0].post_recv(1, Tag(3), RegionMut::from_slice(&mut got)).unwrap() };
        let e = ts[0].wait(req, Instant::now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert_eq!(b0.moves(), 0, "{} CPUs: moved past the deadline", all.len());
        assert_eq!(allowed_cpus(), all);
    }

    /// The congestion control each of `t`'s data connections runs with.
    fn congestion_of(t: &TcpTransport) -> Vec<String> {
        t.socket_fds
            .iter()
            .map(|&fd| {
                // SAFETY: `fd` is a connection `t` owns and keeps open while `t` lives; the
                // borrowed socket is only read from here.
                let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                congestion_of_socket(socket2::SockRef::from(&sock)).expect("TCP_CONGESTION")
            })
            .collect()
    }

    /// The congestion control must be chosen before a connection starts: one that starts
    /// under the system's BBR keeps BBR's request for kernel pacing when switched after.
    #[test]
    fn congestion_control_is_chosen_before_the_connection_starts() {
        let name = |s: socket2::SockRef<'_>| congestion_of_socket(s).expect("TCP_CONGESTION");
        let opts = TcpOptions { congestion: vec!["no_such_cc".into(), "reno".into()], ..TcpOptions::default() };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        // Connecting side: the socket has it before `connect`.
        let connecting = data_socket(&any, &opts).unwrap();
        assert_eq!(name(socket2::SockRef::from(&connecting)), "reno");
        // Accepting side: the listener has it, and a connection it accepts starts under it
        // with nothing set on the accepted socket.
        let listener = data_socket(&any, &opts).unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(4).unwrap();
        let listener: TcpListener = listener.into();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(name(socket2::SockRef::from(&accepted)), "reno");
        assert_eq!(set_data_options(&accepted, &opts).unwrap().as_deref(), Some("reno"));
    }

    #[test]
    fn congestion_control_is_the_first_accepted() {
        let secret = [7; 16];
        // `reno` is built into every Linux kernel and always allowed.
        let opts = TcpOptions { congestion: vec!["no_such_cc".into(), "reno".into()], ..TcpOptions::default() };
        let ts: Vec<TcpTransport> = world(3, opts, secret).into_iter().map(|t| t.unwrap()).collect();
        for t in &ts {
            assert_eq!(congestion_of(t), ["reno", "reno"], "rank {}", t.rank());
        }
        exchange(&ts, 100_000);
        // None accepted: the system's stays, and the world still works.
        let system = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap();
        let opts = TcpOptions { congestion: vec!["no_such_cc".into()], ..TcpOptions::default() };
        let ts: Vec<TcpTransport> = world(2, opts, secret).into_iter().map(|t| t.unwrap()).collect();
        for t in &ts {
            assert_eq!(congestion_of(t), [system.trim()], "rank {}", t.rank());
        }
        exchange(&ts, 1000);
    }

    #[test]
    fn part_ranges_cover_the_message() {
        for len in [0usize, 1, 7, 1000] {
            for n in 1..5 {
                let mut next = 0;
                for i in 0..n {
                    let (s, l) = part_range(len, n, i);
                    assert_eq!(s, next);
                    next = s + l;
                }
                assert_eq!(next, len);
            }
        }
    }

    fn exchange(ts: &[TcpTransport], len: usize) {
        let size = ts.len();
        std::thread::scope(|sc| {
            for t in ts {
                sc.spawn(move || {
                    let r = t.rank();
                    let send: Vec<u8> = (0..len).map(|i| (i * 7 + r) as u8).collect();
                    let mut recv = vec![vec![0u8; len]; size];
                    let mut reqs = Vec::new();
                    for (p, buf) in recv.iter_mut().enumerate().filter(|(p, _)| *p != r) {
                        // SAFETY: `buf` outlives the wait below.
                        reqs.push(t.post_recv(p, Tag(5), unsafe { RegionMut::from_slice(buf) }).unwrap());
                    }
                    for p in (0..size).filter(|p| *p != r) {
                        // SAFETY: `send` outlives the wait below.
                        reqs.push(t.post_send(p, Tag(5), unsafe { Region::from_slice(&send) }).unwrap());
                    }
                    t.wait_all(&reqs, Instant::now() + Duration::from_secs(20)).unwrap();
                    for (p, buf) in recv.iter().enumerate().filter(|(p, _)| *p != r) {
                        assert!(buf.iter().enumerate().all(|(i, &b)| b == (i * 7 + p) as u8), "from {p}");
                    }
                    assert_eq!(t.pending(), 0);
                });
            }
        });
    }

    #[test]
    fn all_pairs_exchange_small_and_large_messages() {
        let ts: Vec<_> = world(3, TcpOptions::default(), [1; 16]).into_iter().map(Result::unwrap).collect();
        for len in [0, 1, 100, 3 << 20] {
            exchange(&ts, len);
        }
    }

    #[test]
    fn striping_over_several_connections() {
        let opts = TcpOptions { conns_per_peer: 3, stripe_min_bytes: 1000, ..TcpOptions::default() };
        let ts: Vec<_> = world(2, opts, [2; 16]).into_iter().map(Result::unwrap).collect();
        for len in [5, 999, 1000, 1 << 20] {
            exchange(&ts, len);
        }
    }

    #[test]
    fn stranger_without_secret_is_refused_and_world_still_forms() {
        let store = Arc::new(MemoryStore::new());
        let s2 = store.clone();
        let rank0 = std::thread::spawn(move || {
            TcpTransport::connect(0, 2, &*s2, [3; 16], TcpOptions::default(), Instant::now() + Duration::from_secs(20))
        });
        let addr: SocketAddr =
            String::from_utf8(store.get("tcp/addr/0", Instant::now() + Duration::from_secs(5)).unwrap())
                .unwrap()
                .parse()
                .unwrap();
        let mut intruder = TcpStream::connect(addr).unwrap();
        let hello = Hello { purpose: Purpose::Data, from: 1, to: 0, index: 0, world: 2 };
        assert!(auth::connect_handshake(&mut intruder, &[9; 16], hello).is_err());
        let t1 = TcpTransport::connect(
            1,
            2,
            &*store,
            [3; 16],
            TcpOptions::default(),
            Instant::now() + Duration::from_secs(20),
        )
        .unwrap();
        let t0 = rank0.join().unwrap().unwrap();
        exchange(&[t0, t1], 10);
    }

    #[test]
    fn missing_rank_times_out_naming_it() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        let e = match TcpTransport::connect(
            0,
            2,
            &store,
            [4; 16],
            TcpOptions::default(),
            t0 + Duration::from_millis(200),
        ) {
            Err(e) => e,
            Ok(_) => panic!("a world with a missing rank formed"),
        };
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains("[1]"), "{e}");
    }

    #[test]
    fn dead_peer_is_peer_lost_and_abort_wakes() {
        let mut ts: Vec<_> = world(3, TcpOptions::default(), [5; 16]).into_iter().map(Result::unwrap).collect();
        let t2 = ts.pop().unwrap();
        let t1 = Arc::new(ts.pop().unwrap());
        let t0 = ts.pop().unwrap();
        let mut x = [0u8; 8];
        // SAFETY: `x` outlives the wait.
        let r = t0.post_recv(2, Tag(1), unsafe { RegionMut::from_slice(&mut x) }).unwrap();
        drop(t2);
        let e = t0.wait(r, Instant::now() + Duration::from_secs(20)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PeerLost, "{e}");
        assert_eq!(e.peer(), Some(2));

        let mut y = [0u8; 8];
        // SAFETY: `y` outlives the wait (which the abort ends).
        let r = t1.post_recv(0, Tag(1), unsafe { RegionMut::from_slice(&mut y) });
        let t = t1.clone();
        let h = std::thread::spawn(move || match r {
            Ok(r) => t.wait(r, Instant::now() + Duration::from_secs(30)),
            Err(e) => Err(e),
        });
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        t1.abort();
        let e = h.join().unwrap().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Aborted | ErrorKind::PeerLost), "{e}");
        assert!(start.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn wait_times_out_naming_the_peer() {
        let ts: Vec<_> = world(2, TcpOptions::default(), [6; 16]).into_iter().map(Result::unwrap).collect();
        let mut x = [0u8; 8];
        // SAFETY: `x` outlives the wait.
        let r = ts[0].post_recv(1, Tag(1), unsafe { RegionMut::from_slice(&mut x) }).unwrap();
        let e = ts[0].wait(r, Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains("receive from peer 1"), "{e}");
        assert_eq!(ts[0].pending(), 0, "a failed transport holds no requests");
    }
}
