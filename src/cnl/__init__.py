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
    """Finds timm as usual; its module is then loaded by ``_ThenRegister``."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # once; and the look-up below must not come back here
        spec = importlib.util.find_spec("timm")
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


class _ThenRegister(importlib.abc.Loader):
    """timm's own loader, untouched, and then our models registered in the timm it loaded.
    Everything else (resources, ``is_package``) is asked of timm's loader."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        import cnl.timm_models  # noqa: F401  (the one arrow up from the root: tests/test_layers.py)


if "timm" in sys.modules:
    import cnl.timm_models  # noqa: F401
elif importlib.util.find_spec("timm") is not None:
    sys.meta_path.insert(0, _RegisterAfterTimm())
