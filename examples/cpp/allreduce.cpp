// All-reduce from C++ with oxccl (the same header; it has extern "C" guards).
//
//   make -C examples && target/release/oxrun -n 4 examples/cpp/allreduce
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>
#include "oxccl.h"

static void check(oxcclResult_t r, const char* what) {
  if (r != oxcclSuccess) throw std::runtime_error(std::string(what) + ": " + oxcclGetLastError(nullptr));
}

int main() try {
  oxcclComm_t comm = nullptr;
  check(oxcclCommInitFromEnv(&comm), "init");
  int rank = 0, size = 0;
  check(oxcclCommUserRank(comm, &rank), "rank");
  check(oxcclCommCount(comm, &size), "size");
  std::vector<double> v(1 << 16, rank + 1.0);
  check(oxcclAllReduce(v.data(), v.data(), v.size(), oxcclDouble, oxcclAvg, comm, nullptr), "all-reduce");
  std::size_t wrong = 0;
  for (double x : v) wrong += x != (size + 1) / 2.0;
  if (rank == 0) std::printf("mean over %d ranks: %g (%zu wrong)\n", size, v[0], wrong);
  check(oxcclCommDestroy(comm), "destroy");
  return wrong != 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s\n", e.what());
  return 1;
}
