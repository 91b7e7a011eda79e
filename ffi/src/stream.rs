//! NCCL's stream semantics for calls on device buffers: the call returns at once, and the
//! collective happens in the stream's order.
//!
//! Each communicator that is given device buffers gets a proxy thread. A call records an
//! event on the caller's stream (the point after the stream's earlier work), hands the
//! collective to the proxy, makes the stream wait until a counter in pinned host memory
//! reaches the call's number (`cuStreamWaitValue64`), and returns. The proxy takes calls in
//! order: it waits for the call's event (with the communicator's deadline), runs the
//! collective (which returns once its GPU work is done), and raises the counter, so the
//! stream goes on. It raises the counter however the collective ends (an error, a panic),
//! so a stream never waits forever on oxccl. A collective that fails poisons the
//! communicator as usual; `oxcclCommGetAsyncError` reports it, and later calls return it.
//!
//! A call on host buffers first waits for the proxy to finish the calls handed to it, so the
//! communicator's calls keep the order the program made them in, on every rank.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use oxccl_rs::Error;
use oxccl_transport::cuda::{self, DeviceContext, Event, HostFlag};

/// The collective a call hands to the proxy.
pub(crate) type Work = Box<dyn FnOnce() -> Result<(), Error> + Send>;

struct Job {
    seq: u64,
    event: Event,
    work: Work,
}

/// What the submitters and the proxy thread share.
struct Shared {
    ctx: &'static DeviceContext,
    flag: &'static HostFlag,
    /// The number of the last call finished (its counter raised).
    done: Mutex<u64>,
    finished: Condvar,
    /// The first error of a call the proxy ran.
    error: Mutex<Option<Error>>,
    timeout: Duration,
}

/// One communicator's proxy on one device.
pub(crate) struct StreamProxy {
    shared: Arc<Shared>,
    tx: Mutex<mpsc::Sender<Job>>,
    issued: AtomicU64,
}

/// A closure that may cross to the proxy thread although it holds raw pointers: the
/// caller's buffers, which NCCL's contract keeps valid until the stream has passed the call.
pub(crate) struct AssertSend<F>(pub F);

// SAFETY: see the type's docs; the pointers are only dereferenced by the collective, on the
// proxy thread, while the caller's contract holds.
unsafe impl<F> Send for AssertSend<F> {}

impl<F: FnOnce() -> Result<(), Error>> AssertSend<F> {
    /// Runs the closure (taking `self` whole, so a closure calling this captures all of it).
    pub(crate) fn call(self) -> Result<(), Error> {
        (self.0)()
    }
}

impl StreamProxy {
    /// The device it serves.
    pub(crate) fn ordinal(&self) -> u32 {
        self.shared.ctx.ordinal()
    }

    /// A proxy for device `ordinal`, whose waits end after `timeout`.
    pub(crate) fn start(ordinal: u32, timeout: Duration) -> Result<StreamProxy, Error> {
        let ctx = cuda::context(ordinal)?;
        let flag = ctx.host_flag()?;
        // Devices or drivers without stream memory operations cannot wait on the counter:
        // say so now, and the caller runs its calls synchronously instead.
        // SAFETY: oxccl's own stream of this device; a wait for 0 is already satisfied.
        unsafe { flag.stream_wait(ctx.stream(), 0) }
            .map_err(|e| Error::unsupported(format!("streams cannot wait on host memory here: {e}")))?;
        let shared = Arc::new(Shared {
            ctx,
            flag,
            done: Mutex::new(0),
            finished: Condvar::new(),
            error: Mutex::new(None),
            timeout,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("oxccl-stream-{ordinal}"))
            .spawn(move || serve(&s, rx))
            .map_err(|e| Error::io("spawning the stream proxy", e))?;
        Ok(StreamProxy { shared, tx: Mutex::new(tx), issued: AtomicU64::new(0) })
    }

    /// Orders `work` on `stream` and returns once it is handed over (see the module docs).
    ///
    /// # Safety
    /// `stream` is NULL or a live stream of the proxy's device; what `work` touches stays
    /// valid until the stream has passed the call (NCCL's contract).
    pub(crate) unsafe fn submit(&self, stream: *mut std::ffi::c_void, work: Work) -> Result<(), Error> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        // One submitter at a time: numbers, events and waits go on in the same order.
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let seq = self.issued.load(Ordering::Relaxed) + 1;
        // SAFETY: the caller's stream.
        let event = unsafe { self.shared.ctx.record_event(stream)? };
        // SAFETY: as above; the context was made current by `record_event`.
        unsafe { self.shared.flag.stream_wait(stream, seq)? };
        self.issued.store(seq, Ordering::Relaxed);
        tx.send(Job { seq, event, work }).map_err(|_| Error::internal("the stream proxy has stopped"))
    }

    /// Waits until every call handed over has finished (or fails at the communicator's
    /// deadline), and returns the first error one of them met.
    pub(crate) fn drain(&self) -> Result<(), Error> {
        let target = self.issued.load(Ordering::Relaxed);
        let deadline = Instant::now() + self.shared.timeout;
        let mut done = self.shared.done.lock().unwrap_or_else(|e| e.into_inner());
        while *done < target {
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(
                    format!("waiting for {} call(s) on device buffers to finish", target - *done),
                    self.shared.timeout,
                ));
            }
            done = self.shared.finished.wait_timeout(done, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        drop(done);
        match self.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The first error of a call the proxy ran.
    pub(crate) fn error(&self) -> Option<Error> {
        self.shared.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Raises the counter when dropped, so the stream goes on however the call ended.
struct Raise<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for Raise<'_> {
    fn drop(&mut self) {
        self.shared.flag.raise(self.seq);
        *self.shared.done.lock().unwrap_or_else(|e| e.into_inner()) = self.seq;
        self.shared.finished.notify_all();
    }
}

fn serve(shared: &Shared, rx: mpsc::Receiver<Job>) {
    // Ends when the communicator (holding the sender) is gone and every call is done.
    while let Ok(job) = rx.recv() {
        let _raise = Raise { shared, seq: job.seq };
        let deadline = Instant::now() + shared.timeout;
        let ran = shared.ctx.wait_event(&job.event, deadline, "waiting for the stream's earlier work").and_then(|()| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.work))
                .unwrap_or_else(|_| Err(Error::internal("a collective on device buffers panicked")))
        });
        if let Err(e) = ran {
            tracing::error!(error = %e, "a call on device buffers failed; the communicator must be rebuilt");
            shared.error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
        }
    }
}
