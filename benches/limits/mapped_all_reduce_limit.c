// Build and run: gcc -O2 -mavx512f benches/limits/mapped_all_reduce_limit.c -o /tmp/ar_limit
//   /tmp/ar_limit MIB ITERS RANKS IN_PLACE STREAMING     (e.g. /tmp/ar_limit 16 40 4 0 1)
// The memory limit of the mapped all-reduce's schedule on this machine, without oxccl: RANKS
// processes, every input and output in one shared mapping, each rank reducing its slice of
// every input (f32 sum, AVX-512, 64 KiB at a time) and storing it into every output, with
// plain stores or streaming (non-temporal) ones; a yielding barrier between calls (more
// ranks than cores is the case it measures). Prints the mean time per call. Out of place
// writes lines no cache holds, and each costs a read for ownership: at 2 ranks it ran 2x the
// in-place time at every size from 2 to 16 MiB (prefetching changed it by at most 3%,
// streaming stores by nothing); at 4 ranks and 16 MiB, where the host's outputs total 64 MiB,
// streaming stores ran 2812-2927 us against 3766-6628 with plain ones (benches/RESULTS.md,
// seventh session).
#define _GNU_SOURCE
#include <immintrin.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { _Atomic long arrive[8][16]; } Sync;
static int P;
static void barrier(Sync* s, int r, long gen){
  atomic_store(&s->arrive[r][0], gen);
  for (int q = 0; q < P; q++) while (atomic_load(&s->arrive[q][0]) < gen) sched_yield();
}
int main(int argc, char** argv){
  if (argc < 6) { fprintf(stderr, "usage: %s MIB ITERS RANKS IN_PLACE STREAMING\n", argv[0]); return 2; }
  size_t total = (size_t)atol(argv[1]) << 20; int iters = atoi(argv[2]); P = atoi(argv[3]);
  int in_place = atoi(argv[4]), nt = atoi(argv[5]);
  if (P < 1 || P > 8) { fprintf(stderr, "1 to 8 ranks\n"); return 2; }
  size_t chunk = 64 << 10, slice = total / P / 4096 * 4096;  // whole pages: aligned streaming stores
  char* base = mmap(NULL, 2*P*total + 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) { perror("mmap"); return 1; }
  Sync* s = (Sync*)base;
  char *send[8], *recv[8];
  for (int q = 0; q < P; q++) { send[q] = base + 4096 + q*total; recv[q] = in_place ? send[q] : base + 4096 + (P+q)*total; }
  memset(base, 0, 2*P*total + 4096);
  int r = 0;
  for (int q = 1; q < P; q++) if (fork() == 0) { r = q; break; }
  long gen = 0; double t0 = 0;
  for (int it = -3; it < iters; it++) {
    if (it == 0) { barrier(s, r, ++gen); t0 = now(); }
    for (size_t c = 0; c < slice; c += chunk) {
      size_t o = r*slice + c, n = (slice - c < chunk ? slice - c : chunk) / 4;
      for (size_t i = 0; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps((float*)(send[0]+o) + i);
        for (int q = 1; q < P; q++) v = _mm512_add_ps(v, _mm512_loadu_ps((float*)(send[q]+o) + i));
        for (int q = 0; q < P; q++) {
          if (nt) _mm512_stream_ps((float*)(recv[q]+o) + i, v); else _mm512_storeu_ps((float*)(recv[q]+o) + i, v);
        }
      }
    }
    if (nt) _mm_sfence();
    barrier(s, r, ++gen);
  }
  double t = (now() - t0) / iters;
  if (r == 0) {
    printf("%d ranks, %zu MiB, %s, %s stores: %.1f us per call\n", P, total >> 20, in_place ? "in place" : "out of place", nt ? "streaming" : "plain", t*1e6);
    while (wait(NULL) > 0) {}
  }
  return 0;
}
