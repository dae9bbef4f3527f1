"""The paper's transforms (the authors' code), with torchvision.transforms.v2, and the
augmentations of timm's and torchvision's reference scripts, off unless asked for.

Train: RandomResizedCrop(448, scale=(0.08, 1.25)) + horizontal flip + ImageNet mean/std.
Test: Resize(512) + CenterCrop(448). Sizes scale together: ``resize = size * 512 / 448``.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from cnl.data.policies import AUTO_AUGMENTS, INTERPOLATION_NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.25)
RESIZE_RATIO = 512 / 448


def _to_normalised_tensor() -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


INTERPOLATIONS = {
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
    "nearest": v2.InterpolationMode.NEAREST,
}
assert tuple(INTERPOLATIONS) == INTERPOLATION_NAMES and AUTO_AUGMENTS[0] == "none"


def auto_augment(name: str, interpolation: v2.InterpolationMode) -> list[v2.Transform]:
    """torchvision's policies: RandAugment (2 ops at magnitude 9, as timm's rand-m9), TrivialAugment
    (one op at a random magnitude), AutoAugment (the ImageNet policy); none."""
    if name == "randaugment":
        return [v2.RandAugment(num_ops=2, magnitude=9, interpolation=interpolation)]
    if name == "trivialaugment":
        return [v2.TrivialAugmentWide(interpolation=interpolation)]
    if name == "autoaugment":
        return [v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=interpolation)]
    return []


def train_transform(
    size: int = 448,
    scale: tuple[float, float] = CROP_SCALE,
    augment: str = "none",
    color_jitter: float = 0.0,
    random_erase: float = 0.0,
    interpolation: str = "bilinear",
) -> v2.Compose:
    """Random crop of ``scale`` x the image area (up to 1.25, as the authors), resized to
    ``size``; flip (the paper's). Then, where asked (timm's order): an ``augment`` policy,
    else a colour jitter of brightness, contrast and saturation by ``color_jitter``; and after
    normalising, random erasing with probability ``random_erase``."""
    mode = INTERPOLATIONS[interpolation]
    colour = [v2.ColorJitter(color_jitter, color_jitter, color_jitter)] if color_jitter and augment == "none" else []
    erase = [v2.RandomErasing(p=random_erase, value=0)] if random_erase else []
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=scale, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
            *auto_augment(augment, mode),
            *colour,
            *_to_normalised_tensor(),
            *erase,
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


def eval_geometry(size: int = 448, resize: int | None = None, interpolation: str = "bilinear") -> v2.Compose:
    """Shorter side to ``resize`` (``size * 512 / 448`` by default), then the central ``size``
    square, still uint8."""
    resize = resize or round(size * RESIZE_RATIO)
    mode = INTERPOLATIONS[interpolation]
    return v2.Compose([v2.ToImage(), v2.Resize(resize, interpolation=mode, antialias=True), v2.CenterCrop(size)])


def eval_crops(size: int = 448, resize: int | None = None, interpolation: str = "bilinear") -> v2.Compose:
    """Test-time augmentation's views: the image resized as ``eval_geometry`` resizes it, then
    its five ``size`` crops (centre and corners), each normalised: a ``[5, 3, size, size]`` tensor."""
    resize = resize or round(size * RESIZE_RATIO)
    mode = INTERPOLATIONS[interpolation]
    return v2.Compose(
        [v2.ToImage(), v2.Resize(resize, interpolation=mode, antialias=True), v2.FiveCrop(size), stack_normalised]
    )


def stack_normalised(crops: tuple[torch.Tensor, ...]) -> torch.Tensor:
    to_float = normalise()
    return torch.stack([to_float(crop) for crop in crops])


def normalise() -> v2.Compose:
    """uint8 to float in 0..1, then ImageNet mean/std: per image or on a whole batch alike."""
    return v2.Compose(_to_normalised_tensor())


def eval_transform(size: int = 448, resize: int | None = None, interpolation: str = "bilinear") -> v2.Compose:
    """``eval_geometry`` then ``normalise``."""
    return v2.Compose([*eval_geometry(size, resize, interpolation).transforms, *normalise().transforms])
