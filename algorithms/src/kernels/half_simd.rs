//! f16 and bf16 reductions on x86-64 vector units: 16 lanes with AVX-512 (8 with AVX2 and
//! F16C), each lane widened to f32, combined, and rounded back once, in one pass.
//!
//! Why by hand: the conversions are the whole cost. f16 has hardware conversions
//! (`vcvtph2ps`, `vcvtps2ph`) that the compiler does not derive from integer code, and the
//! bf16 rounding written as integer code vectorises into about 40 instructions per 16 lanes
//! with AVX2, so few loads are in flight that a stream from memory runs at the latency of
//! each line (1.9 GB/s of bf16 at 16 MiB, where f32 streams at 12). The wider lanes halve
//! the instructions, and a software prefetch a fixed distance ahead keeps lines coming.
//! Every lane gives the bits the scalar conversions (`super::host::f32_to_bf16` and
//! friends, themselves bit for bit `half`'s) give: round to nearest even, subnormals kept,
//! NaNs made quiet.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::op::ReduceOp;

/// Whether [`reduce_half`] has a vector kernel on this CPU.
#[inline]
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512() || super::host::has_avx2() && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw")
}

/// Which half-precision format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Half {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
}

/// Bytes ahead of the current element that each source is prefetched. Measured on the 2-core
/// Xeon (Sapphire Rapids) VM, bf16 sum in place at 16 MiB with AVX-512: 4.0 GB/s without
/// prefetch, 6.2 at 2 KiB ahead, 7.1 at 8 KiB, 7.9 at 16 KiB; in cache (1 MiB) it costs a
/// tenth.
#[cfg(target_arch = "x86_64")]
const PREFETCH_BYTES: usize = 16 << 10;

/// Below this many bytes per operand the prefetch is left out: the data of a call this small
/// is mostly in cache already (a chunk that just landed, or a rank's slice of its input).
#[cfg(target_arch = "x86_64")]
const PREFETCH_FROM: usize = 256 << 10;

/// `dst[i] = round(f32(a[i]) op f32(b[i]))` over `n` elements of `half` (as bits).
///
/// # Safety
/// [`available`] returned true; `n` elements valid behind each pointer (writable behind
/// `dst`); `dst` is exactly `a`, exactly `b`, or overlaps neither.
pub(crate) unsafe fn reduce_half(half: Half, op: ReduceOp, dst: *mut u16, a: *const u16, b: *const u16, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both arms): the features are present (checked here and by `available`);
        // the rest is the caller's contract.
        if has_avx512() {
            unsafe {
                match half {
                    Half::F16 => reduce_avx512::<F16x16>(op, dst, a, b, n),
                    Half::Bf16 => reduce_avx512::<Bf16x16>(op, dst, a, b, n),
                }
            }
        } else {
            unsafe {
                match half {
                    Half::F16 => reduce_avx2::<F16x8>(op, dst, a, b, n),
                    Half::Bf16 => reduce_avx2::<Bf16x8>(op, dst, a, b, n),
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (half, op, dst, a, b, n);
        unreachable!("no vector half kernel on this architecture (`available` is false)")
    }
}

/// One format at one vector width: loading lanes widened to f32, storing them rounded.
#[cfg(target_arch = "x86_64")]
trait Lanes {
    /// A vector of f32 lanes.
    type V: Copy;
    /// Lanes per vector.
    const N: usize;
    /// The element type (`half`'s), whose scalar arithmetic reduces the tail.
    type Scalar: super::host::Arith<Divisor = f32>;
    /// Loads `N` elements at `p`, widened. Caller: `N` readable elements, the features.
    unsafe fn load(p: *const u16) -> Self::V;
    /// Rounds `v` and stores `N` elements at `p`. Caller: `N` writable elements, the features.
    unsafe fn store(p: *mut u16, v: Self::V);
    /// `v` rounded to the format and widened again: what a pairwise kernel's result reads as
    /// when the next operand meets it. Caller: the features.
    #[inline(always)]
    unsafe fn round(v: Self::V) -> Self::V {
        let mut t = [0u16; 16];
        debug_assert!(Self::N <= t.len());
        // SAFETY: `t` holds 16 >= N elements; the features are the caller's.
        unsafe {
            Self::store(t.as_mut_ptr(), v);
            Self::load(t.as_ptr())
        }
    }
}

/// The shared loop: vectors of `L::N` lanes, with a prefetch of both sources one line per
/// line consumed when the call is large, then the tail by the scalar kernel
/// (`host::reduce_native`, the reference these lanes equal bit for bit).
///
/// # Safety
/// As [`reduce_half`], with `L`'s features present; `f` must be safe to call with them and
/// compute `op`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn run<L: Lanes>(
    op: ReduceOp,
    f: impl Fn(L::V, L::V) -> L::V,
    dst: *mut u16,
    a: *const u16,
    b: *const u16,
    n: usize,
) {
    let prefetch = n * 2 >= PREFETCH_FROM;
    let mut i = 0;
    while i + L::N <= n {
        // SAFETY: [i, i + N) lies inside every span; both sources are read before `dst` is
        // written, so an exact alias reads the old elements. A prefetch is a hint that never
        // faults, and its address is formed with wrapping arithmetic, so past the end of the
        // buffer is allowed.
        unsafe {
            if prefetch && (i * 2) % 64 == 0 {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(i + PREFETCH_BYTES / 2).cast());
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(i + PREFETCH_BYTES / 2).cast());
            }
            let v = f(L::load(a.add(i)), L::load(b.add(i)));
            L::store(dst.add(i), v);
        }
        i += L::N;
    }
    if i < n {
        use super::host::Alias;
        let alias = if std::ptr::eq(dst, a) {
            Alias::DstIsA
        } else if std::ptr::eq(dst, b) {
            Alias::DstIsB
        } else {
            Alias::None
        };
        // SAFETY: [i, n) lies inside every span, and `dst` is exactly `a`, exactly `b`, or
        // overlaps neither (the caller's contract), as `alias` says.
        unsafe {
            super::host::reduce_native::<L::Scalar>(
                op,
                alias,
                dst.add(i).cast(),
                a.add(i).cast(),
                b.add(i).cast(),
                n - i,
            )
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn reduce_avx512<L: Lanes<V = __m512>>(op: ReduceOp, dst: *mut u16, a: *const u16, b: *const u16, n: usize) {
    // min/max take `b` first: `vminps x, y` gives `x < y ? x : y`, which is `Arith::min(a, b)`
    // (`b < a ? b : a`) with NaNs and signed zeros resolved the same way.
    // SAFETY (every arm): forwarded caller contract; the features are enabled here.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => run::<L>(op, |x, y| _mm512_add_ps(x, y), dst, a, b, n),
            ReduceOp::Prod => run::<L>(op, |x, y| _mm512_mul_ps(x, y), dst, a, b, n),
            ReduceOp::Min => run::<L>(op, |x, y| _mm512_min_ps(y, x), dst, a, b, n),
            ReduceOp::Max => run::<L>(op, |x, y| _mm512_max_ps(y, x), dst, a, b, n),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce_avx2<L: Lanes<V = __m256>>(op: ReduceOp, dst: *mut u16, a: *const u16, b: *const u16, n: usize) {
    // SAFETY (every arm): forwarded caller contract; the features are enabled here. Operand
    // order of min/max as in `reduce_avx512`.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => run::<L>(op, |x, y| _mm256_add_ps(x, y), dst, a, b, n),
            ReduceOp::Prod => run::<L>(op, |x, y| _mm256_mul_ps(x, y), dst, a, b, n),
            ReduceOp::Min => run::<L>(op, |x, y| _mm256_min_ps(y, x), dst, a, b, n),
            ReduceOp::Max => run::<L>(op, |x, y| _mm256_max_ps(y, x), dst, a, b, n),
        }
    }
}

/// `d[i] = s0[i] op s1[i] op ...` for every destination `d` in `dsts` (byte addresses of
/// `n`-element spans), as the pairwise kernel folds them: each partial result rounded to the
/// format before the next source meets it, and for `Avg` the rounded sum divided by the
/// number of sources and rounded again. Every source is read once and every destination
/// written once, a 64-byte line at a time, with non-temporal stores when `nt` (then every
/// destination must have the same address modulo 32, and a store fence ends the call).
///
/// Why: the mapped collectives reduce every rank's slice into every destination with one
/// call; through the pairwise kernel and a scratch piece, a bf16 call took 2.3-2.7x the f32
/// call of the same bytes (4 ranks, shared buffers, 4-64 MiB).
///
/// # Safety
/// [`available`] returned true; at least two sources; `n` valid elements at every source;
/// `n` writable elements at every destination, 2-byte aligned; a destination overlaps
/// another destination or a source only by being exactly that source (and then not with
/// `nt`).
pub(crate) unsafe fn reduce_half_lines(
    half: Half,
    op: ReduceOp,
    dsts: &[*mut u8],
    srcs: &[*const u16],
    n: usize,
    nt: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY (both arms): the features are present (checked here and by `available`);
        // the rest is the caller's contract.
        if has_avx512() {
            unsafe {
                match half {
                    Half::F16 => lines_avx512::<F16x16>(op, dsts, srcs, n, nt),
                    Half::Bf16 => lines_avx512::<Bf16x16>(op, dsts, srcs, n, nt),
                }
            }
        } else {
            unsafe {
                match half {
                    Half::F16 => lines_avx2::<F16x8>(op, dsts, srcs, n, nt),
                    Half::Bf16 => lines_avx2::<Bf16x8>(op, dsts, srcs, n, nt),
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (half, op, dsts, srcs, n, nt);
        unreachable!("no vector half kernel on this architecture (`available` is false)")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn lines_avx512<L: Lanes<V = __m512>>(op: ReduceOp, dsts: &[*mut u8], srcs: &[*const u16], n: usize, nt: bool) {
    let div = |v, d: f32| _mm512_div_ps(v, _mm512_set1_ps(d));
    // SAFETY (every arm): forwarded caller contract; the features are enabled here. Operand
    // order of min/max as in `reduce_avx512`.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => lines::<L>(op, |x, y| _mm512_add_ps(x, y), div, dsts, srcs, n, nt),
            ReduceOp::Prod => lines::<L>(op, |x, y| _mm512_mul_ps(x, y), div, dsts, srcs, n, nt),
            ReduceOp::Min => lines::<L>(op, |x, y| _mm512_min_ps(y, x), div, dsts, srcs, n, nt),
            ReduceOp::Max => lines::<L>(op, |x, y| _mm512_max_ps(y, x), div, dsts, srcs, n, nt),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn lines_avx2<L: Lanes<V = __m256>>(op: ReduceOp, dsts: &[*mut u8], srcs: &[*const u16], n: usize, nt: bool) {
    let div = |v, d: f32| _mm256_div_ps(v, _mm256_set1_ps(d));
    // SAFETY (every arm): forwarded caller contract; the features are enabled here. Operand
    // order of min/max as in `reduce_avx512`.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => lines::<L>(op, |x, y| _mm256_add_ps(x, y), div, dsts, srcs, n, nt),
            ReduceOp::Prod => lines::<L>(op, |x, y| _mm256_mul_ps(x, y), div, dsts, srcs, n, nt),
            ReduceOp::Min => lines::<L>(op, |x, y| _mm256_min_ps(y, x), div, dsts, srcs, n, nt),
            ReduceOp::Max => lines::<L>(op, |x, y| _mm256_max_ps(y, x), div, dsts, srcs, n, nt),
        }
    }
}

/// Elements of a 64-byte line.
#[cfg(target_arch = "x86_64")]
const LINE: usize = 32;

#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Line([u16; LINE]);

/// The loop of [`reduce_half_lines`] at one width: `f` computes `op` on widened lanes, `div`
/// divides them by a count; the head up to the destinations' first 32-byte boundary (with
/// `nt`) and the tail by the scalar arithmetic (`Arith` over `half`'s types, the reference
/// the lanes equal bit for bit).
///
/// # Safety
/// As [`reduce_half_lines`], with `L`'s features present; `f` and `div` must be safe to call
/// with them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lines<L: Lanes>(
    op: ReduceOp,
    f: impl Fn(L::V, L::V) -> L::V,
    div: impl Fn(L::V, f32) -> L::V,
    dsts: &[*mut u8],
    srcs: &[*const u16],
    n: usize,
    nt: bool,
) {
    use super::host::Arith;
    let avg = (op == ReduceOp::Avg).then_some(srcs.len());
    let (s0, s1, rest) = (srcs[0], srcs[1], &srcs[2..]);
    let g: fn(L::Scalar, L::Scalar) -> L::Scalar = match op {
        ReduceOp::Sum | ReduceOp::Avg => Arith::sum,
        ReduceOp::Prod => Arith::prod,
        ReduceOp::Min => Arith::min,
        ReduceOp::Max => Arith::max,
    };
    let scalar = |from: usize, to: usize| {
        for k in from..to {
            // SAFETY: k < n: inside every span (the caller's contract); `L::Scalar` is one of
            // `half`'s types, a transparent u16. Every source is read before any destination
            // is written, so an exact alias reads the old element.
            unsafe {
                let at = |p: *const u16| *p.add(k).cast::<L::Scalar>();
                let mut v = g(at(s0), at(s1));
                for &s in rest {
                    v = g(v, at(s));
                }
                if let Some(d) = avg {
                    v = Arith::div(v, d as f32);
                }
                for &d in dsts {
                    *d.cast::<L::Scalar>().add(k) = v;
                }
            }
        }
    };
    let mut i = 0;
    if nt {
        // Plain stores up to the first 32-byte boundary, which every destination shares.
        let mis = dsts[0] as usize % 32;
        i = if mis == 0 { 0 } else { ((32 - mis) / 2).min(n) };
        scalar(0, i);
    }
    let prefetch = n * 2 >= PREFETCH_FROM;
    let mut line = Line([0; LINE]);
    let lp = line.0.as_mut_ptr();
    while i + LINE <= n {
        // SAFETY: the line [i, i + LINE) is inside every span; `line` holds LINE elements;
        // non-temporal stores go to 32-byte boundaries (every destination shares the first
        // one's alignment, and i advanced from its boundary in whole lines). A prefetch is a
        // hint that never faults, its address formed with wrapping arithmetic.
        unsafe {
            if prefetch {
                for &s in srcs {
                    _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(i + PREFETCH_BYTES / 2).cast());
                }
            }
            let mut j = 0;
            while j < LINE {
                let mut v = f(L::load(s0.add(i + j)), L::load(s1.add(i + j)));
                for &s in rest {
                    v = f(L::round(v), L::load(s.add(i + j)));
                }
                if let Some(d) = avg {
                    v = div(L::round(v), d as f32);
                }
                L::store(lp.add(j), v);
                j += L::N;
            }
            super::host::store_line(dsts, i * 2, lp.cast(), nt);
        }
        i += LINE;
    }
    scalar(i, n);
    if nt {
        // SAFETY: a fence, no memory touched.
        unsafe { _mm_sfence() };
    }
}

#[cfg(target_arch = "x86_64")]
struct F16x16;
#[cfg(target_arch = "x86_64")]
struct Bf16x16;
#[cfg(target_arch = "x86_64")]
struct F16x8;
#[cfg(target_arch = "x86_64")]
struct Bf16x8;

/// Round to nearest even with `vcvtps2ph` (AVX-512: without raising exceptions too; the
/// F16C form takes only the rounding mode).
#[cfg(target_arch = "x86_64")]
const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
#[cfg(target_arch = "x86_64")]
const NEAREST_F16C: i32 = _MM_FROUND_TO_NEAREST_INT;

#[cfg(target_arch = "x86_64")]
impl Lanes for F16x16 {
    type V = __m512;
    const N: usize = 16;
    type Scalar = half::f16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        // SAFETY: 16 readable elements (caller); AVX-512F enabled in the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut u16, v: __m512) {
        // SAFETY: 16 writable elements (caller); AVX-512F enabled in the caller.
        unsafe { _mm256_storeu_si256(p.cast(), _mm512_cvtps_ph::<NEAREST>(v)) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Bf16x16 {
    type V = __m512;
    const N: usize = 16;
    type Scalar = half::bf16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m512 {
        // SAFETY: 16 readable elements (caller); AVX-512F/BW enabled in the caller.
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast())))) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut u16, v: __m512) {
        // As `f32_to_bf16`: add 0x7fff plus the kept part's lowest bit and cut (ties to
        // even); a NaN keeps its top bits with the quiet bit set.
        // SAFETY: 16 writable elements (caller); AVX-512F/BW enabled in the caller.
        unsafe {
            let x = _mm512_castps_si512(v);
            let hi = _mm512_srli_epi32::<16>(x);
            let bias = _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(hi, _mm512_set1_epi32(1)));
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(x, bias));
            let abs = _mm512_and_si512(x, _mm512_set1_epi32(0x7fff_ffff));
            let nan = _mm512_cmpgt_epu32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
            let r = _mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
            _mm256_storeu_si256(p.cast(), _mm512_cvtepi32_epi16(r));
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for F16x8 {
    type V = __m256;
    const N: usize = 8;
    type Scalar = half::f16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        // SAFETY: 8 readable elements (caller); F16C enabled in the caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut u16, v: __m256) {
        // SAFETY: 8 writable elements (caller); F16C enabled in the caller.
        unsafe { _mm_storeu_si128(p.cast(), _mm256_cvtps_ph::<NEAREST_F16C>(v)) }
    }
}

#[cfg(target_arch = "x86_64")]
impl Lanes for Bf16x8 {
    type V = __m256;
    const N: usize = 8;
    type Scalar = half::bf16;
    #[inline(always)]
    unsafe fn load(p: *const u16) -> __m256 {
        // SAFETY: 8 readable elements (caller); AVX2 enabled in the caller.
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut u16, v: __m256) {
        // As `Bf16x16::store`; the NaN test can be signed, the sign bit being cleared.
        // SAFETY: 8 writable elements (caller); AVX2 enabled in the caller.
        unsafe {
            let x = _mm256_castps_si256(v);
            let hi = _mm256_srli_epi32::<16>(x);
            let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), _mm256_and_si256(hi, _mm256_set1_epi32(1)));
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(x, bias));
            let abs = _mm256_and_si256(x, _mm256_set1_epi32(0x7fff_ffff));
            let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
            let r = _mm256_blendv_epi8(rounded, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
            // Every lane is below 0x10000, so the unsigned saturating pack keeps it; the pack
            // works per 128-bit half, and the permute brings lanes 0-3 and 4-7 together.
            let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(r, r));
            _mm_storeu_si128(p.cast(), _mm256_castsi256_si128(packed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::host::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16, Arith};
    use half::{bf16, f16};

    /// f32 bit patterns that test rounding: every half value widened, the midpoints between
    /// neighbours and one f32 ulp either side of them, and a stride through all of f32.
    fn f32_probes(widen: fn(u16) -> f32) -> Vec<u32> {
        let mut v: Vec<u32> = (0..=u16::MAX).map(|h| widen(h).to_bits()).collect();
        for h in 0..u16::MAX {
            let (x, y) = (widen(h), widen(h + 1));
            if x.is_finite() && y.is_finite() && x.is_sign_positive() == y.is_sign_positive() {
                let mid = ((x.to_bits() as u64 + y.to_bits() as u64) / 2) as u32;
                v.extend([mid - 1, mid, mid + 1]);
            }
        }
        v.extend((0..u32::MAX / 65_521).map(|k| k * 65_521));
        v
    }

    #[test]
    fn scalar_conversions_match_half_bit_for_bit() {
        for h in 0..=u16::MAX {
            assert_eq!(f16_to_f32(h).to_bits(), f16::from_bits(h).to_f32().to_bits(), "f16 {h:#06x}");
            // `half` quiets a signalling bf16 NaN as it widens; the shift keeps it as it is.
            // Either way the rounding back makes it quiet, so the reduction's result is the
            // same bits.
            let (ours, theirs) = (bf16_to_f32(h), bf16::from_bits(h).to_f32());
            if theirs.is_nan() {
                assert!(ours.is_nan() && f32_to_bf16(ours) == bf16::from_f32(theirs).to_bits(), "bf16 {h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "bf16 {h:#06x}");
            }
        }
        for x in f32_probes(f16_to_f32).into_iter().map(f32::from_bits) {
            assert_eq!(f32_to_f16(x), f16::from_f32(x).to_bits(), "f32 {:#010x} to f16", x.to_bits());
        }
        for x in f32_probes(bf16_to_f32).into_iter().map(f32::from_bits) {
            assert_eq!(f32_to_bf16(x), bf16::from_f32(x).to_bits(), "f32 {:#010x} to bf16", x.to_bits());
        }
    }

    /// Operands covering every class: zeros, subnormals, normals near 1 and near the top,
    /// infinities, quiet and signalling NaNs of both signs; `b` is `a` shifted, so every
    /// pair of classes meets.
    fn operands(half: Half, n: usize) -> (Vec<u16>, Vec<u16>) {
        let special: &[u16] = match half {
            Half::F16 => &[
                0x0000, 0x8000, 0x0001, 0x83ff, 0x3c00, 0xbc01, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0xfd55,
            ],
            Half::Bf16 => &[
                0x0000, 0x8000, 0x0001, 0x807f, 0x3f80, 0xbf81, 0x7f7f, 0xff7f, 0x7f80, 0xff80, 0x7fc0, 0x7f81, 0xffa5,
            ],
        };
        let a: Vec<u16> = (0..n)
            .map(|i| if i % 7 == 3 { special[(i / 7) % special.len()] } else { (i as u16).wrapping_mul(40_503) })
            .collect();
        let b = a.iter().cycle().skip(5).take(n).map(|x| x.rotate_left(3)).collect();
        (a, b)
    }

    /// A half format's widening and rounding.
    type Conversions = (fn(u16) -> f32, fn(f32) -> u16);
    /// A vector kernel of one width, as `reduce_half`.
    #[cfg(target_arch = "x86_64")]
    type Kernel = unsafe fn(Half, ReduceOp, *mut u16, *const u16, *const u16, usize);

    /// What `Arith` gives element by element: the reference the vector kernels must equal.
    fn reference(half: Half, op: ReduceOp, a: &[u16], b: &[u16]) -> Vec<u16> {
        let (w, r): Conversions = match half {
            Half::F16 => (f16_to_f32, f32_to_f16),
            Half::Bf16 => (bf16_to_f32, f32_to_bf16),
        };
        let f = match op {
            ReduceOp::Sum | ReduceOp::Avg => <f32 as Arith>::sum,
            ReduceOp::Prod => <f32 as Arith>::prod,
            ReduceOp::Min => <f32 as Arith>::min,
            ReduceOp::Max => <f32 as Arith>::max,
        };
        a.iter().zip(b).map(|(&x, &y)| r(f(w(x), w(y)))).collect()
    }

    /// Every width this CPU runs (AVX-512 where present, and AVX2 + F16C).
    #[cfg(target_arch = "x86_64")]
    fn kernels() -> Vec<(&'static str, Kernel)> {
        unsafe fn avx512(h: Half, op: ReduceOp, d: *mut u16, a: *const u16, b: *const u16, n: usize) {
            // SAFETY: only listed where the CPU has the features; the rest is the caller's.
            unsafe {
                match h {
                    Half::F16 => reduce_avx512::<F16x16>(op, d, a, b, n),
                    Half::Bf16 => reduce_avx512::<Bf16x16>(op, d, a, b, n),
                }
            }
        }
        unsafe fn avx2(h: Half, op: ReduceOp, d: *mut u16, a: *const u16, b: *const u16, n: usize) {
            // SAFETY: as above.
            unsafe {
                match h {
                    Half::F16 => reduce_avx2::<F16x8>(op, d, a, b, n),
                    Half::Bf16 => reduce_avx2::<Bf16x8>(op, d, a, b, n),
                }
            }
        }
        let mut k: Vec<(&'static str, Kernel)> = Vec::new();
        if has_avx512() {
            k.push(("avx512", avx512));
        }
        if super::super::host::has_avx2() && std::is_x86_feature_detected!("f16c") {
            k.push(("avx2", avx2));
        }
        k
    }

    /// A multi-source kernel of one width, as `reduce_half_lines`.
    #[cfg(target_arch = "x86_64")]
    type LinesKernel = unsafe fn(Half, ReduceOp, &[*mut u8], &[*const u16], usize, bool);

    /// Every width of the multi-source kernel this CPU runs.
    #[cfg(target_arch = "x86_64")]
    fn lines_kernels() -> Vec<(&'static str, LinesKernel)> {
        unsafe fn avx512(h: Half, op: ReduceOp, d: &[*mut u8], s: &[*const u16], n: usize, nt: bool) {
            // SAFETY: only listed where the CPU has the features; the rest is the caller's.
            unsafe {
                match h {
                    Half::F16 => lines_avx512::<F16x16>(op, d, s, n, nt),
                    Half::Bf16 => lines_avx512::<Bf16x16>(op, d, s, n, nt),
                }
            }
        }
        unsafe fn avx2(h: Half, op: ReduceOp, d: &[*mut u8], s: &[*const u16], n: usize, nt: bool) {
            // SAFETY: as above.
            unsafe {
                match h {
                    Half::F16 => lines_avx2::<F16x8>(op, d, s, n, nt),
                    Half::Bf16 => lines_avx2::<Bf16x8>(op, d, s, n, nt),
                }
            }
        }
        let mut k: Vec<(&'static str, LinesKernel)> = Vec::new();
        if has_avx512() {
            k.push(("avx512", avx512));
        }
        if super::super::host::has_avx2() && std::is_x86_feature_detected!("f16c") {
            k.push(("avx2", avx2));
        }
        k
    }

    /// What the pairwise kernel gives folding `srcs` in order (each partial result rounded),
    /// `Avg` then divided by their number as `Arith::div` divides: the reference of the
    /// multi-source kernel.
    fn fold_reference(half: Half, op: ReduceOp, srcs: &[Vec<u16>]) -> Vec<u16> {
        let mut acc = reference(half, op, &srcs[0], &srcs[1]);
        for s in &srcs[2..] {
            acc = reference(half, op, &acc, s);
        }
        if op == ReduceOp::Avg {
            let k = srcs.len();
            for x in &mut acc {
                *x = match half {
                    Half::F16 => <f16 as Arith>::div(f16::from_bits(*x), k as f32).to_bits(),
                    Half::Bf16 => <bf16 as Arith>::div(bf16::from_bits(*x), k as f32).to_bits(),
                };
            }
        }
        acc
    }

    /// Equal bits, or both NaN. Where two NaNs meet in a sum or product the result is one of
    /// them, quieted, and which one is the compiled add's choice: Rust leaves NaN payloads
    /// unspecified, and LLVM takes `fadd` as commutative, so it may swap the operands of
    /// either kernel (with five sources the vector kernel's add took the later NaN where the
    /// scalar fold kept the earlier one). Every other result is compared bit for bit.
    fn same(half: Half, x: u16, y: u16) -> bool {
        let nan = |v: u16| match half {
            Half::F16 => v & 0x7c00 == 0x7c00 && v & 0x03ff != 0,
            Half::Bf16 => v & 0x7f80 == 0x7f80 && v & 0x007f != 0,
        };
        x == y || (nan(x) && nan(y))
    }

    /// `n` elements inside `buf` starting at an address `want` modulo 32.
    fn at_mod32(buf: &mut [u16], want: usize) -> *mut u16 {
        let base = buf.as_mut_ptr() as usize;
        let skip = (want + 32 - base % 32) % 32 / 2;
        buf[skip..].as_mut_ptr()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn multi_source_kernels_equal_the_pairwise_fold_bit_for_bit() {
        let ks = lines_kernels();
        if ks.is_empty() {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2 with F16C");
            return;
        }
        for (name, k) in ks {
            for half in [Half::F16, Half::Bf16] {
                // Around the 32-element line, tails, and one size past the prefetch size.
                for n in [0, 1, 15, 31, 32, 33, 64, 95, 1021, 140_003] {
                    let (a, b) = operands(half, n);
                    let mut srcs = vec![a.clone(), b];
                    for j in 2..5u32 {
                        srcs.push(
                            a.iter().cycle().skip(3 * j as usize).take(n).map(|x| x.rotate_left(j) ^ 0x0101).collect(),
                        );
                    }
                    for count in 2..=5 {
                        let srcs = &srcs[..count];
                        let ptrs: Vec<*const u16> = srcs.iter().map(|s| s.as_ptr()).collect();
                        for op in ReduceOp::ALL {
                            let want = fold_reference(half, op, srcs);
                            let ctx = format!("{name} {half:?} {op:?} n={n} sources={count}");
                            let check = |d: &[u16], how: &str| {
                                let bad = d.iter().zip(&want).position(|(&x, &y)| !same(half, x, y));
                                assert!(
                                    bad.is_none(),
                                    "{ctx} {how}: first difference at {bad:?}: {:?}",
                                    bad.map(|i| (d[i], want[i], srcs.iter().map(|s| s[i]).collect::<Vec<_>>()))
                                );
                            };
                            // Two destinations, plain stores, then non-temporal ones from an
                            // address 2 bytes past a 32-byte boundary (a head of 15 elements).
                            for (nt, offset) in [(false, 0), (true, 2), (true, 0)] {
                                let (mut x, mut y) = (vec![0u16; n + 16], vec![0u16; n + 16]);
                                let (px, py) = (at_mod32(&mut x, offset), at_mod32(&mut y, offset));
                                // SAFETY: n + 16 - skip >= n elements at each destination (skip
                                // <= 15), disjoint from the sources and each other; both share
                                // their address mod 32.
                                unsafe { k(half, op, &[px.cast(), py.cast()], &ptrs, n, nt) };
                                for p in [px, py] {
                                    // SAFETY: n elements written above, inside x or y.
                                    check(
                                        unsafe { std::slice::from_raw_parts(p, n) },
                                        &format!("nt={nt} offset={offset}"),
                                    );
                                }
                            }
                            // The destination exactly the last source.
                            let mut d = srcs[count - 1].clone();
                            let mut p = ptrs.clone();
                            p[count - 1] = d.as_ptr();
                            // SAFETY: the destination is exactly one source; plain stores.
                            unsafe { k(half, op, &[d.as_mut_ptr().cast()], &p, n, false) };
                            check(&d, "dst = last source");
                        }
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_kernels_equal_the_scalar_arithmetic_bit_for_bit() {
        let ks = kernels();
        if ks.is_empty() {
            eprintln!("skipped: this CPU has neither AVX-512 nor AVX2 with F16C");
            return;
        }
        for (name, k) in ks {
            for half in [Half::F16, Half::Bf16] {
                // Sizes around the lane counts, odd ones (tails) and one past the prefetch size.
                for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1021, 200_003] {
                    let (a, b) = operands(half, n);
                    for op in ReduceOp::ALL {
                        let want = reference(half, op, &a, &b);
                        let mut d = vec![0u16; n];
                        // SAFETY: n elements behind each pointer; dst overlaps neither.
                        unsafe { k(half, op, d.as_mut_ptr(), a.as_ptr(), b.as_ptr(), n) };
                        let ctx = format!("{name} {half:?} {op:?} n={n}");
                        let bad = d.iter().zip(&want).position(|(x, y)| x != y);
                        assert!(bad.is_none(), "{ctx}: first difference at {bad:?}");
                        // In place, both ways round.
                        let mut d = a.clone();
                        // SAFETY: dst is exactly `a`.
                        unsafe { k(half, op, d.as_mut_ptr(), d.as_ptr(), b.as_ptr(), n) };
                        assert!(d == want, "{ctx}: dst = a");
                        let mut d = b.clone();
                        // SAFETY: dst is exactly `b`.
                        unsafe { k(half, op, d.as_mut_ptr(), a.as_ptr(), d.as_ptr(), n) };
                        assert!(d == want, "{ctx}: dst = b");
                    }
                }
            }
        }
    }
}
