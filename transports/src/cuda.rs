//! The CUDA driver, loaded at run time: device memory, streams, and CUDA IPC handles.
//!
//! Built with the `cuda` feature (on by default), through `cudarc` with dynamic loading, so
//! the crate builds and runs where there is no CUDA at all. There every entry point answers
//! [`Error::Unsupported`](crate::error::Error::Unsupported) saying `no CUDA driver found: ...`; built without the feature, they
//! answer that the build has no CUDA. Nothing here is touched by a program that never asks
//! for device memory: host-only programs never load the driver.
//!
//! What it offers the layers above:
//! - [`driver`]: the loaded, initialised driver (or why not), and the device count.
//! - [`DeviceContext`]: the primary context of one device, made current on the calling
//!   thread by every call that needs it, and a stream of its own for oxccl's work.
//! - [`DeviceAlloc`]: device memory owned by oxccl (scratch, `DeviceBuffer`s).
//! - [`pointer_device`]: which device, if any, a pointer belongs to (the C ABI takes raw
//!   pointers, as NCCL does).
//! - [`DeviceKey`] and [`PeerDeviceMappings`]: a span of device memory named for a peer
//!   process (`cuIpcGetMemHandle` of its allocation, plus offset) and opened there once per
//!   allocation (`cuIpcOpenMemHandle`), as the `mapped` algorithms need.
//!
//! Every wait on the GPU polls with a deadline ([`DeviceContext::sync`]): a kernel that never
//! ends is a Timeout, not a hang.

use crate::error::Result;

/// Why there is no CUDA here, for the stub and for a missing driver.
#[cfg(not(feature = "cuda"))]
const NO_FEATURE: &str = "this build of oxccl has no CUDA support (built without the `cuda` feature)";

/// A span of device memory named for a peer process: the CUDA IPC handle of the allocation
/// that holds it, the span's offset in that allocation, and the owner's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceKey {
    /// The owner's device ordinal.
    pub ordinal: u32,
    /// `cuIpcGetMemHandle` of the allocation (all zero for an address in the owner's
    /// process, usable only by peers in that process).
    pub handle: [u8; 64],
    /// The allocation's base address in the owner's process.
    pub base: u64,
    /// The allocation's id in the owner's process (`CU_POINTER_ATTRIBUTE_BUFFER_ID`, never
    /// reused there): what peers cache their mappings by, so that a new allocation at an old
    /// address is opened anew, and the same one is opened once however its handle's bytes
    /// read. 0 where the driver gives none.
    pub buffer_id: u64,
    /// The allocation's size in bytes: a peer's mappings of the owner's earlier allocations
    /// that overlap it were freed by the owner, and are closed before it is opened.
    pub size: u64,
}

#[cfg(feature = "cuda")]
mod imp {
    use std::collections::HashMap;
    use std::ffi::{c_void, CStr};
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use cudarc::driver::sys;

    use super::DeviceKey;
    use crate::error::{Error, Result};

    /// The loaded driver.
    #[derive(Debug)]
    pub struct Driver {
        devices: usize,
    }

    impl Driver {
        /// How many devices the driver sees.
        pub fn device_count(&self) -> usize {
            self.devices
        }
    }

    /// The text of a CUDA error code.
    fn error_text(code: sys::CUresult) -> String {
        let mut s: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves NULL).
        let r = unsafe { sys::cuGetErrorString(code, &mut s) };
        if r == sys::CUresult::CUDA_SUCCESS && !s.is_null() {
            // SAFETY: the driver's static, NUL-terminated string.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        } else {
            format!("{code:?}")
        }
    }

    /// `Ok` for CUDA_SUCCESS, else an error naming `what` and the driver's reason.
    pub(crate) fn check(code: sys::CUresult, what: &str) -> Result<()> {
        if code == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            Err(Error::io(format!("CUDA: {what}"), std::io::Error::other(error_text(code))))
        }
    }

    pub fn driver() -> Result<&'static Driver> {
        static DRIVER: OnceLock<std::result::Result<Driver, String>> = OnceLock::new();
        let d = DRIVER.get_or_init(|| {
            // cudarc panics when asked for a symbol of a library it cannot load: ask first.
            // SAFETY: only tries to load the library.
            if !unsafe { sys::is_culib_present() } {
                return Err(format!(
                    "no CUDA driver found: libcuda.so could not be loaded (no NVIDIA driver on this machine, or \
                     not on the loader's path; LD_LIBRARY_PATH={})",
                    std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
                ));
            }
            // SAFETY: plain driver calls with valid out-pointers.
            unsafe {
                check(sys::cuInit(0), "cuInit").map_err(|e| format!("no usable CUDA driver found: {e}"))?;
                let mut n = 0;
                check(sys::cuDeviceGetCount(&mut n), "cuDeviceGetCount")
                    .map_err(|e| format!("no usable CUDA driver found: {e}"))?;
                Ok(Driver { devices: n.max(0) as usize })
            }
        });
        d.as_ref().map_err(|why| Error::unsupported(why.clone()))
    }

    /// Whether this process had loaded the CUDA driver before this call, so that device
    /// pointers can exist in it (a program that never loaded it has none).
    pub fn process_uses_cuda() -> bool {
        for name in [c"libcuda.so.1", c"libcuda.so"] {
            // SAFETY: RTLD_NOLOAD only looks the library up; a handle it returns is released.
            let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            if !h.is_null() {
                // SAFETY: the handle dlopen just returned.
                unsafe { libc::dlclose(h) };
                return true;
            }
        }
        false
    }

    /// The device of the CUDA context current on this thread.
    pub fn current_ordinal() -> Result<u32> {
        driver()?;
        let mut dev = 0;
        // SAFETY: a valid out-pointer; with no current context the driver says so.
        check(unsafe { sys::cuCtxGetDevice(&mut dev) }, "no CUDA context is current on this thread")?;
        Ok(dev as u32)
    }

    /// The device `ptr` belongs to, or `None` for host memory (or no driver).
    pub fn pointer_device(ptr: *const u8) -> Option<u32> {
        if ptr.is_null() || driver().is_err() {
            return None;
        }
        // The driver answers about any address of the process, but only on a thread with a
        // context current: a thread of the program's that never touched CUDA gets device 0's
        // primary context.
        let mut current = std::ptr::null_mut();
        // SAFETY: a valid out-pointer.
        let r = unsafe { sys::cuCtxGetCurrent(&mut current) };
        if (r != sys::CUresult::CUDA_SUCCESS || current.is_null()) && context(0).and_then(|c| c.make_current()).is_err()
        {
            return None;
        }
        let mut mem_type: u32 = 0;
        // SAFETY: asks about an address; unknown host addresses give an error code, not a
        // fault.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut mem_type as *mut u32).cast::<c_void>(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                ptr as sys::CUdeviceptr,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS || mem_type != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
            return None;
        }
        let mut ordinal: i32 = -1;
        // SAFETY: as above.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut ordinal as *mut i32).cast::<c_void>(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                ptr as sys::CUdeviceptr,
            )
        };
        (r == sys::CUresult::CUDA_SUCCESS && ordinal >= 0).then_some(ordinal as u32)
    }

    /// Polls `query` (a stream or event query) until it says done, spinning briefly, then
    /// sleeping; an error the driver gives, or Timeout at `deadline`.
    fn poll(query: impl Fn() -> sys::CUresult, deadline: Instant, what: &str, ordinal: u32) -> Result<()> {
        let start = Instant::now();
        loop {
            let r = query();
            if r == sys::CUresult::CUDA_SUCCESS {
                return Ok(());
            }
            if r != sys::CUresult::CUDA_ERROR_NOT_READY {
                return check(r, what);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::timeout(
                    format!("{what}: the GPU work did not finish in time (cuda:{ordinal})"),
                    now - start,
                ));
            }
            // GPU work of a small call ends within tens of microseconds: spin, then yield
            // (a runnable peer rank gets the core), and only then sleep, whose wake-up
            // alone costs a timer slack of about 50 us.
            let waited = now - start;
            if waited < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else if waited < Duration::from_micros(500) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// The primary context of one device, with a stream for oxccl's own work.
    pub struct DeviceContext {
        ordinal: u32,
        ctx: sys::CUcontext,
        stream: sys::CUstream,
    }

    // SAFETY: a CUDA context and stream are usable from any thread once made current there,
    // which every method does first; the driver serialises what must be.
    unsafe impl Send for DeviceContext {}
    // SAFETY: as above.
    unsafe impl Sync for DeviceContext {}

    impl std::fmt::Debug for DeviceContext {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "DeviceContext(cuda:{})", self.ordinal)
        }
    }

    pub fn context(ordinal: u32) -> Result<&'static DeviceContext> {
        static CONTEXTS: OnceLock<Mutex<HashMap<u32, &'static DeviceContext>>> = OnceLock::new();
        let d = driver()?;
        if ordinal as usize >= d.device_count() {
            return Err(Error::invalid_argument(format!(
                "CUDA device {ordinal} does not exist ({} device(s))",
                d.device_count()
            )));
        }
        let mut map = CONTEXTS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&ordinal) {
            return Ok(c);
        }
        // SAFETY: driver calls with valid out-pointers; the context is retained for the
        // life of the process (it is leaked on purpose: kernels and mappings refer to it).
        let c = unsafe {
            let mut dev = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as i32), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut stream = std::ptr::null_mut();
            check(
                sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
                "cuStreamCreate",
            )?;
            DeviceContext { ordinal, ctx, stream }
        };
        let c: &'static DeviceContext = Box::leak(Box::new(c));
        map.insert(ordinal, c);
        Ok(c)
    }

    impl DeviceContext {
        /// The device ordinal.
        pub fn ordinal(&self) -> u32 {
            self.ordinal
        }

        /// Makes this context current on the calling thread.
        pub fn make_current(&self) -> Result<()> {
            // SAFETY: a context retained for the life of the process.
            check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
        }

        /// oxccl's stream on this device (a raw `CUstream`).
        pub fn stream(&self) -> *mut c_void {
            self.stream.cast()
        }

        /// Waits until every operation queued on `stream` (a `CUstream`; NULL is the
        /// context's legacy default stream, as everywhere in CUDA) has finished, polling:
        /// spinning briefly, then sleeping, until `deadline`.
        pub fn sync_stream(&self, stream: *mut c_void, deadline: Instant, what: &str) -> Result<()> {
            self.make_current()?;
            let s: sys::CUstream = stream.cast();
            // SAFETY: a valid stream of this context.
            poll(|| unsafe { sys::cuStreamQuery(s) }, deadline, what, self.ordinal)
        }

        /// Waits for oxccl's stream (see [`DeviceContext::sync_stream`]).
        pub fn sync(&self, deadline: Instant, what: &str) -> Result<()> {
            self.sync_stream(self.stream.cast(), deadline, what)
        }

        /// Sets `len` bytes of device memory at `dst` to zero and waits for it (until
        /// `deadline`).
        ///
        /// Queued on oxccl's stream, never the legacy default stream: that one waits for every
        /// blocking stream of the context, and a stream of the program's may be waiting on
        /// oxccl (a call of the C ABI ordered on it), which would never end.
        ///
        /// # Safety
        /// `dst` valid device memory for `len` bytes.
        pub unsafe fn zero(&self, dst: *mut u8, len: usize, deadline: Instant) -> Result<()> {
            if len == 0 {
                return Ok(());
            }
            self.make_current()?;
            // SAFETY: the caller's contract; the stream is waited for below.
            check(unsafe { sys::cuMemsetD8Async(dst as sys::CUdeviceptr, 0, len, self.stream) }, "cuMemsetD8Async")?;
            self.sync(deadline, "zeroing device memory")
        }

        /// Allocates `bytes` of device memory (at least one byte is allocated).
        pub fn alloc(&'static self, bytes: usize) -> Result<DeviceAlloc> {
            self.make_current()?;
            let mut p = 0;
            // SAFETY: a valid out-pointer.
            check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) }, &format!("allocating {bytes} bytes"))?;
            Ok(DeviceAlloc { ctx: self, ptr: p, len: bytes })
        }

        /// Copies `len` bytes between any two device (or device-mapped) addresses, queued on
        /// oxccl's stream.
        ///
        /// # Safety
        /// Both spans valid for `len` bytes until the stream has run the copy.
        pub unsafe fn copy_async(&self, dst: *mut u8, src: *const u8, len: usize) -> Result<()> {
            if len == 0 {
                return Ok(());
            }
            self.make_current()?;
            // SAFETY: the caller's contract.
            check(
                unsafe {
                    sys::cuMemcpyDtoDAsync_v2(dst as sys::CUdeviceptr, src as sys::CUdeviceptr, len, self.stream)
                },
                "cuMemcpyDtoDAsync",
            )
        }

        /// Copies host bytes to device memory and waits (until `deadline`) until they are
        /// there.
        ///
        /// On oxccl's stream, waited for: a plain `cuMemcpyHtoD` from pageable memory
        /// returns once the bytes are staged, before they reach the device (small copies
        /// return at once), and its legacy default stream is not ordered with oxccl's
        /// non-blocking one: a collective that followed could read the old bytes (seen on an
        /// H200: counts of 1 to 8192 came out wrong). Nor would it be safe (see
        /// [`DeviceContext::zero`]).
        ///
        /// # Safety
        /// `dst` valid device memory for `src.len()` bytes.
        pub unsafe fn copy_to_device(&self, dst: *mut u8, src: &[u8], deadline: Instant) -> Result<()> {
            if src.is_empty() {
                return Ok(());
            }
            self.make_current()?;
            // SAFETY: the caller's contract; `src` outlives the wait below.
            check(
                unsafe {
                    sys::cuMemcpyHtoDAsync_v2(dst as sys::CUdeviceptr, src.as_ptr().cast(), src.len(), self.stream)
                },
                "cuMemcpyHtoDAsync",
            )?;
            self.sync(deadline, "copying to device memory")
        }

        /// Copies device bytes to the host and waits (until `deadline`) for the copy, after
        /// the work queued on oxccl's stream before it.
        ///
        /// # Safety
        /// `src` valid device memory for `dst.len()` bytes.
        pub unsafe fn copy_to_host(&self, dst: &mut [u8], src: *const u8, deadline: Instant) -> Result<()> {
            if dst.is_empty() {
                return Ok(());
            }
            self.make_current()?;
            // SAFETY: the caller's contract; `dst` outlives the wait below.
            check(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), src as sys::CUdeviceptr, dst.len(), self.stream)
                },
                "cuMemcpyDtoHAsync",
            )?;
            self.sync(deadline, "copying from device memory")
        }

        /// Loads a PTX module and returns its functions by name.
        pub fn load_module(&self, ptx: &CStr, names: &[&str]) -> Result<Vec<*mut c_void>> {
            self.make_current()?;
            let mut module = std::ptr::null_mut();
            // SAFETY: a NUL-terminated PTX image; the module lives as long as the process.
            check(unsafe { sys::cuModuleLoadData(&mut module, ptx.as_ptr().cast()) }, "cuModuleLoadData")?;
            names
                .iter()
                .map(|n| {
                    let c = std::ffi::CString::new(*n).expect("kernel names have no NUL");
                    let mut f = std::ptr::null_mut();
                    // SAFETY: a loaded module and a NUL-terminated name.
                    check(unsafe { sys::cuModuleGetFunction(&mut f, module, c.as_ptr()) }, &format!("kernel {n}"))?;
                    Ok(f.cast())
                })
                .collect()
        }

        /// Queues `kernel` (from [`DeviceContext::load_module`]) on oxccl's stream.
        ///
        /// # Safety
        /// `params` points at the kernel's arguments, in order, each valid for the call; the
        /// memory the kernel touches stays valid until the stream has run it.
        pub unsafe fn launch(
            &self,
            kernel: *mut c_void,
            grid: u32,
            block: u32,
            params: &mut [*mut c_void],
        ) -> Result<()> {
            self.make_current()?;
            // SAFETY: the caller's contract.
            check(
                unsafe {
                    sys::cuLaunchKernel(
                        kernel.cast(),
                        grid,
                        1,
                        1,
                        block,
                        1,
                        1,
                        0,
                        self.stream,
                        params.as_mut_ptr(),
                        std::ptr::null_mut(),
                    )
                },
                "cuLaunchKernel",
            )
        }

        /// The device's compute capability (major, minor).
        pub fn compute_capability(&self) -> Result<(u32, u32)> {
            let (mut dev, mut major, mut minor) = (0, 0, 0);
            // SAFETY: valid out-pointers.
            unsafe {
                check(sys::cuDeviceGet(&mut dev, self.ordinal as i32), "cuDeviceGet")?;
                let a = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR;
                check(sys::cuDeviceGetAttribute(&mut major, a, dev), "cuDeviceGetAttribute")?;
                let a = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR;
                check(sys::cuDeviceGetAttribute(&mut minor, a, dev), "cuDeviceGetAttribute")?;
            }
            Ok((major as u32, minor as u32))
        }

        /// The number of streaming multiprocessors (to size grids).
        pub fn multiprocessors(&self) -> Result<u32> {
            let mut dev = 0;
            let mut n = 0;
            // SAFETY: valid out-pointers.
            unsafe {
                check(sys::cuDeviceGet(&mut dev, self.ordinal as i32), "cuDeviceGet")?;
                check(
                    sys::cuDeviceGetAttribute(
                        &mut n,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                        dev,
                    ),
                    "cuDeviceGetAttribute",
                )?;
            }
            Ok(n.max(1) as u32)
        }
    }

    /// A CUDA event recorded on a stream: done once the stream's work before it is.
    #[derive(Debug)]
    pub struct Event {
        ctx: &'static DeviceContext,
        raw: sys::CUevent,
    }

    // SAFETY: an event is usable from any thread with its context current (which every use
    // makes it).
    unsafe impl Send for Event {}

    impl DeviceContext {
        /// Records a new event on `stream` (a `CUstream`; NULL: the legacy default stream).
        ///
        /// # Safety
        /// `stream` is NULL or a live stream of this context.
        pub unsafe fn record_event(&'static self, stream: *mut c_void) -> Result<Event> {
            self.make_current()?;
            let mut ev = std::ptr::null_mut();
            // SAFETY: a valid out-pointer.
            check(
                unsafe { sys::cuEventCreate(&mut ev, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32) },
                "cuEventCreate",
            )?;
            let event = Event { ctx: self, raw: ev };
            // SAFETY: a live event, and the caller's stream.
            check(unsafe { sys::cuEventRecord(ev, stream.cast()) }, "cuEventRecord")?;
            Ok(event)
        }

        /// Waits (polling, until `deadline`) for `event` to be done.
        pub fn wait_event(&self, event: &Event, deadline: Instant, what: &str) -> Result<()> {
            self.make_current()?;
            // SAFETY: a live event of this context.
            poll(|| unsafe { sys::cuEventQuery(event.raw) }, deadline, what, self.ordinal)
        }

        /// A counter in pinned host memory that streams of this device can wait on (see
        /// [`HostFlag`]). Never freed: a stream may still hold a wait on it after every
        /// user of it has gone, and it is eight bytes.
        pub fn host_flag(&'static self) -> Result<&'static HostFlag> {
            self.make_current()?;
            let mut host = std::ptr::null_mut();
            let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
            // SAFETY: a valid out-pointer.
            check(unsafe { sys::cuMemHostAlloc(&mut host, 8, flags) }, "cuMemHostAlloc")?;
            // SAFETY: eight bytes just allocated; no one else holds them yet.
            unsafe { host.cast::<u64>().write_volatile(0) };
            let mut dev = 0;
            // SAFETY: a valid out-pointer and the pinned allocation just made.
            check(unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host, 0) }, "cuMemHostGetDevicePointer")?;
            Ok(Box::leak(Box::new(HostFlag { host: host.cast(), dev })))
        }
    }

    impl Drop for Event {
        fn drop(&mut self) {
            if self.ctx.make_current().is_ok() {
                // SAFETY: an event this struct created, destroyed once.
                let _ = unsafe { sys::cuEventDestroy_v2(self.raw) };
            }
        }
    }

    /// A 64-bit counter in pinned host memory, raised by the host and waited for by streams:
    /// how a call that returns at once still orders the stream's later work after itself.
    #[derive(Debug)]
    pub struct HostFlag {
        host: *mut u64,
        dev: sys::CUdeviceptr,
    }

    // SAFETY: the counter is written through volatile stores by one thread at a time (the
    // caller's contract on `raise`) and read by the GPU.
    unsafe impl Send for HostFlag {}
    // SAFETY: as above.
    unsafe impl Sync for HostFlag {}

    impl HostFlag {
        /// Sets the counter to `v` (streams waiting for `v` or less go on). Callers raise it
        /// from one thread, in increasing order.
        pub fn raise(&self, v: u64) {
            // SAFETY: our pinned allocation of eight bytes, never freed.
            unsafe { self.host.write_volatile(v) };
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        }

        /// Makes `stream` wait, from now on in its order, until the counter is at least `v`.
        ///
        /// # Safety
        /// `stream` is NULL or a live stream of the flag's device's context, made current.
        pub unsafe fn stream_wait(&self, stream: *mut c_void, v: u64) -> Result<()> {
            // SAFETY: the caller's stream; the counter's device address stays valid forever.
            check(
                unsafe {
                    sys::cuStreamWaitValue64_v2(
                        stream.cast(),
                        self.dev,
                        v,
                        sys::CUstreamWaitValue_flags::CU_STREAM_WAIT_VALUE_GEQ as u32,
                    )
                },
                "cuStreamWaitValue64",
            )
        }
    }

    /// Device memory owned by oxccl; freed on drop.
    #[derive(Debug)]
    pub struct DeviceAlloc {
        ctx: &'static DeviceContext,
        ptr: sys::CUdeviceptr,
        len: usize,
    }

    impl DeviceAlloc {
        /// The device address.
        pub fn as_ptr(&self) -> *mut u8 {
            self.ptr as *mut u8
        }
        /// Its length in bytes.
        pub fn len(&self) -> usize {
            self.len
        }
        /// Whether it is empty.
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
        /// Its device.
        pub fn context(&self) -> &'static DeviceContext {
            self.ctx
        }
    }

    impl Drop for DeviceAlloc {
        fn drop(&mut self) {
            // Work queued on oxccl's stream may still use it (cuMemFree does not wait for
            // other streams): wait for it, with a deadline; memory whose users never finish
            // is left allocated rather than freed under them.
            let deadline = Instant::now() + Duration::from_secs(60);
            match self.ctx.sync(deadline, "freeing device memory") {
                // SAFETY: an allocation of this context, freed once.
                Ok(()) => drop(unsafe { sys::cuMemFree_v2(self.ptr) }),
                Err(e) => tracing::error!(error = %e, bytes = self.len, "device memory left allocated"),
            }
        }
    }

    // SAFETY: device memory is not tied to a thread.
    unsafe impl Send for DeviceAlloc {}
    // SAFETY: as above; the struct hands out addresses only.
    unsafe impl Sync for DeviceAlloc {}

    /// The key of `len` bytes at device address `ptr` on `ordinal`: the IPC handle of the
    /// allocation holding it and the span's offset in it.
    pub fn device_key(ordinal: u32, ptr: *const u8) -> Result<(DeviceKey, u64)> {
        let ctx = context(ordinal)?;
        ctx.make_current()?;
        let (mut base, mut size) = (0, 0usize);
        // SAFETY: valid out-pointers; an unknown address is an error code.
        check(
            unsafe { sys::cuMemGetAddressRange_v2(&mut base, &mut size, ptr as sys::CUdeviceptr) },
            "cuMemGetAddressRange",
        )?;
        // The allocation's id tells a new allocation at an old address from the old one:
        // its handle is asked for once (each ask is a driver call as costly as the rest of a
        // small call) and kept while the id stays the same.
        let mut buffer_id: u64 = 0;
        // SAFETY: a valid out-pointer; an address the driver does not know is an error code.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut buffer_id as *mut u64).cast::<c_void>(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_BUFFER_ID,
                base,
            )
        };
        if r != sys::CUresult::CUDA_SUCCESS {
            buffer_id = 0;
        }
        /// (device, allocation base) -> (allocation id, IPC handle).
        type Handles = HashMap<(u32, u64), (u64, [u8; 64])>;
        let size = size as u64;
        static HANDLES: OnceLock<Mutex<Handles>> = OnceLock::new();
        let handles = HANDLES.get_or_init(Default::default);
        if buffer_id != 0 {
            let known = handles.lock().unwrap_or_else(|e| e.into_inner()).get(&(ordinal, base)).copied();
            if let Some((id, handle)) = known.filter(|(id, _)| *id == buffer_id) {
                return Ok((DeviceKey { ordinal, handle, base, buffer_id: id, size }, ptr as u64 - base));
            }
        }
        let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
        // SAFETY: a valid out-pointer and the base of a live allocation.
        let handle = match check(unsafe { sys::cuIpcGetMemHandle(&mut h, base) }, "cuIpcGetMemHandle") {
            Ok(()) => h.reserved.map(|c| c as u8),
            // Memory CUDA IPC cannot export (stream-ordered or VMM allocations): still usable
            // by peers in this process, which need the address only.
            Err(e) => {
                tracing::debug!(error = %e, "device memory without an IPC handle");
                [0; 64]
            }
        };
        if buffer_id != 0 {
            let mut m = handles.lock().unwrap_or_else(|e| e.into_inner());
            // Bounded: allocations come and go; a stale entry is only a memo.
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert((ordinal, base), (buffer_id, handle));
        }
        Ok((DeviceKey { ordinal, handle, base, buffer_id, size }, ptr as u64 - base))
    }

    /// Peers' device allocations opened in this process, once each, by the owner's
    /// allocation id (by handle where the driver gave no id); the least recently used are
    /// closed beyond 64 (a freed allocation stays reserved while a peer keeps it open).
    #[derive(Default)]
    pub struct PeerDeviceMappings {
        open: Mutex<Vec<Opened>>,
    }

    struct Opened {
        pid: u32,
        buffer_id: u64,
        handle: [u8; 64],
        local: u32,
        ptr: u64,
        size: usize,
        /// The allocation's range in the owner's process.
        owner: std::ops::Range<u64>,
    }

    /// Whether a mapping of the owner's allocation at `old` must be closed before one at
    /// `new` (in the same owner process) is opened: two live allocations never overlap, so an
    /// old one that does was freed by its owner. CUDA refuses to open the new one while the
    /// old mapping stays open ("resource already mapped": the owner's driver reused the
    /// memory, as it does for a small buffer freed and another made), and the old one is of
    /// no use to anyone.
    pub(crate) fn superseded(old: &std::ops::Range<u64>, new: &std::ops::Range<u64>) -> bool {
        old.start < new.end && new.start < old.end
    }

    /// The size of the device allocation that starts at `base` (an allocation's base).
    pub fn allocation_size(base: *const u8) -> Result<usize> {
        let (mut b, mut size) = (0, 0usize);
        // SAFETY: valid out-pointers; an unknown address is an error code.
        check(
            unsafe { sys::cuMemGetAddressRange_v2(&mut b, &mut size, base as sys::CUdeviceptr) },
            "cuMemGetAddressRange",
        )?;
        if b != base as sys::CUdeviceptr {
            return Err(Error::invalid_usage(format!("{base:p} is not the start of a device allocation")));
        }
        Ok(size)
    }

    /// Peer allocations kept open at once.
    const MAX_OPEN: usize = 64;

    impl std::fmt::Debug for PeerDeviceMappings {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "PeerDeviceMappings")
        }
    }

    impl PeerDeviceMappings {
        /// The address in this process of the allocation `key` names (of peer process
        /// `pid`), opened on first use in the CUDA context current on this thread, that
        /// context's device, and the allocation's size.
        pub fn open(&self, pid: u32, key: &DeviceKey) -> Result<(*mut u8, u32, usize)> {
            let local = current_ordinal()?;
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let same = |o: &Opened| {
                o.pid == pid
                    && o.local == local
                    && if key.buffer_id != 0 { o.buffer_id == key.buffer_id } else { o.handle == key.handle }
            };
            if let Some(i) = open.iter().position(same) {
                // Most recently used last.
                let o = open.remove(i);
                let (p, size) = (o.ptr, o.size);
                open.push(o);
                return Ok((p as *mut u8, local, size));
            }
            if key.handle == [0; 64] {
                return Err(Error::unsupported(
                    "a peer's device memory has no CUDA IPC handle (allocate it with cudaMalloc / cuMemAlloc, \
                     not stream-ordered or virtual-memory allocators)",
                ));
            }
            let owner = key.base..key.base + key.size.max(1);
            // Of an allocation its owner has freed (see `superseded`): nothing uses it.
            close_where(&mut open, |_, o| o.pid == pid && o.local == local && superseded(&o.owner, &owner));
            let mut h = sys::CUipcMemHandle { reserved: [0; 64] };
            for (d, s) in h.reserved.iter_mut().zip(key.handle) {
                *d = s as std::ffi::c_char;
            }
            let mut p = 0;
            let started = Instant::now();
            let open_handle = |p: &mut sys::CUdeviceptr| {
                // SAFETY: a valid out-pointer and a handle from the peer.
                check(
                    unsafe {
                        sys::cuIpcOpenMemHandle_v2(p, h, sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32)
                    },
                    "cuIpcOpenMemHandle",
                )
            };
            if let Err(first) = open_handle(&mut p) {
                // CUDA opens an allocation's memory once per process: a mapping of an earlier
                // allocation of the peer's whose memory its driver reused elsewhere still
                // holds it. Close this peer's mappings but the last used (which this call may
                // be using: its other buffer; no other call of this rank is under way) and
                // try again.
                let last = open.iter().rposition(|o| o.pid == pid && o.local == local);
                close_where(&mut open, |i, o| o.pid == pid && o.local == local && Some(i) != last);
                tracing::debug!(pid, error = %first, "cuIpcOpenMemHandle failed; closed the peer's older mappings, trying again");
                open_handle(&mut p)?;
            }
            // The allocation's size as this process sees it: what a peer's offsets are
            // checked against (a lying key must not name bytes beyond it).
            let size = match allocation_size(p as *const u8) {
                Ok(s) => s,
                Err(e) => {
                    // SAFETY: the address just opened, not handed out.
                    let _ = unsafe { sys::cuIpcCloseMemHandle(p) };
                    return Err(e);
                }
            };
            if open.len() >= MAX_OPEN {
                // The least recently used.
                close_where(&mut open, |i, _| i == 0);
            }
            tracing::debug!(
                pid,
                buffer_id = key.buffer_id,
                size,
                us = started.elapsed().as_micros() as u64,
                "opened a peer's device allocation (cuIpcOpenMemHandle)"
            );
            open.push(Opened { pid, buffer_id: key.buffer_id, handle: key.handle, local, ptr: p, size, owner });
            Ok((p as *mut u8, local, size))
        }
    }

    /// Closes and forgets the mappings `stale(index, mapping)` picks, which no call may be
    /// using: the caller's promise.
    fn close_where(open: &mut Vec<Opened>, mut stale: impl FnMut(usize, &Opened) -> bool) {
        let mut i = 0;
        open.retain(|o| {
            let close = stale(i, o);
            i += 1;
            if close {
                // SAFETY: an address cuIpcOpenMemHandle returned, closed once (it leaves the
                // list), and unused (the caller's promise).
                let _ = unsafe { sys::cuIpcCloseMemHandle(o.ptr) };
            }
            !close
        });
    }

    impl Drop for PeerDeviceMappings {
        fn drop(&mut self) {
            let open = self.open.get_mut().unwrap_or_else(|e| e.into_inner());
            for o in open.drain(..) {
                // SAFETY: an address cuIpcOpenMemHandle returned, closed once.
                let _ = unsafe { sys::cuIpcCloseMemHandle(o.ptr) };
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use std::ffi::{c_void, CStr};
    use std::time::Instant;

    use super::{DeviceKey, NO_FEATURE};
    use crate::error::{Error, Result};

    /// The loaded driver (never, in this build).
    #[derive(Debug)]
    pub struct Driver;

    impl Driver {
        /// How many devices the driver sees.
        pub fn device_count(&self) -> usize {
            0
        }
    }

    pub fn driver() -> Result<&'static Driver> {
        Err(Error::unsupported(NO_FEATURE))
    }

    pub fn process_uses_cuda() -> bool {
        false
    }

    pub fn pointer_device(_ptr: *const u8) -> Option<u32> {
        None
    }

    /// A device's context (never, in this build).
    #[derive(Debug)]
    pub struct DeviceContext {
        _never: std::convert::Infallible,
    }

    pub fn context(_ordinal: u32) -> Result<&'static DeviceContext> {
        Err(Error::unsupported(NO_FEATURE))
    }

    impl DeviceContext {
        /// The device ordinal.
        pub fn ordinal(&self) -> u32 {
            match self._never {}
        }
        /// Makes this context current.
        pub fn make_current(&self) -> Result<()> {
            match self._never {}
        }
        /// oxccl's stream.
        pub fn stream(&self) -> *mut c_void {
            match self._never {}
        }
        /// Waits for a stream.
        pub fn sync_stream(&self, _stream: *mut c_void, _deadline: Instant, _what: &str) -> Result<()> {
            match self._never {}
        }
        /// Waits for oxccl's stream.
        pub fn sync(&self, _deadline: Instant, _what: &str) -> Result<()> {
            match self._never {}
        }
        /// Zeroes device memory.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn zero(&self, _dst: *mut u8, _len: usize, _deadline: Instant) -> Result<()> {
            match self._never {}
        }
        /// Allocates device memory.
        pub fn alloc(&'static self, _bytes: usize) -> Result<DeviceAlloc> {
            match self._never {}
        }
        /// Queues a device copy.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn copy_async(&self, _dst: *mut u8, _src: *const u8, _len: usize) -> Result<()> {
            match self._never {}
        }
        /// Copies to the device.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn copy_to_device(&self, _dst: *mut u8, _src: &[u8], _deadline: Instant) -> Result<()> {
            match self._never {}
        }
        /// Copies to the host.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn copy_to_host(&self, _dst: &mut [u8], _src: *const u8, _deadline: Instant) -> Result<()> {
            match self._never {}
        }
        /// Loads a module.
        pub fn load_module(&self, _ptx: &CStr, _names: &[&str]) -> Result<Vec<*mut c_void>> {
            match self._never {}
        }
        /// Queues a kernel.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn launch(&self, _k: *mut c_void, _g: u32, _b: u32, _p: &mut [*mut c_void]) -> Result<()> {
            match self._never {}
        }
        /// The number of multiprocessors.
        pub fn multiprocessors(&self) -> Result<u32> {
            match self._never {}
        }
        /// The compute capability.
        pub fn compute_capability(&self) -> Result<(u32, u32)> {
            match self._never {}
        }
    }

    /// A CUDA event (never, in this build).
    #[derive(Debug)]
    pub struct Event {
        _never: std::convert::Infallible,
    }

    /// A host counter streams wait on (never, in this build).
    #[derive(Debug)]
    pub struct HostFlag {
        _never: std::convert::Infallible,
    }

    impl HostFlag {
        /// Raises the counter.
        pub fn raise(&self, _v: u64) {
            match self._never {}
        }
        /// Makes a stream wait for the counter.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn stream_wait(&self, _stream: *mut c_void, _v: u64) -> Result<()> {
            match self._never {}
        }
    }

    impl DeviceContext {
        /// Records an event.
        ///
        /// # Safety
        /// Never callable in this build.
        pub unsafe fn record_event(&'static self, _stream: *mut c_void) -> Result<Event> {
            match self._never {}
        }
        /// Waits for an event.
        pub fn wait_event(&self, _event: &Event, _deadline: Instant, _what: &str) -> Result<()> {
            match self._never {}
        }
        /// A host counter.
        pub fn host_flag(&'static self) -> Result<&'static HostFlag> {
            match self._never {}
        }
    }

    /// Device memory (never, in this build).
    #[derive(Debug)]
    pub struct DeviceAlloc {
        _never: std::convert::Infallible,
    }

    impl DeviceAlloc {
        /// The device address.
        pub fn as_ptr(&self) -> *mut u8 {
            match self._never {}
        }
        /// Its length.
        pub fn len(&self) -> usize {
            match self._never {}
        }
        /// Whether it is empty.
        pub fn is_empty(&self) -> bool {
            match self._never {}
        }
        /// Its device.
        pub fn context(&self) -> &'static DeviceContext {
            match self._never {}
        }
    }

    pub fn device_key(_ordinal: u32, _ptr: *const u8) -> Result<(DeviceKey, u64)> {
        Err(Error::unsupported(NO_FEATURE))
    }

    /// Peers' device allocations (none, in this build).
    #[derive(Debug, Default)]
    pub struct PeerDeviceMappings;

    impl PeerDeviceMappings {
        /// Opens a peer's allocation.
        pub fn open(&self, _pid: u32, _key: &DeviceKey) -> Result<(*mut u8, u32, usize)> {
            Err(Error::unsupported(NO_FEATURE))
        }
    }

    pub fn allocation_size(_base: *const u8) -> Result<usize> {
        Err(Error::unsupported(NO_FEATURE))
    }

    pub fn current_ordinal() -> Result<u32> {
        Err(Error::unsupported(NO_FEATURE))
    }
}

pub use imp::{DeviceAlloc, DeviceContext, Driver, Event, HostFlag, PeerDeviceMappings};

/// The CUDA driver, loaded and initialised on first use, or [`Error::Unsupported`](crate::error::Error::Unsupported) saying
/// why there is none (`no CUDA driver found: ...`).
pub fn driver() -> Result<&'static Driver> {
    imp::driver()
}

/// Whether this process had loaded the CUDA driver (by any library) when asked: only then can
/// it hold device pointers, so host-only programs never pay for asking about theirs.
pub fn process_uses_cuda() -> bool {
    imp::process_uses_cuda()
}

/// The device a pointer belongs to, or `None` for host memory (and wherever there is no
/// driver).
pub fn pointer_device(ptr: *const u8) -> Option<u32> {
    imp::pointer_device(ptr)
}

/// The size of the device allocation starting at `base`.
pub fn allocation_size(base: *const u8) -> Result<usize> {
    imp::allocation_size(base)
}

/// The device of the CUDA context current on this thread.
pub fn current_ordinal() -> Result<u32> {
    imp::current_ordinal()
}

/// The context of device `ordinal` (created on first use, kept for the process's life).
pub fn context(ordinal: u32) -> Result<&'static DeviceContext> {
    imp::context(ordinal)
}

/// The key naming device address `ptr` of device `ordinal` for peer processes, and the
/// address's offset in its allocation.
pub fn device_key(ordinal: u32, ptr: *const u8) -> Result<(DeviceKey, u64)> {
    imp::device_key(ordinal, ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without an NVIDIA driver (CI, this project's VMs), asking for CUDA is a
    /// clear Unsupported error, never a panic; with a driver it lists the devices.
    #[test]
    fn no_driver_is_a_clear_unsupported_error() {
        match driver() {
            Ok(d) => eprintln!("CUDA driver loaded: {} device(s)", d.device_count()),
            Err(e) => {
                assert!(matches!(e, crate::error::Error::Unsupported { .. }), "{e}");
                let text = e.to_string();
                assert!(text.contains("no CUDA driver found") || text.contains("without the `cuda` feature"), "{text}");
                assert!(context(0).is_err());
                assert!(device_key(0, std::ptr::null()).is_err());
                // Host pointers are host pointers.
                let x = 5u64;
                assert_eq!(pointer_device((&x as *const u64).cast()), None);
            }
        }
    }
}

#[cfg(all(test, feature = "cuda"))]
mod mapping_tests {
    use super::imp::superseded;

    /// A peer's mapping of an allocation its owner freed is closed before a new allocation
    /// overlapping it in the owner's address space is opened; others stay open.
    #[test]
    fn only_overlapping_earlier_allocations_are_superseded() {
        let old = 0x1000..0x3000;
        for (new, stale) in [
            (0x1000..0x3000, true),  // the same range, reallocated
            (0x2000..0x2200, true),  // a small buffer inside a freed large one
            (0x0800..0x1001, true),  // overlapping its start
            (0x2fff..0x4000, true),  // overlapping its end
            (0x3000..0x4000, false), // just after
            (0x0000..0x1000, false), // just before
        ] {
            assert_eq!(superseded(&old, &new), stale, "{old:x?} then {new:x?}");
        }
    }
}
