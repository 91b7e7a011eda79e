// What cuda_kernels.cu needs of CUDA when it is built as host C++ for the CPU test of its
// kernels (algorithms/tests/gpu_kernels_on_cpu.rs): the qualifiers vanish, the launch
// geometry is globals that the harness (cuda_kernels_on_cpu.cpp) sets before each "thread",
// and the bit casts and f16 conversions are done in software (round to nearest even, as
// the GPU's cvt.rn.f16.f32 does).
#pragma once
#include <cstdint>
#include <cstring>

#define __device__
#define __global__
#define __forceinline__ inline

struct dim3 {
    unsigned x;
};
extern dim3 gridDim, blockDim, blockIdx, threadIdx;

inline float __int_as_float(int x) {
    float f;
    std::memcpy(&f, &x, 4);
    return f;
}
inline float __int_as_float(unsigned int x) { return __int_as_float((int)x); }
inline unsigned int __float_as_uint(float f) {
    unsigned int x;
    std::memcpy(&x, &f, 4);
    return x;
}

inline float cpu_half_to_float(unsigned short h) {
    unsigned int sign = (unsigned int)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        // Subnormal: normalise.
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while ((man & 0x400) == 0);
        bits = sign | ((unsigned int)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    return __int_as_float(bits);
}

inline unsigned short cpu_float_to_half(float f) {
    unsigned int x = __float_as_uint(f);
    unsigned int sign = (x >> 16) & 0x8000;
    unsigned int abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) return (unsigned short)(sign | 0x7e00 | ((abs >> 13) & 0x3ff));  // NaN stays NaN
    if (abs >= 0x477ff000u) return (unsigned short)(sign | 0x7c00);                          // rounds to infinity
    if (abs >= 0x38800000u) {                                                                // normal
        unsigned int m = abs - 0x38000000u;  // rebias the exponent by 112
        unsigned int r = (m + 0xfffu + ((m >> 13) & 1u)) >> 13;
        return (unsigned short)(sign | r);
    }
    if (abs < 0x33000000u) return (unsigned short)sign;  // below half the smallest subnormal
    // Subnormal: shift the full mantissa into place, rounding to nearest even.
    unsigned int e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u;
    unsigned int shift = 126 - e;  // 14..24
    unsigned int r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (unsigned short)(sign | r);
}
