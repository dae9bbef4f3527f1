#!/usr/bin/env bash
# The CPU numbers of docs/benchmarks.md: targets at 448, scaling, attention paths, input pipeline.
# Usage: bash benchmarks/run_cpu.sh [OUT_DIR]   (about 25 minutes on 2 cores)
set -euo pipefail
out=${1:-runs/benchmarks}
mkdir -p "$out"
cnl=${CNL:-cnl}
$cnl bench model --models resnet50,resnet50_nl5,resnet50_cnl5,resnet50_nl5:paper:bmm,resnet50_cnl5:paper:bmm \
    --img-size 448 --batch-size 2 --repeats 5 | tee "$out/targets_448.md"
for size in 224 448 672; do
    $cnl bench model --models resnet50,resnet50_nl5,resnet50_cnl5 --img-size "$size" --batch-size 2 --repeats 3 \
        | tee "$out/scaling_$size.md"
done
$cnl bench module --img-size 448 --batch-size 2 --repeats 5 | tee "$out/module_448.md"
$cnl bench input --img-size 448 --repeats 3 | tee "$out/input_448.md"
# Any backbone (issue 13): each family's CNL against its plain backbone.
for family in timm:convnext_tiny timm:efficientnet_b0 tv:convnext_tiny tv:efficientnet_b0; do
    $cnl bench model --models "$family,${family}_cnl5" --img-size 448 --batch-size 2 | tee "$out/backbone_${family/:/_}.md"
done
# What compiling costs up front (the first steps; docs/benchmarks.md "CUDA"), from a cold cache.
for arch in resnet50 resnet18; do
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) $cnl bench model --models "${arch}_cnl5,${arch}_cnl5+compile" \
        --img-size 64 --batch-size 2 --repeats 1 --device cpu | tee "$out/compile_$arch.md"
done
# A frozen backbone's step against the full one (--freeze backbone; docs/benchmarks.md).
$cnl bench model --models resnet50_cnl5,resnet50_cnl5+frozen --img-size 224 --batch-size 8 --device cpu \
    | tee "$out/frozen.md"
CNL="$cnl" bash "$(dirname "$0")/probe_cache.sh" "$out/probe" | tee "$out/probe_cache.md"
$cnl bench predict | tee "$out/predict.md"
$cnl bench predict --width 64 | tee "$out/predict_width64.md"
