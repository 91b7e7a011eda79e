//! In-process transport: ranks are threads of one process.
//!
//! Transfers are rendezvous and single-copy: a send waits, unmatched, until the receiver posts
//! its receive (or the other way round), and whichever side arrives second copies the bytes
//! straight from the sender's region into the receiver's. Because a send never completes
//! before its receive is posted, this is the strictest transport there is: an algorithm that
//! runs here cannot depend on buffering. It serves tests and in-process worlds.
//!
//! One mutex guards the whole world; it is simple and plenty fast for tests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::region::{MemoryKind, Region, RegionMut};
use crate::transport::{Capabilities, ReqId, Tag, Transport};

struct PostedSend {
    id: u64,
    tag: Tag,
    buf: Region,
}

struct PostedRecv {
    id: u64,
    tag: Tag,
    buf: RegionMut,
}

struct ReqInfo {
    peer: usize,
    tag: Tag,
    is_send: bool,
}

struct RankState {
    /// Still running (not dropped, not aborted).
    alive: bool,
    failed: Option<Error>,
    next_id: u64,
    pending: HashMap<u64, ReqInfo>,
    /// Sends this rank posted that no receive matched yet, by destination.
    unmatched_sends: Vec<VecDeque<PostedSend>>,
    /// Receives this rank posted that no send matched yet, by source.
    posted_recvs: Vec<VecDeque<PostedRecv>>,
}

impl RankState {
    fn drop_requests(&mut self) {
        self.pending.clear();
        self.unmatched_sends.iter_mut().for_each(VecDeque::clear);
        self.posted_recvs.iter_mut().for_each(VecDeque::clear);
    }
}

struct Shared {
    ranks: Mutex<Vec<RankState>>,
    changed: Condvar,
    /// Every rank's progress marker.
    progress: Vec<std::sync::atomic::AtomicU64>,
    /// Whether each rank may be touching peers' memory (`Transport::begin_peer_access`).
    access: Vec<std::sync::atomic::AtomicBool>,
}

/// One rank's endpoint of an in-process world. Create a world with [`LoopbackTransport::world`].
pub struct LoopbackTransport {
    shared: Arc<Shared>,
    rank: usize,
    size: usize,
}

impl LoopbackTransport {
    /// Creates a world of `size` endpoints, one per rank, to hand to `size` threads.
    pub fn world(size: usize) -> Vec<LoopbackTransport> {
        let ranks = (0..size)
            .map(|_| RankState {
                alive: true,
                failed: None,
                next_id: 1,
                pending: HashMap::new(),
                unmatched_sends: (0..size).map(|_| VecDeque::new()).collect(),
                posted_recvs: (0..size).map(|_| VecDeque::new()).collect(),
            })
            .collect();
        let progress = (0..size).map(|_| std::sync::atomic::AtomicU64::new(0)).collect();
        let access = (0..size).map(|_| std::sync::atomic::AtomicBool::new(false)).collect();
        let shared = Arc::new(Shared { ranks: Mutex::new(ranks), changed: Condvar::new(), progress, access });
        (0..size).map(|rank| LoopbackTransport { shared: shared.clone(), rank, size }).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<RankState>> {
        self.shared.ranks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail_rank(ranks: &mut [RankState], rank: usize, err: Error) {
        let r = &mut ranks[rank];
        if r.failed.is_none() {
            r.failed = Some(err);
        }
        r.drop_requests();
    }

    /// Matches `send` (from `src`) with `recv` (posted by `dst`): copies and completes both,
    /// or fails both ranks when tag or length disagree.
    fn complete_pair(ranks: &mut [RankState], src: usize, dst: usize, send: PostedSend, recv: PostedRecv) {
        if send.tag != recv.tag || send.buf.len() != recv.buf.len() {
            let what = if send.tag != recv.tag {
                format!("message with tag {} arrived where tag {} was expected", send.tag, recv.tag)
            } else {
                format!("message of {} bytes arrived where {} bytes were expected", send.buf.len(), recv.buf.len())
            };
            let msg = format!("mismatched calls between ranks {src} and {dst}: {what}");
            Self::fail_rank(ranks, dst, Error::invalid_usage(msg.clone()).on_rank(dst).with_peer(src));
            Self::fail_rank(ranks, src, Error::invalid_usage(msg).on_rank(src).with_peer(dst));
            return;
        }
        if !send.buf.is_empty() {
            assert!(
                send.buf.kind() == MemoryKind::Host && recv.buf.kind() == MemoryKind::Host,
                "loopback transport moves host memory only"
            );
            // SAFETY: both regions are valid until their requests complete (their constructors'
            // promise), which happens right here under the world lock; they are in different
            // ranks' buffers or, if a caller posted overlapping ones, `copy` tolerates overlap.
            unsafe { std::ptr::copy(send.buf.as_ptr(), recv.buf.as_mut_ptr(), send.buf.len()) };
        }
        ranks[src].pending.remove(&send.id);
        ranks[dst].pending.remove(&recv.id);
    }

    fn status(&self, ranks: &[RankState], req: ReqId) -> Result<bool> {
        let me = &ranks[self.rank];
        if let Some(e) = &me.failed {
            return Err(e.clone());
        }
        if req.0 == 0 || req.0 >= me.next_id {
            return Err(Error::internal(format!("unknown request {}", req.0)).on_rank(self.rank));
        }
        let Some(info) = me.pending.get(&req.0) else {
            return Ok(true);
        };
        let peer = &ranks[info.peer];
        let dir = if info.is_send { "send to" } else { "receive from" };
        if let Some(e) = &peer.failed {
            return Err(
                Error::remote(info.peer, format!("peer failed before our {dir} it completed: {e}")).on_rank(self.rank)
            );
        }
        if !peer.alive {
            return Err(Error::peer_lost(
                info.peer,
                format!("peer exited before our {dir} it (tag {}) completed", info.tag),
            )
            .on_rank(self.rank));
        }
        Ok(false)
    }
}

impl Transport for LoopbackTransport {
    fn name(&self) -> &'static str {
        "loopback"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        // The receiver copies straight out of the sender's buffer.
        Capabilities {
            peer_memory_mappable: true,
            device_memory: false,
            eager_sends: false,
            inter_host: false,
            single_copy: true,
            single_copy_min: 1,
            recv_sink: false,
        }
    }

    fn memory_key(&self, buf: Region) -> Option<crate::MemoryKey> {
        // Every rank is a thread of this process: an address is all a peer needs.
        match buf.kind() {
            crate::MemoryKind::Host => Some(crate::MemoryKey::process_address(buf)),
            crate::MemoryKind::Device { .. } => crate::MemoryKey::device_memory(buf),
        }
    }

    fn map_peer_memory(&self, peer: usize, key: &crate::MemoryKey) -> Result<RegionMut> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        crate::shm::PeerMappings::default().map(key)
    }

    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        let mut ranks = self.lock();
        if let Some(e) = &ranks[self.rank].failed {
            return Err(e.clone());
        }
        let me = &mut ranks[self.rank];
        let id = me.next_id;
        me.next_id += 1;
        me.pending.insert(id, ReqInfo { peer, tag, is_send: true });
        let send = PostedSend { id, tag, buf };
        match ranks[peer].posted_recvs[self.rank].pop_front() {
            Some(recv) => Self::complete_pair(&mut ranks, self.rank, peer, send, recv),
            None => ranks[self.rank].unmatched_sends[peer].push_back(send),
        }
        self.shared.changed.notify_all();
        Ok(ReqId(id))
    }

    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId> {
        crate::transport::check_peer(self.rank, self.size, peer)?;
        let mut ranks = self.lock();
        if let Some(e) = &ranks[self.rank].failed {
            return Err(e.clone());
        }
        let me = &mut ranks[self.rank];
        let id = me.next_id;
        me.next_id += 1;
        me.pending.insert(id, ReqInfo { peer, tag, is_send: false });
        let recv = PostedRecv { id, tag, buf };
        match ranks[peer].unmatched_sends[self.rank].pop_front() {
            Some(send) => Self::complete_pair(&mut ranks, peer, self.rank, send, recv),
            None => ranks[self.rank].posted_recvs[peer].push_back(recv),
        }
        self.shared.changed.notify_all();
        Ok(ReqId(id))
    }

    fn test(&self, req: ReqId) -> Result<bool> {
        let mut ranks = self.lock();
        let r = self.status(&ranks, req);
        if let Err(e) = &r {
            Self::fail_rank(&mut ranks, self.rank, e.clone());
            self.shared.changed.notify_all();
        }
        r
    }

    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()> {
        let start = Instant::now();
        let mut ranks = self.lock();
        loop {
            match self.status(&ranks, req) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    Self::fail_rank(&mut ranks, self.rank, e.clone());
                    self.shared.changed.notify_all();
                    return Err(e);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                let info = &ranks[self.rank].pending[&req.0];
                let dir = if info.is_send { "send to" } else { "receive from" };
                let e = Error::timeout(
                    format!("{dir} peer {} (tag {}) did not complete", info.peer, info.tag),
                    now - start,
                )
                .on_rank(self.rank)
                .with_peer(info.peer);
                Self::fail_rank(&mut ranks, self.rank, e.clone());
                self.shared.changed.notify_all();
                return Err(e);
            }
            ranks = self.shared.changed.wait_timeout(ranks, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn pending(&self) -> usize {
        self.lock()[self.rank].pending.len()
    }

    fn progress(&self, max_wait: std::time::Duration) -> Result<()> {
        // Transfers happen when they are posted; waiting only lets other threads post.
        let ranks = self.lock();
        if let Some(e) = &ranks[self.rank].failed {
            return Err(e.clone());
        }
        if !max_wait.is_zero() && !ranks[self.rank].pending.is_empty() {
            drop(self.shared.changed.wait_timeout(ranks, max_wait).unwrap_or_else(|e| e.into_inner()));
        }
        Ok(())
    }

    fn abort(&self) {
        self.fail(Error::aborted("the communicator was aborted").on_rank(self.rank));
    }

    fn fail(&self, err: Error) {
        let mut ranks = self.lock();
        let aborted = err.kind() == crate::ErrorKind::Aborted;
        Self::fail_rank(&mut ranks, self.rank, err);
        if aborted {
            ranks[self.rank].alive = false;
        }
        self.shared.changed.notify_all();
    }

    fn begin_peer_access(&self) -> Result<()> {
        // Published before the lock: a rank failing at once does so under the lock and looks
        // at this flag after, so either its failure is seen here or this flag there.
        self.shared.access[self.rank].store(true, std::sync::atomic::Ordering::SeqCst);
        self.check_peer_access()
    }

    fn check_peer_access(&self) -> Result<()> {
        let ranks = self.lock();
        if let Some(e) = &ranks[self.rank].failed {
            return Err(e.clone());
        }
        match (0..self.size).find(|&p| p != self.rank && ranks[p].failed.is_some()) {
            Some(p) => Err(Error::remote(p, format!("peer {p} failed before this rank's access to its memory ended"))
                .on_rank(self.rank)),
            None => Ok(()),
        }
    }

    fn end_peer_access(&self) {
        self.shared.access[self.rank].store(false, std::sync::atomic::Ordering::Release);
    }

    fn wait_peer_access_ended(&self, deadline: Instant) -> Result<()> {
        // The lock orders this after any peer's `begin_peer_access` that saw this rank healthy.
        drop(self.lock());
        let start = Instant::now();
        loop {
            let busy = (0..self.size)
                .find(|&p| p != self.rank && self.shared.access[p].load(std::sync::atomic::Ordering::Acquire));
            let Some(p) = busy else { return Ok(()) };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(format!("peer {p} still touches this rank's memory"), now - start)
                    .on_rank(self.rank)
                    .with_peer(p));
            }
            std::thread::yield_now();
        }
    }

    fn set_progress(&self, marker: u64) {
        self.shared.progress[self.rank].store(marker, std::sync::atomic::Ordering::Relaxed);
    }

    fn peer_progress(&self, peer: usize) -> Option<u64> {
        self.shared.progress.get(peer).map(|p| p.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for LoopbackTransport {
    fn drop(&mut self) {
        let mut ranks = self.lock();
        ranks[self.rank].alive = false;
        ranks[self.rank].drop_requests();
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::time::Duration;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn rendezvous_copies_in_fifo_order() {
        let mut w = LoopbackTransport::world(2);
        let t1 = w.pop().unwrap();
        let t0 = w.pop().unwrap();
        let a = [1u8, 2, 3];
        let b = [4u8, 5];
        let mut x = [0u8; 3];
        let mut y = [0u8; 2];
        // SAFETY: all buffers outlive the waits below.
        let (ra, rb, rx, ry) = unsafe {
            (
                Region::from_slice(&a),
                Region::from_slice(&b),
                RegionMut::from_slice(&mut x),
                RegionMut::from_slice(&mut y),
            )
        };
        let s1 = t0.post_send(1, Tag(1), ra).unwrap();
        assert!(!t0.test(s1).unwrap(), "a rendezvous send cannot complete before its receive");
        let s2 = t0.post_send(1, Tag(2), rb).unwrap();
        let r1 = t1.post_recv(0, Tag(1), rx).unwrap();
        let r2 = t1.post_recv(0, Tag(2), ry).unwrap();
        t1.wait_all(&[r1, r2], soon()).unwrap();
        t0.wait_all(&[s1, s2], soon()).unwrap();
        assert_eq!((x, y), ([1, 2, 3], [4, 5]));
        assert_eq!(t0.pending() + t1.pending(), 0);
    }

    #[test]
    fn tag_mismatch_fails_both_sides() {
        let mut w = LoopbackTransport::world(2);
        let t1 = w.pop().unwrap();
        let t0 = w.pop().unwrap();
        let a = [1u8; 4];
        let mut x = [0u8; 4];
        // SAFETY: buffers outlive the calls.
        let (ra, rx) = unsafe { (Region::from_slice(&a), RegionMut::from_slice(&mut x)) };
        let s = t0.post_send(1, Tag(7), ra).unwrap();
        let r = t1.post_recv(0, Tag(8), rx).unwrap();
        let e1 = t1.wait(r, soon()).unwrap_err();
        let e0 = t0.wait(s, soon()).unwrap_err();
        assert_eq!(e1.kind(), ErrorKind::InvalidUsage);
        assert_eq!(e0.kind(), ErrorKind::InvalidUsage);
        assert!(e1.to_string().contains("tag 0x7"), "{e1}");
        assert_eq!(x, [0; 4], "nothing is copied on a mismatch");
    }

    #[test]
    fn timeout_names_peer_and_dead_peer_is_lost() {
        let mut w = LoopbackTransport::world(3);
        let t2 = w.pop().unwrap();
        let t1 = w.pop().unwrap();
        let t0 = w.pop().unwrap();
        let mut x = [0u8; 1];
        // SAFETY: `x` outlives the waits.
        let rx = unsafe { RegionMut::from_slice(&mut x) };
        let r = t0.post_recv(2, Tag(1), rx).unwrap();
        let e = t0.wait(r, Instant::now() + Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.peer(), Some(2));
        assert!(t0.post_recv(2, Tag(1), rx).is_err(), "errors are sticky");

        let mut y = [0u8; 1];
        // SAFETY: `y` outlives the wait.
        let ry = unsafe { RegionMut::from_slice(&mut y) };
        let r = t1.post_recv(2, Tag(1), ry).unwrap();
        let waiter = std::thread::spawn(move || t1.wait(r, Instant::now() + Duration::from_secs(10)).unwrap_err());
        std::thread::sleep(Duration::from_millis(20));
        drop(t2);
        let e = waiter.join().unwrap();
        assert_eq!(e.kind(), ErrorKind::PeerLost);
        assert_eq!(e.peer(), Some(2));
    }

    #[test]
    fn abort_wakes_a_waiter() {
        let mut w = LoopbackTransport::world(2);
        let _t1 = w.pop().unwrap();
        let t0 = Arc::new(w.pop().unwrap());
        let mut x = [0u8; 1];
        // SAFETY: `x` outlives the wait, which fails once aborted.
        let rx = unsafe { RegionMut::from_slice(&mut x) };
        let r = t0.post_recv(1, Tag(1), rx).unwrap();
        let t = t0.clone();
        let start = Instant::now();
        let waiter = std::thread::spawn(move || t.wait(r, Instant::now() + Duration::from_secs(30)).unwrap_err());
        std::thread::sleep(Duration::from_millis(10));
        t0.abort();
        assert_eq!(waiter.join().unwrap().kind(), ErrorKind::Aborted);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
