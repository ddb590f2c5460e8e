#!/usr/bin/env bash
# EcoDiff ablation toward the official code (issue 17): ours, the official form, and each difference switched alone
# on top of ours, and the baselines, at the same targets, seeds and N, without retraining. Prints a markdown table with FID-proxy [95%],
# SSIM to the original, the prune's wall time and the process's peak RSS (GNU time), and the CPU.
# Usage: benchmarks/ecodiff-ablation.sh [model] [N] [eval steps] [targets...]
#   e.g. GUIDANCE=3 benchmarks/ecodiff-ablation.sh samples/models/mnist-dit 2000 10 0.2
# VARIANTS="ours official l1" picks variants; DPRUNE=path skips the build. Results are kept in out/ecodiff-ablation/
# (a finished variant is not run again). SEED=1 prunes with another seed (calibration noise, mask initialisation,
# random's draw); the evaluation keeps seed 0, so rows of two seeds compare on the same noise.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-samples/models/mnist-dit}
n=${2:-2000}
steps=${3:-10}
shift $(( $# > 3 ? 3 : $# )) || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(0.1 0.2 0.3)
g=${GUIDANCE:-1}
seed=${SEED:-0}
if [ -z "${DPRUNE:-}" ]; then
  dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
  dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
else
  dprune=$DPRUNE
fi
# each variant: the prune arguments beyond --target-params T --seed 0. "ours" is the default before this ablation
# (beta 0.1), which every single switch is applied to; "beta-0.5" is the default it chose. taylor, magnitude and random
# are the baselines the goals compare with, at the calibration of the other rows.
base="--method ecodiff --steps 10 --iterations 100 --calibration 16 --beta 0.1"
declare -A V=(
  [ours]="$base"
  [official]="--method ecodiff --steps 50 --iterations 100 --calibration 100 --ecodiff-batch 4 --unit-types heads,ffn --regularizer l1 --regularizer-mean layers --regularizer-weighting units --beta 0.5 --weight-decay 0.01 --binarize per-type --damping 0.5"
  [heads-ffn]="$base --unit-types heads,ffn"
  [l1-layers]="$base --regularizer l1 --regularizer-mean layers --regularizer-weighting units"
  [beta-0.5]="--method ecodiff --steps 10 --iterations 100 --calibration 16 --beta 0.5"
  [weight-decay]="$base --weight-decay 0.01"
  [per-type]="$base --binarize per-type"
  [damping-0.5]="$base --damping 0.5"
  [calib-100]="--method ecodiff --steps 10 --iterations 100 --calibration 100 --beta 0.1"
  [steps-50]="--method ecodiff --steps 50 --iterations 100 --calibration 16 --beta 0.1"
  [beta-0.5+calib-100]="--method ecodiff --steps 10 --iterations 100 --calibration 100 --beta 0.5"
  [beta-0.5+l1-layers]="--method ecodiff --steps 10 --iterations 100 --calibration 16 --beta 0.5 --regularizer l1 --regularizer-mean layers --regularizer-weighting units"
  [taylor]="--method taylor --steps 10 --calibration 16"
  [magnitude]="--method magnitude"
  [random]="--method random"
)
read -r -a variants <<< "${VARIANTS:-ours official heads-ffn l1-layers beta-0.5 weight-decay per-type damping-0.5 calib-100 steps-50}"
name=$(basename "$model")
out=out/ecodiff-ablation/$name
[ "$n" = 2000 ] || out=$out-n$n # results at another N are kept apart
[ "$seed" = 0 ] || out=$out-seed$seed # and those of another prune seed
mkdir -p "$out"
# the original does not depend on the prune seed: take seed 0's evaluation when there is one
[ "$seed" = 0 ] || [ -f "$out/original.json" ] || [ ! -f "${out%-seed$seed}/original.json" ] || cp "${out%-seed$seed}/original.json" "$out/"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) ($(grep -o -w -E 'avx512[a-z_]*|avx2|fma' /proc/cpuinfo | sort -u | xargs)), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
echo "prune seed $seed; evaluation: dprune eval --samples $n --steps $steps --seed 0 --guidance-scale $g (--reference-model $model)"
[ -f "$out/original.json" ] || "$dprune" eval --model "$model" --samples "$n" --steps "$steps" --seed 0 --guidance-scale "$g" --output "$out/original.json" >/dev/null 2>&1
fid() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); f=r['fid_proxy']; s=r.get('ssim_to_reference'); print(f\"{f['value']:.1f} [{f['lower']:.1f}, {f['upper']:.1f}] | {'—' if s is None else format(s, '.3f')}\")" "$1"; }
echo "original: FID-proxy $(fid "$out/original.json" | cut -d'|' -f1)"
echo
echo "| target | variant | removed params | FID-proxy [95%] | SSIM to original | prune s | peak RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for target in "${targets[@]}"; do
  for v in "${variants[@]}"; do
    dir="$out/$v-$target"
    if [ ! -f "$dir/prune_report.json" ]; then
      # shellcheck disable=SC2086
      guidance=(); [[ "${V[$v]}" == "--method ecodiff"* ]] && guidance=(--guidance-scale "$g")
      if ! /usr/bin/time -f %M -o "$out/$v-$target.rss" "$dprune" prune --model "$model" --target-params "$target" --seed "$seed" \
          "${guidance[@]}" ${V[$v]} --output "$dir" > "$out/$v-$target.log" 2>&1; then
        echo "| $target | $v | refused: $(grep -v '^\s*$' "$out/$v-$target.log" | tail -1 | cut -c1-160) | | | | |"
        continue
      fi
    fi
    [ -f "$dir/eval.json" ] || "$dprune" eval --model "$dir" --reference-model "$model" --samples "$n" --steps "$steps" --seed 0 \
      --guidance-scale "$g" --output "$dir/eval.json" >/dev/null 2>&1
    removed=$(python3 -c "import json; print(f\"{json.load(open('$dir/prune_report.json'))['achieved_removed_params']:.1%}\")")
    secs=$(python3 -c "import json; print(json.load(open('$dir/prune_report.json'))['seconds'])")
    rss=$(awk '{ printf "%.0f", $1 / 1024 }' "$out/$v-$target.rss" 2>/dev/null || echo "?")
    echo "| $target | $v | $removed | $(fid "$dir/eval.json") | $secs | $rss |"
  done
done
