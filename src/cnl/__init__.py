"""Cross-layer non-local networks for fine-grained recognition (Ye et al., ICIP 2020).

``import cnl`` loads nothing heavy: the names below are imported on first use, so that
``cnl --help`` answers without loading torch. Once timm is imported (before or after
``cnl``), the NL/CNL models are registered in it (``cnl.timm_models``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from cnl.lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "create_model": "cnl.models",
    "list_models": "cnl.models",
    "register_model": "cnl.models",
    "load_model": "cnl.engine.modelfile",
    "CrossLayerNonLocal": "cnl.nn",
    "NonLocal2d": "cnl.nn",
}
__all__ = [
    "CrossLayerNonLocal", "NonLocal2d", "__version__", "create_model", "list_models", "load_model", "register_model",
]  # fmt: skip


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


class _RegisterAfterTimm(importlib.abc.MetaPathFinder):
    """Finds timm as usual, and registers our models in it once its import has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # once; and the look-up below must not come back here
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            importlib.import_module("cnl.timm_models")

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    importlib.import_module("cnl.timm_models")
elif importlib.util.find_spec("timm") is not None:
    sys.meta_path.insert(0, _RegisterAfterTimm())
