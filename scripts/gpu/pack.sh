#!/usr/bin/env bash
# Builds, on a machine with cargo, everything the GPU checks run, and packs it for a GPU
# machine without cargo: `scripts/gpu/pack.sh [DIR]` (default .device-bin, ignored by git)
# writes DIR/gpu-checks.tar.xz. Run it there with `scripts/gpu/run.sh DIR` from the
# repository root.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(realpath -m "${1:-$root/.device-bin}")
target=$(realpath -m "${CARGO_TARGET_DIR:-$root/target}")
cd "$root"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# The test executables cargo builds, by target name (its build messages go to stderr).
executables() {
    cargo test --release --no-run --message-format=json "$@" |
        sed -nE 's/.*"target":\{[^}]*"name":"([^"]*)".*"executable":"([^"]+)".*/\1 \2/p'
}

# Cargo keys a path package by its relative path, so a build from another worktree sharing
# the target folder would be taken as this tree's (it was, once: the GPU checks ran an
# experiment's kernels): the workspace's sources are touched to force this tree's.
find kernels modalities pipeline \( -name '*.rs' -o -name '*.cu' -o -name '*.cuh' \) -exec touch {} +
cargo build --release -p seqmamba
cp "$target/release/seqmamba" "$stage/seqmamba"
{
    executables -p seqmamba-kernels --lib
    executables -p seqmamba --test cuda_model --test cuda_parallel --test workflow
} | while read -r name path; do
    cp "$path" "$stage/$name"
done
for name in seqmamba_kernels cuda_model cuda_parallel workflow; do
    [ -x "$stage/$name" ] || { echo "pack.sh: no test binary $name was built" >&2; exit 1; }
done
strip "$stage"/* 2>/dev/null || true
# Tests find the binary and the repository at the paths they were built with.
printf 'root=%s\ntarget=%s\n' "$root" "$target" > "$stage/paths"
mkdir -p "$out"
tar cf - -C "$stage" . | xz -6 -T0 > "$out/gpu-checks.tar.xz"
ls -l "$out/gpu-checks.tar.xz"
