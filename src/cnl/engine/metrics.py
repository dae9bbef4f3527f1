"""Top-k and per-class accuracy, summed exactly across processes; what the model said of each image."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnl.engine.distributed import all_reduce_sum


class Accumulator:
    """Running sums on one device; ``compute`` reduces them over every process."""

    def __init__(self, num_classes: int, device: torch.device, confusion: bool = False) -> None:
        self.num_classes = num_classes
        # confusion[true, predicted] image counts, when asked for (per-class evidence)
        self.confusion = (
            torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device) if confusion else None
        )
        self.topk = min(5, num_classes)
        # loss sum, top-1 correct, top-k correct, count
        self.totals = torch.zeros(4, dtype=torch.float64, device=device)
        self.class_correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.class_count = torch.zeros(num_classes, dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor, loss_sum: Tensor) -> None:
        ranked = logits.topk(self.topk, dim=1).indices
        top1 = ranked[:, 0] == labels
        topk = (ranked == labels[:, None]).any(dim=1)
        self.totals += torch.stack(
            [
                loss_sum.double(),
                top1.sum().double(),
                topk.sum().double(),
                torch.tensor(len(labels), device=labels.device, dtype=torch.float64),
            ]
        )
        self.class_correct.index_add_(0, labels, top1.double())
        self.class_count.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        if self.confusion is not None:
            ones = torch.ones_like(labels, dtype=torch.float64)
            self.confusion.index_put_((labels, ranked[:, 0]), ones, accumulate=True)

    def compute(self) -> dict[str, Any]:
        totals = all_reduce_sum(self.totals.clone())
        correct = all_reduce_sum(self.class_correct.clone())
        count = all_reduce_sum(self.class_count.clone())
        n = max(totals[3].item(), 1.0)
        per_class = [None if c == 0 else round(100.0 * k / c, 4) for k, c in zip(correct.tolist(), count.tolist())]
        extra = {}
        if self.confusion is not None:
            extra["confusion"] = all_reduce_sum(self.confusion.clone()).long().tolist()
        return {
            **extra,
            "loss": totals[0].item() / n,
            "top1": 100.0 * totals[1].item() / n,
            "top5": 100.0 * totals[2].item() / n,
            "count": int(totals[3].item()),
            "per_class_top1": per_class,
        }


class ImageRecord:
    """Per image of a dataset: its label, the model's top-k classes and the probability it gave
    the label, gathered from every process into one table in dataset order.

    ``order`` is the dataset index of each sample this process sees, in the order its loader
    yields them; every index belongs to exactly one process, so a sum of the per-process
    tables, zero elsewhere, is the whole table.
    """

    def __init__(self, order: list[int], size: int, num_classes: int, device: torch.device) -> None:
        self.order = torch.tensor(order, dtype=torch.long, device=device)
        self.size, self.topk, self.device = size, min(5, num_classes), device
        self.rows: list[Tensor] = []

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        ranked = logits.topk(self.topk, dim=1).indices
        p_label = logits.softmax(dim=1).gather(1, labels[:, None])
        self.rows.append(torch.cat([labels[:, None].double(), ranked.double(), p_label.double()], dim=1))

    def compute(self) -> dict[str, Any]:
        """``label`` [N], ``topk`` [N, k] (class indices, best first), ``p_label`` [N] as numpy
        arrays, N the dataset's size."""
        table = torch.zeros(self.size, self.topk + 2, dtype=torch.float64, device=self.device)
        if self.rows:
            seen = torch.cat(self.rows)
            table[self.order[: len(seen)]] = seen
        values = all_reduce_sum(table).cpu().numpy()
        return {
            "label": values[:, 0].astype("int64"),
            "topk": values[:, 1:-1].astype("int64"),
            "p_label": values[:, -1],
        }
