"""The ResNet stem's max pooling on torch's NCHW kernel against ``StemMaxPool2d``, in one run.

    python benchmarks/stem_pool.py [--model resnet18_cnl5] [--width 16] [--img-size 96]
                                   [--batch-size 32] [--repeats 20] [--threads 1]

The defaults are one of the demo's runs (ResNet-18 + 5CNL at width 16, 96 px, batch 32, one
thread a run). Two copies of one model differ only in their stem pooling: torch's
``nn.MaxPool2d`` on the NCHW map, and cnl's ``StemMaxPool2d`` (channels-last kernel). The
pooling alone, an evaluation (forward) and a train step (forward, backward, SGD) of each
are timed in interleaved rounds (``cnl.analysis.bench.interleaved_medians``), and the two
models' gradients after their last steps are compared bit for bit.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import cnl
from cnl.analysis.bench import interleaved_medians
from cnl.models.resnet import stem_max_pool
from cnl.tables import Table


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def evaluation(model: nn.Module, images: torch.Tensor):
    @torch.no_grad()
    def step() -> None:
        model.eval()
        model(images)
        model.train()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18_cnl5")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    labels = torch.randint(0, 4, (args.batch_size,))
    ours = cnl.create_model(args.model, num_classes=4, width=args.width, drop_rate=0.0)  # no draws: same steps
    torchs = copy.deepcopy(ours)
    torchs.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    stem = torch.relu(ours.bn1(ours.conv1(images))).detach()

    def pool(function):
        def step() -> None:
            response = stem.clone().requires_grad_()
            function(response).sum().backward()

        return step

    steps = [pool(torchs.maxpool), pool(stem_max_pool)]
    steps += [evaluation(torchs, images), evaluation(ours, images)]
    steps += [train_step(torchs, images, labels), train_step(ours, images, labels)]
    times = interleaved_medians(steps, args.repeats, torch.device("cpu"))
    same = all(torch.equal(a.grad, b.grad) for a, b in zip(torchs.parameters(), ours.parameters()))
    rows = {"stem max pooling (forward, backward)": times[:2], "evaluation (forward)": times[2:4]}
    rows["train step"] = times[4:]
    cells = [[what, f"{1000 * a:.1f}", f"{1000 * b:.1f}", f"{a / b:.2f}x"] for what, (a, b) in rows.items()]
    print(Table.of(["", "nn.MaxPool2d (ms)", "StemMaxPool2d (ms)", "speed-up"], cells).markdown())
    print(
        f"\n{args.model} at width {args.width}, {args.img_size} px, batch {args.batch_size}, CPU, {args.threads} "
        f"thread(s), median of {args.repeats} interleaved rounds after one warm-up; torch {torch.__version__}. "
        f"Gradients of the last steps bit for bit the same: {'yes' if same else 'NO'}."
    )


if __name__ == "__main__":
    main()
