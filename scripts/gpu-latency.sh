#!/usr/bin/env bash
# Where small calls on device buffers spend their time, on a GPU machine (after
# scripts/gpu-check.sh --build here): 2 processes sharing one GPU time-slice it between their
# CUDA contexts, unless the MPS daemon runs their work in one. The same small calls without
# and with MPS, the 4-process all-reduce, and the ring over CUDA IPC beside the direct
# (mapped) schedule, 2 and 4 processes, under MPS. About two minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="/usr/local/nvidia/lib64:/usr/local/nvidia/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OXCCL_OXRUN=$(pwd)/.gpu-bin/oxrun
b=.gpu-bin/oxccl-bench
small() { timeout 60 $b --ranks 2 --device -b 8 -e 32K -f 64 -n 500 -w 50 --collective all_reduce,broadcast,all_gather 2>&1 | grep -E "^ +[0-9]|oxccl-bench|rror"; }
echo "== 2 processes, no MPS"
small
echo "== 2 processes under MPS"
if command -v nvidia-cuda-mps-control > /dev/null; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && sleep 1
  small
  for p in 2 4; do
    echo "== $p processes under MPS: direct (mapped) and ring over CUDA IPC"
    timeout 90 $b --ranks $p --device -b 8 -e 256M -f 16 -n 10 -w 3 --compare mapped,ring \
      --collective all_reduce,all_gather,reduce_scatter 2>&1 | grep -E "^ +[0-9]|oxccl-bench|Out of|rror"
  done
  echo quit | nvidia-cuda-mps-control
  sleep 1
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
else
  echo "no nvidia-cuda-mps-control here"
fi
echo "== 4 processes, all-reduce, no MPS"
timeout 90 $b --ranks 4 --device -b 8 -e 256M -f 16 -n 20 -w 5 2>&1 | grep -E "^ +[0-9]|copy bandwidth|Out of bounds|rror"
