#!/usr/bin/env bash
# timm's own model tests over the names cnl registers in timm: tests/test_models.py of the
# sdist of the installed timm version (pip downloads it from the package index; nothing is
# vendored), with tools/timm_suite/conftest.py beside it. Usage: bash tools/timm_suite/run.sh [--all]
# (CI runs it without --all: one torchvision ResNet of each block stands for the others,
# see below.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
py=${PY:-$here/../../.venv/bin/python}
version=$("$py" -c "import timm; print(timm.__version__)")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: "timm==$version" -d "$work"
tar xzf "$work/timm-$version.tar.gz" -C "$work" "timm-$version/tests/test_models.py"
cp "$here/conftest.py" "$work/timm-$version/tests/"
docs="$here/../../docs/ecosystem.md"
cd "$work/timm-$version/tests"
# -k: the names cnl registers (_nl5, _cnl5, cnl_model); the rest are timm's own models.
# Without --all, resnet18 (basic blocks) and resnet50 (bottlenecks) stand for the torchvision
# ResNets built of the same blocks, which differ from them only in depth and placement
# (resnet34, resnet101, resnet152): 48 of the 182 cases left out, every family and block kept.
names="cnl or nl5"
if [ "${1:-}" = --all ]; then
    shift
else
    names="($names) and not resnet34_ and not resnet101_ and not resnet152_"
fi
# Side by side, a process a core with one thread each, as the project's own suite runs
# (tests/conftest.py says why).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
"$py" -m pytest -q -n auto -p no:cacheprovider -p no:warnings -o addopts="" test_models.py -k "$names" "$@" \
    | tee "$work/log"
# docs/ecosystem.md shows the counts of both selections: these must be one of them.
counts=$(tail -1 "$work/log" | grep -oE "[0-9]+ (passed|failed|skipped)" | paste -sd, | sed 's/,/, /g')
grep -qxF "$counts" "$docs" || { echo "docs/ecosystem.md does not show '$counts' (timm's suite)"; exit 1; }
