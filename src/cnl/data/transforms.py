"""The paper's transforms (the authors' code), with torchvision.transforms.v2.

Train: RandomResizedCrop(448, scale=(0.08, 1.25)) + horizontal flip + ImageNet mean/std.
Test: Resize(512) + CenterCrop(448). Sizes scale together: ``resize = size * 512 / 448``.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.25)
RESIZE_RATIO = 512 / 448


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def train_transform(size: int = 448, scale: tuple[float, float] = CROP_SCALE) -> v2.Compose:
    """Random crop of ``scale`` x the image area (up to 1.25, as the authors), resized to ``size``; flip."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *_to_normalised_tensor(),
        ]
    )


def batch_mix(mixup: float, cutmix: float, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix of whole batches (``images, labels -> images, soft labels``),
    one of the two at random per batch when both are on; None when both alphas are 0."""
    mixes: list[v2.Transform] = []
    if mixup:
        mixes.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
    if cutmix:
        mixes.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
    if len(mixes) > 1:
        return v2.RandomChoice(mixes)
    return mixes[0] if mixes else None


def eval_geometry(size: int = 448, resize: int | None = None) -> v2.Compose:
    """Shorter side to ``resize`` (``size * 512 / 448`` by default), then the central ``size``
    square, still uint8."""
    resize = resize or round(size * RESIZE_RATIO)
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


def normalise() -> v2.Compose:
    """uint8 to float in 0..1, then ImageNet mean/std: per image or on a whole batch alike."""
    return v2.Compose(_to_normalised_tensor())


def eval_transform(size: int = 448, resize: int | None = None) -> v2.Compose:
    """``eval_geometry`` then ``normalise``."""
    return v2.Compose([*eval_geometry(size, resize).transforms, *normalise().transforms])
