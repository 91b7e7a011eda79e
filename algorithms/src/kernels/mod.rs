//! Reducers: the only code that reads and combines the bytes of buffers. Algorithms call a
//! [`Reducer`] chosen by memory kind (host here; a GPU reducer implements the same trait), so
//! one schedule serves every kind of memory.

mod half_simd;
pub(crate) mod host;

#[cfg(feature = "cuda")]
pub mod cuda;

use std::sync::{Arc, Mutex};

use oxccl_transport::{Error, MemoryKind, Region, RegionMut, Result};

use crate::dtype::DataType;
use crate::op::ReduceOp;
use host::Alias;

/// Scratch memory handed out by a reducer, of the reducer's memory kind. Returned to the
/// reducer's pool on drop.
pub struct Scratch {
    region: RegionMut,
    _keep: Box<dyn Send>,
}

impl Scratch {
    /// The whole scratch region.
    pub fn region(&self) -> RegionMut {
        self.region
    }
}

/// Reduction, copy and scratch allocation for one kind of memory.
pub trait Reducer: Send + Sync {
    /// The memory this reducer works on.
    fn memory_kind(&self) -> MemoryKind;

    /// `dst[i] = a[i] op b[i]` over `dst.len() / dtype.size()` elements (`Avg` reduces as
    /// `Sum`). `dst` may be exactly `a` or exactly `b`; any other overlap is refused.
    fn reduce(&self, dtype: DataType, op: ReduceOp, dst: RegionMut, a: Region, b: Region) -> Result<()>;

    /// Copies `src` into `dst` (same length).
    fn copy(&self, dst: RegionMut, src: Region) -> Result<()>;

    /// Copies `src` into `dst` (same length, not overlapping), bypassing the cache where the
    /// memory kind allows it: for large outputs nobody reads soon, so they neither cost a read
    /// of every destination line nor push the working set out of the cache. The bytes are
    /// visible to a peer that synchronises with this rank after the call returns.
    fn copy_streaming(&self, dst: RegionMut, src: Region) -> Result<()> {
        self.copy(dst, src)
    }

    /// `d = s0 op s1 op ...` (the sources in order) for every `d` in `dsts`, each of the
    /// sources' length (`Avg`: the sum divided by the number of sources, as [`Reducer::divide`]
    /// divides), with streaming stores when `streaming` (see
    /// [`Reducer::copy_streaming`]). A destination may be exactly one of the sources when
    /// not streaming; any other overlap is refused. Reads each source once however many
    /// destinations there are. At least two sources.
    fn reduce_into_all(
        &self,
        dtype: DataType,
        op: ReduceOp,
        dsts: &[RegionMut],
        srcs: &[Region],
        streaming: bool,
    ) -> Result<()> {
        reduce_then_copy(self, dtype, op, dsts, srcs, streaming)
    }

    /// Divides every element of `buf` by `divisor` (the last step of `Avg`).
    fn divide(&self, dtype: DataType, buf: RegionMut, divisor: usize) -> Result<()>;

    /// At least `bytes` of scratch memory, aligned to 8 bytes (enough for every element type).
    fn scratch(&self, bytes: usize) -> Result<Scratch>;

    /// Returns once every operation asked of this reducer so far has finished and its
    /// writes are visible to peers (or fails at `deadline`). The host reducer's operations
    /// finish before they return; a GPU's are queued on a stream, and this waits for it.
    fn fence(&self, deadline: std::time::Instant) -> Result<()> {
        let _ = deadline;
        Ok(())
    }
}

/// The common length of [`Reducer::reduce_into_all`]'s sources: at least two, of equal
/// lengths, whole elements of `dtype`.
fn source_len(dtype: DataType, srcs: &[Region]) -> Result<usize> {
    let Some(n) = srcs.first().map(|s| s.len()) else {
        return Err(Error::internal("reduce into all without sources"));
    };
    if srcs.len() < 2 || srcs.iter().any(|s| s.len() != n) || !n.is_multiple_of(dtype.size()) {
        return Err(Error::internal(format!("reduce of {} sources of unequal or partial {dtype} lengths", srcs.len())));
    }
    Ok(n)
}

/// [`Reducer::reduce_into_all`] from the other operations: the sources reduced in order
/// through a small scratch piece (divided for `Avg`), which is copied to every destination
/// (so a destination that is one of the sources is read whole, piece by piece, before it is
/// written).
fn reduce_then_copy<R: Reducer + ?Sized>(
    r: &R,
    dtype: DataType,
    op: ReduceOp,
    dsts: &[RegionMut],
    srcs: &[Region],
    streaming: bool,
) -> Result<()> {
    if srcs.len() < 2 {
        return Err(Error::internal("reduce into all needs two sources"));
    }
    let n = srcs[0].len();
    let piece_bytes = (16usize << 10).next_multiple_of(dtype.size());
    let piece = r.scratch(piece_bytes.min(n.max(dtype.size())))?;
    let mut at = 0;
    while at < n {
        let b = at..(at + piece_bytes).min(n);
        let acc = piece.region().slice(0..b.len());
        r.reduce(dtype, op, acc, srcs[0].slice(b.clone()), srcs[1].slice(b.clone()))?;
        for s in &srcs[2..] {
            r.reduce(dtype, op, acc, acc.as_region(), s.slice(b.clone()))?;
        }
        if op == ReduceOp::Avg {
            r.divide(dtype, acc, srcs.len())?;
        }
        for d in dsts {
            if streaming {
                r.copy_streaming(d.slice(b.clone()), acc.as_region())?;
            } else {
                r.copy(d.slice(b.clone()), acc.as_region())?;
            }
        }
        at = b.end;
    }
    Ok(())
}

/// A reducer's scratch buffers kept for reuse, shared by its clones. `len` gives a buffer's
/// size in bytes.
///
/// A request takes the smallest buffer that fits, so the larger ones stay for the calls that
/// need them; a full pool gives up its smallest. (Refusing the returned buffer instead left
/// a pool of four small ones after a run of small calls, and every larger call then
/// allocated its scratch afresh and page-faulted through it: 2-rank shm ring reduce-scatter
/// of 16 MiB took 5.1 ms after small calls, 1.5 ms in a process that had made none.)
pub(crate) struct ScratchPool<T> {
    bufs: Arc<Mutex<Vec<T>>>,
    len: fn(&T) -> usize,
    /// Bytes kept at most, all buffers together.
    max_bytes: usize,
}

impl<T> Clone for ScratchPool<T> {
    fn clone(&self) -> Self {
        ScratchPool { bufs: self.bufs.clone(), len: self.len, max_bytes: self.max_bytes }
    }
}

impl<T> ScratchPool<T> {
    /// Buffers kept at most (a collective holds up to two at once).
    pub(crate) const KEPT: usize = 4;

    /// An empty pool of buffers whose size in bytes `len` gives, keeping at most
    /// `max_bytes` in all.
    pub(crate) fn new(len: fn(&T) -> usize, max_bytes: usize) -> Self {
        ScratchPool { bufs: Arc::default(), len, max_bytes }
    }

    /// The smallest pooled buffer of at least `bytes`, if any.
    pub(crate) fn take(&self, bytes: usize) -> Option<T> {
        let mut p = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
        let i = (0..p.len()).filter(|&i| (self.len)(&p[i]) >= bytes).min_by_key(|&i| (self.len)(&p[i]))?;
        Some(p.swap_remove(i))
    }

    /// Keeps `buf` for a later request (a buffer larger than the pool's byte limit is
    /// freed); while the pool holds more than [`Self::KEPT`] buffers or more bytes than its
    /// limit, its smallest buffer is dropped (after the lock is released: freeing device
    /// memory may wait for the device).
    pub(crate) fn give(&self, buf: T) {
        if (self.len)(&buf) > self.max_bytes {
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut p = self.bufs.lock().unwrap_or_else(|e| e.into_inner());
            p.push(buf);
            let mut total: usize = p.iter().map(self.len).sum();
            while p.len() > Self::KEPT || total > self.max_bytes {
                let smallest = (0..p.len()).min_by_key(|&i| (self.len)(&p[i])).unwrap_or(0);
                let b = p.swap_remove(smallest);
                total -= (self.len)(&b);
                evicted.push(b);
            }
        }
        drop(evicted);
    }

    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.bufs.lock().unwrap().len()
    }
}

/// Host scratch kept between calls, all buffers together (a larger buffer is freed after
/// its call). Calls up to this size reuse their scratch; above 64 MiB, where this limit
/// was before, every call page-faulted through fresh scratch: a 2-rank TCP
/// recursive-doubling all-reduce of 256 MiB took 344 ms against 183 with it pooled, a
/// 4-rank Bruck all-gather 417 against 236.
const MAX_POOLED_BYTES: usize = 1 << 30;

type Pool = ScratchPool<Vec<u64>>;

impl Default for Pool {
    fn default() -> Self {
        ScratchPool::new(|b: &Vec<u64>| b.len() * 8, MAX_POOLED_BYTES)
    }
}

struct PoolReturn {
    pool: Pool,
    buf: Option<Vec<u64>>,
}

impl Drop for PoolReturn {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.give(b);
        }
    }
}

/// The CPU reducer: vectorised kernels (AVX2 when the CPU has it, portable otherwise) and a
/// small pool of scratch buffers reused across calls (a fresh large allocation per call would
/// cost page faults on every collective).
#[derive(Default, Clone)]
pub struct HostReducer {
    pool: Pool,
}

impl HostReducer {
    /// A reducer with an empty scratch pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which kernel family runs on this CPU, for logs and benchmarks.
    pub fn kernel_name() -> &'static str {
        if host::has_avx2() {
            "avx2"
        } else {
            "portable"
        }
    }
}

fn check_host(r: MemoryKind, what: &str) -> Result<()> {
    if r != MemoryKind::Host {
        return Err(Error::unsupported(format!("the host reducer cannot touch {what} in {r:?} memory")));
    }
    Ok(())
}

fn check_aligned(p: *const u8, dtype: DataType) -> Result<()> {
    if !(p as usize).is_multiple_of(dtype.size()) {
        return Err(Error::invalid_argument(format!(
            "buffer at {p:p} is not aligned to its element size ({} bytes for {dtype})",
            dtype.size()
        )));
    }
    Ok(())
}

impl Reducer for HostReducer {
    fn memory_kind(&self) -> MemoryKind {
        MemoryKind::Host
    }

    fn reduce(&self, dtype: DataType, op: ReduceOp, dst: RegionMut, a: Region, b: Region) -> Result<()> {
        check_host(dst.kind(), "a destination")?;
        check_host(a.kind(), "an operand")?;
        check_host(b.kind(), "an operand")?;
        if dst.len() != a.len() || dst.len() != b.len() || !dst.len().is_multiple_of(dtype.size()) {
            return Err(Error::internal(format!(
                "reduce over regions of {}, {} and {} bytes of {dtype}",
                dst.len(),
                a.len(),
                b.len()
            )));
        }
        let alias = if std::ptr::eq(dst.as_mut_ptr(), a.as_ptr()) {
            Alias::DstIsA
        } else if std::ptr::eq(dst.as_mut_ptr(), b.as_ptr()) {
            Alias::DstIsB
        } else if dst.overlaps(&a) || dst.overlaps(&b) {
            return Err(Error::internal("reduce destination partly overlaps an operand"));
        } else {
            Alias::None
        };
        for p in [dst.as_mut_ptr() as *const u8, a.as_ptr(), b.as_ptr()] {
            check_aligned(p, dtype)?;
        }
        // SAFETY: all three regions are host memory of equal length, valid under their
        // constructors' promise; aliasing was classified above; alignment checked.
        unsafe {
            host::reduce_bytes(dtype, op, alias, dst.as_mut_ptr(), a.as_ptr(), b.as_ptr(), dst.len() / dtype.size())
        };
        Ok(())
    }

    fn copy(&self, dst: RegionMut, src: Region) -> Result<()> {
        check_host(dst.kind(), "a destination")?;
        check_host(src.kind(), "a source")?;
        if dst.len() != src.len() {
            return Err(Error::internal(format!("copy of {} bytes into {}", src.len(), dst.len())));
        }
        if !std::ptr::eq(dst.as_mut_ptr(), src.as_ptr()) && !dst.is_empty() {
            // SAFETY: both host regions are valid for `len` bytes under their constructors'
            // promise; `copy` tolerates overlap.
            unsafe { std::ptr::copy(src.as_ptr(), dst.as_mut_ptr(), dst.len()) };
        }
        Ok(())
    }

    fn copy_streaming(&self, dst: RegionMut, src: Region) -> Result<()> {
        check_host(dst.kind(), "a destination")?;
        check_host(src.kind(), "a source")?;
        if dst.len() != src.len() || dst.overlaps(&src) {
            return Err(Error::internal(format!(
                "streaming copy of {} bytes into {} (or overlapping)",
                src.len(),
                dst.len()
            )));
        }
        // SAFETY: both host regions are valid for `len` bytes under their constructors'
        // promise and do not overlap (checked).
        unsafe { oxccl_transport::copy::copy_streaming(dst.as_mut_ptr(), src.as_ptr(), dst.len()) };
        Ok(())
    }

    fn reduce_into_all(
        &self,
        dtype: DataType,
        op: ReduceOp,
        dsts: &[RegionMut],
        srcs: &[Region],
        streaming: bool,
    ) -> Result<()> {
        let n = source_len(dtype, srcs)?;
        if n == 0 && dsts.iter().all(|d| d.is_empty()) {
            return Ok(());
        }
        for s in srcs {
            check_host(s.kind(), "an operand")?;
            check_aligned(s.as_ptr(), dtype)?;
        }
        for (i, d) in dsts.iter().enumerate() {
            check_host(d.kind(), "a destination")?;
            check_aligned(d.as_mut_ptr(), dtype)?;
            let exact = srcs.iter().any(|s| std::ptr::eq(d.as_mut_ptr(), s.as_ptr()));
            if d.len() != n
                || (exact && streaming)
                || (!exact && srcs.iter().any(|s| d.overlaps(s)))
                || dsts[..i].iter().any(|e| d.overlaps(&e.as_region()))
            {
                return Err(Error::internal(format!(
                    "reduce into {} destinations of {n} bytes: a length differs or they overlap",
                    dsts.len()
                )));
            }
        }
        let half = match dtype {
            DataType::F16 => Some(half_simd::Half::F16),
            DataType::Bf16 => Some(half_simd::Half::Bf16),
            _ => None,
        };
        let nt = streaming && dsts.iter().all(|d| d.as_mut_ptr() as usize % 32 == dsts[0].as_mut_ptr() as usize % 32);
        let ptrs: Vec<*mut u8> = dsts.iter().map(|d| d.as_mut_ptr()).collect();
        if let Some(h) = half {
            if half_simd::available() && !dsts.is_empty() && (nt || !streaming) {
                let s: Vec<*const u16> = srcs.iter().map(|s| s.as_ptr().cast()).collect();
                // SAFETY: host regions valid under their constructors' promise, of equal
                // length, 2-byte aligned, overlapping only exactly and not when streaming
                // (checked above); at least two sources (`source_len`); destinations share
                // their alignment mod 32 when streaming (`nt`); the vector kernel exists.
                unsafe { half_simd::reduce_half_lines(h, op, &ptrs, &s, n / 2, nt) };
                return Ok(());
            }
        }
        #[cfg(target_arch = "x86_64")]
        if host::has_avx2() && half.is_none() && !dsts.is_empty() && (nt || !streaming) {
            let count = n / dtype.size();
            macro_rules! run {
                ($t:ty) => {{
                    let s: Vec<*const $t> = srcs.iter().map(|s| s.as_ptr().cast()).collect();
                    // SAFETY: host regions valid under their constructors' promise, of equal
                    // length, aligned, overlapping only exactly and not when streaming
                    // (checked above); at least two sources; destinations share their
                    // alignment mod 32 when streaming (`nt`); AVX2 present.
                    unsafe { host::reduce_lines::<$t>(op, &ptrs, &s, count, nt) }
                }};
            }
            match dtype {
                DataType::I8 => run!(i8),
                DataType::U8 => run!(u8),
                DataType::I32 => run!(i32),
                DataType::U32 => run!(u32),
                DataType::I64 => run!(i64),
                DataType::U64 => run!(u64),
                DataType::F32 => run!(f32),
                DataType::F64 => run!(f64),
                DataType::F16 | DataType::Bf16 => unreachable!("half types took their own kernel"),
            }
            return Ok(());
        }
        // CPUs without the vector kernels, destinations of different alignments.
        reduce_then_copy(self, dtype, op, dsts, srcs, streaming)
    }

    fn divide(&self, dtype: DataType, buf: RegionMut, divisor: usize) -> Result<()> {
        check_host(buf.kind(), "a buffer")?;
        check_aligned(buf.as_mut_ptr(), dtype)?;
        if divisor == 0 {
            return Err(Error::internal("divide by zero ranks"));
        }
        // SAFETY: a valid, writable host region of whole elements (checked by the caller's
        // construction), aligned as checked.
        unsafe { host::divide_bytes(dtype, buf.as_mut_ptr(), buf.len() / dtype.size(), divisor) };
        Ok(())
    }

    fn scratch(&self, bytes: usize) -> Result<Scratch> {
        let words = bytes.div_ceil(8).max(8);
        let mut buf = self.pool.take(words * 8).unwrap_or_else(|| vec![0u64; words]);
        // SAFETY: the Vec's heap memory stays put (we never resize it) and lives in the
        // `PoolReturn` kept by the Scratch, so it outlives the region.
        let region = unsafe { RegionMut::from_raw_parts(buf.as_mut_ptr().cast(), bytes, MemoryKind::Host) };
        Ok(Scratch { region, _keep: Box::new(PoolReturn { pool: self.pool.clone(), buf: Some(buf) }) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    fn reg<T>(v: &[T]) -> Region {
        // SAFETY: test vectors outlive the calls.
        unsafe { Region::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v), MemoryKind::Host) }
    }
    fn reg_mut<T>(v: &mut [T]) -> RegionMut {
        // SAFETY: test vectors outlive the calls.
        unsafe { RegionMut::from_raw_parts(v.as_mut_ptr().cast(), std::mem::size_of_val(v), MemoryKind::Host) }
    }

    #[test]
    fn every_op_on_ints_wraps_like_c() {
        let r = HostReducer::new();
        let a: Vec<i8> = vec![100, -100, 3, -7, 0];
        let b: Vec<i8> = vec![100, -100, -5, 2, 0];
        let mut d = vec![0i8; 5];
        r.reduce(DataType::I8, ReduceOp::Sum, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        assert_eq!(d, vec![-56, 56, -2, -5, 0]);
        r.reduce(DataType::I8, ReduceOp::Prod, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        assert_eq!(d, a.iter().zip(&b).map(|(x, y)| x.wrapping_mul(*y)).collect::<Vec<_>>());
        r.reduce(DataType::I8, ReduceOp::Min, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        assert_eq!(d, vec![100, -100, -5, -7, 0]);
        r.reduce(DataType::I8, ReduceOp::Max, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        assert_eq!(d, vec![100, -100, 3, 2, 0]);
        let mut s = vec![-7i32, 7, 9];
        r.divide(DataType::I32, reg_mut(&mut s), 2).unwrap();
        assert_eq!(s, vec![-3, 3, 4]);
    }

    #[test]
    fn aliasing_forms_agree_with_the_three_buffer_form() {
        let r = HostReducer::new();
        for n in [0usize, 1, 7, 33, 1000, 4099] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            let mut d = vec![0f32; n];
            r.reduce(DataType::F32, ReduceOp::Sum, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
            assert_eq!(d, want);
            let mut da = a.clone();
            let ra = reg_mut(&mut da);
            r.reduce(DataType::F32, ReduceOp::Sum, ra, ra.as_region(), reg(&b)).unwrap();
            assert_eq!(da, want);
            let mut db = b.clone();
            let rb = reg_mut(&mut db);
            r.reduce(DataType::F32, ReduceOp::Sum, rb, reg(&a), rb.as_region()).unwrap();
            assert_eq!(db, want);
        }
    }

    #[test]
    fn half_types_round_once_through_f32() {
        let r = HostReducer::new();
        let n = 1500;
        let a: Vec<f16> = (0..n).map(|i| f16::from_f32(i as f32 * 0.1)).collect();
        let b: Vec<f16> = (0..n).map(|i| f16::from_f32(1.0 / (1.0 + i as f32))).collect();
        let mut d = vec![f16::ZERO; n];
        r.reduce(DataType::F16, ReduceOp::Sum, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        for i in 0..n {
            assert_eq!(d[i], f16::from_f32(a[i].to_f32() + b[i].to_f32()), "element {i}");
        }
        let a: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32 * 1.7)).collect();
        let b: Vec<bf16> = (0..n).map(|i| bf16::from_f32(-(i as f32) * 0.3)).collect();
        let mut d = vec![bf16::ZERO; n];
        r.reduce(DataType::Bf16, ReduceOp::Max, reg_mut(&mut d), reg(&a), reg(&b)).unwrap();
        for i in 0..n {
            assert_eq!(d[i], if b[i] > a[i] { b[i] } else { a[i] });
        }
        let mut v: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32)).collect();
        r.divide(DataType::Bf16, reg_mut(&mut v), 3).unwrap();
        for (i, x) in v.iter().enumerate() {
            assert_eq!(*x, bf16::from_f32(bf16::from_f32(i as f32).to_f32() / 3.0));
        }
    }

    #[test]
    fn refuses_partial_overlap_unaligned_and_length_mismatch() {
        let r = HostReducer::new();
        let mut v = vec![0f32; 8];
        let whole = reg_mut(&mut v);
        let e = r.reduce(
            DataType::F32,
            ReduceOp::Sum,
            whole.slice(0..16),
            whole.slice(4..20).as_region(),
            whole.slice(16..32).as_region(),
        );
        assert!(e.is_err());
        let e = r.reduce(
            DataType::F32,
            ReduceOp::Sum,
            whole.slice(1..5),
            whole.slice(8..12).as_region(),
            whole.slice(12..16).as_region(),
        );
        assert!(e.unwrap_err().to_string().contains("aligned"));
        assert!(r.copy(whole.slice(0..4), whole.slice(0..8).as_region()).is_err());
    }

    #[test]
    fn streaming_copy_moves_every_byte_at_any_alignment() {
        let r = HostReducer::new();
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        for (off, n) in [(0, 0), (1, 1), (3, 255), (5, 256), (31, 1000), (32, 4000), (7, 4993)] {
            let mut dst = vec![0u8; 5000];
            r.copy_streaming(reg_mut(&mut dst[off..off + n]), reg(&src[..n])).unwrap();
            assert_eq!(&dst[off..off + n], &src[..n], "offset {off}, {n} bytes");
            assert!(dst[..off].iter().chain(&dst[off + n..]).all(|&b| b == 0), "offset {off}: bytes outside written");
        }
        let mut v = vec![0u8; 64];
        let w = reg_mut(&mut v);
        assert!(r.copy_streaming(w.slice(0..32), w.slice(16..48).as_region()).is_err());
    }

    /// Values of every integer type that try a division: both ends, zero, ±1, and numbers
    /// near multiples of the divisors below, as i128.
    fn edge_values(min: i128, max: i128) -> Vec<i128> {
        let mut v = vec![min, min + 1, max, max - 1, 0, 1, -1, 2, -2];
        for k in [3i128, 7, 127, 128, 255, 256, 1 << 20, (1 << 31) - 1, 1 << 32, 3 << 40, 1 << 62] {
            for m in [1i128, 5, 1000, 123_456_789] {
                for off in [-1i128, 0, 1] {
                    v.push(k * m + off);
                    v.push(-(k * m) + off);
                }
            }
        }
        v.retain(|x| (min..=max).contains(x));
        v
    }

    /// Avg on integers: the wrapped sum divided by the count, truncated toward zero, for
    /// every integer type, both ends of its range, counts from 1 to past every type's range
    /// (the end of `Avg` in the other algorithms, `divide`), and the fused kernel's `Avg`
    /// of 2, 3, 5 and 8 sources. The reference divides in i128.
    #[test]
    fn integer_average_truncates_toward_zero_for_every_type_value_and_count() {
        fn check<T: Copy + PartialEq + std::fmt::Debug + TryFrom<i128>>(dtype: DataType, min: i128, max: i128)
        where
            i128: From<T>,
            <T as TryFrom<i128>>::Error: std::fmt::Debug,
        {
            let r = HostReducer::new();
            // 301 elements (whole 64-byte lines of every type and a tail), the edge values
            // in a scattered order, repeated.
            let base = edge_values(min, max);
            let vals: Vec<T> = (0..301).map(|i| T::try_from(base[(i * 7) % base.len()]).unwrap()).collect();
            let wrap = |x: i128| -> T {
                let span = max - min + 1;
                T::try_from((x - min).rem_euclid(span) + min).unwrap()
            };
            let counts = [1usize, 2, 3, 7, 49, 100, 127, 128, 200, 255, 256, 1000, 65_537, (1 << 32) + 3, 1 << 53];
            for n in counts.into_iter().chain([usize::MAX]) {
                // Whole multiples of the count and their neighbours too: where the quotient
                // is whole, a product with the rounded reciprocal falls short of it.
                let multiples = (1..=200i128).chain([max / n as i128, max / 2 / n as i128, max / 3 / n as i128]);
                let mut vals = vals.clone();
                for q in multiples.map(|q| q * n as i128) {
                    for x in [q - 1, q, q + 1, -q - 1, -q, -q + 1] {
                        if (min..=max).contains(&x) {
                            vals.push(T::try_from(x).unwrap());
                        }
                    }
                }
                let mut buf = vals.clone();
                r.divide(dtype, reg_mut(&mut buf), n).unwrap();
                let want: Vec<T> = vals.iter().map(|&x| T::try_from(i128::from(x) / n as i128).unwrap()).collect();
                assert_eq!(buf, want, "{dtype} divided by {n}");
            }
            for p in [2usize, 3, 5, 8] {
                // Source j: the values rotated by j, so every element sums different values.
                let srcs: Vec<Vec<T>> =
                    (0..p).map(|j| (0..vals.len()).map(|i| vals[(i + j * 7) % vals.len()]).collect()).collect();
                let want: Vec<T> = (0..vals.len())
                    .map(|i| {
                        let sum = wrap(srcs.iter().map(|s| i128::from(s[i])).sum());
                        T::try_from(i128::from(sum) / p as i128).unwrap()
                    })
                    .collect();
                for streaming in [false, true] {
                    let rs: Vec<Region> = srcs.iter().map(|s| reg(s)).collect();
                    let mut d = vec![vals[0]; vals.len()];
                    r.reduce_into_all(dtype, ReduceOp::Avg, &[reg_mut(&mut d)], &rs, streaming).unwrap();
                    assert_eq!(d, want, "{dtype} avg of {p} sources, streaming {streaming}");
                }
            }
        }
        check::<i8>(DataType::I8, i8::MIN.into(), i8::MAX.into());
        check::<u8>(DataType::U8, 0, u8::MAX.into());
        check::<i32>(DataType::I32, i32::MIN.into(), i32::MAX.into());
        check::<u32>(DataType::U32, 0, u32::MAX.into());
        check::<i64>(DataType::I64, i64::MIN.into(), i64::MAX.into());
        check::<u64>(DataType::U64, 0, u64::MAX.into());
    }

    #[test]
    fn reduce_into_all_matches_reduce_for_every_type_alignment_and_store_kind() {
        let r = HostReducer::new();
        for n in [0usize, 1, 15, 16, 17, 100, 1031] {
            for streaming in [false, true] {
                for shift in [0usize, 1, 3] {
                    let a: Vec<i32> = (0..n as i32).map(|i| i * 3 - 7).collect();
                    let b: Vec<i32> = (0..n as i32).map(|i| 1000 - i).collect();
                    let want: Vec<i32> = a.iter().zip(&b).map(|(x, y)| x.wrapping_mul(*y)).collect();
                    let mut d0 = vec![0i32; n + 8];
                    let mut d1 = vec![0i32; n + 8];
                    let (s0, s1) = (reg_mut(&mut d0[shift..shift + n]), reg_mut(&mut d1[..n]));
                    r.reduce_into_all(DataType::I32, ReduceOp::Prod, &[s0, s1], &[reg(&a), reg(&b)], streaming)
                        .unwrap();
                    assert_eq!(&d0[shift..shift + n], &want[..], "n {n} streaming {streaming} shift {shift}");
                    assert_eq!(&d1[..n], &want[..]);
                    assert!(d0[..shift].iter().chain(&d0[shift + n..]).all(|&x| x == 0), "bytes outside written");
                }
                let a: Vec<f64> = (0..n).map(|i| i as f64 * 0.25).collect();
                let b: Vec<f64> = (0..n).map(|i| (n - i) as f64).collect();
                let mut d: Vec<Vec<f64>> = vec![vec![0.0; n]; 3];
                let regs: Vec<RegionMut> = d.iter_mut().map(|v| reg_mut(v)).collect();
                r.reduce_into_all(DataType::F64, ReduceOp::Max, &regs, &[reg(&a), reg(&b)], streaming).unwrap();
                for v in &d {
                    assert!(v.iter().enumerate().all(|(i, x)| *x == a[i].max(b[i])));
                }
                // Four sources, in order (prod of integers is exact; min of floats too).
                let srcs: Vec<Vec<u64>> = (0..4u64).map(|j| (0..n as u64).map(|i| i % 7 + j + 1).collect()).collect();
                let want: Vec<u64> = (0..n).map(|i| srcs.iter().map(|s| s[i]).product()).collect();
                let mut d: Vec<Vec<u64>> = vec![vec![0; n]; 4];
                let regs: Vec<RegionMut> = d.iter_mut().map(|v| reg_mut(v)).collect();
                let rs: Vec<Region> = srcs.iter().map(|s| reg(s)).collect();
                r.reduce_into_all(DataType::U64, ReduceOp::Prod, &regs, &rs, streaming).unwrap();
                assert!(d.iter().all(|v| *v == want), "four sources, n {n}");
                // Avg: the sum of the sources divided by their number, as `divide` does (i32
                // truncates; f32 rounds once after the sum).
                let want: Vec<i32> = (0..n).map(|i| (0..3).map(|j| i as i32 * 5 - j * 11).sum::<i32>() / 3).collect();
                let srcs: Vec<Vec<i32>> = (0..3).map(|j| (0..n as i32).map(|i| i * 5 - j * 11).collect()).collect();
                let rs: Vec<Region> = srcs.iter().map(|s| reg(s)).collect();
                let mut d = vec![0i32; n];
                r.reduce_into_all(DataType::I32, ReduceOp::Avg, &[reg_mut(&mut d)], &rs, streaming).unwrap();
                assert_eq!(d, want, "avg, n {n}");
                let fs: Vec<Vec<f32>> = (0..3).map(|j| (0..n).map(|i| i as f32 * 0.3 + j as f32).collect()).collect();
                let rs: Vec<Region> = fs.iter().map(|s| reg(s)).collect();
                let mut d = vec![0f32; n];
                r.reduce_into_all(DataType::F32, ReduceOp::Avg, &[reg_mut(&mut d)], &rs, streaming).unwrap();
                assert!(d.iter().enumerate().all(|(i, x)| *x == (fs[0][i] + fs[1][i] + fs[2][i]) / 3.0), "f32 avg");
                let halves: Vec<Vec<bf16>> =
                    (0..2).map(|j| (0..n).map(|i| bf16::from_f32((i + j) as f32)).collect()).collect();
                let rs: Vec<Region> = halves.iter().map(|s| reg(s)).collect();
                let mut d = vec![bf16::ZERO; n];
                r.reduce_into_all(DataType::Bf16, ReduceOp::Avg, &[reg_mut(&mut d)], &rs, streaming).unwrap();
                let sum = |i: usize| bf16::from_f32(halves[0][i].to_f32() + halves[1][i].to_f32());
                assert!(d.iter().enumerate().all(|(i, x)| *x == bf16::from_f32(sum(i).to_f32() / 2.0)), "bf16 avg");
                let a: Vec<bf16> = (0..n).map(|i| bf16::from_f32(i as f32)).collect();
                let mut d: Vec<bf16> = vec![bf16::ZERO; n];
                r.reduce_into_all(DataType::Bf16, ReduceOp::Sum, &[reg_mut(&mut d)], &[reg(&a), reg(&a)], streaming)
                    .unwrap();
                assert!(d.iter().enumerate().all(|(i, x)| *x == bf16::from_f32(2.0 * i as f32)));
            }
            // In place: the destination is an operand (plain stores only).
            let mut a: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let b: Vec<u8> = vec![200; n];
            let mut other = vec![0u8; n];
            let ra = reg_mut(&mut a);
            r.reduce_into_all(
                DataType::U8,
                ReduceOp::Sum,
                &[ra, reg_mut(&mut other)],
                &[ra.as_region(), reg(&b)],
                false,
            )
            .unwrap();
            assert!(a.iter().enumerate().all(|(i, x)| *x == (i as u8).wrapping_add(200)));
            assert_eq!(a, other);
            if n > 0 {
                let ra = reg_mut(&mut a);
                assert!(r
                    .reduce_into_all(DataType::U8, ReduceOp::Sum, &[ra], &[ra.as_region(), reg(&b)], true)
                    .is_err());
            }
        }
    }

    #[test]
    fn scratch_is_reused() {
        let r = HostReducer::new();
        let p1 = r.scratch(1 << 16).unwrap().region().as_mut_ptr();
        let p2 = r.scratch(1 << 10).unwrap().region().as_mut_ptr();
        assert_eq!(p1, p2, "a returned buffer serves the next request");
        assert_eq!(p1 as usize % 8, 0);
    }

    #[test]
    fn a_pool_keeps_at_most_its_byte_limit_and_drops_the_smallest_first() {
        let pool: ScratchPool<Vec<u8>> = ScratchPool::new(Vec::len, 100);
        pool.give(vec![0; 60]);
        pool.give(vec![0; 30]);
        assert_eq!(pool.pooled(), 2);
        // 60 + 30 + 40 is over the limit: the 30 goes, 60 + 40 stay.
        pool.give(vec![0; 40]);
        assert_eq!(pool.pooled(), 2);
        assert!(pool.take(31).is_some_and(|b| b.len() == 40));
        assert!(pool.take(1).is_some_and(|b| b.len() == 60));
        assert!(pool.take(1).is_none());
        // A buffer over the limit by itself is freed, and takes nothing with it.
        pool.give(vec![0; 10]);
        pool.give(vec![0; 101]);
        assert_eq!(pool.pooled(), 1);
        assert!(pool.take(11).is_none());
    }

    #[test]
    fn a_pool_full_of_small_buffers_still_keeps_a_large_one() {
        let r = HostReducer::new();
        // Small calls fill the pool (four held at once, then all returned).
        let small: Vec<_> = (0..Pool::KEPT).map(|_| r.scratch(1 << 10).unwrap()).collect();
        drop(small);
        let big = r.scratch(8 << 20).unwrap().region().as_mut_ptr();
        assert_eq!(
            r.scratch(8 << 20).unwrap().region().as_mut_ptr(),
            big,
            "the large buffer is reused, not allocated again"
        );
        // A small request takes a small buffer (the smallest that fits), leaving the large one.
        let s = r.scratch(1 << 10).unwrap();
        assert_ne!(s.region().as_mut_ptr(), big);
        assert_eq!(r.scratch(4 << 20).unwrap().region().as_mut_ptr(), big);
        drop(s);
        assert!(r.pool.pooled() <= Pool::KEPT);
    }
}
