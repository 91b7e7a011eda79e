//! A single-producer, single-consumer ring of fixed-size slots in shared memory.
//!
//! ```text
//! header: tail, head_seen (written by the producer) | head (written by the consumer), each
//!         side on its own cache line so the two sides never write the same line
//! slots:  N slots; slot k lives at index k mod N and starts with its sequence word
//! ```
//! The producer fills slot `tail`'s payload, then publishes it with a release store of
//! `tail + 1` into the slot's own sequence word (and into `tail`); the consumer acquires the
//! sequence word of slot `head`, reads the payload when it equals `head + 1`, and frees the
//! slot with a release store of `head + 1` into `head`, which the producer acquires before
//! it reuses the slot. So while the producer fills slot k+1 the consumer may drain slot k:
//! the pipelining the transport relies on.
//!
//! Why the flag lives in the slot: a small message and its flag share one cache line, so
//! the consumer's poll moves exactly one line from the producer's core (instead of the
//! counter's line and then the slot's). The producer keeps the last `head` it read
//! (`head_seen`, on its own line) and reads the consumer's line only when the FIFO looks
//! full. Counters are 64-bit and never wrap in practice; a sequence word names the message
//! it holds, so a stale slot from N messages ago never looks published.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};

/// The producer's counters (one cache line).
#[repr(C)]
#[derive(Default)]
struct ProducerLine {
    tail: AtomicU64,
    /// The consumer's `head` as the producer last read it (only the producer touches it).
    head_seen: AtomicU64,
}

/// The shared counters of one FIFO (all zero is an empty FIFO).
#[repr(C)]
#[derive(Default)]
pub struct FifoHeader {
    producer: CachePadded<ProducerLine>,
    head: CachePadded<AtomicU64>,
}

/// A hint that this core will write the cache line of `word` soon.
#[inline(always)]
fn prefetch_write(word: &AtomicU64) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    // SAFETY: a prefetch is a hint: it never faults and changes no memory.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
        _mm_prefetch::<_MM_HINT_ET0>((word as *const AtomicU64).cast());
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = word;
}

/// Bytes at the start of each slot taken by its sequence word.
pub const SEQ_BYTES: usize = 8;

/// Where a FIFO's slots live.
pub trait SlotStore {
    /// The number of slots.
    fn count(&self) -> u64;
    /// The sequence word of slot `i`.
    fn seq(&self, i: u64) -> &AtomicU64;
    /// Runs `f` with a pointer to slot `i`'s payload for writing.
    fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R;
    /// Runs `f` with a pointer to slot `i`'s payload for reading.
    fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R;
}

/// Slots in a mapped segment: `count` slots of `bytes` bytes from `base` (8-byte aligned),
/// each its sequence word then `bytes - SEQ_BYTES` bytes of payload.
#[derive(Clone, Copy)]
pub struct RawSlots {
    /// The first slot.
    pub base: *mut u8,
    /// Bytes per slot.
    pub bytes: usize,
    /// Number of slots.
    pub count: u64,
}

impl SlotStore for RawSlots {
    fn count(&self) -> u64 {
        self.count
    }
    fn seq(&self, i: u64) -> &AtomicU64 {
        // SAFETY: the first 8 bytes of each slot are its sequence word, 8-byte aligned (the
        // base is, and `bytes` is a multiple of 64), all zero initially, only ever accessed
        // atomically, and the mapping outlives every view of it.
        unsafe { &*(self.base.wrapping_add(i as usize * self.bytes) as *const AtomicU64) }
    }
    fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R {
        f(self.base.wrapping_add(i as usize * self.bytes + SEQ_BYTES))
    }
    fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R {
        f(self.base.wrapping_add(i as usize * self.bytes + SEQ_BYTES))
    }
}

/// One side's view of a FIFO.
pub struct Fifo<'a, S> {
    hdr: &'a FifoHeader,
    slots: S,
}

impl<'a, S: SlotStore> Fifo<'a, S> {
    /// A view of the FIFO with counters `hdr` and slots `slots`.
    pub fn new(hdr: &'a FifoHeader, slots: S) -> Self {
        Fifo { hdr, slots }
    }

    /// Producer: fills the next slot with `fill` and publishes it; `false` when all slots
    /// are in use.
    pub fn try_push(&self, fill: impl FnOnce(*mut u8)) -> bool {
        let pl = &self.hdr.producer;
        let tail = pl.tail.load(Ordering::Relaxed);
        if tail - pl.head_seen.load(Ordering::Relaxed) >= self.slots.count() {
            let head = self.hdr.head.load(Ordering::Acquire);
            pl.head_seen.store(head, Ordering::Relaxed);
            if tail - head >= self.slots.count() {
                return false;
            }
        }
        let i = tail % self.slots.count();
        self.slots.write(i, fill);
        self.slots.seq(i).store(tail + 1, Ordering::Release);
        pl.tail.store(tail + 1, Ordering::Relaxed);
        // Ask for the next slot's first line for writing now, while the consumer drains this
        // one: the consumer last read it a lap ago, so taking it back costs a round trip
        // between cores that would otherwise delay the next message.
        prefetch_write(self.slots.seq((tail + 1) % self.slots.count()));
        true
    }

    /// Producer: whether a slot is free now.
    pub fn has_space(&self) -> bool {
        self.hdr.producer.tail.load(Ordering::Relaxed) - self.hdr.head.load(Ordering::Acquire) < self.slots.count()
    }

    /// Consumer: reads the oldest published slot with `f`, without freeing it; `None` when
    /// the FIFO is empty.
    pub fn peek<R>(&self, f: impl FnOnce(*const u8) -> R) -> Option<R> {
        let head = self.hdr.head.load(Ordering::Relaxed);
        let i = head % self.slots.count();
        if self.slots.seq(i).load(Ordering::Acquire) != head + 1 {
            return None;
        }
        Some(self.slots.read(i, f))
    }

    /// Consumer: frees the oldest slot (after [`Fifo::peek`] found it).
    pub fn pop(&self) {
        let head = self.hdr.head.load(Ordering::Relaxed);
        self.hdr.head.store(head + 1, Ordering::Release);
    }

    /// Consumer: whether a slot is waiting.
    pub fn has_data(&self) -> bool {
        let head = self.hdr.head.load(Ordering::Relaxed);
        self.slots.seq(head % self.slots.count()).load(Ordering::Acquire) == head + 1
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fills_drains_and_wraps_in_order() {
        let hdr = FifoHeader::default();
        let mut mem = vec![0u64; 6];
        let slots = RawSlots { base: mem.as_mut_ptr().cast(), bytes: 16, count: 3 };
        let f = Fifo::new(&hdr, slots);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..10 {
            // SAFETY (closures): each payload is 8 bytes of `mem`, written and read as a u64.
            while f.try_push(|p| unsafe { (p as *mut u64).write(next_in) }) {
                next_in += 1;
            }
            assert_eq!(next_in - next_out, 3, "round {round}: full at three slots");
            assert!(!f.has_space());
            let take = round % 3 + 1;
            for _ in 0..take {
                // SAFETY: as above.
                let v = f.peek(|p| unsafe { (p as *const u64).read() }).unwrap();
                assert_eq!(v, next_out);
                f.pop();
                next_out += 1;
            }
        }
        while f.peek(|_| ()).is_some() {
            f.pop();
        }
        assert!(!f.has_data() && f.has_space());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::shm::doorbell::Doorbell;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    struct CellSlots(Vec<(AtomicU64, UnsafeCell<u64>)>);

    impl SlotStore for &CellSlots {
        fn count(&self) -> u64 {
            self.0.len() as u64
        }
        fn seq(&self, i: u64) -> &AtomicU64 {
            &self.0[i as usize].0
        }
        fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R {
            self.0[i as usize].1.with_mut(|p| f(p.cast()))
        }
        fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R {
            self.0[i as usize].1.with(|p| f(p.cast()))
        }
    }

    struct Shared {
        hdr: FifoHeader,
        slots: CellSlots,
        /// Rung by the producer after a push (the consumer sleeps on it).
        consumer_bell: Doorbell,
        /// Rung by the consumer after a pop (the producer sleeps on it when full).
        producer_bell: Doorbell,
    }

    /// Producer and consumer each sleep on their doorbell when they cannot go on; every
    /// message arrives once, in order, and nobody sleeps forever (loom fails a run in which
    /// all threads block).
    fn run(messages: u64, slots: usize) {
        loom::model(move || {
            let s = Arc::new(Shared {
                hdr: FifoHeader::default(),
                slots: CellSlots((0..slots).map(|_| (AtomicU64::new(0), UnsafeCell::new(0))).collect()),
                consumer_bell: Doorbell::default(),
                producer_bell: Doorbell::default(),
            });
            let p = s.clone();
            let producer = loom::thread::spawn(move || {
                let f = Fifo::new(&p.hdr, &p.slots);
                for m in 1..=messages {
                    loop {
                        // SAFETY: the slot is a u64 cell.
                        if f.try_push(|ptr| unsafe { (ptr as *mut u64).write(m) }) {
                            break;
                        }
                        p.producer_bell.sleep(|| f.has_space(), None);
                    }
                    p.consumer_bell.ring();
                }
            });
            let f = Fifo::new(&s.hdr, &s.slots);
            for m in 1..=messages {
                loop {
                    // SAFETY: the slot is a u64 cell.
                    if let Some(v) = f.peek(|ptr| unsafe { (ptr as *const u64).read() }) {
                        assert_eq!(v, m, "in order, exactly once");
                        f.pop();
                        break;
                    }
                    s.consumer_bell.sleep(|| f.has_data(), None);
                }
                s.producer_bell.ring();
            }
            producer.join().unwrap();
        });
    }

    #[test]
    fn one_slot_two_messages_no_lost_wakeup() {
        run(2, 1);
    }

    #[test]
    fn two_slots_three_messages_no_lost_wakeup() {
        run(3, 2);
    }
}
