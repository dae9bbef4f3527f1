#!/usr/bin/env bash
# Where the modules make a difference on synthetic data and where not, as real photos showed
# one (how the demo's task was found): each experiment of docs/synthetic.md, on the CPU,
# ResNet-18 against ResNet-18 + 5CNL, seeds 0 and 1, paired per image (cnl ablate), into
# OUT/NAME with its table in OUT/NAME/ablation.md.
#   [MODELS=resnet18,resnet18_nl5,resnet18_cnl5] [TRAIN=200] [EPOCHS=20] bash benchmarks/demo_hypotheses.sh OUT [NAME ...]
# NAME: sgd (the photo demo's recipe on the parts task), size128 (the parts task at 128 px),
# relation and control (the tasks built to need, and not to need, a relation across scales),
# curves (test top-1 per epoch of `cnl demo` run in OUT, into OUT/runs/demo; run when missing),
# skin and skin_control (a texture that tells the class only on the outlined body, the same
# textures on blobs beside it, or plain blobs; the epoch chosen on a validation split; the
# same at other sizes as skin128, skin_control96, ...), shape (skin_control's scenes, the
# class in the body's coarse shape: the control of a fine detail; shape128 at 128 px),
# width32 (the parts task at twice the demo's width). The last three train two runs at a time
# (--jobs 2, one thread each), as cnl demo does.
set -euo pipefail
out=${1:?usage: demo_hypotheses.sh OUT [NAME ...]}
shift
names=("$@")
[ $# -gt 0 ] || names=(sgd size128 relation control curves skin skin_control width32 skin128 skin_control128)
cnl=${CNL:-cnl}
python=${PYTHON:-python}
models=${MODELS:-resnet18,resnet18_cnl5}
# The skin and shape tasks' training images a class and epochs (TRAIN=120 EPOCHS=12: into NAME-120x12).
train=${TRAIN:-200}
epochs=${EPOCHS:-20}
suffix=$([ "$train$epochs" = 20020 ] || echo "-${train}x$epochs")
# cnl demo's recipe (src/cnl/demo.py RECIPE), as flags.
demo=(--dataset cub --width 16 --epochs 20 --warmup-epochs 1 --global-batch-size 32 --optimizer adamw
      --lr 0.003 --schedule cosine --set lr_steps=[] --weight-decay 0.05 --crop-scale 0.6 1.0
      --workers 0 --device cpu --deterministic)
# cnl demo --dataset's recipe (src/cnl/demo.py PHOTO_RECIPE) at the demo's width.
photo=(--dataset cub --width 16 --epochs 12 --warmup-epochs 0 --global-batch-size 32 --optimizer sgd
       --lr 0.1 --schedule step --lr-steps 8 11 --weight-decay 1e-4 --crop-scale 0.35 1.0
       --workers 0 --device cpu --deterministic)

# The parts task as version 0.1.0's `cnl data synth` wrote it by default; a flag given after overrides.
v010=(--task parts --classes 12 --train-per-class 80 --test-per-class 25 --image-size 64 --seed 0)

data() {  # data NAME SYNTH-FLAGS...: the benchmark once
    local name=$1
    shift
    [ -f "$out/data/$name/synth.json" ] || $cnl data synth --out "$out/data/$name" "${v010[@]}" "$@" > /dev/null
}

ablate() {  # ablate NAME DATA IMG-SIZE RECIPE-FLAGS...
    local name=$1 data=$2 size=$3
    shift 3
    $cnl ablate --data-root "$out/data/$data" --img-size "$size" --models $models --seeds 0,1 "$@" \
        --output "$out/$name" > "$out/$name.log" 2>&1
    echo "## $name"
    echo
    cat "$out/$name/ablation.md"
    echo
}

mkdir -p "$out"
for name in "${names[@]}"; do
    case $name in
        sgd) data parts; ablate sgd parts 64 "${photo[@]}" ;;
        size128) data parts128 --image-size 128; ablate size128 parts128 128 "${demo[@]}" ;;
        relation|control)
            data "$name" --task "$name" --classes 4 --train-per-class 150 --test-per-class 40
            ablate "$name" "$name" 64 "${demo[@]}" ;;
        skin|skin[0-9]*|skin_control|skin_control[0-9]*|shape|shape[0-9]*)
            size=${name##*[a-z]}  # the number a name ends in (skin_control96: 96 px), else 64
            size=${size:-64}
            data "$name$suffix" --task "${name%%[0-9]*}" --classes 4 --train-per-class "$train" --test-per-class 50 \
                --image-size "$size"
            ablate "$name$suffix" "$name$suffix" "$size" "${demo[@]}" --epochs "$epochs" --val-split 0.2 --jobs 2 ;;
        width32) data parts; ablate width32 parts 64 "${demo[@]}" --width 32 --jobs 2 ;;
        curves)
            [ -f "$out/runs/demo/ablation/ablation.json" ] || (cd "$out" && $cnl demo > demo.log 2>&1)
            $python - "$out/runs/demo/ablation" <<'PY'
import json, statistics, sys
from pathlib import Path

ablation = Path(sys.argv[1])
rows = json.loads((ablation / "ablation.json").read_text())["rows"]
curves = {}
for row in rows:
    per_seed = [[json.loads(line)["top1"] for line in (ablation / run / "metrics.jsonl").read_text().splitlines()]
                for run in row["runs"]]
    curves[row["model"]] = [statistics.mean(values) for values in zip(*per_seed)]
epochs = [1, 2, 3, 5, 10, 15, 20]
print("## curves (cnl demo: test top-1 by epoch, mean of seeds 0 and 1)")
print()
print("| model | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
print("|---" * (len(epochs) + 1) + "|")
for model, curve in curves.items():
    print(f"| {model} | " + " | ".join(f"{curve[e - 1]:.2f}" for e in epochs if e <= len(curve)) + " |")
print()
PY
            ;;
        *) echo "unknown experiment $name" >&2; exit 2 ;;
    esac
done
