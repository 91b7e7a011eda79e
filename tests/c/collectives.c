/* Every collective through the C ABI, checked element by element against closed forms.
 * Run under oxrun with 2, 3 or 4 ranks. */
#include "check.h"

static const size_t counts[] = {0, 1, 7, 1000, 1031};
#define NCOUNTS (sizeof counts / sizeof counts[0])

static void test_all_reduce(oxcclComm_t comm, int rank, int p) {
  for (size_t k = 0; k < NCOUNTS; k++) {
    size_t n = counts[k];
    float *fs = malloc((n + 1) * sizeof *fs), *fr = malloc((n + 1) * sizeof *fr);
    int32_t *is = malloc((n + 1) * sizeof *is);
    uint16_t *bs = malloc((n + 1) * sizeof *bs);
    double *ds = malloc((n + 1) * sizeof *ds);
    for (size_t i = 0; i < n; i++) {
      fs[i] = (float)contribution(rank, i);
      is[i] = (int32_t)contribution(rank, i);
      bs[i] = bf16_of(contribution(rank, i));
      ds[i] = (double)contribution(rank, i);
      fr[i] = -1.0f;
    }
    OK(oxcclAllReduce(fs, fr, n, oxcclFloat, oxcclSum, comm, NULL));
    OK(oxcclAllReduce(is, is, n, oxcclInt32, oxcclMax, comm, NULL));
    OK(oxcclAllReduce(bs, bs, n, oxcclBfloat16, oxcclSum, comm, NULL));
    OK(oxcclAllReduce(ds, ds, n, oxcclDouble, oxcclAvg, comm, NULL));
    for (size_t i = 0; i < n; i++) {
      EXPECT(fr[i] == (float)sum_over(p, i), "all_reduce float sum n=%zu i=%zu: %f", n, i, (double)fr[i]);
      EXPECT(is[i] == max_over(p, i), "all_reduce int32 max n=%zu i=%zu: %d", n, i, is[i]);
      EXPECT(bs[i] == bf16_of(sum_over(p, i)), "all_reduce bf16 sum n=%zu i=%zu", n, i);
      EXPECT(ds[i] == (double)sum_over(p, i) / p, "all_reduce double avg n=%zu i=%zu: %f", n, i, ds[i]);
    }
    free(fs); free(fr); free(is); free(bs); free(ds);
  }
}

static void test_gather_scatter(oxcclComm_t comm, int rank, int p) {
  for (size_t k = 0; k < NCOUNTS; k++) {
    size_t n = counts[k], total = n * (size_t)p;
    int64_t *send = malloc((n + 1) * sizeof *send), *recv = malloc((total + 1) * sizeof *recv);
    for (size_t i = 0; i < n; i++) send[i] = pattern(rank, 0, i);
    OK(oxcclAllGather(send, recv, n, oxcclInt64, comm, NULL));
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++)
        EXPECT(recv[(size_t)j * n + i] == pattern(j, 0, i), "all_gather n=%zu block %d i=%zu", n, j, i);
    /* in place: own block already in recv */
    memset(recv, 0, (total + 1) * sizeof *recv);
    for (size_t i = 0; i < n; i++) recv[(size_t)rank * n + i] = pattern(rank, 1, i);
    OK(oxcclAllGather(recv + (size_t)rank * n, recv, n, oxcclInt64, comm, NULL));
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++)
        EXPECT(recv[(size_t)j * n + i] == pattern(j, 1, i), "all_gather in place n=%zu block %d", n, j);

    /* reduce-scatter: out of place, then in place */
    uint8_t *in = malloc(total + 1), *out = malloc(n + 1);
    for (size_t i = 0; i < total; i++) in[i] = (uint8_t)contribution(rank, i);
    OK(oxcclReduceScatter(in, out, n, oxcclUint8, oxcclSum, comm, NULL));
    for (size_t i = 0; i < n; i++)
      EXPECT(out[i] == (uint8_t)sum_over(p, (size_t)rank * n + i), "reduce_scatter n=%zu i=%zu", n, i);
    OK(oxcclReduceScatter(in, in + (size_t)rank * n, n, oxcclUint8, oxcclSum, comm, NULL));
    for (size_t i = 0; i < n; i++)
      EXPECT(in[(size_t)rank * n + i] == (uint8_t)sum_over(p, (size_t)rank * n + i), "reduce_scatter in place");

    /* all-to-all */
    int32_t *a = malloc((total + 1) * sizeof *a), *b = malloc((total + 1) * sizeof *b);
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++) a[(size_t)j * n + i] = (int32_t)pattern(rank, j, i);
    OK(oxcclAlltoAll(a, b, n, oxcclInt32, comm, NULL));
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++)
        EXPECT(b[(size_t)j * n + i] == pattern(j, rank, i), "alltoall n=%zu from %d i=%zu", n, j, i);
    free(send); free(recv); free(in); free(out); free(a); free(b);
  }
}

static void test_rooted(oxcclComm_t comm, int rank, int p) {
  for (int root = 0; root < p; root += p - 1) {
    for (size_t k = 0; k < NCOUNTS; k++) {
      size_t n = counts[k];
      float *buf = malloc((n + 1) * sizeof *buf), *res = malloc((n + 1) * sizeof *res);
      for (size_t i = 0; i < n; i++) buf[i] = rank == root ? (float)pattern(root, 2, i) : 0.0f;
      OK(oxcclBroadcast(buf, buf, n, oxcclFloat, root, comm, NULL));
      for (size_t i = 0; i < n; i++) EXPECT(buf[i] == (float)pattern(root, 2, i), "broadcast root %d n=%zu", root, n);
      for (size_t i = 0; i < n; i++) {
        buf[i] = (float)contribution(rank, i);
        res[i] = -1.0f;
      }
      OK(oxcclReduce(buf, res, n, oxcclFloat, oxcclSum, root, comm, NULL));
      if (rank == root)
        for (size_t i = 0; i < n; i++) EXPECT(res[i] == (float)sum_over(p, i), "reduce root %d n=%zu i=%zu", root, n, i);
      free(buf); free(res);
      if (p == 1) break;
    }
    if (p == 1) break;
  }
}

static void test_p2p_and_groups(oxcclComm_t comm, int rank, int p) {
  if (p < 2) return;
  int right = (rank + 1) % p, left = (rank + p - 1) % p;
  size_t n = 100000; /* large enough to need both sides posted at once */
  double *s = malloc(n * sizeof *s), *r = malloc(n * sizeof *r);
  for (size_t i = 0; i < n; i++) s[i] = (double)pattern(rank, 5, i);
  /* Everyone sends first, then receives: only safe inside a group. */
  OK(oxcclGroupStart());
  OK(oxcclSend(s, n, oxcclDouble, right, comm, NULL));
  OK(oxcclRecv(r, n, oxcclDouble, left, comm, NULL));
  OK(oxcclGroupEnd());
  for (size_t i = 0; i < n; i++) EXPECT(r[i] == (double)pattern(left, 5, i), "group ring exchange i=%zu", i);
  free(s); free(r);

  /* all-to-all-v: rank r sends (r + j) % 3 + j elements to rank j */
  size_t sc[16], sd[16], rc[16], rd[16], st = 0, rt = 0;
  for (int j = 0; j < p; j++) {
    sc[j] = (size_t)((rank + j) % 3 + j); sd[j] = st; st += sc[j] + 1;
    rc[j] = (size_t)((j + rank) % 3 + rank); rd[j] = rt; rt += rc[j];
  }
  int32_t *vs = malloc((st + 1) * sizeof *vs), *vr = malloc((rt + 1) * sizeof *vr);
  for (int j = 0; j < p; j++)
    for (size_t i = 0; i < sc[j]; i++) vs[sd[j] + i] = (int32_t)pattern(rank, j, i);
  OK(oxcclAlltoAllv(vs, sc, sd, vr, rc, rd, oxcclInt32, comm, NULL));
  for (int j = 0; j < p; j++)
    for (size_t i = 0; i < rc[j]; i++) EXPECT(vr[rd[j] + i] == pattern(j, rank, i), "alltoallv from %d i=%zu", j, i);
  free(vs); free(vr);
}

static void test_split(oxcclComm_t comm, int rank, int p) {
  oxcclComm_t sub = NULL;
  int color = rank == p - 1 && p > 2 ? OXCCL_SPLIT_NOCOLOR : rank % 2;
  OK(oxcclCommSplit(comm, color, -rank, &sub, NULL));
  if (color == OXCCL_SPLIT_NOCOLOR) {
    EXPECT(sub == NULL, "a NOCOLOR rank gets no communicator");
    return;
  }
  int n = 0, r = -1;
  OK(oxcclCommCount(sub, &n));
  OK(oxcclCommUserRank(sub, &r));
  int members = 0, expect_sum = 0, below = 0;
  for (int j = 0; j < p; j++) {
    if ((j == p - 1 && p > 2) || j % 2 != rank % 2) continue;
    members++;
    expect_sum += j;
    if (j > rank) below++; /* keys are -rank: higher ranks come first */
  }
  EXPECT(n == members && r == below, "split: rank %d of %d, want %d of %d", r, n, below, members);
  int v = rank;
  OK(oxcclAllReduce(&v, &v, 1, oxcclInt, oxcclSum, sub, NULL));
  EXPECT(v == expect_sum, "split all_reduce %d != %d", v, expect_sum);
  OK(oxcclCommDestroy(sub));
}

/* Buffers from oxcclMemAlloc, which the other ranks map: the four collectives with a mapped
 * algorithm, in and out of place, at sizes where it is chosen. */
static void test_shared_buffers(oxcclComm_t comm, int rank, int p) {
  static const size_t sizes[] = {1031, 262147};
  for (size_t k = 0; k < 2; k++) {
    size_t n = sizes[k], total = n * (size_t)p;
    float *a = NULL, *b = NULL;
    OK(oxcclMemAlloc((void **)&a, total * sizeof *a));
    OK(oxcclMemAlloc((void **)&b, total * sizeof *b));
    if (!a || !b) return;
    for (size_t i = 0; i < n; i++) a[i] = (float)contribution(rank, i);
    OK(oxcclAllReduce(a, b, n, oxcclFloat, oxcclSum, comm, NULL));
    OK(oxcclAllReduce(a, a, n, oxcclFloat, oxcclSum, comm, NULL));
    for (size_t i = 0; i < n; i++) {
      EXPECT(b[i] == (float)sum_over(p, i), "shared all_reduce n=%zu i=%zu: %f", n, i, (double)b[i]);
      EXPECT(a[i] == (float)sum_over(p, i), "shared all_reduce in place n=%zu i=%zu: %f", n, i, (double)a[i]);
    }
    int32_t *s = (int32_t *)a, *r = (int32_t *)b;
    for (size_t i = 0; i < n; i++) s[i] = (int32_t)pattern(rank, 0, i);
    OK(oxcclAllGather(s, r, n, oxcclInt32, comm, NULL));
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++)
        EXPECT(r[(size_t)j * n + i] == (int32_t)pattern(j, 0, i), "shared all_gather n=%zu block %d i=%zu", n, j, i);
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++) s[(size_t)j * n + i] = (int32_t)pattern(rank, j, i);
    OK(oxcclAlltoAll(s, r, n, oxcclInt32, comm, NULL));
    OK(oxcclAlltoAll(s, s, n, oxcclInt32, comm, NULL));
    for (int j = 0; j < p; j++)
      for (size_t i = 0; i < n; i++) {
        EXPECT(r[(size_t)j * n + i] == (int32_t)pattern(j, rank, i), "shared alltoall n=%zu from %d i=%zu", n, j, i);
        EXPECT(s[(size_t)j * n + i] == (int32_t)pattern(j, rank, i), "shared alltoall in place n=%zu from %d", n, j);
      }
    for (size_t i = 0; i < total; i++) a[i] = (float)contribution(rank, i);
    OK(oxcclReduceScatter(a, b, n, oxcclFloat, oxcclSum, comm, NULL));
    for (size_t i = 0; i < n; i++)
      EXPECT(b[i] == (float)sum_over(p, (size_t)rank * n + i), "shared reduce_scatter n=%zu i=%zu", n, i);
    OK(oxcclMemFree(a));
    OK(oxcclMemFree(b));
  }
  OK(oxcclMemFree(NULL));
}

int main(void) {
  oxcclComm_t comm;
  OK(oxcclCommInitFromEnv(&comm));
  int rank = -1, p = 0, version = 0;
  OK(oxcclCommUserRank(comm, &rank));
  OK(oxcclCommCount(comm, &p));
  OK(oxcclGetVersion(&version));
  EXPECT(version == OXCCL_VERSION_CODE, "version %d", version);
  test_all_reduce(comm, rank, p);
  test_gather_scatter(comm, rank, p);
  test_rooted(comm, rank, p);
  test_p2p_and_groups(comm, rank, p);
  test_split(comm, rank, p);
  test_shared_buffers(comm, rank, p);
  OK(oxcclBarrier(comm, NULL));
  oxcclResult_t async = oxcclInternalError;
  OK(oxcclCommGetAsyncError(comm, &async));
  EXPECT(async == oxcclSuccess, "async error %d", (int)async);
  OK(oxcclCommDestroy(comm));
  if (failures) {
    fprintf(stderr, "rank %d: %d failures\n", rank, failures);
    return 1;
  }
  printf("C-COLLECTIVES-OK %d/%d\n", rank, p);
  return 0;
}
