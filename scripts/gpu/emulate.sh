#!/usr/bin/env bash
# Checks the working tree's scan kernels against those of a base commit on the CPU, without
# a GPU: `scripts/gpu/emulate.sh [BASE [SHAPE...]]` (default HEAD and the shapes below; a
# shape is "BATCH LEN CHANNELS CHUNK CHUNKS_A_SEGMENT"). Both sources run under
# scripts/gpu/emulate/emu.h (a thread per CUDA thread, blocks in turn) in each stream build;
# see harness.cpp for what must agree. Needs g++ (C++20). Slow (seconds a shape): it
# checks logic, not speed, and exp2 is the library's, not the GPU's.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
base=${1:-HEAD}
shift || true
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
here=$root/scripts/gpu/emulate
headers=("$root/kernels/src/cuda/common.cuh" "$root/kernels/src/cuda/bf16.cuh")
git -C "$root" show "$base:kernels/src/scan/scan.cu" > "$work/base_scan.cu"
for file in common.cuh bf16.cuh; do
    git -C "$root" show "$base:kernels/src/cuda/$file" > "$work/base_$file"
done
python3 "$here/prep.py" base "$work/base.cpp" "$work/base_common.cuh" "$work/base_bf16.cuh" "$work/base_scan.cu"
python3 "$here/prep.py" changed "$work/changed.cpp" "${headers[@]}" "$root/kernels/src/scan/scan.cu"
# Shapes: (batch, len, channels, chunk, chunks a segment). Several chunks of several
# sub-chunks a segment, on even and odd chunks; a short last chunk; chunks not of whole
# sub-chunks (13) and of one (8); one segment; channels not filling a block.
shapes=("2 300 72 48 3" "1 700 64 64 3" "2 101 40 13 2" "1 200 48 8 4" "1 300 72 32 10")
[ $# -eq 0 ] || shapes=("$@")
status=0
for streams in 0 1 2; do
    g++ -std=c++20 -O1 -ffp-contract=off -Wno-unknown-pragmas -pthread -DSTATE=16 -DSTREAMS_BF16=$streams \
        -I"$here" -I"$work" "$here/harness.cpp" -o "$work/harness$streams"
    for shape in "${shapes[@]}"; do
        # STREAMS_BF16=1 is the build for channels a multiple of 8.
        channels=$(echo "$shape" | cut -d' ' -f3)
        if [ "$streams" = 1 ] && [ $((channels % 8)) != 0 ]; then continue; fi
        # shellcheck disable=SC2086
        "$work/harness$streams" $shape || status=1
    done
done
exit $status
