//! Running an algorithm on a subset of the world: [`GroupNet`] presents some ranks of a
//! transport as a world of their own (group rank i is world rank `members[i]`), so the
//! hierarchical algorithms reuse the flat ones within a host and across hosts.

use std::time::{Duration, Instant};

use oxccl_transport::{Capabilities, Error, Region, RegionMut, ReqId, Result, SendHints, Sink, Tag, Transport};

use crate::ctx::Ctx;

/// A group of a transport's ranks seen as a world.
pub(crate) struct GroupNet<'a> {
    inner: &'a dyn Transport,
    members: Vec<usize>,
    me: usize,
}

impl<'a> GroupNet<'a> {
    /// The group of world ranks `members` (this rank among them).
    pub fn new(inner: &'a dyn Transport, members: Vec<usize>) -> Result<GroupNet<'a>> {
        let me = members
            .iter()
            .position(|&m| m == inner.rank())
            .ok_or_else(|| Error::internal(format!("rank {} is not in its group {members:?}", inner.rank())))?;
        Ok(GroupNet { inner, members, me })
    }

    fn world(&self, peer: usize) -> Result<usize> {
        self.members
            .get(peer)
            .copied()
            .ok_or_else(|| Error::internal(format!("peer {peer} is not in a group of {} ranks", self.members.len())))
    }

    /// A context for running an algorithm on this group, inheriting `ctx`'s call.
    pub fn ctx<'b>(&'b self, ctx: &Ctx<'b>) -> Ctx<'b> {
        Ctx {
            net: self,
            reducer: ctx.reducer,
            rank: self.me,
            size: self.members.len(),
            seq: ctx.seq,
            collective: ctx.collective,
            deadline: ctx.deadline,
            chunk_bytes: ctx.chunk_bytes,
            pipeline_depth: ctx.pipeline_depth,
            recv_sink: ctx.recv_sink,
            single_copy_min: ctx.single_copy_min,
            call_bytes: ctx.call_bytes,
            hosts: &[],
            fingerprint: ctx.fingerprint,
        }
    }
}

impl Transport for GroupNet<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn rank(&self) -> usize {
        self.me
    }
    fn size(&self) -> usize {
        self.members.len()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn post_send(&self, peer: usize, tag: Tag, buf: Region) -> Result<ReqId> {
        self.inner.post_send(self.world(peer)?, tag, buf)
    }
    fn post_send_hinted(&self, peer: usize, tag: Tag, buf: Region, hints: SendHints) -> Result<ReqId> {
        self.inner.post_send_hinted(self.world(peer)?, tag, buf, hints)
    }
    fn post_recv(&self, peer: usize, tag: Tag, buf: RegionMut) -> Result<ReqId> {
        self.inner.post_recv(self.world(peer)?, tag, buf)
    }
    fn post_recv_sink(&self, peer: usize, tag: Tag, len: usize, sink: Sink) -> Result<ReqId> {
        self.inner.post_recv_sink(self.world(peer)?, tag, len, sink)
    }
    fn test(&self, req: ReqId) -> Result<bool> {
        self.inner.test(req)
    }
    fn wait(&self, req: ReqId, deadline: Instant) -> Result<()> {
        self.inner.wait(req, deadline)
    }
    fn wait_all(&self, reqs: &[ReqId], deadline: Instant) -> Result<()> {
        self.inner.wait_all(reqs, deadline)
    }
    fn pending(&self) -> usize {
        self.inner.pending()
    }
    fn progress(&self, max_wait: Duration) -> Result<()> {
        self.inner.progress(max_wait)
    }
    fn abort(&self) {
        self.inner.abort()
    }
    fn fail(&self, err: Error) {
        self.inner.fail(err)
    }
    fn set_progress(&self, marker: u64) {
        self.inner.set_progress(marker)
    }
    fn peer_progress(&self, peer: usize) -> Option<u64> {
        self.inner.peer_progress(self.world(peer).ok()?)
    }
}
