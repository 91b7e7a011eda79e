//! The progress engine of the TCP transport: non-blocking sockets, driven by whichever thread
//! waits, with no helper threads (a hand-off to a progress thread costs a context switch per
//! message, which on a 2-core machine is the whole latency budget).
//!
//! Each connection has a queue of parts to send and a queue of posted receive parts. Sends are
//! written header and payload in one `sendmsg`; receives read header and payload in one
//! `readv`, straight into the posted region, so a message costs one system call on each side
//! and no copy beyond the kernel's.

use std::collections::VecDeque;

use crate::ids::IdMap;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use crate::error::{Error, Result};
use crate::transport::Tag;

use super::wire::{
    decode_last_words, encode_last_words, FrameHeader, HEADER_LEN, KIND_DATA, KIND_ERROR, MAX_LAST_WORDS,
};

pub(super) struct SendPart {
    pub req: u64,
    pub hdr: [u8; HEADER_LEN],
    pub hdr_off: usize,
    pub ptr: *const u8,
    pub len: usize,
    pub off: usize,
}

pub(super) struct RecvPart {
    pub req: u64,
    pub tag: Tag,
    pub part: u16,
    pub ptr: *mut u8,
    pub len: usize,
    pub off: usize,
    pub hdr_ok: bool,
}

pub(super) struct Conn {
    pub sock: TcpStream,
    pub peer: usize,
    pub sendq: VecDeque<SendPart>,
    pub recvq: VecDeque<RecvPart>,
    pub tx_seq: u32,
    pub rx_seq: u32,
    rx_hdr: [u8; HEADER_LEN],
    rx_hdr_got: usize,
    /// The peer's progress marker from its latest frame on this connection.
    pub peer_progress: u32,
}

pub(super) struct ReqInfo {
    pub peer: usize,
    pub tag: Tag,
    pub is_send: bool,
    pub parts_left: u32,
}

/// Everything the engine owns, behind the transport's mutex.
pub(super) struct Engine {
    pub rank: usize,
    /// `conns[peer]`: the connections to `peer` (empty for this rank).
    pub conns: Vec<Vec<Conn>>,
    pub reqs: IdMap<ReqInfo>,
    pub next_id: u64,
    pub failed: Option<Error>,
    pollfds: Vec<libc::pollfd>,
    poll_conns: Vec<(usize, usize)>,
}

// SAFETY: the raw pointers in queued parts point into regions whose creators promised they
// stay valid, from any thread, until the request completes or the transport fails; the engine
// is only reached through a mutex.
unsafe impl Send for Engine {}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

impl Conn {
    pub fn new(sock: TcpStream, peer: usize) -> Conn {
        Conn {
            sock,
            peer,
            sendq: VecDeque::new(),
            recvq: VecDeque::new(),
            tx_seq: 0,
            rx_seq: 0,
            rx_hdr: [0; HEADER_LEN],
            rx_hdr_got: 0,
            peer_progress: 0,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push_send(&mut self, req: u64, tag: Tag, part: u16, ptr: *const u8, len: usize, progress: u32) {
        let hdr = FrameHeader { kind: KIND_DATA, part, seq: self.tx_seq, tag, progress, len: len as u64 }.encode();
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.sendq.push_back(SendPart { req, hdr, hdr_off: 0, ptr, len, off: 0 });
    }

    fn lost(&self, what: &str, e: Option<std::io::Error>) -> Error {
        let how = match e {
            Some(e) => format!("{what}: {e}"),
            None => what.to_string(),
        };
        Error::peer_lost(self.peer, format!("tcp connection to peer {}: {how}", self.peer))
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EPIPE)
            | Some(libc::ECONNRESET)
            | Some(libc::ECONNABORTED)
            | Some(libc::ETIMEDOUT)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::ENETUNREACH)
            | Some(libc::ENOTCONN) => {
                self.lost(&format!("{what} failed (the peer died or the network dropped)"), Some(e))
            }
            _ => Error::io(format!("{what} on the tcp connection to peer {}", self.peer), e).with_peer(self.peer),
        }
    }

    /// Reads what is left of a peer's last words (already sent in one piece), for at most a
    /// few milliseconds.
    fn read_rest(&mut self, mut buf: &mut [u8]) {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        while !buf.is_empty() && std::time::Instant::now() < until {
            // SAFETY: reads into a live, writable buffer of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n > 0 {
                buf = &mut buf[n as usize..];
            } else if n == 0 {
                break;
            }
        }
    }

    /// The error a peer's last words describe: the dead rank it names, or the peer itself.
    fn last_words(&self, words: &[u8]) -> Error {
        let (culprit, msg) = decode_last_words(words);
        match culprit {
            Some(dead) => Error::peer_lost(dead, format!("peer {dead} died (peer {} saw it first: {msg})", self.peer)),
            None => Error::remote(self.peer, format!("peer {} failed: {msg}", self.peer)),
        }
    }

    /// Best effort, before the connection is shut: if no frame is half sent, tell the peer
    /// why this rank fails, so ranks further away name the cause and not the messenger.
    fn say_last_words(&mut self, culprit: Option<usize>, msg: &str) {
        if self.sendq.front().is_some_and(|p| p.hdr_off > 0) {
            return;
        }
        let words = encode_last_words(culprit, msg);
        let hdr = FrameHeader {
            kind: KIND_ERROR,
            part: 0,
            seq: self.tx_seq,
            tag: Tag(0),
            progress: 0,
            len: words.len() as u64,
        }
        .encode();
        let iov = [
            libc::iovec { iov_base: hdr.as_ptr() as *mut libc::c_void, iov_len: HEADER_LEN },
            libc::iovec { iov_base: words.as_ptr() as *mut libc::c_void, iov_len: words.len() },
        ];
        // SAFETY: a zeroed msghdr is valid; we set only the iovecs, which point at live buffers.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = iov.as_ptr() as *mut libc::iovec;
        m.msg_iovlen = 2;
        // SAFETY: valid socket and message; non-blocking, and a short write is harmless: the
        // connection is shut right after.
        unsafe { libc::sendmsg(self.sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    }

    /// After a send found the connection lost: whether the peer's last words are in the
    /// receive stream. Posted receives take what arrived first (a last-words frame shows up as
    /// their error); with none posted the stream sits at a frame boundary, so a peeked header
    /// says whether the next frame is last words.
    fn last_words_before_loss(&mut self, done: &mut Vec<u64>) -> Option<Error> {
        while !self.recvq.is_empty() {
            match self.progress_recv(done) {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => {
                    // Only last words beat the loss: they name another rank, or a remote failure.
                    let said = match e.kind() {
                        crate::ErrorKind::Remote => true,
                        crate::ErrorKind::PeerLost => e.peer() != Some(self.peer),
                        _ => false,
                    };
                    return said.then_some(e);
                }
            }
        }
        let mut hdr = [0u8; HEADER_LEN];
        let until = std::time::Instant::now() + std::time::Duration::from_millis(20);
        loop {
            // SAFETY: peeks into a live, writable buffer of HEADER_LEN bytes.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    hdr.as_mut_ptr().cast(),
                    HEADER_LEN,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n == HEADER_LEN as isize {
                break;
            }
            if n == 0 || std::time::Instant::now() >= until || (n < 0 && errno().raw_os_error() != Some(libc::EAGAIN)) {
                return None;
            }
            std::thread::yield_now();
        }
        let h = FrameHeader::decode(&hdr).ok().filter(|h| h.kind == KIND_ERROR)?;
        self.read_rest(&mut hdr);
        let mut words = vec![0u8; (h.len as usize).min(MAX_LAST_WORDS)];
        self.read_rest(&mut words);
        Some(self.last_words(&words))
    }

    /// Writes as much of the send queue as the socket takes. Returns finished requests' ids.
    fn progress_send(&mut self, done: &mut Vec<u64>) -> Result<bool> {
        let mut progressed = false;
        while let Some(p) = self.sendq.front_mut() {
            let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
            let mut n_iov = 0;
            if p.hdr_off < HEADER_LEN {
                iov[0] = libc::iovec {
                    iov_base: p.hdr[p.hdr_off..].as_ptr() as *mut libc::c_void,
                    iov_len: HEADER_LEN - p.hdr_off,
                };
                n_iov = 1;
            }
            if p.off < p.len {
                // The payload is only read by the kernel, never written, despite `*mut`.
                iov[n_iov] =
                    libc::iovec { iov_base: p.ptr.wrapping_add(p.off) as *mut libc::c_void, iov_len: p.len - p.off };
                n_iov += 1;
            }
            // SAFETY: a zeroed msghdr is valid; we fill in only the iovec array.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n_iov as _;
            // SAFETY: the iovecs point at the part's header (owned here) and at its payload,
            // which the region's creator keeps valid until the request completes.
            let n = unsafe { libc::sendmsg(self.sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = errno();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(progressed),
                    Some(libc::EINTR) => continue,
                    _ => return Err(self.io_error("send", e)),
                }
            }
            progressed = true;
            let mut n = n as usize;
            let h = n.min(HEADER_LEN - p.hdr_off);
            p.hdr_off += h;
            n -= h;
            p.off += n;
            if p.hdr_off == HEADER_LEN && p.off == p.len {
                done.push(p.req);
                self.sendq.pop_front();
            }
        }
        Ok(progressed)
    }

    /// Reads into posted receives as far as data has arrived. Returns finished requests' ids.
    fn progress_recv(&mut self, done: &mut Vec<u64>) -> Result<bool> {
        let mut progressed = false;
        while let Some(p) = self.recvq.front_mut() {
            let n = if !p.hdr_ok {
                // Header and, speculatively, the payload in one call. A payload of another
                // length fails the header check below; the connection is then dead anyway.
                let iov = [
                    libc::iovec {
                        iov_base: self.rx_hdr[self.rx_hdr_got..].as_mut_ptr() as *mut libc::c_void,
                        iov_len: HEADER_LEN - self.rx_hdr_got,
                    },
                    libc::iovec { iov_base: p.ptr as *mut libc::c_void, iov_len: p.len },
                ];
                let cnt = if p.len > 0 { 2 } else { 1 };
                // SAFETY: both iovecs point at writable memory: the connection's header buffer
                // and the posted region, valid until the request completes.
                unsafe { libc::readv(self.sock.as_raw_fd(), iov.as_ptr(), cnt) }
            } else {
                // SAFETY: `ptr + off .. ptr + len` lies in the posted, writable region.
                unsafe {
                    libc::recv(
                        self.sock.as_raw_fd(),
                        p.ptr.wrapping_add(p.off) as *mut libc::c_void,
                        p.len - p.off,
                        libc::MSG_DONTWAIT,
                    )
                }
            };
            if n < 0 {
                let e = errno();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(progressed),
                    Some(libc::EINTR) => continue,
                    _ => return Err(self.io_error("receive", e)),
                }
            }
            if n == 0 && (p.len > p.off || !p.hdr_ok) {
                return Err(self.lost("closed by the peer (it exited or crashed)", None));
            }
            progressed = true;
            let mut n = n as usize;
            if !p.hdr_ok {
                let h = n.min(HEADER_LEN - self.rx_hdr_got);
                self.rx_hdr_got += h;
                n -= h;
                if self.rx_hdr_got == HEADER_LEN {
                    let hdr = FrameHeader::decode(&self.rx_hdr).map_err(|e| e.with_peer(self.peer))?;
                    if hdr.kind == KIND_ERROR {
                        // The peer failed and said why; part of what it said may already sit
                        // in the posted buffer (the speculative read).
                        let said = (hdr.len as usize).min(MAX_LAST_WORDS);
                        let mut words = vec![0u8; said];
                        let have = n.min(said);
                        // SAFETY: `have` bytes were just read into the posted region.
                        unsafe { std::ptr::copy_nonoverlapping(p.ptr, words.as_mut_ptr(), have) };
                        self.read_rest(&mut words[have..]);
                        return Err(self.last_words(&words));
                    }
                    self.peer_progress = self.peer_progress.max(hdr.progress);
                    hdr.check(self.rx_seq, p.part, p.tag, p.len).map_err(|e| e.with_peer(self.peer))?;
                    p.hdr_ok = true;
                    self.rx_hdr_got = 0;
                }
            }
            p.off += n;
            if p.hdr_ok && p.off == p.len {
                done.push(p.req);
                self.recvq.pop_front();
                self.rx_seq = self.rx_seq.wrapping_add(1);
            }
        }
        Ok(progressed)
    }
}

impl Engine {
    pub fn new(rank: usize, conns: Vec<Vec<Conn>>) -> Engine {
        Engine {
            rank,
            conns,
            reqs: IdMap::default(),
            next_id: 1,
            failed: None,
            pollfds: Vec::new(),
            poll_conns: Vec::new(),
        }
    }

    fn finish(&mut self, done: &[u64]) {
        for id in done {
            if let Some(r) = self.reqs.get_mut(id) {
                r.parts_left -= 1;
                if r.parts_left == 0 {
                    self.reqs.remove(id);
                }
            }
        }
    }

    /// One non-blocking pass over every connection with work. Returns whether anything moved.
    pub fn progress(&mut self) -> Result<bool> {
        let mut any = false;
        let mut done = Vec::new();
        for peer_conns in self.conns.iter_mut() {
            for c in peer_conns.iter_mut() {
                if !c.sendq.is_empty() {
                    match c.progress_send(&mut done) {
                        Ok(moved) => any |= moved,
                        Err(e) if e.kind() == crate::ErrorKind::PeerLost => {
                            // A peer that failed said why before it shut the connection; that
                            // beats the broken pipe, which only names the messenger.
                            return Err(c.last_words_before_loss(&mut done).unwrap_or(e));
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !c.recvq.is_empty() {
                    any |= c.progress_recv(&mut done)?;
                }
            }
        }
        self.finish(&done);
        Ok(any)
    }

    /// Blocks in `poll` until a connection with work is ready, `wake_fd` is readable, or
    /// `timeout_ms` passes.
    pub fn poll_wait(&mut self, wake_fd: RawFd, timeout_ms: i32) -> Result<()> {
        self.pollfds.clear();
        self.poll_conns.clear();
        self.pollfds.push(libc::pollfd { fd: wake_fd, events: libc::POLLIN, revents: 0 });
        for (peer, peer_conns) in self.conns.iter().enumerate() {
            for (i, c) in peer_conns.iter().enumerate() {
                let mut ev = 0;
                if !c.sendq.is_empty() {
                    ev |= libc::POLLOUT;
                }
                if !c.recvq.is_empty() {
                    ev |= libc::POLLIN;
                }
                if ev != 0 {
                    self.pollfds.push(libc::pollfd { fd: c.fd(), events: ev | libc::POLLRDHUP, revents: 0 });
                    self.poll_conns.push((peer, i));
                }
            }
        }
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the duration of the call.
        let r = unsafe { libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = errno();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(Error::io("poll on tcp connections", e));
            }
        }
        Ok(())
    }

    /// The peer of a pending request.
    pub fn peer_of(&self, req: u64) -> Option<usize> {
        self.reqs.get(&req).map(|r| r.peer)
    }

    /// Describes what `req` waits for, for timeout messages.
    pub fn describe(&self, req: u64) -> (usize, String) {
        match self.reqs.get(&req) {
            Some(r) => {
                let dir = if r.is_send { "send to" } else { "receive from" };
                (r.peer, format!("{dir} peer {} (tag {}) did not complete", r.peer, r.tag))
            }
            None => (usize::MAX, "request completed".into()),
        }
    }

    /// Fails the engine: drops every pending part so no region is touched again, and shuts the
    /// sockets down so peers learn at once instead of at their timeout.
    pub fn fail(&mut self, err: Error) -> Error {
        let err = err.on_rank(self.rank);
        if self.failed.is_none() {
            tracing::debug!(rank = self.rank, error = %err, "tcp transport failed");
            self.failed = Some(err);
        }
        self.reqs.clear();
        let first = self.failed.clone().expect("set above");
        let culprit = (first.kind() == crate::ErrorKind::PeerLost).then(|| first.peer()).flatten();
        let msg = first.to_string();
        for c in self.conns.iter_mut().flatten() {
            if Some(c.peer) != culprit {
                c.say_last_words(culprit, &msg);
            }
            c.sendq.clear();
            c.recvq.clear();
            let _ = c.sock.shutdown(std::net::Shutdown::Both);
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// Rank 0 sends to rank 1 while rank 1 fails because rank 7 died: rank 1 says so and
    /// closes with rank 0's data unread, so rank 0's send breaks. Rank 0 must report rank 7
    /// lost, read from the last words, not the broken pipe to rank 1 (the messenger), whether
    /// or not it has a receive posted ahead of the last words.
    #[test]
    fn a_broken_send_reports_the_peers_last_words() {
        for posted in [false, true] {
            let (a, b) = pair();
            let mut me = Conn::new(b, 1);
            let payload = vec![7u8; 16 << 20];
            me.push_send(1, Tag(3), 0, payload.as_ptr(), payload.len(), 0);
            let mut inbox = vec![0u8; 100];
            if posted {
                me.recvq.push_back(RecvPart {
                    req: 2,
                    tag: Tag(4),
                    part: 0,
                    ptr: inbox.as_mut_ptr(),
                    len: inbox.len(),
                    off: 0,
                    hdr_ok: false,
                });
            }
            let mut engine = Engine::new(0, vec![vec![], vec![me]]);
            engine.reqs.insert(1, ReqInfo { peer: 1, tag: Tag(3), is_send: true, parts_left: 1 });
            assert!(engine.progress().unwrap(), "the first pass fills the socket");

            let mut failing = Conn::new(a, 0);
            if posted {
                let data = [9u8; 100];
                failing.push_send(5, Tag(4), 0, data.as_ptr(), data.len(), 0);
                let mut done = Vec::new();
                while failing.progress_send(&mut done).unwrap() && done.is_empty() {}
                assert_eq!(done, [5]);
            }
            failing.say_last_words(Some(7), "rank 7 stopped answering");
            failing.sock.shutdown(std::net::Shutdown::Both).unwrap();
            drop(failing);

            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let err = loop {
                match engine.progress() {
                    Ok(_) => assert!(std::time::Instant::now() < deadline, "the send never broke"),
                    Err(e) => break e,
                }
            };
            assert_eq!(err.kind(), crate::ErrorKind::PeerLost, "posted {posted}: {err}");
            assert_eq!(err.peer(), Some(7), "posted {posted}: {err}");
            assert!(err.to_string().contains("rank 7 stopped answering"), "{err}");
            if posted {
                assert_eq!(inbox, [9u8; 100], "the receive ahead of the last words completes");
            }
        }
    }
}
