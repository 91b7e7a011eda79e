//! Memory copies for moving bytes that nobody reads soon from this core's cache.

/// Copies `n` bytes from `src` to `dst` with non-temporal stores where the CPU has AVX2:
/// the destination's lines are written without being read first and without evicting what
/// the cache holds (for large outputs that nobody reads soon). Ends with a store fence, so
/// the bytes are visible to whoever synchronises with this thread afterwards.
///
/// # Safety
/// `n` bytes valid for reads at `src` and for writes at `dst`, not overlapping.
pub unsafe fn copy_streaming(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && n >= 256 {
        // SAFETY: AVX-512F present; the rest is the caller's contract.
        unsafe { copy_streaming_avx512(dst, src, n) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && n >= 256 {
        // SAFETY: AVX2 present; the rest is the caller's contract.
        unsafe { copy_streaming_avx2(dst, src, n) };
        return;
    }
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, n) }
}

/// [`copy_streaming`] with AVX-512 stores: a whole cache line per instruction streams about
/// a fifth faster than two 32-byte halves.
///
/// # Safety
/// As [`copy_streaming`], at least 256 bytes; AVX-512F present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_streaming_avx512(dst: *mut u8, src: *const u8, n: usize) {
    use std::arch::x86_64::*;
    // Head: plain copy up to the first 64-byte boundary of the destination.
    let head = (dst as usize).next_multiple_of(64) - dst as usize;
    // SAFETY: head < 64 <= n bytes, inside both spans.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let body = (n - head) / 256 * 256;
    let mut i = head;
    while i < head + body {
        // SAFETY: 256 bytes at i are inside both spans; the stores are 64-byte aligned.
        unsafe {
            let s = src.add(i);
            let d = dst.add(i);
            let (a, b, c, e) = (
                _mm512_loadu_si512(s.cast()),
                _mm512_loadu_si512(s.add(64).cast()),
                _mm512_loadu_si512(s.add(128).cast()),
                _mm512_loadu_si512(s.add(192).cast()),
            );
            _mm512_stream_si512(d.cast(), a);
            _mm512_stream_si512(d.add(64).cast(), b);
            _mm512_stream_si512(d.add(128).cast(), c);
            _mm512_stream_si512(d.add(192).cast(), e);
        }
        i += 256;
    }
    // SAFETY: the tail is inside both spans; the fence orders the streaming stores before
    // whatever this thread does next.
    unsafe {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i);
        _mm_sfence();
    }
}

/// [`copy_streaming`] with AVX2 stores.
///
/// # Safety
/// As [`copy_streaming`], at least 256 bytes; AVX2 present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_streaming_avx2(dst: *mut u8, src: *const u8, n: usize) {
    use std::arch::x86_64::*;
    // Head: plain copy up to the first 32-byte boundary of the destination.
    let head = (dst as usize).next_multiple_of(32) - dst as usize;
    // SAFETY: head < 32 <= n bytes, inside both spans.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let body = (n - head) / 128 * 128;
    let mut i = head;
    while i < head + body {
        // SAFETY: 128 bytes at i are inside both spans; the stores are 32-byte aligned.
        unsafe {
            let s = src.add(i).cast::<__m256i>();
            let d = dst.add(i).cast::<__m256i>();
            let (a, b, c, e) = (
                _mm256_loadu_si256(s),
                _mm256_loadu_si256(s.add(1)),
                _mm256_loadu_si256(s.add(2)),
                _mm256_loadu_si256(s.add(3)),
            );
            _mm256_stream_si256(d, a);
            _mm256_stream_si256(d.add(1), b);
            _mm256_stream_si256(d.add(2), c);
            _mm256_stream_si256(d.add(3), e);
        }
        i += 128;
    }
    // SAFETY: the tail is inside both spans; the fence orders the streaming stores before
    // whatever this thread does next.
    unsafe {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i);
        _mm_sfence();
    }
}
