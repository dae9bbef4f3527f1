"""Datasets in their official layouts, the synthetic benchmark, the paper's transforms."""

from cnl.data.datasets import FineGrainedDataset, LayoutError, build_dataset, detect_layout
from cnl.data.images import ImageError, load_image
from cnl.data.transforms import eval_transform, train_transform

__all__ = [
    "FineGrainedDataset",
    "ImageError",
    "LayoutError",
    "build_dataset",
    "detect_layout",
    "eval_transform",
    "load_image",
    "train_transform",
]
