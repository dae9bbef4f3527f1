#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("CUDA"), one prepared script:
#   1. the CUDA tests (pytest -m cuda);
#   2. cnl bench of resnet50 / _nl5 / _cnl5 at 448 in bf16 with channels_last, without and
#      with torch.compile;
#   3. a short cnl train on the synthetic benchmark with --amp bf16 --channels-last --compile,
#      checking that the training loss goes down and that cnl eval equals what was logged.
# Usage: bash benchmarks/run_gpu.sh [OUT_DIR]        (a few minutes on one H100/H200)
# It runs from this checkout (PYTHONPATH=src), so a machine with torch, torchvision and
# the project's dependencies needs no install. CNL_DEVICE=cpu CNL_SMOKE=1 rehearses every
# step on the CPU at tiny sizes without compile (tests/test_gpu_script.py does).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${CNL_DEVICE:-cuda}
if [ "${CNL_SMOKE:-0}" = 1 ]; then
    models=resnet18,resnet18_nl5,resnet18_cnl5 size=64 batch=2 repeats=1 compiles=("") compile=""
    synth=(--classes 4 --train-per-class 16 --test-per-class 3 --image-size 48) img=48 epochs=4
else
    models=resnet50,resnet50_nl5,resnet50_cnl5 size=448 batch=32 repeats=10 compiles=("" --compile) compile=--compile
    synth=() img=64 epochs=6
fi

echo "== machine"
$py - "$device" <<'EOF' | tee "$out/machine.txt"
import sys, torch, torchvision
device = sys.argv[1]
name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}, device {name}")
EOF

echo "== 1. CUDA tests"
$py -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/cuda_tests.txt"

echo "== 2. bench at $size, bf16, channels_last"
for flag in "${compiles[@]}"; do
    name=bench${flag:+_compile}
    # shellcheck disable=SC2086
    $py -m cnl bench model --models "$models" --device "$device" --amp bf16 --channels-last $flag \
        --img-size "$size" --batch-size "$batch" --repeats "$repeats" | tee "$out/$name.md"
done

echo "== 3. train with --amp bf16 --channels-last $compile"
$py -m cnl data synth --out "$out/synth" "${synth[@]}"
# shellcheck disable=SC2086
$py -m cnl train --data-root "$out/synth" --dataset cub --model resnet18_cnl5 --img-size "$img" \
    --epochs "$epochs" --warmup-epochs 1 --global-batch-size 32 --optimizer adamw --lr 0.003 \
    --weight-decay 0.05 --lr-steps "$epochs" --crop-scale 0.6 1.0 --workers 4 --device "$device" \
    --amp bf16 --channels-last $compile --output "$out/train" >"$out/train.log"
$py -m cnl eval --checkpoint "$out/train/checkpoints/last.pt" --json >"$out/eval.json"
$py - "$out" <<'EOF' | tee "$out/train_check.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
lines = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
evaluated = json.loads((out / "eval.json").read_text().strip().splitlines()[-1])
losses = [round(line["train_loss"], 4) for line in lines]
print(f"train loss by epoch: {losses}")
print(f"logged last epoch: top1 {lines[-1]['top1']:.2f} top5 {lines[-1]['top5']:.2f}; "
      f"cnl eval: top1 {evaluated['top1']:.2f} top5 {evaluated['top5']:.2f}")
problems = []
if not losses[-1] < losses[0]:
    problems.append("the training loss did not go down")
if (evaluated["top1"], evaluated["top5"]) != (lines[-1]["top1"], lines[-1]["top5"]):
    problems.append("cnl eval differs from the logged last epoch")
print("FAILED: " + "; ".join(problems) if problems else "OK: loss went down, eval equals logged")
sys.exit(1 if problems else 0)
EOF
