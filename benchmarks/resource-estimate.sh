#!/usr/bin/env bash
# How close the resource estimate (from the config alone) comes to the memory a job really takes.
# For each default model and batch: the peak RSS of `dprune info` (the runtime, the model and one forward) is the
# baseline; sampling at batch B (2 DDIM steps) and 2 EcoDiff iterations with B calibration noises (batches of 4) over 10 steps are measured as
# peak RSS above it and set beside the estimate's activations (and, for EcoDiff, the pruned copy's weights).
# Usage: benchmarks/resource-estimate.sh [batches...]   (DPRUNE=path to a built dprune)
set -euo pipefail
cd "$(dirname "$0")/.."
DPRUNE=${DPRUNE:-src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune}
BATCHES=("${@:-16 64}")
read -r -a BATCHES <<< "${BATCHES[*]}"
OUT=$(mktemp -d)
peak() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; } # kB
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
printf '| model | workload | batch | baseline RSS MiB | measured above baseline MiB | estimate MiB | estimate / measured |\n|---|---|---|---|---|---|---|\n'
for model in samples/models/mnist-unet samples/models/mnist-dit; do
  base=$(peak "$DPRUNE" info --model "$model")
  for b in "${BATCHES[@]}"; do
    est=$("$DPRUNE" info --model "$model" --batch "$b" | awk -v b="$b" '
      function mib(v, u) { return u == "GiB" ? v * 1024 : (u == "KiB" ? v / 1024 : (u == "B" ? v / 1048576 : v)) }
      $0 ~ "^sampling, batch " b " " { for (i = 1; i <= NF; i++) if ($i == "activations") s = mib($(i+1), $(i+2)) }
      $0 ~ "^EcoDiff, " b " noises" { for (i = 1; i <= NF; i++) if ($i == "activations") e = mib($(i+1), $(i+2)); for (i = 1; i <= NF; i++) if ($i == "(weights") w = mib($(i+1), $(i+2)) }
      $0 ~ "^parameters " { for (i = 1; i <= NF; i++) if ($i ~ /^\(/) p = mib(substr($i, 2), $(i+1)) }
      END { printf "%.2f %.2f %.2f\n", s, e, w - p }')
    read -r est_sample est_eco weights <<< "$est"
    rss=$(peak "$DPRUNE" sample --model "$model" --count "$b" --steps 2 --output "$OUT/grid.png")
    m=$(awk -v r="$rss" -v b="$base" 'BEGIN { printf "%.1f", (r - b) / 1024 }')
    printf '| %s | sampling | %s | %.1f | %s | %.1f | %s |\n' "$(basename "$model")" "$b" "$(awk -v b="$base" 'BEGIN{print b/1024}')" "$m" "$est_sample" \
      "$(awk -v e="$est_sample" -v m="$m" 'BEGIN { printf (m > 0 ? "%.2f" : "n/a"), e / m }')"
    rss=$(peak "$DPRUNE" prune --model "$model" --method ecodiff --target-params 0.2 --iterations 2 --calibration "$b" --steps 10 --output "$OUT/p$b")
    rm -rf "$OUT/p$b"
    m=$(awk -v r="$rss" -v b="$base" 'BEGIN { printf "%.1f", (r - b) / 1024 }')
    e=$(awk -v a="$est_eco" -v w="$weights" 'BEGIN { printf "%.1f", a + w }') # activations + the pruned copy (the weights line less the model's own weights, in the baseline)
    printf '| %s | EcoDiff (2 iterations, 10 steps) | %s | %.1f | %s | %s | %s |\n' "$(basename "$model")" "$b" "$(awk -v b="$base" 'BEGIN{print b/1024}')" "$m" "$e" \
      "$(awk -v e="$e" -v m="$m" 'BEGIN { printf (m > 0 ? "%.2f" : "n/a"), e / m }')"
  done
done
rm -rf "$OUT"
