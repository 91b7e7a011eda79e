//! The collectives on [`DeviceBuffer`]s: the same calls as on slices, with NCCL's layouts
//! (all-gather and reduce-scatter in place when the buffer is the whole vector). Each starts
//! after the work queued on the device's legacy default stream (CUDA's NULL stream) before
//! the call, as a stream-less call must (synchronise other streams that write the buffers
//! first), and returns once the GPU work is done and the result is in the buffers.

use oxccl_algorithms::{Element, ReduceOp};

use super::Communicator;
use crate::device::DeviceBuffer;
use crate::error::{Error, Result};

fn blocks(what: &str, len: usize, p: usize) -> Result<usize> {
    if !len.is_multiple_of(p) {
        return Err(Error::invalid_argument(format!("{what}: {len} elements do not split into {p} equal blocks")));
    }
    Ok(len / p)
}

fn same_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::invalid_argument(format!("{what}: buffers of {a} and {b} elements")));
    }
    Ok(())
}

impl Communicator {
    /// All-reduce in place on device memory.
    pub fn all_reduce_device<T: Element>(&self, buf: &mut DeviceBuffer<T>, op: ReduceOp) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds `len` elements for the call (borrowed mutably).
        unsafe { self.all_reduce_raw(p, p, buf.len(), T::DTYPE, op) }
    }

    /// All-reduce from `send` into `recv` (the same length) on device memory.
    pub fn all_reduce_device_into<T: Element>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
    ) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        same_len("all_reduce", send.len(), recv.len())?;
        // SAFETY: both buffers hold `len` elements for the call; distinct allocations.
        unsafe { self.all_reduce_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE, op) }
    }

    /// All-gather in place: block `rank` of `buf` is this rank's contribution.
    pub fn all_gather_device<T: Element>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let count = blocks("all_gather", buf.len(), self.size)?;
        let p = buf.as_mut_ptr().cast::<u8>();
        let own = p.wrapping_add(self.rank * count * std::mem::size_of::<T>());
        // SAFETY: the buffer holds `size * count` elements; `own` is its block `rank`.
        unsafe { self.all_gather_raw(own, p, count, T::DTYPE) }
    }

    /// All-gather of `send` (one block) into `recv` (`size` blocks).
    pub fn all_gather_device_into<T: Element>(&self, send: &DeviceBuffer<T>, recv: &mut DeviceBuffer<T>) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        same_len("all_gather", send.len() * self.size, recv.len())?;
        // SAFETY: the buffers hold one and `size` blocks for the call.
        unsafe { self.all_gather_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE) }
    }

    /// Reduce-scatter in place: block `rank` of `buf` ends as this rank's block of the result.
    pub fn reduce_scatter_device<T: Element>(&self, buf: &mut DeviceBuffer<T>, op: ReduceOp) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let count = blocks("reduce_scatter", buf.len(), self.size)?;
        let p = buf.as_mut_ptr().cast::<u8>();
        let own = p.wrapping_add(self.rank * count * std::mem::size_of::<T>());
        // SAFETY: the buffer holds `size * count` elements; `own` is its block `rank`.
        unsafe { self.reduce_scatter_raw(p, own, count, T::DTYPE, op) }
    }

    /// Reduce-scatter of `send` (`size` blocks) into `recv` (one block).
    pub fn reduce_scatter_device_into<T: Element>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
    ) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        same_len("reduce_scatter", recv.len() * self.size, send.len())?;
        // SAFETY: the buffers hold `size` and one blocks for the call.
        unsafe { self.reduce_scatter_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), recv.len(), T::DTYPE, op) }
    }

    /// All-to-all in place: block `j` goes to rank `j`, and is replaced by rank `j`'s block
    /// for this rank.
    pub fn all_to_all_device<T: Element>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let count = blocks("all_to_all", buf.len(), self.size)?;
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds `size * count` elements for the call.
        unsafe { self.all_to_all_raw(p, p, count, T::DTYPE) }
    }

    /// All-to-all from `send` into `recv` (`size` blocks each).
    pub fn all_to_all_device_into<T: Element>(&self, send: &DeviceBuffer<T>, recv: &mut DeviceBuffer<T>) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        same_len("all_to_all", send.len(), recv.len())?;
        let count = blocks("all_to_all", send.len(), self.size)?;
        // SAFETY: both hold `size * count` elements for the call.
        unsafe { self.all_to_all_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), count, T::DTYPE) }
    }

    /// Broadcast in place from `root`.
    pub fn broadcast_device<T: Element>(&self, buf: &mut DeviceBuffer<T>, root: usize) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds `len` elements for the call.
        unsafe { self.broadcast_raw(p, p, buf.len(), T::DTYPE, root) }
    }

    /// Broadcast of the root's `send` into every rank's `recv` (`send` is read on the root
    /// only).
    pub fn broadcast_device_into<T: Element>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        root: usize,
    ) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        if self.rank == root {
            same_len("broadcast", send.len(), recv.len())?;
        }
        // SAFETY: `recv` holds `len` elements, and on the root so does `send`.
        unsafe { self.broadcast_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), recv.len(), T::DTYPE, root) }
    }

    /// Reduce in place into `root`'s buffer (the other ranks' buffers are left as they were).
    pub fn reduce_device<T: Element>(&self, buf: &mut DeviceBuffer<T>, op: ReduceOp, root: usize) -> Result<()> {
        self.after_default_stream(buf.ordinal())?;
        let p = buf.as_mut_ptr().cast::<u8>();
        // SAFETY: the buffer holds `len` elements for the call.
        unsafe { self.reduce_raw(p, p, buf.len(), T::DTYPE, op, root) }
    }

    /// Reduce of every rank's `send` into the root's `recv` (written on the root only).
    pub fn reduce_device_into<T: Element>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        self.after_default_stream(send.ordinal())?;
        if self.rank == root {
            same_len("reduce", send.len(), recv.len())?;
        }
        // SAFETY: `send` holds `len` elements, and on the root so does `recv`.
        unsafe { self.reduce_raw(send.as_ptr().cast(), recv.as_mut_ptr().cast(), send.len(), T::DTYPE, op, root) }
    }
}

impl Communicator {
    /// Waits (with the communicator's deadline) for the work queued on device `ordinal`'s
    /// legacy default stream, so that a call of the stream-less API sees what a kernel or
    /// copy there wrote into its buffers.
    fn after_default_stream(&self, ordinal: u32) -> Result<()> {
        let ctx = oxccl_transport::cuda::context(ordinal)?;
        let deadline = std::time::Instant::now() + self.config.timeout;
        ctx.sync_stream(std::ptr::null_mut(), deadline, "waiting for the default stream's work before the call")
    }

    /// For bindings whose calls take a CUDA stream (NCCL's C ABI): when `bufs` are device
    /// memory, returns once the work queued on `stream` before this call has finished (NULL:
    /// the legacy default stream, as in CUDA), so that the collective that follows sees its
    /// results; the collective itself returns once its own GPU work is done, so work queued
    /// on the stream afterwards sees its results in turn. With host buffers there is nothing
    /// to wait for, and a stream other than NULL is refused (InvalidUsage).
    ///
    /// # Safety
    /// `stream` is NULL or a live `CUstream` (`cudaStream_t`) of the buffers' device.
    pub unsafe fn wait_for_stream(&self, stream: *mut std::ffi::c_void, bufs: &[*const u8]) -> Result<()> {
        let device = bufs.iter().find_map(|p| crate::device::device_of_pointer(*p));
        let Some(ordinal) = device else {
            if stream.is_null() {
                return Ok(());
            }
            return Err(Error::invalid_usage(
                "a stream was given, but the buffers are host memory (pass NULL as the stream for host buffers)",
            ));
        };
        let ctx = oxccl_transport::cuda::context(ordinal)?;
        let deadline = std::time::Instant::now() + self.config.timeout;
        ctx.sync_stream(stream, deadline, "waiting for the work queued on the stream before the call")
    }
}
