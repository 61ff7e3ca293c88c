#!/usr/bin/env bash
# Runs the scan benchmarks that scripts/gpu/bench-pack.sh packed, interleaved, on a GPU
# machine: `scripts/gpu/bench-run.sh DIR [ROUNDS [B,D,L...]]` (default 2 rounds of the anchor
# shapes; shapes given as B,D,L are timed instead). Prints the mean forward and backward ms
# per precision, shape and build; every run's line goes to DIR/bench.txt.
set -u
dir=$(realpath "${1:?usage: bench-run.sh DIR [ROUNDS [B,D,L...]]}")
rounds=${2:-2}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
builds=()
for packed in "$dir"/csb-*.xz; do
    name=$(basename "$packed" .xz)
    xz -dc "$packed" > "/tmp/$name" && chmod +x "/tmp/$name"
    builds+=("${name#csb-}")
done
shift $(($# < 2 ? $# : 2))
shapes=("(8,1536,2048)" "(64,256,1024)" "(16,1536,4096)" "(1,1024,32768)" "(1,1024,2048)")
[ $# -eq 0 ] || shapes=("$@")
: > "$dir/bench.txt"
for ((round = 1; round <= rounds; round++)); do
    for build in "${builds[@]}"; do
        for precision in bf16 f32; do
            flags=()
            [ "$precision" = bf16 ] && flags=(--bf16)
            for shape in "${shapes[@]}"; do
                case $shape in
                    "("*) picked=("$shape") ;;
                    *) picked=(--shape "$shape") ;;
                esac
                line=$(timeout 60 "/tmp/csb-$build" "${flags[@]}" "${picked[@]}" 2>&1 | grep "^| (")
                echo "$build $precision $round $line" >> "$dir/bench.txt"
            done
        done
    done
done
echo "precision shape build fwd_ms bwd_ms"
awk '{split($0, c, "|"); k = $2 " " c[2] " " $1; f[k] += c[3]; b[k] += c[7]; n[k]++}
     END {for (k in f) printf "%s %.4f %.4f\n", k, f[k] / n[k], b[k] / n[k]}' "$dir/bench.txt" | sort
