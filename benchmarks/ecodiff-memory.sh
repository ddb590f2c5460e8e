#!/usr/bin/env bash
# EcoDiff memory: peak RSS (VmHWM) and time of ONE mask-optimisation iteration at 5/10/20/50 DDIM steps,
# with and without time-step gradient checkpointing. Each configuration runs in a fresh process, because
# VmHWM is a process-lifetime peak (it includes the loaded model; compare the columns, not the absolute).
# Usage: benchmarks/ecodiff-memory.sh <model folder> [steps...]
#   e.g. benchmarks/ecodiff-memory.sh tests/fixtures/diffusers/unet2d-small/model 5 10 20 50
# Needs `dprune prune --probe-memory` (wired by the CLI onto DiffusionPrune.Cli.Benchmarks.EcoDiffMemoryProbe.Run),
# which prints: steps=… checkpointing=on|off peak_rss_mb=… seconds=…
# Without checkpointing, 50 steps keeps the whole trajectory's graph: on a large model it can need many GB.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: benchmarks/ecodiff-memory.sh <model folder> [steps...]}
shift
steps_list=("$@")
[ ${#steps_list[@]} -eq 0 ] && steps_list=(5 10 20 50)
dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
echo "command: dprune prune --probe-memory --model $model --steps {${steps_list[*]}} [--no-checkpointing]"
echo "machine: $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
for steps in "${steps_list[@]}"; do
  "$dprune" prune --probe-memory --model "$model" --steps "$steps" 2>/dev/null | grep '^steps='
  "$dprune" prune --probe-memory --model "$model" --steps "$steps" --no-checkpointing 2>/dev/null | grep '^steps=' \
    || echo "steps=$steps checkpointing=off failed (out of memory?)"
done
