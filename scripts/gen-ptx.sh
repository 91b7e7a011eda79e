#!/usr/bin/env bash
# Regenerates algorithms/src/kernels/cuda_kernels.ptx from cuda_kernels.cu with NVRTC, as
# oxccl does at run time (compute_70, no other option), with the PTX ISA version lowered to
# 7.0 so that older drivers load it too. Needs libnvrtc.so.12 on the loader's path, e.g.
#   pip download nvidia-cuda-nvrtc-cu12==12.9.86 --no-deps -d /tmp/w && unzip /tmp/w/*.whl -d /opt/nvrtc
#   LD_LIBRARY_PATH=/opt/nvrtc/nvidia/cuda_nvrtc/lib scripts/gen-ptx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import ctypes, pathlib, sys
lib = None
for name in ("libnvrtc.so.12", "libnvrtc.so"):
    try:
        lib = ctypes.CDLL(name)
        break
    except OSError:
        pass
if lib is None:
    sys.exit("no libnvrtc.so.12 on the loader's path (see this script's header)")
src = pathlib.Path("algorithms/src/kernels/cuda_kernels.cu").read_bytes()
prog = ctypes.c_void_p()
def ok(r, what):
    if r != 0:
        sys.exit(f"{what} failed: {r}")
ok(lib.nvrtcCreateProgram(ctypes.byref(prog), src, None, 0, None, None), "nvrtcCreateProgram")
opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_70")
r = lib.nvrtcCompileProgram(prog, 1, opts)
if r != 0:
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    sys.exit("compile failed:\n" + log.value.decode())
n = ctypes.c_size_t()
ok(lib.nvrtcGetPTXSize(prog, ctypes.byref(n)), "nvrtcGetPTXSize")
buf = ctypes.create_string_buffer(n.value)
ok(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
ptx = buf.value.decode()
lines = [".version 7.0" if l.startswith(".version ") else l for l in ptx.split("\n")]
out = "\n".join(lines).rstrip("\n") + "\n"
pathlib.Path("algorithms/src/kernels/cuda_kernels.ptx").write_text(out)
print(f"wrote algorithms/src/kernels/cuda_kernels.ptx ({len(out)} bytes)")
PY
