//! [`TcpStore`]: the key-value store ranks rendezvous through, served over TCP by one process
//! (rank 0, the launcher, or whoever called [`UniqueId::new`](crate::UniqueId::new)).
//!
//! Every connection opens with the secret-proving handshake of
//! [`oxccl_transport::auth`]; a client that fails it is refused and logged, and the store
//! goes on serving the others. After it, requests and responses are small frames:
//!
//! ```text
//! request:  op u8 (1 set, 2 get, 3 add) | key_len u16 | value_len u32 | wait_ms u32 | key | value
//! response: status u8 (0 ok, 1 not set in time, 2 refused) | len u32 | payload
//! ```
//! Lengths are bounded (keys 4 KiB, values 64 MiB) before anything is allocated, so a lying
//! header costs the server nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oxccl_transport::auth::{self, Hello, Purpose, Secret};
use oxccl_transport::store::parse_counter;
use oxccl_transport::Store;

use crate::error::{Error, Result};

const MAX_KEY: usize = 4096;
const MAX_VALUE: usize = 64 << 20;
const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_ADD: u8 = 3;
const ST_OK: u8 = 0;
const ST_MISSING: u8 = 1;
const ST_REFUSED: u8 = 2;

#[derive(Default)]
struct Table {
    map: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

/// The server side of a [`TcpStore`]. Stops accepting when dropped (connections already open
/// are served until their clients close them).
pub struct TcpStoreServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpStoreServer {
    /// Listens on `addr` (port 0 picks a free one) and serves clients that know `secret`.
    pub fn start(addr: SocketAddr, secret: Secret) -> Result<TcpStoreServer> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::io(format!("store: binding {addr}"), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("store: local address", e))?;
        listener.set_nonblocking(true).map_err(|e| Error::io("store: listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let table = Arc::new(Table::default());
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("oxccl-store".into())
            .spawn(move || accept_loop(listener, secret, table, s))
            .map_err(|e| Error::io("store: spawning the server thread", e))?;
        tracing::debug!(%addr, "store server listening");
        Ok(TcpStoreServer { addr, stop, thread: Some(thread) })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpStoreServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, secret: Secret, table: Arc<Table>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((s, peer)) => {
                let table = table.clone();
                let _ = std::thread::Builder::new().name("oxccl-store-conn".into()).spawn(move || {
                    if let Err(e) = serve(s, &secret, &table) {
                        tracing::warn!(%peer, error = %e, "store: client refused or failed");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, 50) };
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut s: TcpStream, secret: &Secret, table: &Table) -> Result<()> {
    s.set_nonblocking(false).map_err(|e| Error::io("store: socket", e))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| Error::io("store: socket", e))?;
    let hello = auth::accept_handshake(&mut s, secret)?;
    if hello.purpose != Purpose::Store {
        return Err(Error::invalid_usage("a data connection reached the store"));
    }
    s.set_read_timeout(None).map_err(|e| Error::io("store: socket", e))?;
    let _ = s.set_nodelay(true);
    serve_requests(&mut s, table, Duration::MAX)
}

/// Serves one authenticated client's requests until it closes the stream. A get waits at
/// most what the client asked for and at most `max_wait`.
fn serve_requests<S: Read + Write>(s: &mut S, table: &Table, max_wait: Duration) -> Result<()> {
    loop {
        let mut h = [0u8; 11];
        match s.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Error::io("store: reading a request", e)),
        }
        let op = h[0];
        let klen = u16::from_le_bytes([h[1], h[2]]) as usize;
        let vlen = u32::from_le_bytes([h[3], h[4], h[5], h[6]]) as usize;
        let wait_ms = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
        if klen > MAX_KEY || vlen > MAX_VALUE || !(OP_SET..=OP_ADD).contains(&op) {
            respond(s, ST_REFUSED, b"request refused: bad op or length")?;
            return Err(Error::invalid_usage(format!("store: bad request (op {op}, key {klen} B, value {vlen} B)")));
        }
        let mut kv = vec![0u8; klen + vlen];
        s.read_exact(&mut kv).map_err(|e| Error::io("store: reading a request", e))?;
        let key = String::from_utf8_lossy(&kv[..klen]).into_owned();
        let value = &kv[klen..];
        let mut map = table.map.lock().unwrap_or_else(|e| e.into_inner());
        match op {
            OP_SET => {
                map.insert(key, value.to_vec());
                table.changed.notify_all();
                drop(map);
                respond(s, ST_OK, &[])?;
            }
            OP_GET => {
                let deadline = Instant::now() + Duration::from_millis(wait_ms as u64).min(max_wait);
                loop {
                    if let Some(v) = map.get(&key) {
                        let v = v.clone();
                        drop(map);
                        respond(s, ST_OK, &v)?;
                        break;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        drop(map);
                        respond(s, ST_MISSING, &[])?;
                        break;
                    }
                    map = table.changed.wait_timeout(map, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                }
            }
            _ => {
                let delta = match <[u8; 8]>::try_from(value) {
                    Ok(b) => i64::from_le_bytes(b),
                    Err(_) => {
                        drop(map);
                        respond(s, ST_REFUSED, b"add needs an 8-byte value")?;
                        continue;
                    }
                };
                let cur = match map.get(&key).map(|v| parse_counter(&key, v)).transpose() {
                    Ok(c) => c.unwrap_or(0),
                    Err(e) => {
                        drop(map);
                        respond(s, ST_REFUSED, e.to_string().as_bytes())?;
                        continue;
                    }
                };
                let new = cur.wrapping_add(delta);
                map.insert(key, new.to_string().into_bytes());
                table.changed.notify_all();
                drop(map);
                respond(s, ST_OK, &new.to_le_bytes())?;
            }
        }
    }
}

fn respond<S: Write>(s: &mut S, status: u8, payload: &[u8]) -> Result<()> {
    let mut b = Vec::with_capacity(5 + payload.len());
    b.push(status);
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    s.write_all(&b).map_err(|e| Error::io("store: writing a response", e))
}

/// A peer made of bytes, for the fuzz targets: reads come from `input`, writes go to
/// `output`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub struct FuzzPeer<'a> {
    /// What the peer says.
    pub input: &'a [u8],
    /// What was said to it.
    pub output: Vec<u8>,
}

#[cfg(fuzzing)]
impl Read for FuzzPeer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

#[cfg(fuzzing)]
impl Write for FuzzPeer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The fuzzer's way in (`fuzz/fuzz_targets/store_requests.rs`): serves `input` as the
/// request stream of one authenticated client against an empty table, gets never waiting,
/// and returns what the server wrote back.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_serve_requests(input: &[u8]) -> (Result<()>, Vec<u8>) {
    let mut peer = FuzzPeer { input, output: Vec::new() };
    let r = serve_requests(&mut peer, &Table::default(), Duration::ZERO);
    (r, peer.output)
}

/// How long [`TcpStore::connect_any`] waits for a listener's handshake before passing over
/// it, when it has other addresses to try.
pub const PROBE_WAIT: Duration = Duration::from_secs(2);

/// A client of a [`TcpStoreServer`]. Thread-safe; requests are serialised on one connection.
pub struct TcpStore {
    addr: SocketAddr,
    conn: Mutex<TcpStream>,
    local: SocketAddr,
}

impl TcpStore {
    /// Connects to the store at `addr`, retrying until `deadline` (the server may not be up
    /// yet), and proves knowledge of `secret`.
    pub fn connect(addr: SocketAddr, secret: Secret, rank: Option<usize>, deadline: Instant) -> Result<TcpStore> {
        Self::connect_any(&[addr], secret, rank, deadline)
    }

    /// Connects to the first of `addrs` where a store that knows `secret` answers, trying
    /// each in turn until `deadline`. With one address, a listener there that fails the
    /// handshake is an error at once; with several it is passed over (another program holds
    /// that port, so the store's host moved on to the next), and so is one that says nothing
    /// within [`PROBE_WAIT`].
    pub fn connect_any(
        addrs: &[SocketAddr],
        secret: Secret,
        rank: Option<usize>,
        deadline: Instant,
    ) -> Result<TcpStore> {
        if addrs.is_empty() {
            return Err(Error::invalid_argument("no rendezvous store address to connect to"));
        }
        let several = addrs.len() > 1;
        let mut last: Vec<String> = vec![String::new(); addrs.len()];
        let mut backoff = Duration::from_millis(2);
        loop {
            for (i, &addr) in addrs.iter().enumerate() {
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
                let mut stream = match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(5))) {
                    Ok(s) => s,
                    Err(e) => {
                        last[i] = e.to_string();
                        continue;
                    }
                };
                let wait = if several { PROBE_WAIT } else { Duration::from_secs(10) };
                let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
                let _ = stream.set_read_timeout(Some(left.min(wait)));
                let hello = Hello {
                    purpose: Purpose::Store,
                    from: rank.map_or(u32::MAX, |r| r as u32),
                    to: u32::MAX,
                    index: 0,
                    world: 0,
                };
                match auth::connect_handshake(&mut stream, &secret, hello) {
                    Ok(_) => {
                        let _ = stream.set_read_timeout(None);
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().map_err(|e| Error::io("store: local address", e))?;
                        return Ok(TcpStore { addr, conn: Mutex::new(stream), local });
                    }
                    Err(e) if !several => {
                        return Err(Error::invalid_usage(format!("rendezvous store at {addr}: {e}")));
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "store: passing over a listener that is not this job's store");
                        last[i] = format!("not this job's store ({e})");
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                let tried: Vec<String> = addrs.iter().zip(&last).map(|(a, e)| format!("{a}: {e}")).collect();
                return Err(Error::timeout(
                    format!("could not reach the rendezvous store at {}", tried.join("; ")),
                    Duration::ZERO,
                ));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// The local address of the connection to the store: on a multi-host world, an address
    /// of this host that the store's host can route to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn request(&self, op: u8, key: &str, value: &[u8], wait: Duration) -> Result<(u8, Vec<u8>)> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(Error::invalid_argument(format!(
                "store key or value too large ({} / {} bytes)",
                key.len(),
                value.len()
            )));
        }
        let wait_ms = wait.as_millis().min(u32::MAX as u128) as u32;
        let mut b = Vec::with_capacity(11 + key.len() + value.len());
        b.push(op);
        b.extend_from_slice(&(key.len() as u16).to_le_bytes());
        b.extend_from_slice(&(value.len() as u32).to_le_bytes());
        b.extend_from_slice(&wait_ms.to_le_bytes());
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(value);
        let mut s = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let lost = |e: std::io::Error| Error::io(format!("rendezvous store at {} (did its host exit?)", self.addr), e);
        // The server answers a get within `wait`; allow for the round trip on top.
        let _ = s.set_read_timeout(Some(wait + Duration::from_secs(5)));
        s.write_all(&b).map_err(lost)?;
        let mut h = [0u8; 5];
        s.read_exact(&mut h).map_err(lost)?;
        let len = u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > MAX_VALUE {
            return Err(Error::invalid_usage(format!("store at {} sent a {len}-byte response", self.addr)));
        }
        let mut v = vec![0u8; len];
        s.read_exact(&mut v).map_err(lost)?;
        if h[0] == ST_REFUSED {
            return Err(Error::invalid_usage(format!("store refused: {}", String::from_utf8_lossy(&v))));
        }
        Ok((h[0], v))
    }
}

impl Store for TcpStore {
    fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.request(OP_SET, key, value, Duration::ZERO).map(|_| ())
    }

    fn get(&self, key: &str, deadline: Instant) -> Result<Vec<u8>> {
        let start = Instant::now();
        let (st, v) = self.request(OP_GET, key, &[], deadline.saturating_duration_since(start))?;
        if st == ST_OK {
            Ok(v)
        } else {
            Err(Error::timeout(format!("store key '{key}' was never set"), start.elapsed()))
        }
    }

    fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let (_, v) = self.request(OP_ADD, key, &delta.to_le_bytes(), Duration::ZERO)?;
        let b: [u8; 8] = v.try_into().map_err(|_| Error::invalid_usage("store: bad add response"))?;
        Ok(i64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn set_get_wait_add_between_clients() {
        let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), [1; 16]).unwrap();
        let a = TcpStore::connect(server.addr(), [1; 16], Some(0), soon()).unwrap();
        let b = TcpStore::connect(server.addr(), [1; 16], Some(1), soon()).unwrap();
        let waiter = std::thread::spawn(move || b.get("late", soon()).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        a.set("late", b"hello").unwrap();
        assert_eq!(waiter.join().unwrap(), b"hello");
        assert_eq!(a.add("n", 5).unwrap(), 5);
        assert_eq!(a.add("n", -2).unwrap(), 3);
        let e = a.get("never", Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains("never"));
    }

    #[test]
    fn wrong_secret_is_refused_and_store_keeps_serving() {
        let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), [2; 16]).unwrap();
        let e = match TcpStore::connect(server.addr(), [3; 16], None, soon()) {
            Err(e) => e,
            Ok(_) => panic!("a client without the secret got in"),
        };
        assert!(e.to_string().contains("secret"), "{e}");
        let ok = TcpStore::connect(server.addr(), [2; 16], None, soon()).unwrap();
        ok.set("k", b"v").unwrap();
        assert_eq!(ok.get("k", soon()).unwrap(), b"v");
    }

    #[test]
    fn lying_length_is_refused_without_allocating() {
        let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), [4; 16]).unwrap();
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let hello = Hello { purpose: Purpose::Store, from: 0, to: u32::MAX, index: 0, world: 0 };
        auth::connect_handshake(&mut s, &[4; 16], hello).unwrap();
        let mut req = vec![OP_SET];
        req.extend_from_slice(&1u16.to_le_bytes());
        req.extend_from_slice(&u32::MAX.to_le_bytes());
        req.extend_from_slice(&0u32.to_le_bytes());
        s.write_all(&req).unwrap();
        let mut h = [0u8; 5];
        s.read_exact(&mut h).unwrap();
        assert_eq!(h[0], ST_REFUSED);
    }

    /// Authenticated clients sending random requests (any op byte, lengths in and out of
    /// bounds, truncated bodies) never bring the server down: a well-behaved client keeps
    /// working between them.
    #[test]
    fn authenticated_garbage_never_stops_the_server() {
        let secret = [5u8; 16];
        let server = TcpStoreServer::start("127.0.0.1:0".parse().unwrap(), secret).unwrap();
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..40 {
            let mut s = TcpStream::connect(server.addr()).unwrap();
            let hello = Hello { purpose: Purpose::Store, from: 0, to: u32::MAX, index: 0, world: 0 };
            auth::connect_handshake(&mut s, &secret, hello).unwrap();
            let mut req = vec![(next() % 6) as u8];
            let klen = if next() % 4 == 0 { u16::MAX } else { (next() % 64) as u16 };
            let vlen = if next() % 4 == 0 { u32::MAX } else { (next() % 256) as u32 };
            req.extend_from_slice(&klen.to_le_bytes());
            req.extend_from_slice(&vlen.to_le_bytes());
            req.extend_from_slice(&((next() % 50) as u32).to_le_bytes());
            let body = (next() % 400) as usize;
            req.extend((0..body).map(|_| next() as u8));
            let _ = s.write_all(&req);
            drop(s);
            if round % 8 == 0 {
                let deadline = Instant::now() + Duration::from_secs(5);
                let store = TcpStore::connect(server.addr(), secret, Some(0), deadline).unwrap();
                store.set(&format!("ok{round}"), b"yes").unwrap();
                assert_eq!(store.get(&format!("ok{round}"), deadline).unwrap(), b"yes");
            }
        }
    }
}
