#!/usr/bin/env bash
# The GPU path, on a machine with an NVIDIA GPU, in under 8 minutes (under 2 on an H200):
#   1. every GPU test (tests/gpu.rs): worlds of threads, and of 2 and 4 processes sharing
#      the GPU through CUDA IPC, every collective, type, operator and count checked; and the
#      C ABI's stream semantics on device buffers (ffi's device_buffers_follow_stream_order);
#      the groups side by side, each with its own time limit;
#   2. oxccl-bench on device buffers: f32 all-reduce from 8 B to 1 GiB, bf16 all-reduce at
#      256 MiB and 1 GiB, the other collectives to 256 MiB, 2 processes, every result
#      checked, next to the device's copy bandwidth (printed by the benchmark); and small
#      calls with the peer-allocation opens counted, and staged beside them.
# Results of the runs so far: benches/GPU.md.
# Logs go to the folder given (default gpu-logs); the last lines say what passed.
#
#   scripts/gpu-check.sh --build   (here, with cargo) builds the four binaries in release,
#                                  stripped, into .gpu-bin/, to carry to a machine without
#                                  Rust; without .gpu-bin/ the script builds with cargo.
#   scripts/gpu-check.sh LOGS      runs the checks.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--build" ]; then
  set -e
  cargo build --release --bin oxccl-bench --bin oxrun
  test_bin=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gpu" and m.get("executable"):
        print(m["executable"])')
  ffi_bin=$(cargo test --release -p oxccl-ffi --lib --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "oxccl" and m.get("executable"):
        print(m["executable"])')
  mkdir -p .gpu-bin
  cp target/release/oxccl-bench target/release/oxrun .gpu-bin/
  cp "$test_bin" .gpu-bin/gpu-tests
  cp "$ffi_bin" .gpu-bin/c-abi-tests
  strip .gpu-bin/*
  ls -la .gpu-bin
  exit 0
fi

logs=${1:-gpu-logs}
mkdir -p "$logs"
if [ -x .gpu-bin/oxccl-bench ] && [ -x .gpu-bin/oxrun ] && [ -x .gpu-bin/gpu-tests ] && [ -x .gpu-bin/c-abi-tests ]; then
  bin=$(pwd)/.gpu-bin
  tests=$bin/gpu-tests
else
  scripts/gpu-check.sh --build > "$logs/build.txt" 2>&1 || { echo "build failed (see $logs/build.txt)"; exit 1; }
  bin=$(pwd)/.gpu-bin
  tests=$bin/gpu-tests
fi
export OXCCL_OXRUN=$bin/oxrun
status=0

# The driver's and the toolkit's usual folders, in case the loader's path lacks them; and an
# NVRTC of any major version under the name oxccl looks for (libnvrtc.so), so the run-time
# compilation path is the one exercised (without it the built-in PTX is loaded: the log
# says which).
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvrtc=$(find /usr/local/cuda*/lib64 /usr/local/cuda*/targets /opt /usr/lib -name 'libnvrtc.so*' 2>/dev/null \
  | grep -v builtins | head -n 1)
if [ -n "$nvrtc" ]; then
  mkdir -p /tmp/oxccl-nvrtc && ln -sf "$nvrtc" /tmp/oxccl-nvrtc/libnvrtc.so
  for b in $(dirname "$nvrtc")/libnvrtc-builtins*.so*; do [ -e "$b" ] && ln -sf "$b" /tmp/oxccl-nvrtc/; done
  export LD_LIBRARY_PATH="/tmp/oxccl-nvrtc:$(dirname "$nvrtc"):$LD_LIBRARY_PATH"
fi
{
  nvidia-smi || true
  echo "NVRTC: ${nvrtc:-none found}"
  ldconfig -p | grep -E "libcuda|libnvrtc" || true
} > "$logs/nvidia-smi.txt" 2>&1
export RUST_BACKTRACE=1
# The four test groups run side by side (the GPU and 16 cores have room), each with its own
# time limit, so one that hangs cannot take the others' time; the benchmarks run after,
# alone on the GPU.
echo "== GPU tests (threads; 2 and 4 processes; staged over TCP; the C ABI's stream order)"
declare -A pids
for t in thread_worlds_on_device_buffers process_worlds_on_device_buffers \
         device_buffers_over_tcp_or_a_forced_ring_are_staged device_buffers_without_cuda_are_a_clear_error; do
  timeout 180 "$tests" "$t" --exact --test-threads=1 --nocapture > "$logs/test-$t.txt" 2>&1 &
  pids[$t]=$!
done
timeout 180 "$bin/c-abi-tests" device_buffers_follow_stream_order --nocapture > "$logs/test-c-abi.txt" 2>&1 &
pids[c-abi]=$!
for t in "${!pids[@]}"; do
  if wait "${pids[$t]}"; then echo "test $t: passed"; else echo "test $t: FAILED (exit $?)"; status=1; fi
done
grep -hE "^test |test result|skipped|panicked|rror" "$logs"/test-*.txt | head -60
if grep -q "skipped" "$logs"/test-*.txt; then
  echo "GPU tests: they did not run on a GPU (see the skip reasons above)"; status=1
fi

bench() {
  local name=$1; shift
  if OXCCL_DEBUG=info timeout 60 "$bin/oxccl-bench" --ranks 2 --device -c 1 "$@" > "$logs/bench-$name.txt" 2>&1; then
    echo "bench $name: ran"
  else
    echo "bench $name: FAILED (exit $?)"; status=1
    tail -n 8 "$logs/bench-$name.txt"
  fi
  grep -E "^ +[0-9]|copy bandwidth|Out of bounds|kernels|rror" "$logs/bench-$name.txt" | head -40
}
echo "== oxccl-bench on device buffers"
bench allreduce-f32 -b 8 -e 1G -f 4 -n 20 -w 5
bench allreduce-bf16 -d bfloat16 -b 256M -e 1G -f 4 -n 20 -w 5
bench others --collective all_gather,reduce_scatter,all_to_all,broadcast,reduce -b 8 -e 256M -f 16 -n 10 -w 3
# Small calls: the automatic choice (mapped, through CUDA IPC) with many iterations, its
# log counting how often a peer's allocation was opened (once per buffer, not per call);
# and the staged path beside it (recursive doubling through host memory: a forced ring now runs
# over CUDA IPC itself).
OXCCL_DEBUG=debug timeout 40 "$bin/oxccl-bench" --ranks 2 --device -c 1 -b 8 -e 64K -f 8 -n 200 -w 20 \
  > "$logs/bench-small-debug.txt" 2>&1 || { echo "bench small-debug: FAILED"; status=1; }
grep -E "^ +[0-9]" "$logs/bench-small-debug.txt"
echo "peer allocations opened (cuIpcOpenMemHandle): $(grep -c "opened a peer's device allocation" "$logs/bench-small-debug.txt")"
bench small-staged --algo all_reduce:recursive_doubling -b 8 -e 64K -f 8 -n 200 -w 20
wrong=$(grep -h "Out of bounds values" "$logs"/bench-*.txt | grep -vc " 0 OK" || true)
echo "bench runs with wrong results: $wrong"
[ "$wrong" = 0 ] || status=1
echo "gpu-check: $([ $status = 0 ] && echo PASSED || echo FAILED)"
exit $status
