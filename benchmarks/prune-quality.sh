#!/usr/bin/env bash
# Quality after pruning without retraining (issue 4): every method at the same targets, seeds and N.
# Usage: benchmarks/prune-quality.sh [model] [N] [steps] [targets...]   e.g. benchmarks/prune-quality.sh samples/models/mnist-unet 500 25 0.1 0.2 0.3
# METHODS="ecodiff ecodiff-paper taylor" overrides the methods; ecodiff-paper is EcoDiff with the paper's unit-count
# regulariser and a fixed beta (--regularizer-weighting units --beta-control fixed); ecodiff-pw weights the regulariser
# by parameters (fixed beta); ecodiff-steered also steers beta to the target. DPRUNE=path skips the build.
# GUIDANCE=3 (class-conditional models) samples with classifier-free guidance and calibrates EcoDiff with it.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-samples/models/mnist-unet}
n=${2:-500}
steps=${3:-25}
shift $(( $# > 3 ? 3 : $# )) || true
targets=("$@")
g=${GUIDANCE:-1}
[ ${#targets[@]} -eq 0 ] && targets=(0.1 0.2 0.3)
if [ -z "${DPRUNE:-}" ]; then
  dotnet build src/DiffusionPrune.Cli -c Release -v quiet >/dev/null
  dprune=src/DiffusionPrune.Cli/bin/Release/net10.0/linux-x64/dprune
else
  dprune=$DPRUNE
fi
read -r -a methods <<< "${METHODS:-ecodiff ecodiff-paper magnitude random taylor}"
name=$(basename "$model")
out=out/prune-quality/$name
[ "$g" != 1 ] && out=$out-g$g
mkdir -p "$out"
echo "machine: $(nproc --all) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
echo "original: dprune eval --model $model --samples $n --steps $steps --seed 0 --guidance-scale $g"
[ -f "$out/original.json" ] || "$dprune" eval --model "$model" --samples "$n" --steps "$steps" --seed 0 --guidance-scale "$g" --output "$out/original.json" 2>/dev/null | grep -E "FID|parameters|MACs"
for target in "${targets[@]}"; do
  for method in "${methods[@]}"; do
    dir="$out/$method-$target"
    args=(--method "$method")
    [ "$method" = ecodiff-paper ] && args=(--method ecodiff --regularizer-weighting units --beta-control fixed)
    [ "$method" = ecodiff-pw ] && args=(--method ecodiff --regularizer-weighting parameters --beta-control fixed)
    [ "$method" = ecodiff-steered ] && args=(--method ecodiff --regularizer-weighting parameters --beta-control target)
    [[ "$method" == ecodiff* ]] && args+=(--guidance-scale "$g")
    echo "$method $target: dprune prune --model $model ${args[*]} --target-params $target --steps 10 --iterations 100 --calibration 16 --seed 0"
    [ -f "$dir/prune_report.json" ] || "$dprune" prune --model "$model" "${args[@]}" --target-params "$target" --steps 10 \
      --iterations 100 --calibration 16 --seed 0 --output "$dir" 2>/dev/null | tail -1
    [ -f "$dir/eval.json" ] || "$dprune" eval --model "$dir" --reference-model "$model" --samples "$n" --steps "$steps" --seed 0 --guidance-scale "$g" --output "$dir/eval.json" 2>/dev/null \
      | grep -E "FID|SSIM|parameters|MACs"
  done
done
