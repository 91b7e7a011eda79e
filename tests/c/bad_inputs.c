/* Every bad input returns its exact code, touches no memory, and leaves a message.
 * Run under oxrun with 2 ranks. */
#include "check.h"

/* NCCL's published numbering. */
_Static_assert(oxcclSuccess == 0 && oxcclUnhandledCudaError == 1 && oxcclSystemError == 2 &&
               oxcclInternalError == 3 && oxcclInvalidArgument == 4 && oxcclInvalidUsage == 5 &&
               oxcclRemoteError == 6 && oxcclInProgress == 7, "ncclResult_t numbering");
_Static_assert(oxcclInt8 == 0 && oxcclChar == 0 && oxcclUint8 == 1 && oxcclInt32 == 2 && oxcclInt == 2 &&
               oxcclUint32 == 3 && oxcclInt64 == 4 && oxcclUint64 == 5 && oxcclFloat16 == 6 &&
               oxcclHalf == 6 && oxcclFloat32 == 7 && oxcclFloat == 7 && oxcclFloat64 == 8 &&
               oxcclDouble == 8 && oxcclBfloat16 == 9, "ncclDataType_t numbering");
_Static_assert(oxcclSum == 0 && oxcclProd == 1 && oxcclMax == 2 && oxcclMin == 3 && oxcclAvg == 4,
               "ncclRedOp_t numbering");
_Static_assert(sizeof(oxcclUniqueId) == 128, "ncclUniqueId is 128 bytes");

#define EXPECT_CODE(call, want, needle)                                                          \
  do {                                                                                           \
    oxcclResult_t got_ = (call);                                                                 \
    EXPECT(got_ == (want), "%s -> %d, want %d (%s)", #call, (int)got_, (int)(want),              \
           oxcclGetLastError(NULL));                                                             \
    EXPECT(strstr(oxcclGetLastError(NULL), (needle)) != NULL, "%s: message '%s' lacks '%s'",     \
           #call, oxcclGetLastError(NULL), (needle));                                            \
  } while (0)

int main(void) {
  oxcclComm_t comm;
  OK(oxcclCommInitFromEnv(&comm));
  int rank = 0, p = 0;
  OK(oxcclCommUserRank(comm, &rank));
  OK(oxcclCommCount(comm, &p));
  float buf[64] = {0}, sentinel[64];
  for (int i = 0; i < 64; i++) buf[i] = sentinel[i] = (float)i;

  /* NULL and foreign handles. */
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, oxcclFloat, oxcclSum, NULL, NULL), oxcclInvalidArgument, "comm is NULL");
  int not_a_comm = 0;
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, oxcclFloat, oxcclSum, (oxcclComm_t)&not_a_comm, NULL), oxcclInvalidArgument,
              "not a live oxccl communicator");
  EXPECT_CODE(oxcclCommCount(comm, NULL), oxcclInvalidArgument, "count is NULL");
  EXPECT_CODE(oxcclMemAlloc(NULL, 64), oxcclInvalidArgument, "ptr is NULL");
  EXPECT_CODE(oxcclMemFree(buf), oxcclInvalidArgument, "was not returned by oxcclMemAlloc");
  EXPECT_CODE(oxcclGetVersion(NULL), oxcclInvalidArgument, "version is NULL");
  EXPECT_CODE(oxcclCommInitFromEnv(NULL), oxcclInvalidArgument, "comm is NULL");

  /* NULL buffers, overflowing counts, unknown types and ops. */
  EXPECT_CODE(oxcclAllReduce(NULL, buf, 4, oxcclFloat, oxcclSum, comm, NULL), oxcclInvalidArgument, "sendbuff is NULL");
  EXPECT_CODE(oxcclAllReduce(buf, NULL, 4, oxcclFloat, oxcclSum, comm, NULL), oxcclInvalidArgument, "recvbuff is NULL");
  EXPECT_CODE(oxcclAllReduce(buf, buf, SIZE_MAX / 2, oxcclFloat, oxcclSum, comm, NULL), oxcclInvalidArgument, "overflow");
  EXPECT_CODE(oxcclAllGather(buf, buf, SIZE_MAX / 2 + 1, oxcclInt8, comm, NULL), oxcclInvalidArgument, "overflow");
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, (oxcclDataType_t)42, oxcclSum, comm, NULL), oxcclInvalidArgument,
              "unknown datatype 42");
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, oxcclFloat, (oxcclRedOp_t)17, comm, NULL), oxcclInvalidArgument, "unknown op 17");
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, (oxcclDataType_t)-3, oxcclSum, comm, NULL), oxcclInvalidArgument, "datatype");

  /* Overlapping buffers that are not exactly in place. */
  EXPECT_CODE(oxcclAllReduce(buf, buf + 1, 8, oxcclFloat, oxcclSum, comm, NULL), oxcclInvalidArgument, "overlap");
  EXPECT_CODE(oxcclAllGather(buf + 1, buf, 4, oxcclFloat, comm, NULL), oxcclInvalidArgument, "overlap");
  EXPECT_CODE(oxcclAlltoAll(buf, buf + 2, 4, oxcclFloat, comm, NULL), oxcclInvalidArgument, "overlap");

  /* Roots and peers out of range, streams, unbalanced groups, bad configs. */
  EXPECT_CODE(oxcclBroadcast(buf, buf, 4, oxcclFloat, p, comm, NULL), oxcclInvalidArgument, "root");
  EXPECT_CODE(oxcclReduce(buf, buf, 4, oxcclFloat, oxcclSum, -1, comm, NULL), oxcclInvalidArgument, "root -1");
  EXPECT_CODE(oxcclSend(buf, 4, oxcclFloat, p + 3, comm, NULL), oxcclInvalidArgument, "peer");
  EXPECT_CODE(oxcclSend(buf, 4, oxcclFloat, rank, comm, NULL), oxcclInvalidArgument, "peer");
  EXPECT_CODE(oxcclAllReduce(buf, buf, 4, oxcclFloat, oxcclSum, comm, (void *)buf), oxcclInvalidUsage, "stream");
  EXPECT_CODE(oxcclGroupEnd(), oxcclInvalidUsage, "without a matching oxcclGroupStart");
  oxcclConfig_t bad = OXCCL_CONFIG_INITIALIZER;
  bad.magic = 0;
  oxcclUniqueId id;
  memset(&id, 0, sizeof id);
  oxcclComm_t other = (oxcclComm_t)&not_a_comm;
  EXPECT_CODE(oxcclCommInitRankConfig(&other, 2, id, 0, &bad), oxcclInvalidArgument, "OXCCL_CONFIG_INITIALIZER");
  EXPECT(other == (oxcclComm_t)&not_a_comm, "out-parameter written on failure");
  EXPECT_CODE(oxcclCommInitRank(&other, 0, id, 0), oxcclInvalidArgument, "nranks 0");
  EXPECT_CODE(oxcclCommInitRank(&other, 2, id, 5), oxcclInvalidArgument, "rank 5");
  EXPECT_CODE(oxcclCommInitRank(&other, 2, id, 0), oxcclInvalidArgument, "unique id");
  EXPECT(other == (oxcclComm_t)&not_a_comm, "out-parameter written on failure");

  /* None of the refused calls touched the buffer, and the communicator still works. */
  EXPECT(memcmp(buf, sentinel, sizeof buf) == 0, "a refused call wrote to the buffer");
  OK(oxcclAllReduce(buf, buf, 64, oxcclFloat, oxcclSum, comm, NULL));
  for (int i = 0; i < 64; i++) EXPECT(buf[i] == (float)(i * p), "all_reduce after refusals: %f", (double)buf[i]);
  oxcclResult_t async = oxcclInternalError;
  OK(oxcclCommGetAsyncError(comm, &async));
  EXPECT(async == oxcclSuccess, "argument errors do not fail the communicator");

  /* The last-error message names the collective. */
  EXPECT(oxcclBroadcast(buf, buf, 4, oxcclFloat, 99, comm, NULL) == oxcclInvalidArgument, "root 99");
  EXPECT(strstr(oxcclGetLastError(comm), "broadcast") != NULL, "comm message: %s", oxcclGetLastError(comm));
  for (int c = 0; c <= oxcclNumResults; c++) EXPECT(oxcclGetErrorString((oxcclResult_t)c) != NULL, "error string %d", c);

  /* Destroyed handles are refused. */
  OK(oxcclCommDestroy(comm));
  EXPECT_CODE(oxcclCommCount(comm, &p), oxcclInvalidArgument, "not a live oxccl communicator");
  EXPECT_CODE(oxcclCommDestroy(comm), oxcclInvalidArgument, "not a live oxccl communicator");

  if (failures) {
    fprintf(stderr, "rank %d: %d failures\n", rank, failures);
    return 1;
  }
  printf("C-BAD-INPUTS-OK %d\n", rank);
  return 0;
}
