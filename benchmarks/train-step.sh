#!/usr/bin/env bash
# Training step time of a default config: runs N optimizer steps and prints the trainer's own rate.
# Usage: benchmarks/train-step.sh [config] [steps] [batch]
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-samples/configs/mnist-unet.json}
steps=${2:-20}
batch=${3:-64}
arch=unet; grep -q DiTTransformer2DModel "$config" && arch=dit
out=$(mktemp -d)
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
echo "command: dprune train --arch $arch --config $config --steps $steps --batch $batch"
echo "machine: $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
start=$(date +%s.%N)
src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune train --arch "$arch" --config "$config" \
  --steps "$steps" --batch "$batch" --warmup 5 --checkpoint-every 100000 --output "$out" --device cpu 2>/dev/null | tail -1
end=$(date +%s.%N)
awk -v s="$start" -v e="$end" -v n="$steps" -v b="$batch" 'BEGIN { t=e-s; printf "wall %.1f s for %d steps: %.2f s/step, %.1f images/s (includes start-up)\n", t, n, t/n, n*b/t }'
rm -rf "$out"
