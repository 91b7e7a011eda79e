/* Helpers shared by the C tests: closed-form fills and a failure counter. */
#ifndef OXCCL_TEST_CHECK_H
#define OXCCL_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include "oxccl.h"

static int failures = 0;

#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      failures++;                                           \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);  \
      fprintf(stderr, __VA_ARGS__);                         \
      fprintf(stderr, "\n");                                \
    }                                                       \
  } while (0)

#define OK(call)                                                                   \
  do {                                                                             \
    oxcclResult_t r_ = (call);                                                     \
    if (r_ != oxcclSuccess) {                                                      \
      fprintf(stderr, "FAIL %s:%d: %s -> %d: %s\n", __FILE__, __LINE__, #call,     \
              (int)r_, oxcclGetLastError(NULL));                                   \
      exit(1);                                                                     \
    }                                                                              \
  } while (0)

/* The value rank r contributes at element i: 1..5, exact in every type. */
static inline long contribution(int r, size_t i) { return 1 + (long)((3 * (size_t)r + i) % 5); }
static inline long sum_over(int p, size_t i) {
  long s = 0;
  for (int r = 0; r < p; r++) s += contribution(r, i);
  return s;
}
static inline long max_over(int p, size_t i) {
  long m = 0;
  for (int r = 0; r < p; r++) m = contribution(r, i) > m ? contribution(r, i) : m;
  return m;
}
/* Identifies (source, block, element): 1..101. */
static inline long pattern(int src, int block, size_t i) { return 1 + (long)(((size_t)src * 131 + (size_t)block * 17 + i) % 101); }

/* bfloat16 of a small integer: the top half of its float. */
static inline uint16_t bf16_of(long v) {
  float f = (float)v;
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return (uint16_t)(u >> 16);
}

#endif
