//! A single-producer, single-consumer ring of fixed-size slots in shared memory.
//!
//! ```text
//! header: tail (written by the producer) | head (written by the consumer), each on its own
//!         cache line so the two sides never write the same line
//! slots:  N slots; slot k lives at index k mod N
//! ```
//! The producer fills slot `tail`, then publishes it with a release store of `tail + 1`; the
//! consumer acquires `tail`, reads slot `head`, and frees it with a release store of
//! `head + 1`, which the producer acquires before it reuses the slot. So while the producer
//! fills slot k+1 the consumer may drain slot k: the pipelining the transport relies on.
//! Counters are 64-bit and never wrap in practice.

use crossbeam_utils::CachePadded;

use super::sync::{AtomicU64, Ordering};

/// The shared counters of one FIFO (all zero is an empty FIFO).
#[repr(C)]
#[derive(Default)]
pub struct FifoHeader {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
}

/// Where a FIFO's slots live.
pub trait SlotStore {
    /// The number of slots.
    fn count(&self) -> u64;
    /// Runs `f` with a pointer to slot `i` for writing.
    fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R;
    /// Runs `f` with a pointer to slot `i` for reading.
    fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R;
}

/// Slots in a mapped segment: `count` slots of `bytes` bytes from `base`.
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
    fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R {
        f(self.base.wrapping_add(i as usize * self.bytes))
    }
    fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R {
        f(self.base.wrapping_add(i as usize * self.bytes))
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
        let tail = self.hdr.tail.load(Ordering::Relaxed);
        let head = self.hdr.head.load(Ordering::Acquire);
        if tail - head >= self.slots.count() {
            return false;
        }
        self.slots.write(tail % self.slots.count(), fill);
        self.hdr.tail.store(tail + 1, Ordering::Release);
        true
    }

    /// Producer: whether a slot is free now.
    pub fn has_space(&self) -> bool {
        self.hdr.tail.load(Ordering::Relaxed) - self.hdr.head.load(Ordering::Acquire) < self.slots.count()
    }

    /// Consumer: reads the oldest published slot with `f`, without freeing it; `None` when
    /// the FIFO is empty.
    pub fn peek<R>(&self, f: impl FnOnce(*const u8) -> R) -> Option<R> {
        let head = self.hdr.head.load(Ordering::Relaxed);
        if self.hdr.tail.load(Ordering::Acquire) == head {
            return None;
        }
        Some(self.slots.read(head % self.slots.count(), f))
    }

    /// Consumer: frees the oldest slot (after [`Fifo::peek`] found it).
    pub fn pop(&self) {
        let head = self.hdr.head.load(Ordering::Relaxed);
        self.hdr.head.store(head + 1, Ordering::Release);
    }

    /// Consumer: whether a slot is waiting.
    pub fn has_data(&self) -> bool {
        self.hdr.tail.load(Ordering::Acquire) != self.hdr.head.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fills_drains_and_wraps_in_order() {
        let hdr = FifoHeader::default();
        let mut mem = vec![0u64; 3];
        let slots = RawSlots { base: mem.as_mut_ptr().cast(), bytes: 8, count: 3 };
        let f = Fifo::new(&hdr, slots);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..10 {
            // SAFETY (closures): each slot is 8 bytes of `mem`, written and read as a u64.
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

    struct CellSlots(Vec<UnsafeCell<u64>>);

    impl SlotStore for &CellSlots {
        fn count(&self) -> u64 {
            self.0.len() as u64
        }
        fn write<R>(&self, i: u64, f: impl FnOnce(*mut u8) -> R) -> R {
            self.0[i as usize].with_mut(|p| f(p.cast()))
        }
        fn read<R>(&self, i: u64, f: impl FnOnce(*const u8) -> R) -> R {
            self.0[i as usize].with(|p| f(p.cast()))
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
                slots: CellSlots((0..slots).map(|_| UnsafeCell::new(0)).collect()),
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
