// The header from C++: all-reduce and all-gather on std::vector, every element checked.
#include <cstdio>
#include <vector>
#include "oxccl.h"

#define OK(call)                                                                        \
  do {                                                                                  \
    oxcclResult_t r_ = (call);                                                          \
    if (r_ != oxcclSuccess) {                                                           \
      std::fprintf(stderr, "%s -> %d: %s\n", #call, int(r_), oxcclGetLastError(nullptr)); \
      return 1;                                                                         \
    }                                                                                   \
  } while (0)

int main() {
  oxcclComm_t comm = nullptr;
  OK(oxcclCommInitFromEnv(&comm));
  int rank = 0, p = 0;
  OK(oxcclCommUserRank(comm, &rank));
  OK(oxcclCommCount(comm, &p));
  std::vector<float> v(4099, float(rank + 1));
  OK(oxcclAllReduce(v.data(), v.data(), v.size(), oxcclFloat, oxcclSum, comm, nullptr));
  std::vector<int> all(p);
  OK(oxcclAllGather(&rank, all.data(), 1, oxcclInt, comm, nullptr));
  int bad = 0;
  for (float x : v) bad += x != float(p * (p + 1) / 2);
  for (int j = 0; j < p; j++) bad += all[j] != j;
  OK(oxcclCommDestroy(comm));
  if (bad) {
    std::fprintf(stderr, "rank %d: %d wrong\n", rank, bad);
    return 1;
  }
  std::printf("CPP-OK %d/%d\n", rank, p);
  return 0;
}
