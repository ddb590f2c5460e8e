#!/usr/bin/env bash
# How close the time estimate the Prune page (and `dprune prune --estimate`) shows before a run comes to the run.
# For each method at its defaults on a default model: the estimate (each method's network passes, counted from its
# settings and the model's layers, priced with passes timed here) beside the wall time of the prune itself (the
# report's seconds: load, scoring, surgery and save). Run it on an otherwise idle machine: passes timed while
# something else runs are slower.
# Usage: benchmarks/prune-estimate.sh [model] [methods...]   (DPRUNE=path to a built dprune)
set -euo pipefail
cd "$(dirname "$0")/.."
DPRUNE=${DPRUNE:-src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune}
MODEL=${1:-samples/models/mnist-unet}
shift || true
METHODS=("${@:-magnitude random taylor ldpruner laptop random-layer learnable-depth ecodiff}")
read -r -a METHODS <<< "${METHODS[*]}"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -w -E 'avx512[a-z_]*|avx2|fma' /proc/cpuinfo | sort -u | xargs)), $(nproc) cores"
echo "model: $MODEL, target 0.2, each method's defaults"
printf '| method | estimate s | run s | estimate / run |\n|---|---|---|---|\n'
for m in "${METHODS[@]}"; do
  est=$("$DPRUNE" prune --model "$MODEL" --method "$m" --target-params 0.2 --estimate --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["estimated_seconds"])')
  run=$("$DPRUNE" prune --model "$MODEL" --method "$m" --target-params 0.2 --output "$OUT/$m" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
  printf '| %s | %.1f | %.1f | %.2f |\n' "$m" "$est" "$run" "$(python3 -c "print($est / $run)")"
done
