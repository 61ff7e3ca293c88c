#!/usr/bin/env bash
# Builds `cuda_scan_bench` at each given commit (default: HEAD) and packs the binaries for
# scripts/gpu/bench-run.sh on a GPU machine: `scripts/gpu/bench-pack.sh DIR [COMMIT...]`
# writes DIR/csb-<short hash>.xz. Each commit is built in a temporary worktree sharing
# CARGO_TARGET_DIR (default /var/tmp/seqmamba-release).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:?usage: bench-pack.sh DIR [COMMIT...]}")
shift
[ $# -gt 0 ] || set -- HEAD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/seqmamba-release}
mkdir -p "$out"
for commit in "$@"; do
    short=$(git -C "$root" rev-parse --short "$commit")
    tree=$(mktemp -d)/tree
    git -C "$root" worktree add -q --detach "$tree" "$commit"
    # Cargo keys a path package by its relative path, so another tree's build would be
    # reused: the kernels' sources are touched to force this commit's.
    touch "$tree"/kernels/src/scan/scan.cu "$tree"/kernels/src/cuda/*.cuh
    (cd "$tree" && cargo build --release -q -p seqmamba-kernels --example cuda_scan_bench)
    strip -o "$out/csb-$short" "$CARGO_TARGET_DIR/release/examples/cuda_scan_bench"
    xz -f -T0 "$out/csb-$short"
    git -C "$root" worktree remove --force "$tree"
    echo "$out/csb-$short.xz"
done
