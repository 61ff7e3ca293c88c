#!/usr/bin/env python3
"""Static SASS figures of seqmamba's CUDA kernels, on a machine without a GPU.

Compiles .cu sources with NVRTC for sm_90 (as the backend does at run time), disassembles
the CUBIN and prints, per kernel: instructions, special-function (MUFU) instructions,
shuffles, branches and local-memory spill accesses. What a kernel change does to these is
a prediction to check on the GPU, not a measurement.

Set-up (PyPI only):
    python3 -m venv /var/tmp/nvrtc-venv
    /var/tmp/nvrtc-venv/bin/pip install nvidia-cuda-nvrtc nvidia-cuda-nvdisasm
Use, from the repository root (the sources are joined in order, as the backend prepends
the shared headers):
    /var/tmp/nvrtc-venv/bin/python scripts/gpu/sass.py kernels/src/cuda/common.cuh \
        kernels/src/cuda/bf16.cuh kernels/src/scan/scan.cu -- -DSTATE=16 -DSTREAMS_BF16=1
Options after `--` go to NVRTC; `--sass FILE` keeps the disassembly.
"""

import collections
import ctypes
import pathlib
import re
import subprocess
import sys
import tempfile

import nvidia.cu13 as cu13

PACKAGE = pathlib.Path(cu13.__path__[0])


def compile_cubin(source: bytes, options: list[str]) -> bytes:
    nvrtc = ctypes.CDLL(str(PACKAGE / "lib" / "libnvrtc.so.13"))
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"kernels.cu", 0, None, None):
        sys.exit("nvrtcCreateProgram failed")
    args = [b"--gpu-architecture=sm_90", b"-default-device", b"--std=c++17"]
    args += [o.encode() for o in options]
    status = nvrtc.nvrtcCompileProgram(program, len(args), (ctypes.c_char_p * len(args))(*args))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    if status:
        sys.exit(log.value.decode())
    nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetCUBIN(program, cubin)
    return cubin.raw


def disassemble(cubin: bytes) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        nvdisasm = PACKAGE / "bin" / "nvdisasm"
        return subprocess.run([str(nvdisasm), "-c", f.name], capture_output=True, text=True, check=True).stdout


def kernel_figures(sass: str):
    for match in re.finditer(r"\.text\.(\w+):\n(.*?)(?=\n\s*\.section|\Z)", sass, re.S):
        opcodes = re.findall(r"/\*[0-9a-f]{4,5}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", match.group(2))
        count = collections.Counter(opcodes)
        yield match.group(1), len(opcodes), count["MUFU"], count["SHFL"], count["BRA"], count["STL"] + count["LDL"]


def main() -> None:
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    sources, options = argv[:split], argv[split + 1 :]
    keep = None
    if "--sass" in options:
        at = options.index("--sass")
        keep = options[at + 1]
        del options[at : at + 2]
    source = b"".join(pathlib.Path(p).read_bytes() + b"\n" for p in sources)
    sass = disassemble(compile_cubin(source, options))
    if keep:
        pathlib.Path(keep).write_text(sass)
    print(f"{'kernel':<28} {'instructions':>12} {'MUFU':>6} {'SHFL':>6} {'BRA':>5} {'spills':>6}")
    for name, total, mufu, shfl, bra, spills in sorted(kernel_figures(sass)):
        print(f"{name:<28} {total:>12} {mufu:>6} {shfl:>6} {bra:>5} {spills:>6}")


if __name__ == "__main__":
    main()
