//! The boundary every export goes through: panics become `oxcclInternalError`, errors become
//! result codes, and the full message of the last failure is kept (per communicator and per
//! thread) for `oxcclGetLastError`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use oxccl_rs::{Communicator, Error, ErrorKind};

use crate::types::*;

/// A live communicator behind a C handle.
pub(crate) struct Entry {
    pub comm: Communicator,
    pub last_error: Mutex<CString>,
    /// The proxy that orders calls on device buffers on their streams, made on the first;
    /// or why there can be none here (then such calls run synchronously).
    pub proxy: Mutex<Option<Result<Arc<crate::stream::StreamProxy>, Error>>>,
}

impl Entry {
    /// The stream proxy of device `ordinal` (one device per communicator, as in NCCL), or
    /// why calls must run synchronously instead (Unsupported).
    pub(crate) fn proxy(&self, ordinal: u32) -> Result<Arc<crate::stream::StreamProxy>, Error> {
        let mut p = self.proxy.lock().unwrap_or_else(|e| e.into_inner());
        match &*p {
            Some(Ok(proxy)) if proxy.ordinal() != ordinal => Err(Error::invalid_usage(format!(
                "this communicator works on cuda:{}, and a call passed buffers on cuda:{ordinal}",
                proxy.ordinal()
            ))),
            Some(made) => made.clone(),
            None => {
                let made = crate::stream::StreamProxy::start(ordinal, self.comm.config().timeout).map(Arc::new);
                *p = Some(made.clone());
                made
            }
        }
    }

    /// Waits until the calls handed to the stream proxy have finished (a call on host buffers
    /// must not overtake them), and returns the first error one of them met.
    pub(crate) fn drain(&self) -> Result<(), Error> {
        let proxy = self.proxy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match proxy {
            Some(Ok(p)) => p.drain(),
            _ => Ok(()),
        }
    }

    /// The first error of a call the stream proxy ran.
    pub(crate) fn async_error(&self) -> Option<Error> {
        match &*self.proxy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(p)) => p.error(),
            _ => None,
        }
    }
}

/// Handles are addresses of small allocations that C code holds; they are never dereferenced:
/// this table maps them to communicators, so a destroyed, foreign or garbage handle is
/// recognised instead of followed.
fn table() -> MutexGuard<'static, HashMap<usize, Arc<Entry>>> {
    static TABLE: OnceLock<Mutex<HashMap<usize, Arc<Entry>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `comm` and returns its new handle.
pub(crate) fn register(comm: Communicator) -> oxcclComm_t {
    let token = Box::into_raw(Box::new(0u8)) as usize;
    let entry = Arc::new(Entry { comm, last_error: Mutex::new(CString::default()), proxy: Mutex::new(None) });
    prepare_current_device(&entry);
    table().insert(token, entry);
    token as oxcclComm_t
}

/// Where the program has a CUDA device current on this thread (`cudaSetDevice` before the
/// init, as NCCL programs do), the device setup happens now, as NCCL's does in its init:
/// the stream proxy (with its pinned counter) and the kernels. Made in the first call
/// instead, it could wait on a device whose streams already wait for this rank (another
/// thread's rank ordered a collective on its stream), until the deadline. Host-only programs
/// (the driver never loaded) are not touched; a failure here is left for the first call on
/// device buffers to report.
fn prepare_current_device(entry: &Entry) {
    if !oxccl_transport::cuda::process_uses_cuda() {
        return;
    }
    let Ok(ordinal) = oxccl_transport::cuda::current_ordinal() else { return };
    if entry.proxy(ordinal).is_ok() {
        if let Err(e) = entry.comm.prepare_device(ordinal) {
            tracing::debug!(error = %e, "the device setup at init failed; the first call on device buffers says why");
        }
    }
}

/// The communicator behind `h`, or an InvalidArgument error.
pub(crate) fn lookup(h: oxcclComm_t) -> Result<Arc<Entry>, Error> {
    if h.is_null() {
        return Err(Error::invalid_argument("comm is NULL"));
    }
    table()
        .get(&(h as usize))
        .cloned()
        .ok_or_else(|| Error::invalid_argument(format!("comm {h:p} is not a live oxccl communicator (destroyed?)")))
}

/// Unregisters `h`; the communicator is dropped once no call still uses it.
pub(crate) fn unregister(h: oxcclComm_t) -> Result<Arc<Entry>, Error> {
    let e = lookup(h)?;
    table().remove(&(h as usize));
    // SAFETY: `h` was produced by `register` from `Box::into_raw(Box<u8>)` and was still in
    // the table, so it has not been freed before; it is freed exactly once, here.
    drop(unsafe { Box::from_raw(h as *mut u8) });
    Ok(e)
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn to_cstring(s: String) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// The result code of an error kind.
pub(crate) fn code(e: &Error) -> oxcclResult_t {
    match e.kind() {
        ErrorKind::InvalidArgument => INVALID_ARGUMENT,
        ErrorKind::InvalidUsage | ErrorKind::Unsupported => INVALID_USAGE,
        ErrorKind::Timeout => TIMEOUT,
        ErrorKind::PeerLost | ErrorKind::Remote => REMOTE_ERROR,
        ErrorKind::Io => SYSTEM_ERROR,
        ErrorKind::Aborted => ABORTED,
        _ => INTERNAL_ERROR,
    }
}

fn record(entry: Option<&Entry>, msg: String) {
    let c = to_cstring(msg);
    if let Some(e) = entry {
        *e.last_error.lock().unwrap_or_else(|e| e.into_inner()) = c.clone();
    }
    LAST.with(|l| *l.borrow_mut() = c);
}

/// Runs `f` behind the panic boundary. `comm`, when given, receives the error message too.
pub(crate) fn guard(comm: Option<oxcclComm_t>, f: impl FnOnce() -> Result<(), Error>) -> oxcclResult_t {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(e)) => {
            let entry = comm.and_then(|h| lookup(h).ok());
            record(entry.as_deref(), e.to_string());
            code(&e)
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let entry = comm.and_then(|h| lookup(h).ok());
            record(entry.as_deref(), format!("internal error: oxccl panicked: {what}"));
            INTERNAL_ERROR
        }
    }
}

/// The message `oxcclGetLastError` returns: the communicator's last failure, or this
/// thread's when `h` is NULL or not a communicator.
pub(crate) fn last_error(h: oxcclComm_t) -> *const std::os::raw::c_char {
    if let Ok(e) = lookup(h) {
        let guard = e.last_error.lock().unwrap_or_else(|e| e.into_inner());
        // The CString lives in the entry until the next failure on this communicator (or its
        // destruction), as the header documents.
        return guard.as_ptr();
    }
    LAST.with(|l| l.borrow().as_ptr())
}
