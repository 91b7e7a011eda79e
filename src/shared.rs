//! [`SharedBuffer`]: memory that the other ranks on this host map, so collectives on it move
//! bytes with plain loads and stores (the `mapped` algorithms) instead of messages.
//!
//! A collective whose buffers are all shared buffers (on every rank) runs the `mapped`
//! algorithm where the cost model picks it, which over shared memory is every size but the
//! smallest: each rank reads what it needs from the others' buffers and writes its results
//! straight into them, with no copy through a FIFO and no system call. Ordinary buffers
//! (`Vec`, slices) work as before; a call where some rank passes one falls back, on every
//! rank, to the best other algorithm. Threads of one process (a world made with
//! [`Communicator::local_world`](crate::Communicator::local_world)) map each other's memory
//! whatever it is, so they need no shared buffers.
//!
//! NCCL's counterpart is `ncclMemAlloc` with user-buffer registration; the C ABI's is
//! `oxcclMemAlloc` / `oxcclMemFree`.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::error::Result;
use crate::Element;

/// A zero-filled vector of `T` that peers on this host can map (see the module docs).
///
/// ```
/// use oxccl::{Communicator, Config, ReduceOp, SharedBuffer};
///
/// let mut world = Communicator::local_world(1, Config::default())?;
/// let mut grads = SharedBuffer::<f32>::new(1 << 16)?;
/// grads.fill(1.0);
/// world[0].all_reduce(&mut grads, ReduceOp::Sum)?;
/// assert!(grads.iter().all(|&x| x == 1.0));
/// # Ok::<(), oxccl::Error>(())
/// ```
pub struct SharedBuffer<T: Element> {
    raw: oxccl_transport::SharedBuffer,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Element> SharedBuffer<T> {
    /// `len` zeroed elements (page-aligned), backed by an anonymous memory file: nothing is
    /// left in `/dev/shm`, even after `kill -9`.
    pub fn new(len: usize) -> Result<SharedBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| {
            crate::Error::invalid_argument(format!("a shared buffer of {len} elements overflows the address space"))
        })?;
        Ok(SharedBuffer { raw: oxccl_transport::SharedBuffer::new(bytes)?, len, _t: PhantomData })
    }

    /// A shared buffer holding a copy of `src`.
    pub fn from_slice(src: &[T]) -> Result<SharedBuffer<T>> {
        let mut b = SharedBuffer::new(src.len())?;
        b.copy_from_slice(src);
        Ok(b)
    }
}

impl<T: Element> Deref for SharedBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the mapping holds `len` elements' worth of zero-initialized, page-aligned
        // bytes; every bit pattern is a valid `T` (Element is plain old data).
        unsafe { std::slice::from_raw_parts(self.raw.as_ptr().cast(), self.len) }
    }
}

impl<T: Element> DerefMut for SharedBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as above, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.raw.as_mut_ptr().cast(), self.len) }
    }
}

impl<T: Element> std::fmt::Debug for SharedBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer").field("len", &self.len).field("type", &T::DTYPE).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_it_was_given_and_any_length() {
        let src: Vec<u64> = (0..1000).map(|i| i * 7 + 1).collect();
        let b = SharedBuffer::from_slice(&src).unwrap();
        assert_eq!(&b[..], &src[..]);
        assert_eq!(b.as_ptr() as usize % 4096, 0, "page-aligned");
        for len in [0usize, 1, 4095, 4097] {
            let z = SharedBuffer::<u8>::new(len).unwrap();
            assert_eq!(z.len(), len);
            assert!(z.iter().all(|&x| x == 0));
        }
        assert!(SharedBuffer::<u64>::new(usize::MAX / 4).is_err(), "an overflowing size is an error, not a panic");
    }
}
