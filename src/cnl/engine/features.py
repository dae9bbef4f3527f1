"""``--cache-features``: a frozen backbone's part that only reads the image, computed once per
image and kept in the run folder, so that an epoch of probe training runs only what trains.

A cache file holds, for every image of a split in order, the tensors ``cnl.models.frozen``
cuts the forward at, and the labels. Its name carries a digest of everything it depends
on: the frozen weights, the cut, each image's path, size, modification time and label,
and the transform. Any change of weights, data or transform names another file; the old
one is removed and the features computed again.

Features cannot be augmented once computed, so a cached run reads its training images as
evaluation reads them (resize and centre crop), with no random crop or flip: a probe on
fixed features, as linear probes are trained.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from cnl.engine.checkpoint import content_digest, save_checkpoint
from cnl.errors import InvalidValue
from cnl.models.frozen import Cut, frozen_part, rest, split

FORMAT = 1  # of the cache files: a change of layout names new files


class CachedModel(nn.Module):
    """The model run from its cut: ``forward`` takes a batch of flat cached rows (``FeatureSet``)."""

    def __init__(self, model: nn.Module, cut: Cut, shapes: Sequence[torch.Size]) -> None:
        super().__init__()
        self.model, self.cut, self.shapes = model, cut, list(shapes)

    def forward(self, rows: Tensor) -> Tensor:
        sizes = [shape.numel() for shape in self.shapes]
        pieces = rows.split(sizes, dim=1)
        return rest(self.model, self.cut, [p.reshape(len(rows), *s) for p, s in zip(pieces, self.shapes)])


class FeatureSet(Dataset):
    """A split's cached features, one flat row per image, with its labels (``targets``), in
    the order of the images' dataset, so that the training sampler draws the same batches."""

    def __init__(self, rows: Tensor, targets: Tensor, classes: list[str]) -> None:
        self.rows, self.targets, self.classes = rows, targets.tolist(), classes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.rows[index], self.targets[index]


def frozen_digest(model: nn.Module, cut: Cut) -> str:
    """The frozen weights and buffers and the cut: what every split's features depend on."""
    h = hashlib.sha256(f"format {FORMAT}; cut at {cut.start}; responses {cut.responses}".encode())
    for name, tensor in model.state_dict().items():
        if name.startswith(cut.trainable):  # what trains is read after the cut
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def digest(frozen: str, dataset: Any) -> str:
    """What a split's cached features depend on: ``frozen_digest``, and each image (path,
    size, modification time, label) and the transform."""
    h = hashlib.sha256(frozen.encode())
    if not hasattr(dataset, "samples"):
        raise InvalidValue("--cache-features needs cnl's datasets (a list of image files), not a dataset of your own")
    for path, label in dataset.samples:
        stat = Path(path).stat()
        h.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\n".encode())
    h.update(repr(dataset.transform).encode())
    return h.hexdigest()[:16]


def available_memory() -> int:
    """Bytes of memory free now (Linux), or no limit where it cannot be read."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 2**62


@torch.no_grad()
def compute(
    model: nn.Module, cut: Cut, dataset: Any, batch_size: int, workers: int, device: torch.device
) -> tuple[Tensor, list[torch.Size]]:
    """Every image's cached tensors as one flat row (on the CPU), and their shapes."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    rows: Tensor | None = None
    shapes: list[torch.Size] = []
    filled = 0
    for images, _ in loader:
        tensors = frozen_part(model, cut, images.to(device))
        flat = torch.cat([t.reshape(len(images), -1) for t in tensors], dim=1).float().cpu()
        if rows is None:
            shapes = [t.shape[1:] for t in tensors]
            needed = len(dataset) * flat.shape[1] * flat.element_size()
            if needed > available_memory() // 2:
                raise InvalidValue(
                    f"--cache-features: the features of {len(dataset)} images would take {needed / 2**30:.1f} GiB "
                    f"({flat.shape[1]} numbers an image, cut at {cut.start!r}), more than half the memory free; "
                    "train without --cache-features, at a smaller --img-size, or with fewer response layers"
                )
            rows = torch.empty(len(dataset), flat.shape[1])
        rows[filled : filled + len(images)] = flat
        filled += len(images)
    assert rows is not None
    return rows, shapes


def read_cache(path: Path, count: int) -> dict[str, Any] | None:
    """A cache file's rows and shapes (tensors and plain data only), or None when it is not
    there or damaged: it is computed again, as nothing but time is lost."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not there, or damaged: any way torch.load can fail on a bad file
        return None
    if not isinstance(state, dict) or state.pop("checksum", None) != content_digest(state):
        return None
    rows, shapes = state.get("rows"), state.get("shapes")
    if not isinstance(rows, Tensor) or rows.ndim != 2 or len(rows) != count or not isinstance(shapes, list):
        return None
    return state


def cached_split(
    folder: Path, name: str, model: nn.Module, cut: Cut, dataset: Any, batch_size: int, workers: int,
    device: torch.device, frozen: str | None = None,
) -> tuple[FeatureSet, list[torch.Size], bool]:  # fmt: skip
    """The split's features from ``folder/NAME-DIGEST.pt``, computed and written when that file
    is not there (other files of the split removed); whether they were computed now.
    ``frozen``: ``frozen_digest(model, cut)``, when the caller has it already."""
    path = folder / f"{name}-{digest(frozen or frozen_digest(model, cut), dataset)}.pt"
    targets = torch.tensor([label for _, label in dataset.samples])
    state = read_cache(path, len(dataset))
    if state is not None:
        return FeatureSet(state["rows"], targets, dataset.classes), [torch.Size(s) for s in state["shapes"]], False
    rows, shapes = compute(model, cut, dataset, batch_size, workers, device)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{name}-*.pt"):
        stale.unlink()
    save_checkpoint({"rows": rows, "shapes": [list(s) for s in shapes]}, path)
    return FeatureSet(rows, targets, dataset.classes), shapes, True


def cache_features(
    model: nn.Module, splits: dict[str, Any], folder: Path, batch_size: int, workers: int, device: torch.device
) -> tuple[CachedModel, dict[str, FeatureSet | None]]:
    """The model run from its cut, and each split's cached features (None for a split that
    is None). Prints what was computed or reused, and how long it took."""
    first = next(s for s in splits.values() if s is not None)
    probe = torch.stack([first[i][0] for i in range(min(2, len(first)))]).to(device)
    cut = split(model, probe)
    sets: dict[str, FeatureSet | None] = {}
    shapes: list[torch.Size] = []
    frozen = frozen_digest(model, cut)  # once: the weights are the same for every split
    for name, dataset in splits.items():
        if dataset is None:
            sets[name] = None
            continue
        start = time.perf_counter()
        sets[name], shapes, computed = cached_split(
            folder, name, model, cut, dataset, batch_size, workers, device, frozen
        )
        verb = "computed" if computed else "reused"
        print(
            f"features of {len(dataset)} {name} images {verb} (cut at {cut.start!r}): "
            f"{time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return CachedModel(model, cut, shapes), sets
