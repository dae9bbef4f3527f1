"""The paper's ResNets before and after they moved onto the plug path, timed in one run.

    python benchmarks/model_path.py [--before REV] [--img-size 448] [--batch-size 2] [--repeats 3]

``--before`` names the commit whose ``src/cnl/models/resnet.py`` still had its own forward
(``FineGrainedResNet``); that file is loaded from git as it was and builds the "before"
models on today's ``cnl.nn``, so only the model path differs. Both sets get the same
weights and a train step (forward, backward, SGD) on the same random batch; steps are timed
in interleaved rounds (``cnl.analysis.bench.interleaved_medians``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50", "resnet50_nl5", "resnet50_cnl5")
BEFORE = "0a58eb1"  # main before the redesign (issue 20)


def old_resnets(revision: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{revision}:src/cnl/models/resnet.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = types.ModuleType("old_resnet")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:src/cnl/models/resnet.py", "exec"), module.__dict__)
    return module


def old_model(old: types.ModuleType, name: str, num_classes: int) -> nn.Module:
    arch, _, variant = name.partition("_")
    placement = {
        "": {},
        "nl5": {"nl_layers": old.default_responses(arch)},
        "cnl5": {"query": old.default_query(arch), "responses": old.default_responses(arch)},
    }[variant]
    return old.FineGrainedResNet(arch, num_classes, **placement)


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        model.train()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import cnl
    from cnl import upgrades
    from cnl.analysis.bench import interleaved_medians

    old = old_resnets(args.before)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 200, (args.batch_size,))
    steps = []
    for name in MODELS:
        before = old_model(old, name, 200)
        after = cnl.create_model(name, num_classes=200)
        after.load_state_dict(upgrades.state_keys(before.state_dict()))
        steps += [train_step(before, images, labels), train_step(after, images, labels)]
    times = interleaved_medians(steps, args.repeats, torch.device("cpu"))
    print("| model | before (s) | after (s) | after / before | after / resnet50 after |")
    print("|---|---|---|---|---|")
    base = times[1]
    for k, name in enumerate(MODELS):
        before, after = times[2 * k], times[2 * k + 1]
        print(f"| {name} | {before:.3f} | {after:.3f} | {after / before:.3f}x | {after / base:.2f}x |")
    print(
        f"\nTrain step (forward, backward, SGD) at {args.img_size}x{args.img_size}, batch {args.batch_size}, 200 "
        f"classes, CPU, median of {args.repeats} interleaved rounds after one warm-up; before = {args.before}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads."
    )


if __name__ == "__main__":
    main()
