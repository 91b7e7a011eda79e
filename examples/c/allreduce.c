/* All-reduce from C with oxccl: every rank contributes rank + 1; every element of the result
 * is size (size + 1) / 2. Also times an 8-byte all-reduce.
 *
 *   cargo build --release -p oxccl -p oxccl-ffi
 *   make -C examples
 *   target/release/oxrun -n 4 examples/c/allreduce
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "oxccl.h"

#define CHECK(call)                                                                     \
  do {                                                                                  \
    oxcclResult_t r_ = (call);                                                          \
    if (r_ != oxcclSuccess) {                                                           \
      fprintf(stderr, "%s failed: %s\n", #call, oxcclGetLastError(NULL));               \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void) {
  oxcclComm_t comm;
  CHECK(oxcclCommInitFromEnv(&comm)); /* oxrun, mpirun, srun or torchrun variables */
  int rank, size;
  CHECK(oxcclCommUserRank(comm, &rank));
  CHECK(oxcclCommCount(comm, &size));

  size_t n = 1 << 20;
  float *grads = malloc(n * sizeof *grads);
  for (size_t i = 0; i < n; i++) grads[i] = (float)(rank + 1);
  CHECK(oxcclAllReduce(grads, grads, n, oxcclFloat, oxcclSum, comm, NULL));
  size_t wrong = 0;
  for (size_t i = 0; i < n; i++) wrong += grads[i] != (float)(size * (size + 1) / 2);

  /* The latency of a tiny all-reduce: the mean over many calls, the slowest rank's. */
  double x[2] = {1.0, 2.0}, t;
  int iters = 20000;
  for (int i = 0; i < 1000; i++) CHECK(oxcclAllReduce(x, x, 1, oxcclDouble, oxcclSum, comm, NULL));
  CHECK(oxcclBarrier(comm, NULL));
  t = now();
  for (int i = 0; i < iters; i++) CHECK(oxcclAllReduce(x, x, 1, oxcclDouble, oxcclSum, comm, NULL));
  t = (now() - t) / iters * 1e6;
  CHECK(oxcclAllReduce(&t, &t, 1, oxcclDouble, oxcclMax, comm, NULL));

  if (rank == 0) printf("all-reduce of %zu floats on %d ranks: %zu wrong; 8-byte all-reduce: %.2f us\n", n, size, wrong, t);
  free(grads);
  CHECK(oxcclCommDestroy(comm));
  return wrong != 0;
}
