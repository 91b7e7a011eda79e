//! The GPU reducer: the [`Reducer`] of device memory, with kernels compiled at run time.
//!
//! Kernels (`cuda_kernels.cu`): one per element type and operator, reducing up to 32 sources
//! into up to 32 destinations in one pass (the mapped all-reduce's whole schedule is one
//! launch). They are compiled by NVRTC for the device's own architecture on first use; where
//! the machine has no NVRTC, or the driver cannot load what it made, the PTX checked in beside
//! the source (`cuda_kernels.ptx`, from `scripts/gen-ptx.sh`) is loaded instead.
//!
//! Every operation is queued on oxccl's stream of the device and returns at once;
//! [`Reducer::fence`] waits for the stream, with the caller's deadline. Scratch memory is
//! device memory, pooled like the host reducer's.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use oxccl_transport::cuda::{self, DeviceAlloc, DeviceContext};
use oxccl_transport::{Error, MemoryKind, Region, RegionMut, Result};

use super::{reduce_then_copy, Reducer, Scratch};
use crate::dtype::DataType;
use crate::op::ReduceOp;

/// The kernels' source (see the module docs).
pub const KERNEL_SOURCE: &str = include_str!("cuda_kernels.cu");
/// The same kernels as PTX for compute capability 7.0 and later, for machines without NVRTC.
pub const KERNEL_PTX: &str = include_str!("cuda_kernels.ptx");

/// Sources and destinations one launch takes (`MAXP` in the source).
const MAX_PTRS: usize = 32;

/// The suffix of a type in kernel names (`oxccl_rall_<type>_<op>`, `oxccl_div_<type>`).
pub fn type_name(d: DataType) -> &'static str {
    match d {
        DataType::I8 => "i8",
        DataType::U8 => "u8",
        DataType::I32 => "i32",
        DataType::U32 => "u32",
        DataType::I64 => "i64",
        DataType::U64 => "u64",
        DataType::F16 => "f16",
        DataType::Bf16 => "bf16",
        DataType::F32 => "f32",
        DataType::F64 => "f64",
    }
}

/// The suffix of an operator (Avg reduces as Sum, then divides).
fn op_name(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => "sum",
        ReduceOp::Prod => "prod",
        ReduceOp::Min => "min",
        ReduceOp::Max => "max",
    }
}

const OPS: [&str; 4] = ["sum", "prod", "min", "max"];

/// Every kernel's name, in the order [`Kernels::functions`] holds them.
fn kernel_names() -> Vec<String> {
    let mut names = Vec::new();
    for d in DataType::ALL {
        for op in OPS {
            names.push(format!("oxccl_rall_{}_{op}", type_name(d)));
        }
        names.push(format!("oxccl_div_{}", type_name(d)));
    }
    names
}

/// Compiles [`KERNEL_SOURCE`] to PTX with NVRTC for `arch` (like `compute_90`), or says why
/// it could not (no NVRTC here, or the compiler's log).
pub fn compile_ptx(arch: &'static str) -> std::result::Result<String, String> {
    #[cfg(feature = "cuda")]
    {
        // SAFETY: only tries to load the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err("no NVRTC library (libnvrtc.so) on the loader's path".into());
        }
        let opts = cudarc::nvrtc::CompileOptions { arch: Some(arch), ..Default::default() };
        cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("NVRTC could not compile the kernels: {e:?}"))
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = arch;
        Err("this build of oxccl has no CUDA support".into())
    }
}

/// The loaded kernels of one device.
struct Kernels {
    /// By [`kernel_names`] order: for each type, four operators then the divide.
    functions: Vec<*mut c_void>,
    /// Grid size that fills the device.
    max_blocks: u32,
}

// SAFETY: CUfunction handles are usable from any thread with their context current.
unsafe impl Send for Kernels {}
// SAFETY: as above; they are never mutated.
unsafe impl Sync for Kernels {}

impl Kernels {
    fn load(ctx: &DeviceContext) -> Result<Kernels> {
        let names = kernel_names();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let arch = arch_of(ctx);
        let compiled = arch.clone().and_then(compile_ptx);
        let from_nvrtc = match &compiled {
            Ok(ptx) => {
                let c = CString::new(ptx.as_str()).map_err(|_| Error::internal("PTX with a NUL byte"))?;
                ctx.load_module(&c, &refs).map_err(|e| e.to_string())
            }
            Err(why) => Err(why.clone()),
        };
        let functions = match from_nvrtc {
            Ok(f) => {
                tracing::info!(device = ctx.ordinal(), arch = ?arch, "oxccl GPU kernels: compiled by NVRTC");
                f
            }
            Err(why) => {
                tracing::info!(
                    device = ctx.ordinal(),
                    "oxccl GPU kernels: NVRTC path unavailable ({why}); loading the built-in PTX"
                );
                let c = CString::new(KERNEL_PTX).map_err(|_| Error::internal("PTX with a NUL byte"))?;
                ctx.load_module(&c, &refs).map_err(|e| {
                    Error::unsupported(format!(
                        "cannot load oxccl's GPU kernels on cuda:{}: NVRTC: {why}; built-in PTX: {e}",
                        ctx.ordinal()
                    ))
                })?
            }
        };
        let max_blocks = ctx.multiprocessors()? * 8;
        Ok(Kernels { functions, max_blocks })
    }

    fn reduce(&self, d: DataType, op: ReduceOp) -> *mut c_void {
        let t = DataType::ALL.iter().position(|x| *x == d).expect("a known type");
        let o = OPS.iter().position(|x| *x == op_name(op)).expect("a known operator");
        self.functions[t * 5 + o]
    }

    fn divide(&self, d: DataType) -> *mut c_void {
        let t = DataType::ALL.iter().position(|x| *x == d).expect("a known type");
        self.functions[t * 5 + 4]
    }
}

/// `compute_XY` of the device, for NVRTC.
fn arch_of(ctx: &DeviceContext) -> std::result::Result<&'static str, String> {
    let (major, minor) = ctx.compute_capability().map_err(|e| e.to_string())?;
    // Leaked once per distinct architecture (a handful per process at most).
    static ARCHS: OnceLock<Mutex<HashMap<(u32, u32), &'static str>>> = OnceLock::new();
    let mut m = ARCHS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    Ok(m.entry((major, minor)).or_insert_with(|| Box::leak(format!("compute_{major}{minor}").into_boxed_str())))
}

/// The kernels of device `ordinal`, loaded once per process.
fn kernels(ctx: &'static DeviceContext) -> Result<Arc<Kernels>> {
    static LOADED: OnceLock<Mutex<HashMap<u32, Arc<Kernels>>>> = OnceLock::new();
    let mut m = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = m.get(&ctx.ordinal()) {
        return Ok(k.clone());
    }
    let k = Arc::new(Kernels::load(ctx)?);
    m.insert(ctx.ordinal(), k.clone());
    Ok(k)
}

/// The pointer arrays a reduction kernel takes by value (`struct Ptrs` in the source).
#[repr(C)]
struct Ptrs {
    src: [*const c_void; MAX_PTRS],
    dst: [*mut c_void; MAX_PTRS],
}

type Pool = super::ScratchPool<DeviceAlloc>;

/// The reducer of one GPU's memory. Cheap to clone; clones share the scratch pool.
#[derive(Clone)]
pub struct CudaReducer {
    ctx: &'static DeviceContext,
    kernels: Arc<Kernels>,
    pool: Pool,
}

impl std::fmt::Debug for CudaReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaReducer(cuda:{})", self.ctx.ordinal())
    }
}

impl CudaReducer {
    /// The reducer of device `ordinal`: its context, and its kernels (compiled on first
    /// use). [`Error::Unsupported`] where there is no CUDA.
    pub fn new(ordinal: u32) -> Result<CudaReducer> {
        let ctx = cuda::context(ordinal)?;
        Ok(CudaReducer { ctx, kernels: kernels(ctx)?, pool: Pool::new(DeviceAlloc::len, usize::MAX) })
    }

    /// The device's context.
    pub fn context(&self) -> &'static DeviceContext {
        self.ctx
    }

    fn check(&self, kind: MemoryKind, what: &str) -> Result<()> {
        match kind {
            MemoryKind::Device { ordinal } if ordinal == self.ctx.ordinal() => Ok(()),
            // Peer memory opened here is addressed through this device.
            other => Err(Error::unsupported(format!(
                "the reducer of cuda:{} cannot touch {what} in {other:?} memory",
                self.ctx.ordinal()
            ))),
        }
    }

    fn grid(&self, n: usize) -> (u32, u32) {
        const BLOCK: u32 = 256;
        let blocks = n.div_ceil(BLOCK as usize).clamp(1, self.kernels.max_blocks as usize) as u32;
        (blocks, BLOCK)
    }

    /// Queues one reduction kernel: `dsts[k][i] = srcs[0][i] op srcs[1][i] ...`.
    fn launch_reduce(
        &self,
        dtype: DataType,
        op: ReduceOp,
        dsts: &[*mut u8],
        srcs: &[*const u8],
        count: usize,
        avg: bool,
    ) -> Result<()> {
        debug_assert!(srcs.len() <= MAX_PTRS && dsts.len() <= MAX_PTRS && !srcs.is_empty());
        if count == 0 || dsts.is_empty() {
            return Ok(());
        }
        let mut p = Ptrs { src: [std::ptr::null(); MAX_PTRS], dst: [std::ptr::null_mut(); MAX_PTRS] };
        for (slot, s) in p.src.iter_mut().zip(srcs) {
            *slot = s.cast();
        }
        for (slot, d) in p.dst.iter_mut().zip(dsts) {
            *slot = d.cast();
        }
        let (mut nsrc, mut ndst) = (srcs.len() as i32, dsts.len() as i32);
        let (mut n, mut avg) = (count as u64, i32::from(avg));
        let mut params: [*mut c_void; 5] = [
            (&mut p as *mut Ptrs).cast(),
            (&mut nsrc as *mut i32).cast(),
            (&mut ndst as *mut i32).cast(),
            (&mut n as *mut u64).cast(),
            (&mut avg as *mut i32).cast(),
        ];
        let (grid, block) = self.grid(count);
        // SAFETY: the parameters match the kernel's signature and live across the call (the
        // driver copies them at launch); the regions were checked to be device memory of this
        // device, valid until the caller's fence.
        unsafe { self.ctx.launch(self.kernels.reduce(dtype, op), grid, block, &mut params) }
    }
}

impl Reducer for CudaReducer {
    fn memory_kind(&self) -> MemoryKind {
        MemoryKind::Device { ordinal: self.ctx.ordinal() }
    }

    fn reduce(&self, dtype: DataType, op: ReduceOp, dst: RegionMut, a: Region, b: Region) -> Result<()> {
        self.check(dst.kind(), "a destination")?;
        self.check(a.kind(), "an operand")?;
        self.check(b.kind(), "an operand")?;
        if dst.len() != a.len() || dst.len() != b.len() || !dst.len().is_multiple_of(dtype.size()) {
            return Err(Error::internal(format!(
                "reduce over regions of {}, {} and {} bytes of {dtype}",
                dst.len(),
                a.len(),
                b.len()
            )));
        }
        // Avg reduces as Sum here (the trait's rule); the kernel divides only when asked.
        self.launch_reduce(dtype, op, &[dst.as_mut_ptr()], &[a.as_ptr(), b.as_ptr()], dst.len() / dtype.size(), false)
    }

    fn copy(&self, dst: RegionMut, src: Region) -> Result<()> {
        self.check(dst.kind(), "a destination")?;
        self.check(src.kind(), "a source")?;
        if dst.len() != src.len() {
            return Err(Error::internal(format!("copy of {} bytes into {}", src.len(), dst.len())));
        }
        if std::ptr::eq(dst.as_mut_ptr(), src.as_ptr()) {
            return Ok(());
        }
        // SAFETY: device regions of this device, valid until the caller's fence.
        unsafe { self.ctx.copy_async(dst.as_mut_ptr(), src.as_ptr(), dst.len()) }
    }

    fn reduce_into_all(
        &self,
        dtype: DataType,
        op: ReduceOp,
        dsts: &[RegionMut],
        srcs: &[Region],
        streaming: bool,
    ) -> Result<()> {
        let n = super::source_len(dtype, srcs)?;
        for s in srcs {
            self.check(s.kind(), "an operand")?;
        }
        for d in dsts {
            self.check(d.kind(), "a destination")?;
            if d.len() != n {
                return Err(Error::internal(format!("reduce into a destination of {} bytes, not {n}", d.len())));
            }
        }
        if srcs.len() > MAX_PTRS || dsts.len() > MAX_PTRS {
            return reduce_then_copy(self, dtype, op, dsts, srcs, streaming);
        }
        let d: Vec<*mut u8> = dsts.iter().map(|d| d.as_mut_ptr()).collect();
        let s: Vec<*const u8> = srcs.iter().map(|s| s.as_ptr()).collect();
        self.launch_reduce(dtype, op, &d, &s, n / dtype.size(), op == ReduceOp::Avg)
    }

    fn divide(&self, dtype: DataType, buf: RegionMut, divisor: usize) -> Result<()> {
        self.check(buf.kind(), "a buffer")?;
        if divisor == 0 {
            return Err(Error::internal("divide by zero ranks"));
        }
        let count = buf.len() / dtype.size();
        if count == 0 {
            return Ok(());
        }
        let mut ptr: *mut c_void = buf.as_mut_ptr().cast();
        let mut n = count as u64;
        let mut d = divisor as i32;
        let mut params: [*mut c_void; 3] =
            [(&mut ptr as *mut *mut c_void).cast(), (&mut n as *mut u64).cast(), (&mut d as *mut i32).cast()];
        let (grid, block) = self.grid(count);
        // SAFETY: as in `launch_reduce`.
        unsafe { self.ctx.launch(self.kernels.divide(dtype), grid, block, &mut params) }
    }

    fn scratch(&self, bytes: usize) -> Result<Scratch> {
        let alloc = match self.pool.take(bytes) {
            Some(a) => a,
            None => self.ctx.alloc(bytes.max(1 << 20))?,
        };
        // SAFETY: device memory owned by `alloc`, which the scratch keeps alive.
        let region = unsafe {
            RegionMut::from_raw_parts(alloc.as_ptr(), alloc.len(), MemoryKind::Device { ordinal: self.ctx.ordinal() })
        };
        Ok(Scratch { region, _keep: Box::new(PoolReturn { pool: self.pool.clone(), alloc: Some(alloc) }) })
    }

    fn fence(&self, deadline: Instant) -> Result<()> {
        self.ctx.sync(deadline, "waiting for the GPU")
    }
}

/// Gives a scratch allocation back to the pool (operations queued on it run in stream
/// order before any later user of the same allocation).
struct PoolReturn {
    pool: Pool,
    alloc: Option<DeviceAlloc>,
}

impl Drop for PoolReturn {
    fn drop(&mut self) {
        if let Some(a) = self.alloc.take() {
            self.pool.give(a);
        }
    }
}

/// What `scripts/gen-ptx.sh` checks in: NVRTC's PTX with its ISA version lowered to 7.0
/// (CUDA 11.0 drivers and later load it; the kernels use nothing newer), so the fallback
/// loads on the drivers of older machines too.
pub fn normalise_ptx(ptx: &str) -> String {
    ptx.trim_end_matches(['\n', '\0'])
        .split('\n')
        .map(|l| if l.starts_with(".version ") { ".version 7.0" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_is_named_once_and_found_by_type_and_operator() {
        let names = kernel_names();
        assert_eq!(names.len(), DataType::ALL.len() * 5);
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for n in &names {
            assert!(KERNEL_SOURCE.contains("oxccl_rall_##t##_##op") || KERNEL_SOURCE.contains(n.as_str()));
            assert!(KERNEL_PTX.contains(&format!(".entry {n}(")), "the built-in PTX lacks {n}");
        }
        // The order the lookups assume.
        for (t, d) in DataType::ALL.iter().enumerate() {
            for op in ReduceOp::ALL {
                assert_eq!(
                    names[t * 5 + OPS.iter().position(|o| *o == op_name(op)).unwrap()],
                    format!("oxccl_rall_{}_{}", type_name(*d), op_name(op))
                );
            }
            assert_eq!(names[t * 5 + 4], format!("oxccl_div_{}", type_name(*d)));
        }
    }

    /// NVRTC compiles the kernels wherever it is installed (CI installs it and sets
    /// OXCCL_REQUIRE_NVRTC), and the built-in PTX is what the same NVRTC makes of the source
    /// (regenerate with scripts/gen-ptx.sh).
    #[test]
    fn kernels_compile_and_the_built_in_ptx_is_current() {
        match compile_ptx("compute_70") {
            Ok(ptx) => {
                let version = |p: &str| p.lines().find(|l| l.contains("Cuda compilation tools")).map(str::to_string);
                assert_eq!(ptx.matches(".visible .entry ").count(), DataType::ALL.len() * 5);
                if version(&ptx) == version(KERNEL_PTX) {
                    let normalised = crate::kernels::cuda::normalise_ptx(&ptx);
                    assert!(normalised == KERNEL_PTX, "cuda_kernels.ptx is stale: run scripts/gen-ptx.sh");
                } else {
                    eprintln!(
                        "NVRTC {:?} differs from the one that made cuda_kernels.ptx; compiled only",
                        version(&ptx)
                    );
                }
            }
            Err(why) => {
                // CI installs NVRTC and says so.
                assert!(std::env::var_os("OXCCL_REQUIRE_NVRTC").is_none(), "NVRTC was required: {why}");
                eprintln!("skipped: {why}");
            }
        }
    }
}
