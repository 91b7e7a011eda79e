// Build and run: gcc -O2 benches/limits/a2a_copy_limit.c -o /tmp/a2a_limit && /tmp/a2a_limit 4 100
// The copy limit of a 2-rank all-to-all out of place on this machine: two processes, buffers in
// one shared mapping, each copying its own block locally and its other block into the peer's
// output with glibc memcpy (the best copy routine the machine has), a spin barrier between
// iterations. Prints the mean time per iteration for each total size.
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
typedef struct { _Atomic long arrive[2][16]; } Sync;
static void barrier(Sync* s, int r, long gen){ atomic_store(&s->arrive[r][0], gen); while(atomic_load(&s->arrive[1-r][0]) < gen) __builtin_ia32_pause(); }
int main(int argc, char** argv){
  size_t total = (size_t)atol(argv[1]) << 20;  // per rank, like nccl-tests' size column
  int iters = atoi(argv[2]);
  size_t blk = total / 2;
  char* base = mmap(NULL, 4*total + 4096, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS, -1, 0);
  Sync* s = (Sync*)base; memset(s, 0, sizeof *s);
  char* send[2] = { base + 4096, base + 4096 + total };
  char* recv[2] = { base + 4096 + 2*total, base + 4096 + 3*total };
  memset(base + 4096, 1, 4*total);
  pid_t pid = fork(); int r = pid == 0 ? 1 : 0;
  long gen = 0; double t0 = 0;
  for (int it = -5; it < iters; it++) {
    if (it == 0) { barrier(s, r, ++gen); t0 = now(); }
    memcpy(recv[r] + r*blk, send[r] + r*blk, blk);          // own block
    memcpy(recv[1-r] + r*blk, send[r] + (1-r)*blk, blk);    // the peer's block, into its output
    barrier(s, r, ++gen);
  }
  double t = (now() - t0) / iters;
  if (r == 0) { printf("a2a copy limit %zu MiB: %.1f us per call\n", total >> 20, t*1e6); wait(NULL); }
  return 0;
}
