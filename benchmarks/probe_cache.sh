#!/usr/bin/env bash
# A frozen-backbone probe's training speed with and without --cache-features (docs/benchmarks.md).
# Random weights (speed only), the synthetic benchmark, on the CPU:
#   bash benchmarks/probe_cache.sh OUT [MODEL ...]     (default models: resnet50 resnet50_cnl5)
set -euo pipefail
out=${1:?usage: probe_cache.sh OUT [MODEL ...]}
shift
models=("$@")
[ $# -gt 0 ] || models=(resnet50 resnet50_cnl5)
cnl=${CNL:-cnl}
# The parts task as version 0.1.0's `cnl data synth` wrote it by default (docs/benchmarks.md's figures).
[ -d "$out/data" ] || $cnl data synth --out "$out/data" --task parts --classes 12 --train-per-class 80 \
    --test-per-class 25 --image-size 64 --seed 0 > /dev/null
for model in "${models[@]}"; do
    for cache in no-cache-features cache-features; do
        $cnl train --data-root "$out/data" --dataset cub --model "$model" --img-size 112 --epochs 3 \
            --warmup-epochs 0 --set lr_steps=[] --global-batch-size 32 --workers 1 --device cpu \
            --freeze backbone --$cache --output "$out/$model-$cache" > "$out/$model-$cache.log" 2>&1
    done
done
python - "$out" "${models[@]}" <<'PY'
import json, re, sys
from pathlib import Path

out, models = Path(sys.argv[1]), sys.argv[2:]
print("| model | epoch without cache (s) | epoch with cache (s) | cached / uncached | features computed once (s) |")
print("|---|---|---|---|---|")
for model in models:
    def epoch_s(cache):
        records = [json.loads(line) for line in (out / f"{model}-{cache}" / "metrics.jsonl").read_text().splitlines()]
        return sum(r["train_time_s"] for r in records) / len(records)
    plain, cached = epoch_s("no-cache-features"), epoch_s("cache-features")
    log = (out / f"{model}-cache-features.log").read_text()
    once = sum(float(s) for s in re.findall(r"features of \d+ \w+ images computed .*: ([\d.]+) s", log))
    print(f"| {model} | {plain:.1f} | {cached:.1f} | {cached / plain:.3f}x | {once:.1f} |")
PY
