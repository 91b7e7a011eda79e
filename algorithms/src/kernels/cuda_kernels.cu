// oxccl's GPU reduction kernels, compiled at run time by NVRTC (or, where the machine has no
// NVRTC, loaded from cuda_kernels.ptx, which scripts/gen-ptx.sh makes from this file).
//
// One kernel per element type and operator: oxccl_rall_<type>_<op> reduces nsrc sources
// element-wise, in order (s0 op s1 op ...), and stores the result into ndst destinations;
// with avg set it divides by nsrc first (the end of Avg). A destination may be one of the
// sources: each thread reads every source at an index before it writes that index. Where
// every pointer is 16-byte aligned, elements go in groups of 16 bytes.
// oxccl_div_<type> divides a buffer by an integer in place.
//
// The arithmetic is the host reducer's, bit for bit where the types allow: integers wrap
// (sums and products in the unsigned type of the same width), min and max keep the first
// operand unless the second is strictly smaller or larger, f16 and bf16 are widened to f32,
// combined there and rounded to nearest even once per element.
//
// Self-contained on purpose (no CUDA headers): NVRTC compiles it without a toolkit. Built as
// host C++ (without __CUDACC_RTC__), cuda_kernels_on_cpu.h supplies the few CUDA names it
// uses, so a test runs these very kernels on the CPU against the host reducer.

#ifndef __CUDACC_RTC__
#include "cuda_kernels_on_cpu.h"
#endif

#define MAXP 32

struct Ptrs {
    const void* src[MAXP];
    void* dst[MAXP];
};

typedef unsigned long long u64;

// ---- element types: storage type S, accumulator A, load and store between them ----------

struct I8 { typedef signed char S; typedef signed char A; typedef unsigned char U; };
struct U8 { typedef unsigned char S; typedef unsigned char A; typedef unsigned char U; };
struct I32 { typedef int S; typedef int A; typedef unsigned int U; };
struct U32 { typedef unsigned int S; typedef unsigned int A; typedef unsigned int U; };
struct I64 { typedef long long S; typedef long long A; typedef unsigned long long U; };
struct U64 { typedef unsigned long long S; typedef unsigned long long A; typedef unsigned long long U; };
struct F32 { typedef float S; typedef float A; };
struct F64 { typedef double S; typedef double A; };
struct F16 { typedef unsigned short S; typedef float A; };
struct BF16 { typedef unsigned short S; typedef float A; };

template <class T> __device__ __forceinline__ typename T::A load(const typename T::S* p, u64 i) { return p[i]; }
template <class T> __device__ __forceinline__ void store(typename T::S* p, u64 i, typename T::A v) { p[i] = v; }

template <> __device__ __forceinline__ float load<F16>(const unsigned short* p, u64 i) {
    float f;
    unsigned short h = p[i];
#ifdef __CUDACC_RTC__
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
#else
    f = cpu_half_to_float(h);
#endif
    return f;
}
template <> __device__ __forceinline__ void store<F16>(unsigned short* p, u64 i, float v) {
    unsigned short h;
#ifdef __CUDACC_RTC__
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
#else
    h = cpu_float_to_half(v);
#endif
    p[i] = h;
}
template <> __device__ __forceinline__ float load<BF16>(const unsigned short* p, u64 i) {
    return __int_as_float(((unsigned int)p[i]) << 16);
}
template <> __device__ __forceinline__ void store<BF16>(unsigned short* p, u64 i, float v) {
    // Round to nearest even; NaNs stay NaN (quiet), as the host reducer does.
    unsigned int x = __float_as_uint(v);
    unsigned int rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    unsigned int nan = (x >> 16) | 0x40u;
    p[i] = (unsigned short)(((x & 0x7fffffffu) > 0x7f800000u) ? nan : rounded);
}

// ---- operators ---------------------------------------------------------------------------

struct Sum {
    template <class T> __device__ __forceinline__ static typename T::A apply(typename T::A a, typename T::A b);
};
struct Prod {
    template <class T> __device__ __forceinline__ static typename T::A apply(typename T::A a, typename T::A b);
};
struct Min {
    template <class T> __device__ __forceinline__ static typename T::A apply(typename T::A a, typename T::A b) {
        return b < a ? b : a;
    }
};
struct Max {
    template <class T> __device__ __forceinline__ static typename T::A apply(typename T::A a, typename T::A b) {
        return b > a ? b : a;
    }
};

// Integers wrap: computed in the unsigned type of the same width.
#define INT_ARITH(T)                                                                              \
    template <> __device__ __forceinline__ T::A Sum::apply<T>(T::A a, T::A b) {                  \
        return (T::A)((T::U)a + (T::U)b);                                                         \
    }                                                                                             \
    template <> __device__ __forceinline__ T::A Prod::apply<T>(T::A a, T::A b) {                 \
        return (T::A)((T::U)a * (T::U)b);                                                         \
    }
INT_ARITH(I8)
INT_ARITH(U8)
INT_ARITH(I32)
INT_ARITH(U32)
INT_ARITH(I64)
INT_ARITH(U64)

#define FLOAT_ARITH(T)                                                                            \
    template <> __device__ __forceinline__ T::A Sum::apply<T>(T::A a, T::A b) { return a + b; }  \
    template <> __device__ __forceinline__ T::A Prod::apply<T>(T::A a, T::A b) { return a * b; }
FLOAT_ARITH(F32)
FLOAT_ARITH(F64)
FLOAT_ARITH(F16)
FLOAT_ARITH(BF16)

// Division by the number of sources (Avg): integers truncate toward zero, divided by the
// count itself, at least 32 bits wide (so a count beyond an 8-bit type's range divides,
// rather than wrapping into another divisor or zero), as the host reducer does; floats
// divide in their accumulator type.
template <class T> __device__ __forceinline__ typename T::A divide(typename T::A a, int n) {
    return a / (typename T::A)n;
}
#define INT_DIVIDE(T, W)                                                                          \
    template <> __device__ __forceinline__ T::A divide<T>(T::A a, int n) { return (T::A)((W)a / (W)n); }
INT_DIVIDE(I8, int)
INT_DIVIDE(U8, int)
INT_DIVIDE(I32, int)
INT_DIVIDE(U32, unsigned int)
INT_DIVIDE(I64, long long)
INT_DIVIDE(U64, u64)

// ---- kernels -----------------------------------------------------------------------------

// Sixteen bytes of elements, loaded and stored as one (the widest access a thread makes).
template <class T>
struct alignas(16) Vec16 {
    typename T::S v[16 / sizeof(typename T::S)];
};

template <class T, class Op>
__device__ __forceinline__ void reduce_into_all(const Ptrs& p, int nsrc, int ndst, u64 n, int avg) {
    const int V = 16 / sizeof(typename T::S);
    u64 first = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 stride = (u64)gridDim.x * blockDim.x;
    // Where every pointer is 16-byte aligned, whole groups of 16 bytes go as one access each
    // (a warp then moves 512 bytes per load, whatever the element size); the rest one by one.
    bool aligned = true;
    for (int s = 0; s < nsrc; s++) aligned = aligned && (((u64)p.src[s]) & 15) == 0;
    for (int d = 0; d < ndst; d++) aligned = aligned && (((u64)p.dst[d]) & 15) == 0;
    u64 scalar_from = 0;
    if (aligned) {
        u64 groups = n / V;
        for (u64 g = first; g < groups; g += stride) {
            typename T::A acc[V];
            Vec16<T> x = ((const Vec16<T>*)p.src[0])[g];
            for (int k = 0; k < V; k++) acc[k] = load<T>(x.v, k);
            for (int s = 1; s < nsrc; s++) {
                x = ((const Vec16<T>*)p.src[s])[g];
                for (int k = 0; k < V; k++) acc[k] = Op::template apply<T>(acc[k], load<T>(x.v, k));
            }
            if (avg) {
                for (int k = 0; k < V; k++) acc[k] = divide<T>(acc[k], nsrc);
            }
            Vec16<T> out;
            for (int k = 0; k < V; k++) store<T>(out.v, k, acc[k]);
            for (int d = 0; d < ndst; d++) ((Vec16<T>*)p.dst[d])[g] = out;
        }
        scalar_from = groups * V;
    }
    for (u64 i = scalar_from + first; i < n; i += stride) {
        typename T::A acc = load<T>((const typename T::S*)p.src[0], i);
        for (int s = 1; s < nsrc; s++) {
            acc = Op::template apply<T>(acc, load<T>((const typename T::S*)p.src[s], i));
        }
        if (avg) {
            acc = divide<T>(acc, nsrc);
        }
        for (int d = 0; d < ndst; d++) {
            store<T>((typename T::S*)p.dst[d], i, acc);
        }
    }
}

template <class T>
__device__ __forceinline__ void divide_all(void* buf, u64 n, int divisor) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        store<T>((typename T::S*)buf, i, divide<T>(load<T>((const typename T::S*)buf, i), divisor));
    }
}

#define RALL(T, t, Op, op)                                                                        \
    extern "C" __global__ void oxccl_rall_##t##_##op(Ptrs p, int nsrc, int ndst, u64 n, int avg) { \
        reduce_into_all<T, Op>(p, nsrc, ndst, n, avg);                                            \
    }
#define TYPE(T, t)                                                                                \
    RALL(T, t, Sum, sum)                                                                          \
    RALL(T, t, Prod, prod)                                                                        \
    RALL(T, t, Min, min)                                                                          \
    RALL(T, t, Max, max)                                                                          \
    extern "C" __global__ void oxccl_div_##t(void* buf, u64 n, int divisor) { divide_all<T>(buf, n, divisor); }

TYPE(I8, i8)
TYPE(U8, u8)
TYPE(I32, i32)
TYPE(U32, u32)
TYPE(I64, i64)
TYPE(U64, u64)
TYPE(F16, f16)
TYPE(BF16, bf16)
TYPE(F32, f32)
TYPE(F64, f64)
