#!/usr/bin/env python3
"""Static SASS figures of seqmamba's CUDA kernels, on a machine without a GPU.

Compiles .cu sources with NVRTC for sm_90 (as the backend does at run time), disassembles
the CUBIN and prints, per kernel: instructions, special-function (MUFU) instructions,
shuffles, branches, local-memory spill accesses and registers a thread. What a kernel
change does to these is a prediction to check on the GPU, not a measurement.

Set-up (PyPI only):
    python3 -m venv /var/tmp/nvrtc-venv
    /var/tmp/nvrtc-venv/bin/pip install nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-nvdisasm
(the GPU machine's NVRTC is 13.0: a newer one allocates registers differently)
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
import struct
import subprocess
import sys
import tempfile

import nvidia.cu13 as cu13

PACKAGE = pathlib.Path(cu13.__path__[0])


def compile_cubin(source: bytes, options: list[str]) -> bytes:
    # NVRTC opens its builtins library by name: load it first from the package.
    for builtins in (PACKAGE / "lib").glob("libnvrtc-builtins.so.*"):
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
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


def registers(cubin: bytes) -> dict[str, int]:
    """Registers a thread of each kernel: the EIATTR_REGCOUNT records of `.nv.info`."""
    shoff = struct.unpack_from("<Q", cubin, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]

    def string(table: int, at: int) -> str:
        start = headers[table][4] + at
        return cubin[start : cubin.index(b"\0", start)].decode()

    sections = {string(shstrndx, h[0]): h for h in headers}
    symtab = sections[".symtab"]
    symbols = [struct.unpack_from("<IBBHQQ", cubin, symtab[4] + i * 24) for i in range(symtab[5] // 24)]
    info = sections[".nv.info"]
    found, at, end = {}, info[4], info[4] + info[5]
    while at < end:
        fmt, attribute = cubin[at], cubin[at + 1]
        size = struct.unpack_from("<H", cubin, at + 2)[0] if fmt == 4 else 0
        if attribute == 0x2F:  # EIATTR_REGCOUNT: symbol, count
            symbol, count = struct.unpack_from("<II", cubin, at + 4)
            found[string(symtab[6], symbols[symbol][0])] = count
        at += 4 + size
    return found


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
    cubin = compile_cubin(source, options)
    sass = disassemble(cubin)
    regs = registers(cubin)
    if keep:
        pathlib.Path(keep).write_text(sass)
    print(f"{'kernel':<28} {'instructions':>12} {'MUFU':>6} {'SHFL':>6} {'BRA':>5} {'spills':>6} {'regs':>5}")
    for name, total, mufu, shfl, bra, spills in sorted(kernel_figures(sass)):
        print(f"{name:<28} {total:>12} {mufu:>6} {shfl:>6} {bra:>5} {spills:>6} {regs.get(name, 0):>5}")


if __name__ == "__main__":
    main()
