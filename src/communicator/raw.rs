//! Untyped entry points (raw pointers, a [`DataType`], counts) for the C ABI and other
//! bindings. In-place calls follow NCCL: the same pointer for all-reduce, all-to-all,
//! broadcast and reduce; `sendbuff == recvbuff + rank * count` for all-gather;
//! `recvbuff == sendbuff + rank * count` for reduce-scatter. Any other overlap is refused.
//! Pointers may be device pointers (the CUDA driver says which device) once the process has
//! loaded CUDA; a call's buffers must then all be on that device.

use oxccl_algorithms::all_to_all::pairwise_v::{self, Layout};
use oxccl_algorithms::{CollArgs, Collective, DataType, ReduceOp};
use oxccl_transport::{MemoryKind, Region, RegionMut};

use super::Communicator;
use crate::error::{Error, Result};

/// One point-to-point operation of a batch ([`Communicator::p2p_batch_raw`]).
#[derive(Debug, Clone, Copy)]
pub enum RawP2p {
    /// Send `bytes` bytes at `ptr` to `peer`.
    Send {
        /// The destination rank.
        peer: usize,
        /// The data.
        ptr: *const u8,
        /// Its length.
        bytes: usize,
    },
    /// Receive `bytes` bytes from `peer` into `ptr`.
    Recv {
        /// The source rank.
        peer: usize,
        /// Where the data goes.
        ptr: *mut u8,
        /// Its length.
        bytes: usize,
    },
}

fn span(what: &str, count: usize, times: usize, dtype: DataType) -> Result<usize> {
    count
        .checked_mul(times)
        .and_then(|n| n.checked_mul(dtype.size()))
        .filter(|&n| n <= isize::MAX as usize)
        .ok_or_else(|| Error::invalid_argument(format!("{what}: {count} x {times} elements of {dtype} overflow")))
}

/// The memory `ptr` is in: a device's where the CUDA driver says so (asked only once device
/// memory can exist in this process), else host memory.
fn kind_of(ptr: *const u8) -> MemoryKind {
    match crate::device::device_of_pointer(ptr) {
        Some(ordinal) => MemoryKind::Device { ordinal },
        None => MemoryKind::Host,
    }
}

/// A region over `len` bytes at `ptr`, refusing NULL unless the region is empty.
///
/// # Safety
/// When `len > 0`, `ptr` must be valid for reads of `len` bytes for the whole call.
unsafe fn rd(what: &str, ptr: *const u8, len: usize) -> Result<Region> {
    if len == 0 {
        return Ok(Region::empty());
    }
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { Region::from_raw_parts(ptr, len, kind_of(ptr)) })
}

/// # Safety
/// When `len > 0`, `ptr` must be valid for writes of `len` bytes for the whole call.
unsafe fn wr(what: &str, ptr: *mut u8, len: usize) -> Result<RegionMut> {
    if len == 0 {
        return Ok(RegionMut::empty());
    }
    if ptr.is_null() {
        return Err(Error::invalid_argument(format!("{what} is NULL")));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { RegionMut::from_raw_parts(ptr, len, kind_of(ptr)) })
}

fn overlap_error(coll: Collective) -> Error {
    Error::invalid_argument(format!("{coll}: sendbuff and recvbuff overlap without being the in-place layout"))
}

impl Communicator {
    fn arg_error(&self, coll: Collective, e: Error) -> Error {
        e.in_collective(coll.name(), self.next_seq()).on_rank(self.rank)
    }

    /// All-reduce of `count` elements; in place when `send == recv`.
    ///
    /// # Safety
    /// `send` readable and `recv` writable for `count` elements of `dtype`, for the call.
    pub unsafe fn all_reduce_raw(
        &self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
    ) -> Result<()> {
        let c = Collective::AllReduce;
        let n = span("count", count, 1, dtype).map_err(|e| self.arg_error(c, e))?;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe { (rd("sendbuff", send, n), wr("recvbuff", recv, n)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = std::ptr::eq(send, recv);
        if !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op, root: 0 })
    }

    /// All-gather of `count` elements per rank into `count * size` at `recv`; in place when
    /// `send == recv + rank * count`.
    ///
    /// # Safety
    /// `send` readable for `count` elements and `recv` writable for `count * size`, for the call.
    pub unsafe fn all_gather_raw(&self, send: *const u8, recv: *mut u8, count: usize, dtype: DataType) -> Result<()> {
        let c = Collective::AllGather;
        let n = span("count", count, 1, dtype).map_err(|e| self.arg_error(c, e))?;
        let total = span("count", count, self.size, dtype).map_err(|e| self.arg_error(c, e))?;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe { (rd("sendbuff", send, n), wr("recvbuff", recv, total)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = n > 0 && std::ptr::eq(send, recv.wrapping_add(self.rank * n));
        if !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op: ReduceOp::Sum, root: 0 })
    }

    /// Reduce-scatter of `count * size` elements into `count` at `recv`; in place when
    /// `recv == send + rank * count`.
    ///
    /// # Safety
    /// `send` readable for `count * size` elements and `recv` writable for `count`, for the call.
    pub unsafe fn reduce_scatter_raw(
        &self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
    ) -> Result<()> {
        let c = Collective::ReduceScatter;
        let n = span("recvcount", count, 1, dtype).map_err(|e| self.arg_error(c, e))?;
        let total = span("recvcount", count, self.size, dtype).map_err(|e| self.arg_error(c, e))?;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe { (rd("sendbuff", send, total), wr("recvbuff", recv, n)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = n > 0 && std::ptr::eq(recv as *const u8, send.wrapping_add(self.rank * n));
        if !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op, root: 0 })
    }

    /// All-to-all of `count` elements per peer; in place when `send == recv`.
    ///
    /// # Safety
    /// `send` readable and `recv` writable for `count * size` elements, for the call.
    pub unsafe fn all_to_all_raw(&self, send: *const u8, recv: *mut u8, count: usize, dtype: DataType) -> Result<()> {
        let c = Collective::AllToAll;
        let total = span("count", count, self.size, dtype).map_err(|e| self.arg_error(c, e))?;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe { (rd("sendbuff", send, total), wr("recvbuff", recv, total)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = std::ptr::eq(send, recv);
        if !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op: ReduceOp::Sum, root: 0 })
    }

    /// All-to-all-v with per-peer counts and displacements in elements (see
    /// [`Communicator::all_to_allv_into`]). Not in place.
    ///
    /// # Safety
    /// `send` readable up to the end of its furthest block, `recv` writable likewise, for the
    /// call.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn all_to_allv_raw(
        &self,
        send: *const u8,
        send_counts: &[usize],
        send_displs: &[usize],
        recv: *mut u8,
        recv_counts: &[usize],
        recv_displs: &[usize],
        dtype: DataType,
    ) -> Result<()> {
        let c = Collective::AllToAllV;
        let extent = |counts: &[usize], displs: &[usize]| -> Result<usize> {
            if counts.len() != self.size || displs.len() != self.size {
                return Err(Error::invalid_argument(format!("need {} counts and displacements", self.size)));
            }
            let mut end = 0usize;
            for (k, d) in counts.iter().zip(displs) {
                let e = d.checked_add(*k).ok_or_else(|| Error::invalid_argument("displacement + count overflows"))?;
                end = end.max(e);
            }
            span("extent", end, 1, dtype)
        };
        let sn = extent(send_counts, send_displs).map_err(|e| self.arg_error(c, e))?;
        let rn = extent(recv_counts, recv_displs).map_err(|e| self.arg_error(c, e))?;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe { (rd("sendbuff", send, sn), wr("recvbuff", recv, rn)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        if r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        let sl = Layout { counts: send_counts, displs: send_displs };
        let rl = Layout { counts: recv_counts, displs: recv_displs };
        // Counts differ per peer: the fingerprint holds the element type only.
        let fp = oxccl_algorithms::ctx::fingerprint(c, 0, dtype, ReduceOp::Sum, 0);
        self.execute(c, fp, self.config.chunk_bytes, sn.max(rn), |ctx| pairwise_v::run(ctx, s, sl, r, rl, dtype))
    }

    /// Broadcast of `count` elements from `root`'s `send` into every rank's `recv`; `send`
    /// is read on the root only; in place when `send == recv`.
    ///
    /// # Safety
    /// On the root `send` readable for `count` elements; everywhere `recv` writable for
    /// `count`; for the call.
    pub unsafe fn broadcast_raw(
        &self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        root: usize,
    ) -> Result<()> {
        let c = Collective::Broadcast;
        self.check_root(c, root)?;
        let n = span("count", count, 1, dtype).map_err(|e| self.arg_error(c, e))?;
        let is_root = self.rank == root;
        // SAFETY: the caller's contract.
        let (s, r) =
            unsafe { (if is_root { rd("sendbuff", send, n) } else { Ok(Region::empty()) }, wr("recvbuff", recv, n)) };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = is_root && std::ptr::eq(send, recv);
        if is_root && !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op: ReduceOp::Sum, root })
    }

    /// Reduce of `count` elements into `root`'s `recv` (written on the root only); in place
    /// when `send == recv`.
    ///
    /// # Safety
    /// `send` readable for `count` elements; on the root `recv` writable for `count`; for the
    /// call.
    pub unsafe fn reduce_raw(
        &self,
        send: *const u8,
        recv: *mut u8,
        count: usize,
        dtype: DataType,
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let c = Collective::Reduce;
        self.check_root(c, root)?;
        let n = span("count", count, 1, dtype).map_err(|e| self.arg_error(c, e))?;
        let is_root = self.rank == root;
        // SAFETY: the caller's contract.
        let (s, r) = unsafe {
            (rd("sendbuff", send, n), if is_root { wr("recvbuff", recv, n) } else { Ok(RegionMut::empty()) })
        };
        let (s, r) = (s.map_err(|e| self.arg_error(c, e))?, r.map_err(|e| self.arg_error(c, e))?);
        let in_place = is_root && std::ptr::eq(send, recv);
        if is_root && !in_place && r.overlaps(&s) {
            return Err(self.arg_error(c, overlap_error(c)));
        }
        self.run(c, CollArgs { send: s, recv: r, in_place, count, dtype, op, root })
    }

    /// Posts every send and receive of `ops` at once and waits for all of them, so that pairs
    /// of ranks can exchange in any order without deadlock (NCCL's group semantics).
    ///
    /// # Safety
    /// Every pointer valid (readable for sends, writable for receives) for its length, for
    /// the call; receive buffers must not overlap each other or any send buffer.
    pub unsafe fn p2p_batch_raw(&self, ops: &[RawP2p]) -> Result<()> {
        let mut sends = Vec::new();
        let mut recvs = Vec::new();
        for op in ops {
            match *op {
                RawP2p::Send { peer, ptr, bytes } => {
                    self.check_peer("send", peer)?;
                    // SAFETY: the caller's contract.
                    sends.push((peer, unsafe { rd("sendbuff", ptr, bytes) }.map_err(|e| e.on_rank(self.rank))?));
                }
                RawP2p::Recv { peer, ptr, bytes } => {
                    self.check_peer("recv", peer)?;
                    // SAFETY: the caller's contract.
                    recvs.push((peer, unsafe { wr("recvbuff", ptr, bytes) }.map_err(|e| e.on_rank(self.rank))?));
                }
            }
        }
        for (i, (_, a)) in recvs.iter().enumerate() {
            let clash = recvs[i + 1..].iter().any(|(_, b)| a.overlaps(&b.as_region()))
                || sends.iter().any(|(_, s)| a.overlaps(s));
            if clash {
                return Err(
                    Error::invalid_argument("a receive buffer overlaps another buffer of the group").on_rank(self.rank)
                );
            }
        }
        self.p2p(&sends, &recvs)
    }
}
