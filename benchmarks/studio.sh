#!/usr/bin/env bash
# The Studio's figures (issue 13): how long pages take to render (server-side prerender, as curl sees them), how long a
# job takes from POST to its first progress update, and the Studio process's memory while an EcoDiff job runs.
# Usage: benchmarks/studio.sh [iterations]   (needs curl and python3; builds the Studio in Release first)
set -euo pipefail
cd "$(dirname "$0")/.."
ITERATIONS="${1:-30}"
PORT=5099
WORK="$(mktemp -d)"
trap 'kill $STUDIO 2>/dev/null || true; rm -rf "$WORK"' EXIT
dotnet build src/Studio -c Release -v q -nologo >/dev/null
dotnet src/Studio/bin/Release/net10.0/linux-x64/Studio.dll --urls "http://127.0.0.1:$PORT" \
  "--Studio:OutputRoot=$WORK/out" "--Studio:DataFolder=$WORK/data" >"$WORK/studio.log" 2>&1 &
STUDIO=$!
until curl -sf "http://127.0.0.1:$PORT/api/models" >/dev/null; do sleep 0.2; done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; flags: $(grep -m1 flags /proc/cpuinfo | grep -o 'avx512f\|avx2' | sort -u | xargs)"
echo "Studio RSS idle: $(( $(grep VmRSS /proc/$STUDIO/status | awk '{print $2}') / 1024 )) MiB"
for page in "" models prune compare export ondevice models/mnist-unet; do
  curl -s -o /dev/null "http://127.0.0.1:$PORT/$page" # warm
  best=$(for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$PORT/$page"; done | sort -n | sed -n 3p)
  echo "page /$page: median of 5 server renders ${best} s"
done
START=$(date +%s.%N)
ID=$(curl -s -X POST "http://127.0.0.1:$PORT/api/jobs" -H 'Content-Type: application/json' \
  -d "{\"kind\": \"prune\", \"model\": \"mnist-unet\", \"method\": \"ecodiff\", \"target_params\": 0.2, \"iterations\": $ITERATIONS, \"steps\": 10, \"calibration\": 16}" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
FIRST=""
PEAK=0
while true; do
  JOB=$(curl -s "http://127.0.0.1:$PORT/api/jobs/$ID")
  STATUS=$(echo "$JOB" | python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["status"], j["progress"])')
  RSS=$(grep VmRSS /proc/$STUDIO/status | awk '{print $2}')
  (( RSS > PEAK )) && PEAK=$RSS
  if [ -z "$FIRST" ] && [ "$(echo "$STATUS" | awk '{print ($2 > 0)}')" = 1 ]; then
    FIRST=$(echo "$(date +%s.%N) - $START" | bc)
    echo "EcoDiff job: first progress update $FIRST s after the POST"
  fi
  case "$STATUS" in succeeded*|failed*|cancelled*) break ;; esac
  sleep 0.05
done
echo "EcoDiff job ($ITERATIONS iterations, 10 steps, calibration 16): $STATUS after $(echo "$(date +%s.%N) - $START" | bc) s; Studio peak RSS while it ran $(( PEAK / 1024 )) MiB"
