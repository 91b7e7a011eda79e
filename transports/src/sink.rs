//! [`Sink`]: a receive that consumes its message where it lands instead of copying it into
//! a buffer first.
//!
//! A reduction step that receives a chunk only to combine it with local data would
//! otherwise copy it into scratch and then read it again; with a sink the transport hands
//! each piece (say, a shared-memory slot) to the algorithm, which reduces straight from it
//! into the result: one pass over the bytes instead of three.

use crate::error::Result;

type SinkFn<'a> = dyn FnMut(usize, &[u8]) -> Result<()> + Send + 'a;

/// Consumes an incoming message in pieces: `(offset in the message, bytes)`, in order,
/// covering the message exactly once. Pieces hold whole multiples of 8 bytes except
/// possibly the last, so a piece never splits an element of up to 8 bytes.
pub struct Sink {
    f: Box<SinkFn<'static>>,
}

impl Sink {
    /// A sink that calls `f` with each piece. An error from `f` fails the receive and the
    /// transport (the peer sees this rank fail).
    ///
    /// # Safety
    ///
    /// Whatever `f` borrows must stay valid until the receive it is posted with completes,
    /// or the transport fails or is dropped (the promise [`crate::RegionMut`]'s constructor
    /// asks for a buffer): the transport may call `f` from any call that makes progress
    /// until then, and drops it without calling it once the receive can no longer complete.
    pub unsafe fn new<'a>(f: impl FnMut(usize, &[u8]) -> Result<()> + Send + 'a) -> Sink {
        let b: Box<SinkFn<'a>> = Box::new(f);
        // SAFETY: only the lifetime changes; the caller promised everything `f` borrows
        // outlives every call the transport makes to it.
        let f: Box<SinkFn<'static>> = unsafe { std::mem::transmute::<Box<SinkFn<'a>>, Box<SinkFn<'static>>>(b) };
        Sink { f }
    }

    /// Hands one piece to the sink.
    pub fn consume(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        (self.f)(offset, bytes)
    }
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sink")
    }
}
