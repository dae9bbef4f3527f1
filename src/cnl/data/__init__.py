"""Datasets in their official layouts, the synthetic benchmark, the paper's transforms.

The names below are imported on first use (``cnl.lazy``).
"""

from __future__ import annotations

from cnl.lazy import lazy_attributes

_LAZY = {
    "FineGrainedDataset": "cnl.data.datasets",
    "LayoutError": "cnl.data.datasets",
    "build_dataset": "cnl.data.datasets",
    "detect_layout": "cnl.data.datasets",
    "ImageError": "cnl.data.images",
    "load_image": "cnl.data.images",
    "eval_transform": "cnl.data.transforms",
    "train_transform": "cnl.data.transforms",
}
__all__ = sorted(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
