// The CPU harness of cuda_kernels.cu (see cuda_kernels_on_cpu.h): runs one kernel over a
// simulated grid, one "thread" at a time, so the grid-stride loops and the arithmetic are
// exactly the GPU's code.
#include "cuda_kernels.cu"

dim3 gridDim, blockDim, blockIdx, threadIdx;

typedef void (*Rall)(Ptrs, int, int, u64, int);
typedef void (*Div)(void*, u64, int);

#define ROW(t) {#t, {oxccl_rall_##t##_sum, oxccl_rall_##t##_prod, oxccl_rall_##t##_min, oxccl_rall_##t##_max}, oxccl_div_##t}
static const struct {
    const char* name;
    Rall rall[4];
    Div div;
} KERNELS[] = {ROW(i8), ROW(u8), ROW(i32), ROW(u32), ROW(i64), ROW(u64), ROW(f16), ROW(bf16), ROW(f32), ROW(f64)};

static int find(const char* type) {
    for (int i = 0; i < 10; i++) {
        if (std::strcmp(KERNELS[i].name, type) == 0) return i;
    }
    return -1;
}

static void grid(unsigned blocks, unsigned threads) {
    gridDim.x = blocks;
    blockDim.x = threads;
}

// op: 0 sum, 1 prod, 2 min, 3 max. Returns 0, or -1 for an unknown type.
extern "C" int oxccl_cpu_rall(const char* type, int op, const void* const* srcs, int nsrc, void* const* dsts, int ndst,
                              u64 n, int avg, unsigned blocks, unsigned threads) {
    int t = find(type);
    if (t < 0 || op < 0 || op > 3 || nsrc > MAXP || ndst > MAXP) return -1;
    Ptrs p;
    for (int i = 0; i < nsrc; i++) p.src[i] = srcs[i];
    for (int i = 0; i < ndst; i++) p.dst[i] = dsts[i];
    grid(blocks, threads);
    for (unsigned b = 0; b < blocks; b++) {
        for (unsigned th = 0; th < threads; th++) {
            blockIdx.x = b;
            threadIdx.x = th;
            KERNELS[t].rall[op](p, nsrc, ndst, n, avg);
        }
    }
    return 0;
}

extern "C" int oxccl_cpu_div(const char* type, void* buf, u64 n, int divisor, unsigned blocks, unsigned threads) {
    int t = find(type);
    if (t < 0) return -1;
    grid(blocks, threads);
    for (unsigned b = 0; b < blocks; b++) {
        for (unsigned th = 0; th < threads; th++) {
            blockIdx.x = b;
            threadIdx.x = th;
            KERNELS[t].div(buf, n, divisor);
        }
    }
    return 0;
}
