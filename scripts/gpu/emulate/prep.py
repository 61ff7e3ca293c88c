#!/usr/bin/env python3
"""Turns CUDA sources into C++ for emu.h: `prep.py NAMESPACE OUT SOURCE...`.

The sources are joined in order (as the backend prepends the shared headers); each inline
PTX statement becomes its emulation (ex2 -> exp2f, cp.async -> a copy or zero fill, the
commit and wait -> nothing, bf16 rounding -> emu_bf16), an `extern __shared__` array a
pointer into g_dynamic_shared, and every kernel a plain function in NAMESPACE, so that two
versions of a source can sit in one program. Defines NAMESPACE_HAS_<kernel> for each kernel.
"""
import re
import sys

namespace, out, *sources = sys.argv[1:]
src = "".join(open(f).read() for f in sources)
replacements = [
    (r'asm\("ex2\.approx\.ftz\.f32 %0, %1;" : "=f"\(y\) : "f"\(x\)\);', "y = exp2f(x);"),
    (r'asm volatile\("cp\.async\.ca\.shared\.global[^;]*;[^;]*;', "emu_copy(dst, src, BYTES, valid);"),
    (r'asm volatile\("cp\.async\.commit_group;[^;]*;', ";"),
    (r'asm volatile\("cp\.async\.wait_group[^;]*;[^;]*;', ";"),
    (r'asm\("cvt\.rn\.bf16\.f32 %0, %1;" : "=h"\(rounded\) : "f"\(value\)\);', "rounded = emu_bf16(value);"),
    (r'asm\("cvt\.rn\.bf16x2\.f32 %0, %1, %2;" : "=r"\(packed\) : "f"\(hi\), "f"\(lo\)\);',
     "packed = emu_bf16(lo) | ((unsigned)emu_bf16(hi) << 16);"),
]
for pattern, replacement in replacements:
    src = re.sub(pattern, replacement, src)
left = [line for line in src.splitlines() if "asm" in line.split("//")[0]]
if left:
    sys.exit("inline PTX this script does not emulate:\n" + "\n".join(left))
src = re.sub(r"extern __shared__ (\w+) (\w+)\[\];", r"\1* \2 = reinterpret_cast<\1*>(g_dynamic_shared);", src)
kernels = re.findall(r'extern "C" __global__ void (?:\w+(?:\([^)]*\))? )*(\w+)\(', src)
src = src.replace('extern "C" ', "")
defines = "".join(f"#define {namespace}_HAS_{k} 1\n" for k in kernels)
with open(out, "w") as f:
    f.write(f'#include "emu.h"\n{defines}namespace {namespace} {{\n{src}\n}}\n')
