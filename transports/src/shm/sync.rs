//! The synchronisation primitives of the shared-memory protocol, swapped for loom's models
//! under `--cfg loom` so the model checker explores every interleaving.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Blocks while `*word == expected`, until woken or `timeout` (None: no limit) passes. May
/// return early (spuriously); callers re-check their condition.
#[cfg(not(loom))]
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<std::time::Duration>) {
    let ts = timeout.map(|t| libc::timespec { tv_sec: t.as_secs() as libc::time_t, tv_nsec: t.subsec_nanos() as _ });
    let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the call (in shared memory when it is shared
    // between processes, hence no FUTEX_PRIVATE_FLAG); the kernel only reads it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, tsp, std::ptr::null::<u32>(), 0);
    }
}

/// Wakes every thread blocked in [`futex_wait`] on `word`, in any process.
#[cfg(not(loom))]
pub(crate) fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE does not touch the word's value.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

#[cfg(loom)]
mod model {
    //! A model of the kernel futex: the compare-and-sleep is atomic with respect to wakes,
    //! as the kernel's hash-bucket lock makes it.
    use super::{AtomicU32, Ordering};
    use loom::sync::{Condvar, Mutex};

    loom::lazy_static! {
        static ref BUCKET: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
    }

    pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, _timeout: Option<std::time::Duration>) {
        let (m, cv) = &*BUCKET;
        let g = m.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(cv.wait(g).unwrap());
        }
    }

    pub(crate) fn futex_wake(_word: &AtomicU32) {
        let (m, cv) = &*BUCKET;
        let _g = m.lock().unwrap();
        cv.notify_all();
    }
}
#[cfg(loom)]
pub(crate) use model::{futex_wait, futex_wake};
