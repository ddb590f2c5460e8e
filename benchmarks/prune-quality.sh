#!/usr/bin/env bash
# Quality after pruning without retraining (issue 4): every method at the same targets, seeds and N.
# Usage: benchmarks/prune-quality.sh [model] [N] [steps] [targets...]   e.g. benchmarks/prune-quality.sh samples/models/mnist-unet 500 25 0.1 0.2 0.3
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-samples/models/mnist-unet}
n=${2:-500}
steps=${3:-25}
shift $(( $# > 3 ? 3 : $# )) || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(0.1 0.2 0.3)
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
name=$(basename "$model")
out=out/prune-quality/$name
mkdir -p "$out"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "original: dprune eval --model $model --samples $n --steps $steps --seed 0"
"$dprune" eval --model "$model" --samples "$n" --steps "$steps" --seed 0 --output "$out/original.json" 2>/dev/null | grep -E "FID|parameters|MACs"
for target in "${targets[@]}"; do
  for method in ecodiff magnitude random taylor; do
    dir="$out/$method-$target"
    echo "$method $target: dprune prune --model $model --method $method --target-params $target --steps 10 --iterations 100 --calibration 16 --seed 0"
    [ -f "$dir/prune_report.json" ] || "$dprune" prune --model "$model" --method "$method" --target-params "$target" --steps 10 \
      --iterations 100 --calibration 16 --seed 0 --output "$dir" 2>/dev/null | tail -1
    "$dprune" eval --model "$dir" --reference-model "$model" --samples "$n" --steps "$steps" --seed 0 --output "$dir/eval.json" 2>/dev/null \
      | grep -E "FID|SSIM|parameters|MACs"
  done
done
