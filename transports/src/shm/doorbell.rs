//! The doorbell: how a rank sleeps until a peer has done something for it.
//!
//! Each rank owns one doorbell in its segment. A peer that publishes a message into one of
//! the rank's inbound FIFOs, or frees space in a FIFO the rank sends into, rings it. The rank
//! spins briefly on its own conditions, then sleeps on the doorbell's futex word.
//!
//! Protocol (the lost-wakeup race is what `loom` checks). One 32-bit word: bit 0 says the
//! owner may be asleep, the rest count rings.
//!
//! ```text
//! ringer                                   sleeper (the owner)
//! publish            (release store)       seen = word.fetch_or(1)          (announce)
//! old = word.fetch_add(2)                  if !ready() { futex_wait(word, seen) }
//! if old & 1 { futex_wake(word) }          word.fetch_and(!1)
//! ```
//! Both sides update the same word with read-modify-writes, which are totally ordered. If
//! the ring comes first, the announcement reads it and acquires what was published before
//! it, so `ready()` sees the message and the owner does not sleep. If the announcement comes
//! first, the ringer sees bit 0 and wakes the owner; and if the owner has not reached the
//! futex yet, the futex's own check (atomic with respect to wakes) finds the word changed
//! and returns at once. Either way no ring is lost, and a ringer makes the wake system call
//! only when the owner may be asleep.

use crossbeam_utils::CachePadded;

use super::sync::{futex_wait, futex_wake, AtomicU32, Ordering};

/// A doorbell, placed in shared memory (all zero is its initial state). One owner sleeps on
/// it; any number of peers ring it.
#[repr(C)]
#[derive(Default)]
pub struct Doorbell {
    word: CachePadded<AtomicU32>,
}

impl Doorbell {
    /// Tells the owner something changed; wakes it if it may be asleep.
    pub fn ring(&self) {
        if self.word.fetch_add(2, Ordering::AcqRel) & 1 != 0 {
            futex_wake(&self.word);
        }
    }

    /// Owner: sleeps until the next ring, unless `ready()` holds once the sleep is announced;
    /// returns after at most `timeout`. Spurious returns are possible: re-check and loop.
    pub fn sleep(&self, ready: impl Fn() -> bool, timeout: Option<std::time::Duration>) {
        let seen = self.word.fetch_or(1, Ordering::AcqRel) | 1;
        if !ready() {
            futex_wait(&self.word, seen, timeout);
        }
        self.word.fetch_and(!1, Ordering::AcqRel);
    }
}
