#!/usr/bin/env bash
# Cost of the numerics guard's workarounds on the default U-Net: training steps (forward + backward) and sampling
# (forward only), each with libtorch's default kernels, with oneDNN capped at SSE4.1 (ONEDNN_MAX_CPU_ISA=SSE41, what
# the guard applies at start-up on a machine whose check failed), and with oneDNN off (DPRUNE_ONEDNN=off: convolutions
# on libtorch's im2col + BLAS path, the in-process fallback). Prints the machine, CPU model and vector flags.
# Usage: benchmarks/onednn-workaround.sh [train-steps] [batch] [sample-count]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-20}
batch=${2:-64}
count=${3:-64}
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
echo "machine: $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "vector flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|sse4|fma|amx)' | tr '\n' ' ')"
out=$(mktemp -d)
time_it() { # label, then the command
  local label=$1; shift
  local start end
  start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N)
  awk -v l="$label" -v s="$start" -v e="$end" 'BEGIN { printf "%-44s %7.2f s\n", l, e - s }'
}
for mode in default sse41 off; do
  unset DPRUNE_ONEDNN ONEDNN_MAX_CPU_ISA
  if [ "$mode" = off ]; then export DPRUNE_ONEDNN=off; fi
  if [ "$mode" = sse41 ]; then export ONEDNN_MAX_CPU_ISA=SSE41; fi
  echo "--- oneDNN: $mode"
  time_it "train $steps steps, batch $batch (fwd+bwd)" "$dprune" train --arch unet --config samples/configs/mnist-unet.json \
    --steps "$steps" --batch "$batch" --warmup 5 --checkpoint-every 100000 --output "$out/train-$mode" --device cpu
  time_it "sample $count images, 25 DDIM steps (fwd)" "$dprune" sample --model samples/models/mnist-unet --scheduler ddim \
    --steps 25 --seed 1 --count "$count" --output "$out/sample-$mode"
done
rm -rf "$out"
