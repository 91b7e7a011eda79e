//! [`Router`]: one endpoint that reaches each peer through the transport chosen for that
//! peer (shared memory to ranks on this host, TCP to the others, ...), so algorithms see a
//! single [`Transport`].
//!
//! A request's id carries the index of the transport it went to (top 8 bits). Waiting keeps
//! every transport with pending requests progressing, not only the one waited on: a rank
//! blocked on a receive from one transport may have a send on another that a third rank needs
//! before it can send what this rank waits for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::region::{Region, RegionMut};
use crate::transport::{Capabilities, ReqId, Tag, Transport};

const SHIFT: u32 = 56;
/// How long a waiter sleeps on one transport before it looks at the others again.
const SLICE: Duration = Duration::from_micros(200);

/// Reaches every peer through its own transport.
pub struct Router {
    rank: usize,
    size: usize,
    transports: Vec<Arc<dyn Transport>>,
    /// `route[peer]`: index into `transports` (unused for this rank).
    route: Vec<usize>,
}

impl Router {
    /// A router over `transports` (each spanning the whole world) that sends to `peer`
    /// through `transports[route[peer]]`.
    pub fn new(transports: Vec<Arc<dyn Transport>>, route: Vec<usize>) -> Result<Router> {
        let first = transports.first().ok_or_else(|| Error::invalid_argument("a router needs a transport"))?;
        let (rank, size) = (first.rank(), first.size());
        if transports.len() > 255 || transports.iter().any(|t| t.rank() != rank || t.size() != size) {
            return Err(Error::invalid_argument(
                "a router's transports must be at most 255, all of one rank and world",
            ));
        }
        if route.len() != size || route.iter().enumerate().any(|(p, &i)| p != rank && i >= transports.len()) {
            return Err(Error::invalid_argument("a router needs a valid transport index for every peer"));
        }
        Ok(Router { rank, size, transports, route })
    }

    fn split(req: ReqId) -> (usize, ReqId) {
        ((req.0 >> SHIFT) as usize, ReqId(req.0 & ((1 << SHIFT) - 1)))
    }

    fn join(idx: usize, req: ReqId) -> Result<ReqId> {
        if req.0 >> SHIFT != 0 {
            return Err(Error::internal("request id too large to route"));
        }
        Ok(ReqId(req.0 | ((idx as u64) << SHIFT)))
    }

    fn target(&self, peer: usize) -> Result<usize> {
        if peer >= self.size || peer == self.rank {
            return Err(Error::invalid_argument(format!(
                "peer {peer} is not another rank of this world of {}",
                self.size
            ))
            .on_rank(self.rank));
        }
        Ok(self.route[peer])
    }

    fn fail_all(&self, err: &Error) {
        for t in &self.transports {
            t.fail(err.clone());
        }
    }
}

impl Transport for Router {
    fn name(&self) -> &'static str {
        "router"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn capabilities(&self) -> Capabilities {
        // What holds for every peer.
        let mut c = Capabilities {
            peer_memory_mappable: true,
            device_memory: true,
            eager_sends: true,
            inter_host: false,
            single_copy: true,
            single_copy_min: 0,
            recv_sink: true,
        };
        for t in &self.transports {
            let k = t.capabilities();
            c.peer_memory_mappable &= k.peer_memory_mappable;
            c.device_memory &= k.device_memory;
            c.eager_sends &= k.eager_sends;
            c.inter_host |= k.inter_host;
            c.single_copy &= k.single_copy;
            c.single_copy_min = c.single_copy_min.max(k.single_copy_min);
            c.recv_sink &= k.recv_sink;
        }
        if !c.single_copy {
            c.single_copy_min = 0;
        }
        c
    }

    fn memory_key(&self, buf: Region) -> Option<crate::MemoryKey> {
        self.transports.iter().find_map(|t| t.memory_key(buf))
    }

    fn map_peer_memory(&self, peer: usize, key: &crate::MemoryKey) -> Result<RegionMut> {
        let t = self.target(peer)?;
        self.transports[t].map_peer_memory(peer, key)
    }

    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId> {
        let i = self.target(peer)?;
        Self::join(i, self.transports[i].post_send(peer, tag, buf)?)
    }

    fn post_send_hinted(&self, peer: usize, tag: Tag, buf: Region, hints: crate::SendHints) -> Result<ReqId> {
        let i = self.target(peer)?;
        Self::join(i, self.transports[i].post_send_hinted(peer, tag, buf, hints)?)
    }

    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId> {
        let i = self.target(peer)?;
        Self::join(i, self.transports[i].post_recv(peer, tag, buf)?)
    }

    fn post_recv_sink(&self, peer: usize, tag: Tag, len: usize, sink: crate::Sink) -> Result<ReqId> {
        let i = self.target(peer)?;
        Self::join(i, self.transports[i].post_recv_sink(peer, tag, len, sink)?)
    }

    fn begin_peer_access(&self) -> Result<()> {
        self.transports.iter().try_for_each(|t| t.begin_peer_access())
    }

    fn check_peer_access(&self) -> Result<()> {
        self.transports.iter().try_for_each(|t| t.check_peer_access())
    }

    fn end_peer_access(&self) {
        self.transports.iter().for_each(|t| t.end_peer_access());
    }

    fn wait_peer_access_ended(&self, deadline: Instant) -> Result<()> {
        self.transports.iter().try_for_each(|t| t.wait_peer_access_ended(deadline))
    }

    fn set_progress(&self, marker: u64) {
        for t in &self.transports {
            t.set_progress(marker);
        }
    }

    fn peer_progress(&self, peer: usize) -> Option<u64> {
        self.transports[self.target(peer).ok()?].peer_progress(peer)
    }

    fn test(&self, req: ReqId) -> Result<bool> {
        let (i, inner) = Self::split(req);
        let t = self.transports.get(i).ok_or_else(|| Error::internal(format!("unknown request {}", req.0)))?;
        t.test(inner)
    }

    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()> {
        let (i, inner) = Self::split(req);
        let t = self.transports.get(i).ok_or_else(|| Error::internal(format!("unknown request {}", req.0)))?;
        let r = (|| loop {
            if t.test(inner)? {
                return Ok(());
            }
            let others_busy = self.transports.iter().enumerate().any(|(j, o)| j != i && o.pending() > 0);
            if !others_busy {
                // Only this transport has work: its own wait is the fastest.
                return t.wait(inner, deadline);
            }
            for (j, o) in self.transports.iter().enumerate() {
                if j != i && o.pending() > 0 {
                    o.progress(Duration::ZERO)?;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                // Let the transport report its own timeout, naming the peer.
                return t.wait(inner, now);
            }
            t.progress(SLICE.min(deadline - now))?;
        })();
        if let Err(e) = &r {
            self.fail_all(e);
        }
        r
    }

    fn pending(&self) -> usize {
        self.transports.iter().map(|t| t.pending()).sum()
    }

    fn progress(&self, max_wait: Duration) -> Result<()> {
        let busy: Vec<&Arc<dyn Transport>> = self.transports.iter().filter(|t| t.pending() > 0).collect();
        let r = match busy.as_slice() {
            [] => Ok(()),
            [only] => only.progress(max_wait),
            many => many.iter().try_for_each(|t| t.progress(max_wait / many.len() as u32)),
        };
        if let Err(e) = &r {
            self.fail_all(e);
        }
        r
    }

    fn abort(&self) {
        for t in &self.transports {
            t.abort();
        }
    }

    fn fail(&self, err: Error) {
        self.fail_all(&err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loopback::LoopbackTransport;
    use crate::region::MemoryKind;

    #[test]
    fn routes_each_peer_through_its_transport_and_waits_across_both() {
        // Three ranks; pairs with rank 0 go through world A, the pair (1, 2) through world B.
        let a: Vec<Arc<dyn Transport>> =
            LoopbackTransport::world(3).into_iter().map(|t| Arc::new(t) as Arc<dyn Transport>).collect();
        let b: Vec<Arc<dyn Transport>> =
            LoopbackTransport::world(3).into_iter().map(|t| Arc::new(t) as Arc<dyn Transport>).collect();
        let routers: Vec<Router> = (0..3)
            .map(|r| {
                let route = (0..3).map(|p| if r == 0 || p == 0 { 0 } else { 1 }).collect();
                Router::new(vec![a[r].clone(), b[r].clone()], route).unwrap()
            })
            .collect();
        std::thread::scope(|s| {
            for rt in &routers {
                s.spawn(move || {
                    let r = rt.rank();
                    let mine = [r as u8 + 10; 64];
                    let mut got = [[0u8; 64]; 3];
                    let mut reqs = Vec::new();
                    for (p, g) in got.iter_mut().enumerate().filter(|(p, _)| *p != r) {
                        // SAFETY: `got` outlives the waits below.
                        let dst = unsafe { RegionMut::from_raw_parts(g.as_mut_ptr(), 64, MemoryKind::Host) };
                        reqs.push(rt.post_recv(p, Tag(3), dst).unwrap());
                    }
                    for p in (0..3).filter(|&p| p != r) {
                        // SAFETY: `mine` outlives the waits below.
                        reqs.push(rt.post_send(p, Tag(3), unsafe { Region::from_slice(&mine) }).unwrap());
                    }
                    for q in reqs.iter().rev() {
                        rt.wait(*q, Instant::now() + Duration::from_secs(10)).unwrap();
                    }
                    for (p, g) in got.iter().enumerate().filter(|(p, _)| *p != r) {
                        assert!(g.iter().all(|&x| x == p as u8 + 10), "from {p}");
                    }
                    assert_eq!(rt.pending(), 0);
                });
            }
        });
        assert_eq!(a[1].pending() + b[1].pending(), 0);
        // Prove the routes: with world B aborted on rank 1, its messages to rank 0 (route A)
        // still post, its messages to rank 2 (route B) do not.
        b[1].abort();
        let x = [0u8; 1];
        // SAFETY: `x` outlives the posts; the transports are failed below, dropping the
        // request untouched.
        let (to0, to2) = unsafe {
            (
                routers[1].post_send(0, Tag(9), Region::from_slice(&x)),
                routers[1].post_send(2, Tag(9), Region::from_slice(&x)),
            )
        };
        assert!(to0.is_ok(), "rank 0 is reached through world A");
        assert_eq!(to2.unwrap_err().kind(), crate::ErrorKind::Aborted, "rank 2 is reached through world B");
        routers[1].fail(crate::Error::internal("test over"));
        assert!(Router::new(vec![a[0].clone()], vec![0, 5, 0]).is_err());
    }
}
