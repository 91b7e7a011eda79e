//! Host reduction kernels: one generic element-wise loop per operator, compiled twice on
//! x86-64 (AVX2 and baseline) and picked at run time. The loops are written so the compiler
//! vectorises them. f16 and bf16 are widened to f32, combined and rounded back once, element
//! by element in one pass: by the hand-written vector kernels of `half_simd` where the CPU
//! has them, else by the loops here over the scalar conversions below (bit for bit `half`'s,
//! written as integer and float arithmetic so that they vectorise too).

use half::{bf16, f16};

use super::half_simd::{self, Half};
use crate::op::ReduceOp;

/// Arithmetic the kernels need from an element type.
pub(crate) trait Arith: Copy + Send + Sync + 'static {
    /// What [`Arith::div`] divides by, prepared once per call by [`Arith::divisor`].
    type Divisor: Copy + Send + Sync;
    fn sum(a: Self, b: Self) -> Self;
    fn prod(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    /// `n` (at least 1), prepared for [`Arith::div`].
    fn divisor(n: usize) -> Self::Divisor;
    /// `a / n` (the end of `Avg`): integers truncate toward zero (the wrapped sum divided by
    /// the count itself, however large), floats divide in their own precision (f16 and
    /// bf16 in f32, rounded once).
    fn div(a: Self, d: Self::Divisor) -> Self;
}

/// Division of 8-bit integers by a count: `x · m >> s` in 32-bit lanes, with
/// `m = ceil(2^(8+l) / n)` and `l = ceil(log2 n)`, exact for every `x` below 2^8 (m exceeds
/// 2^(8+l)/n by less than 1, so the product exceeds `x/n` by less than `x/2^(8+l) < 1/n`,
/// which never reaches the next whole number). A count above 255 leaves every quotient 0.
#[derive(Clone, Copy)]
pub(crate) struct U8Divisor {
    magic: u32,
    shift: u32,
}

impl U8Divisor {
    #[inline(always)]
    fn new(n: usize) -> U8Divisor {
        if n > 255 {
            return U8Divisor { magic: 0, shift: 0 };
        }
        let n = n.max(1) as u32;
        let l = 32 - (n - 1).leading_zeros();
        U8Divisor { magic: (1u32 << (8 + l)).div_ceil(n), shift: 8 + l }
    }

    #[inline(always)]
    fn div(self, x: u8) -> u8 {
        ((u32::from(x) * self.magic) >> self.shift) as u8
    }
}

/// Division of integers of up to 32 bits by a count: as [`U64Divisor`] with 32-bit words.
/// The multiplication is 32 by 32 bits into 64, which vectorises (`pmuludq`), where a
/// hardware division takes one element at a time, 10 to 20 cycles each.
#[derive(Clone, Copy)]
pub(crate) struct U32Divisor {
    magic: u64,
    shift1: u32,
    shift2: u32,
}

impl U32Divisor {
    #[inline(always)]
    fn new(n: usize) -> U32Divisor {
        // Every 32-bit value divided by 2^32 or more is 0, as by 2^32.
        let d = (n as u64).clamp(1, 1 << 32);
        // l = ceil(log2 d); magic = floor(2^32 (2^l - d) / d) + 1, below 2^32.
        let l = 64 - (d - 1).leading_zeros();
        let magic = ((1u64 << 32) * ((1u64 << l) - d)) / d + 1;
        U32Divisor { magic, shift1: l.min(1), shift2: l.saturating_sub(1) }
    }

    #[inline(always)]
    fn div(self, x: u32) -> u32 {
        let x = u64::from(x);
        let t = (self.magic * x) >> 32;
        // At most x: the conversion back is exact.
        ((t + ((x - t) >> self.shift1)) >> self.shift2) as u32
    }
}

/// Division of 64-bit integers by a count: a multiplication by a precomputed reciprocal and
/// two shifts (Granlund and Montgomery, "Division by invariant integers using
/// multiplication", 1994, figure 4.1), a few cycles where a 64-bit hardware division takes
/// 10 to 40.
#[derive(Clone, Copy)]
pub(crate) struct U64Divisor {
    magic: u64,
    shift1: u32,
    shift2: u32,
}

impl U64Divisor {
    #[inline(always)]
    fn new(n: usize) -> U64Divisor {
        let d = (n as u64).max(1);
        // l = ceil(log2 d); magic = floor(2^64 (2^l - d) / d) + 1, below 2^64.
        let l = 64 - (d - 1).leading_zeros();
        let magic = (((1u128 << 64) * ((1u128 << l) - u128::from(d))) / u128::from(d) + 1) as u64;
        U64Divisor { magic, shift1: l.min(1), shift2: l.saturating_sub(1) }
    }

    #[inline(always)]
    fn div(self, x: u64) -> u64 {
        let t = ((u128::from(self.magic) * u128::from(x)) >> 64) as u64;
        (t + ((x - t) >> self.shift1)) >> self.shift2
    }
}

/// Sum, product, min and max of an integer type: wrapping, as C's unsigned arithmetic.
macro_rules! arith_int_ops {
    () => {
        #[inline(always)]
        fn sum(a: Self, b: Self) -> Self {
            a.wrapping_add(b)
        }
        #[inline(always)]
        fn prod(a: Self, b: Self) -> Self {
            a.wrapping_mul(b)
        }
        #[inline(always)]
        fn min(a: Self, b: Self) -> Self {
            if b < a {
                b
            } else {
                a
            }
        }
        #[inline(always)]
        fn max(a: Self, b: Self) -> Self {
            if b > a {
                b
            } else {
                a
            }
        }
    };
}

/// An integer type's arithmetic, with the divisor of its width; `signed` types divide
/// toward zero: the quotient of a's size, with a's sign (the size of MIN is an unsigned
/// value; divided by 1 it wraps back to MIN).
macro_rules! arith_int {
    ($($t:ty: $d:ident, $kind:ident);*) => {$(
        impl Arith for $t {
            type Divisor = $d;
            arith_int_ops!();
            #[inline(always)]
            fn divisor(n: usize) -> $d {
                $d::new(n)
            }
            #[inline(always)]
            fn div(a: Self, d: $d) -> Self {
                arith_int!(@div $kind, $t, a, d)
            }
        }
    )*};
    (@div unsigned, $t:ty, $a:ident, $d:ident) => {
        $d.div($a)
    };
    (@div signed, $t:ty, $a:ident, $d:ident) => {{
        let q = $d.div($a.unsigned_abs()) as $t;
        if $a < 0 {
            q.wrapping_neg()
        } else {
            q
        }
    }};
}
arith_int!(
    u8: U8Divisor, unsigned;
    i8: U8Divisor, signed;
    u32: U32Divisor, unsigned;
    i32: U32Divisor, signed;
    u64: U64Divisor, unsigned;
    i64: U64Divisor, signed
);

macro_rules! arith_float {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            type Divisor = $t;
            #[inline(always)] fn sum(a: Self, b: Self) -> Self { a + b }
            #[inline(always)] fn prod(a: Self, b: Self) -> Self { a * b }
            #[inline(always)] fn min(a: Self, b: Self) -> Self { if b < a { b } else { a } }
            #[inline(always)] fn max(a: Self, b: Self) -> Self { if b > a { b } else { a } }
            #[inline(always)] fn divisor(n: usize) -> Self { n as $t }
            #[inline(always)] fn div(a: Self, d: Self) -> Self { a / d }
        }
    )*};
}
arith_float!(f32, f64);

/// bf16 to f32: exact, a shift.
#[inline(always)]
pub(crate) fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 to bf16, rounded to nearest even, NaNs kept quiet: bit for bit `bf16::from_f32`.
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let x = x.to_bits();
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x >> 16) | 0x40;
    (if x & 0x7fff_ffff > 0x7f80_0000 { nan } else { rounded }) as u16
}

/// f16 to f32: exact; NaNs kept quiet with their payload, as `f16::to_f32` does.
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // Subnormals (and zero): the mantissa times 2^-24, exact in f32.
    let sub = (em as i32 as f32 * (1.0 / 16_777_216.0)).to_bits();
    // Normals: rebias the exponent from 15 to 127.
    let normal = (em << 13) + ((127 - 15) << 23);
    let special = 0x7f80_0000 | ((em & 0x3ff) << 13) | if em > 0x7c00 { 0x0040_0000 } else { 0 };
    let bits = if em < 0x400 {
        sub
    } else if em >= 0x7c00 {
        special
    } else {
        normal
    };
    f32::from_bits(sign | bits)
}

/// f32 to f16, rounded to nearest even (overflow to infinity, NaNs kept quiet with the top of
/// their payload): bit for bit `f16::from_f32`.
#[inline(always)]
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let x = x.to_bits();
    let sign = x & 0x8000_0000;
    let ax = x ^ sign;
    let bits = if ax >= (127 + 16) << 23 {
        // At least 2^16: infinity, or NaN.
        if ax > 0x7f80_0000 {
            0x7e00 | ((ax >> 13) & 0x3ff)
        } else {
            0x7c00
        }
    } else if ax < (127 - 14) << 23 {
        // Below 2^-14, the smallest normal f16: adding 0.5 leaves the f16 subnormal's
        // mantissa in the low bits, rounded to nearest even by the float addition.
        (f32::from_bits(ax) + 0.5).to_bits() - (126 << 23)
    } else {
        // Normal: rebias, add just under half an f16 ulp plus the kept mantissa's lowest
        // bit (ties to even), and cut; a carry out of the mantissa steps the exponent, up to
        // infinity at the top.
        let odd = (ax >> 13) & 1;
        (ax.wrapping_sub((127 - 15) << 23) + 0xfff + odd) >> 13
    };
    (bits | (sign >> 16)) as u16
}

/// f16 and bf16 combine in f32 and round once, per element.
macro_rules! arith_half {
    ($($t:ty: $to:ident, $from:ident);*) => {$(
        impl Arith for $t {
            type Divisor = f32;
            #[inline(always)]
            fn sum(a: Self, b: Self) -> Self {
                <$t>::from_bits($from($to(a.to_bits()) + $to(b.to_bits())))
            }
            #[inline(always)]
            fn prod(a: Self, b: Self) -> Self {
                <$t>::from_bits($from($to(a.to_bits()) * $to(b.to_bits())))
            }
            #[inline(always)]
            fn min(a: Self, b: Self) -> Self {
                <$t>::from_bits($from(<f32 as Arith>::min($to(a.to_bits()), $to(b.to_bits()))))
            }
            #[inline(always)]
            fn max(a: Self, b: Self) -> Self {
                <$t>::from_bits($from(<f32 as Arith>::max($to(a.to_bits()), $to(b.to_bits()))))
            }
            #[inline(always)]
            fn divisor(n: usize) -> f32 {
                n as f32
            }
            #[inline(always)]
            fn div(a: Self, d: f32) -> Self {
                <$t>::from_bits($from($to(a.to_bits()) / d))
            }
        }
    )*};
}
arith_half!(bf16: bf16_to_f32, f32_to_bf16; f16: f16_to_f32, f32_to_f16);

/// How the destination relates to the operands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Alias {
    /// `dst` is a third buffer.
    None,
    /// `dst` is `a`.
    DstIsA,
    /// `dst` is `b`.
    DstIsB,
}

#[inline(always)]
fn zip3<T: Arith>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, y);
    }
}

#[inline(always)]
fn zip_a<T: Arith>(dst: &mut [T], b: &[T], f: impl Fn(T, T) -> T) {
    for (d, &y) in dst.iter_mut().zip(b) {
        *d = f(*d, y);
    }
}

#[inline(always)]
fn zip_b<T: Arith>(dst: &mut [T], a: &[T], f: impl Fn(T, T) -> T) {
    for (d, &x) in dst.iter_mut().zip(a) {
        *d = f(x, *d);
    }
}

#[inline(always)]
unsafe fn body_op<T: Arith>(f: impl Fn(T, T) -> T, alias: Alias, dst: *mut T, a: *const T, b: *const T, n: usize) {
    // SAFETY (for the three arms): the caller guarantees `n` valid elements behind each
    // pointer, and that `dst` either equals the named operand or overlaps neither.
    unsafe {
        match alias {
            Alias::None => zip3(
                std::slice::from_raw_parts_mut(dst, n),
                std::slice::from_raw_parts(a, n),
                std::slice::from_raw_parts(b, n),
                f,
            ),
            Alias::DstIsA => zip_a(std::slice::from_raw_parts_mut(dst, n), std::slice::from_raw_parts(b, n), f),
            Alias::DstIsB => zip_b(std::slice::from_raw_parts_mut(dst, n), std::slice::from_raw_parts(a, n), f),
        }
    }
}

#[inline(always)]
unsafe fn body<T: Arith>(op: ReduceOp, alias: Alias, dst: *mut T, a: *const T, b: *const T, n: usize) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => body_op(T::sum, alias, dst, a, b, n),
            ReduceOp::Prod => body_op(T::prod, alias, dst, a, b, n),
            ReduceOp::Min => body_op(T::min, alias, dst, a, b, n),
            ReduceOp::Max => body_op(T::max, alias, dst, a, b, n),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_avx2<T: Arith>(op: ReduceOp, alias: Alias, dst: *mut T, a: *const T, b: *const T, n: usize) {
    // SAFETY: forwarded caller contract; the CPU has AVX2 (checked by the dispatcher).
    unsafe { body(op, alias, dst, a, b, n) }
}

unsafe fn body_generic<T: Arith>(op: ReduceOp, alias: Alias, dst: *mut T, a: *const T, b: *const T, n: usize) {
    // SAFETY: forwarded caller contract.
    unsafe { body(op, alias, dst, a, b, n) }
}

/// Whether the AVX2 variants may run here (detected once).
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[i] = a[i] op b[i]` for a native element type, with the best kernel for this CPU.
///
/// # Safety
/// `n` elements must be valid behind each pointer (writable behind `dst`), and `dst` must be
/// exactly `a` or `b` as `alias` says, or overlap neither.
pub(crate) unsafe fn reduce_native<T: Arith>(
    op: ReduceOp,
    alias: Alias,
    dst: *mut T,
    a: *const T,
    b: *const T,
    n: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present; the rest is the caller's contract.
        unsafe { body_avx2(op, alias, dst, a, b, n) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { body_generic(op, alias, dst, a, b, n) }
}

/// Divides each of `n` elements by `d`, in place (the end of `Avg`).
///
/// # Safety
/// `n` valid, writable elements at `p`.
pub(crate) unsafe fn divide_native<T: Arith>(p: *mut T, n: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present; the rest is the caller's contract.
        unsafe { divide_avx2(p, n, d) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { divide_body(p, n, d) }
}

/// [`divide_native`] compiled for AVX2 (eight 32-bit multiplications at once).
///
/// # Safety
/// As [`divide_native`]; AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn divide_avx2<T: Arith>(p: *mut T, n: usize, d: usize) {
    // SAFETY: the caller's contract.
    unsafe { divide_body(p, n, d) }
}

/// The loop of [`divide_native`].
///
/// # Safety
/// As [`divide_native`].
#[inline(always)]
unsafe fn divide_body<T: Arith>(p: *mut T, n: usize, d: usize) {
    // SAFETY: the caller's contract.
    let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
    let d = T::divisor(d);
    for x in s {
        *x = T::div(*x, d);
    }
}

/// Type-dispatched reduction over raw bytes. See [`crate::kernels::HostReducer`].
///
/// # Safety
/// `n` elements of `dtype` valid at each pointer (aligned or not: unaligned buffers are
/// handled by the caller), `dst` writable, and aliasing as `alias` says.
pub(crate) unsafe fn reduce_bytes(
    dtype: crate::DataType,
    op: ReduceOp,
    alias: Alias,
    dst: *mut u8,
    a: *const u8,
    b: *const u8,
    n: usize,
) {
    use crate::DataType as D;
    // SAFETY: the caller's contract, with pointers cast to the element type of `dtype`.
    unsafe {
        match dtype {
            D::I8 => reduce_native::<i8>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::U8 => reduce_native::<u8>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::I32 => reduce_native::<i32>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::U32 => reduce_native::<u32>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::I64 => reduce_native::<i64>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::U64 => reduce_native::<u64>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::F32 => reduce_native::<f32>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::F64 => reduce_native::<f64>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::F16 if half_simd::available() => {
                half_simd::reduce_half(Half::F16, op, dst.cast(), a.cast(), b.cast(), n)
            }
            D::Bf16 if half_simd::available() => {
                half_simd::reduce_half(Half::Bf16, op, dst.cast(), a.cast(), b.cast(), n)
            }
            D::F16 => reduce_native::<f16>(op, alias, dst.cast(), a.cast(), b.cast(), n),
            D::Bf16 => reduce_native::<bf16>(op, alias, dst.cast(), a.cast(), b.cast(), n),
        }
    }
}

/// Type-dispatched in-place division by `d`.
///
/// # Safety
/// `n` valid, writable, aligned elements of `dtype` at `p`.
pub(crate) unsafe fn divide_bytes(dtype: crate::DataType, p: *mut u8, n: usize, d: usize) {
    use crate::DataType as D;
    // SAFETY: the caller's contract.
    unsafe {
        match dtype {
            D::I8 => divide_native::<i8>(p.cast(), n, d),
            D::U8 => divide_native::<u8>(p.cast(), n, d),
            D::I32 => divide_native::<i32>(p.cast(), n, d),
            D::U32 => divide_native::<u32>(p.cast(), n, d),
            D::I64 => divide_native::<i64>(p.cast(), n, d),
            D::U64 => divide_native::<u64>(p.cast(), n, d),
            D::F32 => divide_native::<f32>(p.cast(), n, d),
            D::F64 => divide_native::<f64>(p.cast(), n, d),
            D::F16 => divide_native::<f16>(p.cast(), n, d),
            D::Bf16 => divide_native::<bf16>(p.cast(), n, d),
        }
    }
}

/// Whether AVX-512F may run here (detected once): a non-temporal store of a whole cache
/// line is one instruction, which streams about a fifth faster than two 32-byte halves.
#[inline]
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `d[i] = s0[i] op s1[i] op ...` (the sources in order) for every destination `d` in
/// `dsts` (byte addresses of `n`-element spans), one 64-byte line at a time: every source is
/// read once and every destination written once, straight from registers, with
/// non-temporal stores when `nt` (then every destination must have the same address modulo
/// 32, and a store fence ends the call).
///
/// # Safety
/// At least two sources; `n` valid elements at every source; `n` writable elements at every
/// destination, aligned for `T`; a destination overlaps another destination or a source only
/// by being exactly that source (and then not with `nt`); the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn reduce_lines<T: Arith>(op: ReduceOp, dsts: &[*mut u8], srcs: &[*const T], n: usize, nt: bool) {
    // `Avg`: the sum, divided by the number of sources before it is stored.
    let avg = (op == ReduceOp::Avg).then(|| T::divisor(srcs.len()));
    if nt && has_avx512() && dsts.iter().all(|&d| d as usize % 64 == dsts[0] as usize % 64) {
        // SAFETY: AVX-512F present, destinations share their alignment mod 64; the rest is
        // the caller's contract.
        unsafe { reduce_lines_avx512(op, dsts, srcs, n) };
        return;
    }
    // SAFETY: forwarded caller contract.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => lines_body::<T, false>(T::sum, avg, dsts, srcs, n, nt),
            ReduceOp::Prod => lines_body::<T, false>(T::prod, None, dsts, srcs, n, nt),
            ReduceOp::Min => lines_body::<T, false>(T::min, None, dsts, srcs, n, nt),
            ReduceOp::Max => lines_body::<T, false>(T::max, None, dsts, srcs, n, nt),
        }
    }
}

/// [`reduce_lines`] with non-temporal stores of whole 64-byte lines (one instruction each).
///
/// # Safety
/// As [`reduce_lines`] with `nt`, destinations sharing their address modulo 64; AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f")]
unsafe fn reduce_lines_avx512<T: Arith>(op: ReduceOp, dsts: &[*mut u8], srcs: &[*const T], n: usize) {
    let avg = (op == ReduceOp::Avg).then(|| T::divisor(srcs.len()));
    // SAFETY: forwarded caller contract.
    unsafe {
        match op {
            ReduceOp::Sum | ReduceOp::Avg => lines_body::<T, true>(T::sum, avg, dsts, srcs, n, true),
            ReduceOp::Prod => lines_body::<T, true>(T::prod, None, dsts, srcs, n, true),
            ReduceOp::Min => lines_body::<T, true>(T::min, None, dsts, srcs, n, true),
            ReduceOp::Max => lines_body::<T, true>(T::max, None, dsts, srcs, n, true),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// Stores the 64 bytes at `line` (32-byte aligned) at byte offset `at` of every destination,
/// as two 32-byte stores each, non-temporal when `nt`.
///
/// # Safety
/// 64 readable bytes at `line`; 64 writable bytes at `d + at` for every destination, 32-byte
/// aligned when `nt`; the caller has AVX2 enabled (this inlines into it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn store_line(dsts: &[*mut u8], at: usize, line: *const u8, nt: bool) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe {
        let lo = _mm256_load_si256(line.cast());
        let hi = _mm256_load_si256(line.add(32).cast());
        for &d in dsts {
            let p = d.add(at).cast::<__m256i>();
            if nt {
                _mm256_stream_si256(p, lo);
                _mm256_stream_si256(p.add(1), hi);
            } else {
                _mm256_storeu_si256(p, lo);
                _mm256_storeu_si256(p.add(1), hi);
            }
        }
    }
}

/// The loop of [`reduce_lines`]; `WIDE`: whole-line AVX-512 stores (64-byte boundaries),
/// else two 32-byte AVX2 stores per line; `avg`: divide the result by it (as
/// [`divide_native`] does) before storing.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn lines_body<T: Arith, const WIDE: bool>(
    f: impl Fn(T, T) -> T,
    avg: Option<T::Divisor>,
    dsts: &[*mut u8],
    srcs: &[*const T],
    n: usize,
    nt: bool,
) {
    use std::arch::x86_64::*;
    let es = std::mem::size_of::<T>();
    let per = 64 / es;
    let (s0, s1, rest) = (srcs[0], srcs[1], &srcs[2..]);
    let scalar = |from: usize, to: usize| {
        for k in from..to {
            // SAFETY: k < n: inside every span (the caller's contract). Every source is read
            // before any destination is written, so an exact alias reads the old element.
            unsafe {
                let mut v = f(*s0.add(k), *s1.add(k));
                for s in rest {
                    v = f(v, *s.add(k));
                }
                if let Some(d) = avg {
                    v = T::div(v, d);
                }
                for &d in dsts {
                    *d.cast::<T>().add(k) = v;
                }
            }
        }
    };
    let mut i = 0;
    if nt {
        // Plain stores up to the first store boundary, which every destination shares.
        let align = if WIDE { 64 } else { 32 };
        let mis = dsts[0] as usize % align;
        i = if mis == 0 { 0 } else { ((align - mis) / es).min(n) };
        scalar(0, i);
    }
    let mut line = Line([0; 64]);
    let lp = line.0.as_mut_ptr().cast::<T>();
    while i + per <= n {
        // SAFETY: the line [i, i + per) is inside every span; `line` holds `per` elements;
        // non-temporal stores go to addresses aligned as they need (every destination shares
        // the first one's alignment, and i advanced from its boundary in whole lines).
        unsafe {
            for k in 0..per {
                *lp.add(k) = f(*s0.add(i + k), *s1.add(i + k));
            }
            for s in rest {
                for k in 0..per {
                    *lp.add(k) = f(*lp.add(k), *s.add(i + k));
                }
            }
            if let Some(d) = avg {
                for k in 0..per {
                    *lp.add(k) = T::div(*lp.add(k), d);
                }
            }
            if WIDE {
                let v = _mm512_load_si512(line.0.as_ptr().cast());
                for &d in dsts {
                    _mm512_stream_si512(d.add(i * es).cast(), v);
                }
            } else {
                store_line(dsts, i * es, line.0.as_ptr(), nt);
            }
        }
        i += per;
    }
    scalar(i, n);
    if nt {
        // SAFETY: a fence, no memory touched.
        unsafe { _mm_sfence() };
    }
}
