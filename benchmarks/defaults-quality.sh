#!/usr/bin/env bash
# FID-proxy of a default model at 10/25/50 DDIM steps with N samples (issue 3), plus sampling throughput.
# Usage: benchmarks/defaults-quality.sh [model folder] [N] [steps...]   GUIDANCE=3 sets classifier-free guidance (class-conditional models).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-samples/models/mnist-unet}
n=${2:-2000}
g=${GUIDANCE:-1}
shift $(( $# > 2 ? 2 : $# )) || true
steps_list=("$@")
[ ${#steps_list[@]} -eq 0 ] && steps_list=(10 25 50)
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
echo "machine: $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
mkdir -p out/benchmarks
for steps in "${steps_list[@]}"; do
  echo "command: dprune eval --model $model --samples $n --steps $steps --scheduler ddim --batch 64 --seed 0 --guidance-scale $g"
  "$dprune" eval --model "$model" --samples "$n" --steps "$steps" --scheduler ddim --batch 64 --seed 0 --guidance-scale "$g" \
    --output "out/benchmarks/$(basename "$model")-ddim$steps-n$n-g$g.json" 2>/dev/null
done
