#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("CUDA"), one prepared script for one short loan of
# a GPU (15 minutes in all, at most 10 a command, only small files and the output's tail
# come back). Estimated 4 to 6 minutes on one H100/H200; docs/benchmarks.md says how.
#
#   bash benchmarks/run_gpu.sh OUT_DIR
#
# Every step has its own time limit, and the whole script a budget (CNL_BUDGET_S, default
# 500 s, so that it ends within a 10-minute call): a step that fails or runs out of time
# is recorded and the script goes on. After every step OUT_DIR holds the summary so far,
# so a run cut short still returns what it did; at the end the summary is printed last.
# OUT_DIR gets four small files: summary.md (a row per step: passed / failed / timed out /
# skipped, seconds, figures; then the bench tables), summary.json (the same with each
# step's log tail), logs.tar.gz (every step's log, the last 100 kB of each) and
# train_metrics.jsonl. Data and checkpoints go to a temporary folder, removed at the end.
# The exit status is 0 when no step failed or timed out.
#
# It runs from this checkout (PYTHONPATH=src): torch, torchvision and the project's
# dependencies are all it needs. Rehearsals on the CPU (tests/test_gpu_script.py):
#   CNL_DEVICE=cpu CNL_SMOKE=1      every step at tiny sizes; the compile bench is skipped
#   CNL_REHEARSE_FAULTS=1           two more steps first: one fails, one hangs (limit 2 s)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/cnl-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
device=${CNL_DEVICE:-cuda}
budget=${CNL_BUDGET_S:-500}
logs="$work/logs"
mkdir -p "$logs"
steps="$logs/steps.tsv"
printf 'step\tstatus\tseconds\tlimit\texit\n' >"$steps"

if [ "${CNL_SMOKE:-0}" = 1 ]; then
    arch=resnet18 size=64 batch=2 repeats=1 smoke=1 train_size=32 train_width=16 # the training step at 32 px, a quarter wide
else
    arch=resnet50 size=448 batch=32 repeats=10 smoke=0 train_size=64 train_width=64
fi
# Whole batches (64 training and 32 test images, batch 32): no recompile for a last,
# smaller batch. Small images: the run checks the path, not the accuracy.
synth=(--classes 4 --train-per-class 16 --test-per-class 8 --image-size 64)
train_compile=$([ "$smoke" = 1 ] || echo --compile)

# The summary so far, into OUT_DIR (the logs' last 100 kB each, packed into one file).
sum_up() {
    local log
    for log in "$logs"/*.log; do
        [ "$(wc -c <"$log")" -gt 100000 ] && tail -c 100000 "$log" >"$log.tail" && mv "$log.tail" "$log"
    done
    tar -czf "$out/logs.tar.gz" -C "$logs" .
    timeout 30 "$py" benchmarks/gpu_summary.py "$logs" "$out" "$SECONDS" >/dev/null
}

skip() { # skip NAME WHY
    echo "skipped: $2" >"$logs/$1.log"
    echo "-- $1: skipped ($2)"
    printf '%s\tskipped\t0\t-\t-\n' "$1" >>"$steps"
    sum_up
}

# step NAME LIMIT COMMAND...: runs COMMAND under its own limit (and what is left of the
# budget), its output in NAME.log; prints its tail and one status line.
step() {
    local name=$1 limit=$2 rc status started=$SECONDS
    shift 2
    local left=$((budget - SECONDS - 15)) # 15 s kept for the summary
    if [ "$left" -lt 5 ]; then
        skip "$name" "the budget of ${budget}s is spent"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s; ${SECONDS}s into the run)"
    timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=passed ;;
        124 | 137) status="timed out" ;;
        *) status=failed ;;
    esac
    tail -n "$([ "$status" = passed ] && echo 4 || echo 20)" "$logs/$name.log" | cut -c1-300
    echo "-- $name: $status in $((SECONDS - started))s (exit $rc)"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - started))" "$limit" "$rc" >>"$steps"
    sum_up
}

if [ "${CNL_REHEARSE_FAULTS:-0}" = 1 ]; then
    step fails-on-purpose 30 "$py" -c 'raise SystemExit("this step fails on purpose (CNL_REHEARSE_FAULTS)")'
    step hangs-on-purpose 2 sleep 600
fi

step machine 60 "$py" - "$device" <<'EOF'
import shutil, subprocess, sys
import torch, torchvision
device = sys.argv[1]
name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
print(f"device {name}; torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda}")
if shutil.which("nvidia-smi"):
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    print("nvidia-smi:", subprocess.run(query, capture_output=True, text=True).stdout.strip())
EOF

# The GPU cases of the suite (modules on the GPU, fused kernels, bf16, channels_last, one
# compiled model against eager, per-model bench memory); they skip where no GPU is.
# The files with CUDA cases (those that import tests/devices.py), not the whole suite: a
# file that fails to import for want of a package the GPU machine lacks (a browser driver,
# say) does not stop this step.
mapfile -t cuda_files < <(grep -l "^from devices import" tests/test_*.py)
step cuda-tests 150 "$py" -m pytest -q -m cuda -p no:cacheprovider "${cuda_files[@]}"

step bench-module 60 "$py" -m cnl bench module --device "$device" --img-size "$size" --batch-size 2 --repeats "$repeats"

step bench-models 120 "$py" -m cnl bench model --models "$arch,${arch}_nl5,${arch}_cnl5" --device "$device" \
    --amp bf16 --channels-last --img-size "$size" --batch-size "$batch" --repeats "$repeats"

# One compiled model, beside its eager self in the same run: does compile pay for CNL?
if [ "$smoke" = 1 ]; then
    skip bench-compile "the CPU rehearsal does not compile"
else
    step bench-compile 180 "$py" -m cnl bench model --models "${arch}_cnl5,${arch}_cnl5+compile" --device "$device" \
        --amp bf16 --channels-last --img-size "$size" --batch-size "$batch" --repeats "$repeats"
fi

# One training check: bf16, channels_last and (on the GPU) compile; the loss must go down
# and a separate `cnl eval` of the last checkpoint must equal the logged last epoch.
step data 60 "$py" -m cnl data synth --out "$work/synth" "${synth[@]}"
# shellcheck disable=SC2086
step train 150 "$py" -m cnl train --data-root "$work/synth" --dataset cub --model resnet18_cnl5 --img-size "$train_size" \
    --width "$train_width" --epochs 4 --warmup-epochs 1 --global-batch-size 32 --optimizer adamw --lr 0.003 \
    --weight-decay 0.05 --lr-steps 3 --crop-scale 0.6 1.0 --workers 4 --device "$device" --amp bf16 --channels-last $train_compile \
    --output "$work/train"
step eval 90 "$py" -m cnl eval --checkpoint "$work/train/checkpoints/last.pt" --json
step train-check 30 "$py" - "$work/train/metrics.jsonl" "$logs/eval.log" <<'EOF'
import json, sys
from pathlib import Path
lines = [json.loads(line) for line in Path(sys.argv[1]).read_text().splitlines()]
def last_json(text):  # warnings may follow cnl eval's answer in the same log
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit("FAILED: no answer from cnl eval in its log")
evaluated = last_json(Path(sys.argv[2]).read_text())
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
[ -f "$work/train/metrics.jsonl" ] && cp "$work/train/metrics.jsonl" "$out/train_metrics.jsonl"

echo
echo "== summary (${SECONDS}s in all)"
rm -f "$out/summary.md"
sum_up
cat "$out/summary.md" 2>/dev/null || cat "$steps"
awk -F'\t' 'NR > 1 && ($2 == "failed" || $2 == "timed out") { bad = 1 } END { exit bad }' "$steps"
