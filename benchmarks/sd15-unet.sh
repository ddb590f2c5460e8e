#!/usr/bin/env bash
# Stable Diffusion 1.5's U-Net shapes (benchmarks/configs/sd15-unet.json, the runwayml/stable-diffusion-v1-5 unet
# config: 859,520,964 parameters, 3.4 GB in float32) with random weights, since real weights need a download:
# writes the folder once (dprune init), then in a fresh process loads it and times guided steps at 64x64 latents
# (batch 2 = conditional + unconditional halves), printing load time, memory after loading (anonymous = the model,
# file-backed = mapped safetensors pages still resident), the peak (VmHWM), and seconds per step.
# Usage: benchmarks/sd15-unet.sh [folder for the 3.4 GB weights (default out/bench/sd15-unet)] [steps (default 3)]
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:-out/bench/sd15-unet}
steps=${2:-3}
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
echo "command: benchmarks/sd15-unet.sh $folder $steps"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "cpu flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|fma|avx512f|avx512_bf16|amx_tile)$' | tr '\n' ' ')"
if [ ! -f "$folder/config.json" ]; then
  /usr/bin/time -f "init: %e s, max RSS %M KB" "$dprune" init --config benchmarks/configs/sd15-unet.json --output "$folder" --seed 0
fi
ls -l "$folder"
"$dprune" probe-step --model "$folder" --latent 64 --batch 2 --steps "$steps"
