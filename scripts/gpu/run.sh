#!/usr/bin/env bash
# Runs the GPU checks that scripts/gpu/pack.sh packed, on a machine with an NVIDIA GPU and
# driver but no cargo, from the repository root: `scripts/gpu/run.sh [DIR]` (default
# .device-bin). Prints a short table; full logs in DIR/logs. Without a GPU every test
# skips, and the table says so.
set -u
dir=$(realpath "${1:-.device-bin}")
bin=$dir/bin
logs=$dir/logs
mkdir -p "$bin" "$logs"
tar xJf "$dir/gpu-checks.tar.xz" -C "$bin"
# shellcheck disable=SC1091
source "$bin/paths"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
# The tests find the binary and the repository where they were built.
mkdir -p "$target/release" && cp "$bin/seqmamba" "$target/release/seqmamba"
[ -e "$root" ] || { mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"; }

# One test binary's summary ("ok. N passed; M failed"), and why tests skipped, if any did.
tests() {
    local log=$logs/$1.txt
    shift
    timeout 600 "$@" --test-threads=1 --nocapture > "$log" 2>&1
    local rc=$? result
    result=$(grep -h "^test result" "$log" | tail -1 | sed 's/^test result: //; s/; [0-9]* ignored.*//')
    [ "$rc" -eq 0 ] || result="FAILED (exit $rc): ${result:-see $log}"
    local skips
    skips=$(grep -ho "skipping: [^(]*" "$log" | sed 's/skipping: //; s/ *$//' | sort -u | paste -sd ';' -)
    [ -z "$skips" ] || result="$result — some SKIPPED: $skips"
    echo "$result"
}

# The anchor configuration's line of a training benchmark.
train() {
    local log=$logs/bench-$1.txt
    timeout 300 "$bin/seqmamba" bench --device cuda --only train --precision "$1" > "$log" 2>&1 ||
        { echo "failed: $(tail -1 "$log")"; return; }
    grep "768, 24 layers" "$log" | sed -E 's/.*\)[[:space:]]+//; s/, of the step:.*(peak memory [^,]*).*/, \1/'
}

# seqmamba classify's rate on the GPU: a small-preset promoter classifier (2 training steps:
# weights do not change the speed; bidirectional off, reverse-complement averaging on) over
# the 200 sample promoters repeated to 10,000 records of 251 bp.
classify() {
    local log=$logs/classify.txt model=$dir/classifier reads=$dir/promoters.fa
    {
        timeout 300 "$bin/seqmamba" --quiet run workflows/demo-promoters.toml --force --out "$model" \
            --set device=cuda --set model.preset=small --set training.epochs=0 --set training.steps=2 &&
            zcat data-samples/dna/human_nontata_promoters.sample.csv.gz |
            awk -F, 'NR > 1 { for (i = 0; i < 50; i++) print ">s" NR "_" i "\n" $1 }' > "$reads" &&
            timeout 300 "$bin/seqmamba" --json classify --model "$model" --device cuda \
                --batch-size 256 --out "$dir/classified.tsv" "$reads"
    } > "$log" 2>&1 || { echo "failed: $(tail -1 "$log")"; return; }
    tr -d '\n ' < "$log" | sed -E 's/.*"records":([0-9]+).*"seconds":([0-9.]+).*/\1 records in \2 s/'
}

# Decoding 130M-size steps (vocab 50,280) on the GPU: one sequence, and 32 together.
decode() {
    local log=$logs/bench-decode.txt
    timeout 300 "$bin/seqmamba" bench --device cuda --only decode > "$log" 2>&1 ||
        { echo "failed: $(tail -1 "$log")"; return; }
    grep "vocab 50280" "$log" | sed -E 's/decode \(d_model 768, 24 layers, vocab 50280, //; s/[[:space:]]+/ /g' |
        paste -sd ';' -
}

doctor=$("$bin/seqmamba" doctor 2>&1 | tr '\n' ' ' | cut -c1-160)
echo "| check | result |"
echo "|---|---|"
echo "| seqmamba doctor | $doctor |"
echo "| kernels: every CUDA op against the CPU | $(tests kernels "$bin/seqmamba_kernels" cuda) |"
echo "| model: training step, decode against the CPU | $(tests cuda_model "$bin/cuda_model") |"
echo "| data-parallel training | $(tests cuda_parallel "$bin/cuda_parallel") |"
echo "| demo workflow on the GPU against the CPU | $(tests workflow "$bin/workflow" cuda) |"
echo "| anchor training step, bf16 | $(train bf16) |"
echo "| anchor training step, TF32 | $(train tf32) |"
echo "| seqmamba classify, 10,000 promoters, small preset | $(classify) |"
echo "| decode steps, 130M: batch 1; batch 32 | $(decode) |"
