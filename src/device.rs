//! [`DeviceBuffer`]: a vector in GPU memory, and what the collectives do with one.
//!
//! Every collective takes device memory: in Rust a `DeviceBuffer` (the `*_device` methods of
//! [`Communicator`](crate::Communicator)), in C a device pointer (from `cudaMalloc` or
//! `oxcclMemAlloc`'s device counterpart; the driver tells oxccl which device it is on). The
//! ranks of one host exchange CUDA IPC handles of their buffers and every rank's GPU reads
//! its share straight from the peers' inputs and writes straight into their outputs, with
//! reductions in kernels compiled for the device at run time (the `mapped` algorithms over
//! device memory). Ranks that cannot open each other's buffers (on several hosts) stage them
//! through host memory instead. Every wait on the GPU has the communicator's deadline.
//!
//! Where there is no CUDA (no driver, or a build without the `cuda` feature), making a
//! `DeviceBuffer` is [`Error::Unsupported`], saying why.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use oxccl_transport::cuda::{self, DeviceAlloc};

use crate::error::{Error, Result};
use crate::Element;

/// Set once device memory may exist in this process (a `DeviceBuffer` was made, or the
/// CUDA driver was loaded when a communicator was created): only then do raw pointers get
/// asked which memory they are in.
static CUDA_SEEN: AtomicBool = AtomicBool::new(false);

/// How long a `DeviceBuffer`'s own copies wait for the GPU: they are queued on oxccl's
/// stream of the device, behind any collective another thread of this process runs there.
const COPY_WAIT: Duration = Duration::from_secs(60);

/// Whether pointers may be device pointers (see [`CUDA_SEEN`]).
pub(crate) fn cuda_seen() -> bool {
    CUDA_SEEN.load(Ordering::Relaxed)
}

/// Notes that device memory may exist (a communicator made after the program loaded CUDA).
pub(crate) fn note_cuda_if_loaded() {
    if !cuda_seen() && cuda::process_uses_cuda() {
        CUDA_SEEN.store(true, Ordering::Relaxed);
    }
}

/// The device `ptr` is in, or `None` for host memory; asks the CUDA driver only once device
/// memory can exist in this process (for bindings that take raw pointers).
pub fn device_of_pointer(ptr: *const u8) -> Option<u32> {
    if cuda_seen() {
        cuda::pointer_device(ptr)
    } else {
        None
    }
}

/// A zero-filled vector of `T` in the memory of one GPU.
///
/// ```no_run
/// use oxccl::{Communicator, DeviceBuffer, ReduceOp};
///
/// let comm = Communicator::from_env()?;
/// let mut grads = DeviceBuffer::<f32>::from_slice(&vec![1.0; 1 << 20], 0)?;
/// comm.all_reduce_device(&mut grads, ReduceOp::Sum)?;
/// let host = grads.to_vec()?;
/// assert!(host.iter().all(|&x| x == comm.size() as f32));
/// # Ok::<(), oxccl::Error>(())
/// ```
pub struct DeviceBuffer<T: Element> {
    alloc: DeviceAlloc,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> DeviceBuffer<T> {
    /// `len` zeroed elements on device `ordinal`.
    pub fn new(len: usize, ordinal: u32) -> Result<DeviceBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            Error::invalid_argument(format!("a device buffer of {len} elements overflows the address space"))
        })?;
        let ctx = cuda::context(ordinal)?;
        let alloc = ctx.alloc(bytes)?;
        CUDA_SEEN.store(true, Ordering::Relaxed);
        // SAFETY: the allocation holds `bytes` bytes.
        unsafe { ctx.zero(alloc.as_ptr(), bytes, Instant::now() + COPY_WAIT)? };
        Ok(DeviceBuffer { alloc, len, _t: PhantomData })
    }

    /// A device buffer on `ordinal` holding a copy of `src`.
    pub fn from_slice(src: &[T], ordinal: u32) -> Result<DeviceBuffer<T>> {
        let mut b = DeviceBuffer::new(src.len(), ordinal)?;
        b.copy_from_host(src)?;
        Ok(b)
    }

    /// Its length in elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its device.
    pub fn ordinal(&self) -> u32 {
        self.alloc.context().ordinal()
    }

    /// The device address (for kernels and for the raw entry points).
    pub fn as_ptr(&self) -> *const T {
        self.alloc.as_ptr().cast_const().cast()
    }

    /// The device address, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut T {
        self.alloc.as_ptr().cast()
    }

    fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// Overwrites the buffer with `src` (of the same length); returns when the copy is done.
    pub fn copy_from_host(&mut self, src: &[T]) -> Result<()> {
        if src.len() != self.len {
            return Err(Error::invalid_argument(format!(
                "copying {} elements into a device buffer of {}",
                src.len(),
                self.len
            )));
        }
        // SAFETY: `T` is plain old data, so its bytes may be viewed as such.
        let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), self.bytes()) };
        // SAFETY: the allocation holds exactly these bytes.
        unsafe { self.alloc.context().copy_to_device(self.alloc.as_ptr(), bytes, Instant::now() + COPY_WAIT) }
    }

    /// Copies the buffer into `dst` (of the same length); returns when the copy is done.
    pub fn copy_to_host(&self, dst: &mut [T]) -> Result<()> {
        if dst.len() != self.len {
            return Err(Error::invalid_argument(format!(
                "copying a device buffer of {} elements into {}",
                self.len,
                dst.len()
            )));
        }
        let n = self.bytes();
        // SAFETY: `T` is plain old data: any bytes the device holds are a valid `T`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), n) };
        // SAFETY: the allocation holds exactly these bytes.
        unsafe { self.alloc.context().copy_to_host(bytes, self.alloc.as_ptr(), Instant::now() + COPY_WAIT) }
    }

    /// A host copy of the buffer.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        let mut v = Vec::<T>::with_capacity(self.len);
        // SAFETY: zero bytes are a valid `T` (plain old data), written over the whole
        // capacity asked for before the length covers it.
        unsafe {
            std::ptr::write_bytes(v.as_mut_ptr(), 0, self.len);
            v.set_len(self.len);
        }
        self.copy_to_host(&mut v)?;
        Ok(v)
    }
}

impl<T: Element> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("len", &self.len)
            .field("type", &T::DTYPE)
            .field("device", &self.ordinal())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a driver: a clear Unsupported error, never a panic. With one: the bytes go
    /// there and back.
    #[test]
    fn device_buffers_round_trip_or_say_why_not() {
        match DeviceBuffer::<u32>::from_slice(&[1, 2, 3, 5, 8], 0) {
            Ok(b) => {
                assert_eq!(b.to_vec().unwrap(), vec![1, 2, 3, 5, 8]);
                assert_eq!(DeviceBuffer::<f32>::new(7, 0).unwrap().to_vec().unwrap(), vec![0.0; 7]);
            }
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Unsupported, "{e}");
                assert!(
                    e.to_string().contains("no CUDA driver found") || e.to_string().contains("no CUDA support"),
                    "{e}"
                );
            }
        }
    }
}
