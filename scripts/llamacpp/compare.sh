#!/usr/bin/env bash
# Cross-checks seqmamba against llama.cpp's Mamba-1 CPU implementation (docs/anchors.md):
# log-probabilities of the same token ids, then decode tokens/s of both.
#
#   scripts/llamacpp/compare.sh LLAMA_SRC LLAMA_BUILD [WORK_DIR]
#
# LLAMA_SRC: a llama.cpp source tree (include/, ggml/include/, gguf-py/); LLAMA_BUILD: its
# CMake build folder (bin/libllama.so, optionally bin/llama-bench). This script neither
# downloads nor builds llama.cpp. Needs python3 with numpy, a C compiler, and
# target/release/seqmamba (cargo build --release -p seqmamba). SIZES="small" skips the
# 130M model; THREADS sets the timing threads (default 1 2).
set -euo pipefail
src=$(realpath "$1")
build=$(realpath "$2")
work=${3:-$(mktemp -d)}
here=$(dirname "$(realpath "$0")")
seqmamba=${SEQMAMBA:-$here/../../target/release/seqmamba}
[ -x "$seqmamba" ] || seqmamba=${CARGO_TARGET_DIR:-/nonexistent}/release/seqmamba
sizes=${SIZES:-small 130m}
threads=${THREADS:-1 2}
mkdir -p "$work"
export PYTHONPATH="$src/gguf-py${PYTHONPATH:+:$PYTHONPATH}"

cc -O2 -o "$work/logprobs" "$here/logprobs.c" -I"$src/include" -I"$src/ggml/include" \
    -L"$build/bin" -lllama -lggml -lggml-base -lm -Wl,-rpath,"$build/bin"

for size in $sizes; do
    case $size in
        small) vocab=16; n=512 ;;
        130m) vocab=50277; n=256 ;;
    esac
    base=$work/$size
    "$seqmamba" init --preset "$size" --vocab-size "$vocab" --out "$base" > /dev/null
    python3 "$here/checkpoint_tool.py" perturb "$base" "$base-p" 1
    ids=$(python3 -c "import random; r = random.Random(7); print(','.join(str(r.randrange($vocab)) for _ in range($n)))")
    for model in "$base" "$base-p"; do
        python3 "$here/checkpoint_tool.py" to-gguf "$model" "$model.gguf"
        "$seqmamba" --threads 1 score --model "$model" --token-ids "$ids" > "$model.ours.chunk"
        "$seqmamba" --threads 1 score --model "$model" --chunk-len 1 --token-ids "$ids" > "$model.ours.step"
        "$work/logprobs" "$model.gguf" 1 batch "$ids" > "$model.llama.batch"
        "$work/logprobs" "$model.gguf" 1 step "$ids" > "$model.llama.step"
        for ours in chunk step; do
            for theirs in batch step; do
                echo -n "$(basename "$model") seqmamba-$ours vs llama.cpp-$theirs: "
                python3 "$here/max_diff.py" "$model.ours.$ours" "$model.llama.$theirs"
            done
        done
    done
done

for t in $threads; do
    echo "== threads $t, load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$seqmamba" --threads "$t" bench --only decode | grep '^decode'
    for size in $sizes; do
        steps=$([ "$size" = small ] && echo 3000 || echo 64)
        echo "llama.cpp $size: $("$work/logprobs" "$work/$size.gguf" "$t" time "$steps")"
        if [ -x "$build/bin/llama-bench" ]; then
            "$build/bin/llama-bench" -m "$work/$size.gguf" -p 0 -n 128 -t "$t" -r 3 | grep mamba
        fi
    done
done
