// Build and run: gcc -O2 -mavx512f benches/limits/ag_copy_limit.c -o /tmp/ag_limit
//   /tmp/ag_limit MIB ITERS MODE PIECE_KIB      (e.g. /tmp/ag_limit 4 100 0 64)
// The copy limit of a 2-rank all-gather out of place on this machine, without oxccl: two
// processes, buffers in one shared mapping, each copying its input, PIECE_KIB at a time (read
// once, written twice while it is in cache), into its block of both outputs, as the mapped
// all-gather does. MODE 0: glibc memcpy; 1: AVX-512 streaming stores; 2: memcpy into its own
// output and streaming stores into the peer's. A spin barrier between iterations; prints the
// mean time per call. Ninth session (benches/RESULTS.md): memcpy with 64 KiB pieces 220 us at
// 4 MiB and 890 us at 16 MiB, where Open MPI ran 323-326 and 1314-1326 us: 1.47-1.48x, under
// the 1.5x bar before any library overhead.
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { _Atomic long arrive[2][16]; } Sync;
static void barrier(Sync* s, int r, long gen){ atomic_store(&s->arrive[r][0], gen); while(atomic_load(&s->arrive[1-r][0]) < gen) __builtin_ia32_pause(); }
static void ntcopy(char* d, const char* s, size_t n){ for (size_t i=0;i<n;i+=64) _mm512_stream_si512((__m512i*)(d+i), _mm512_loadu_si512((const void*)(s+i))); }
int main(int argc, char** argv){
  if (argc < 5) { fprintf(stderr, "usage: %s MIB ITERS MODE PIECE_KIB\n", argv[0]); return 2; }
  size_t total = (size_t)atol(argv[1]) << 20; int iters = atoi(argv[2]); int mode = atoi(argv[3]); size_t piece = (size_t)atol(argv[4]) << 10;
  size_t blk = total / 2;
  char* base = mmap(NULL, 2*blk + 2*total + 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
  Sync* s = (Sync*)base; memset(s, 0, sizeof *s);
  char* send[2] = { base + 4096, base + 4096 + blk };
  char* recv[2] = { base + 4096 + 2*blk, base + 4096 + 2*blk + total };
  memset(base + 4096, 1, 2*blk + 2*total);
  pid_t pid = fork(); int r = pid == 0 ? 1 : 0;
  long gen = 0; double t0 = 0;
  for (int it = -5; it < iters; it++) {
    if (it == 0) { barrier(s, r, ++gen); t0 = now(); }
    for (size_t c = 0; c < blk; c += piece) {
      size_t n = blk - c < piece ? blk - c : piece;
      for (int k = 0; k < 2; k++) { int j = (r + k) % 2;
        if (mode == 0) memcpy(recv[j] + r*blk + c, send[r] + c, n);
        else if (mode == 1) ntcopy(recv[j] + r*blk + c, send[r] + c, n);
        else { if (j == r) memcpy(recv[j] + r*blk + c, send[r] + c, n); else ntcopy(recv[j] + r*blk + c, send[r] + c, n); }
      }
    }
    if (mode) _mm_sfence();
    barrier(s, r, ++gen);
  }
  double t = (now() - t0) / iters;
  if (r == 0) { printf("ag limit %zu MiB mode %d piece %zu KiB: %.1f us per call\n", total >> 20, mode, piece>>10, t*1e6); wait(NULL); }
  return 0;
}
