"""Cross-layer non-local networks for fine-grained recognition (Ye et al., ICIP 2020)."""

import importlib.util

from cnl.engine.checkpoint import load_model
from cnl.models import create_model, list_models
from cnl.nn import CrossLayerNonLocal, NonLocal2d

__version__ = "0.1.0"

if importlib.util.find_spec("timm") is not None:
    from cnl import timm_models  # noqa: F401  registers the NL/CNL models in timm
__all__ = ["CrossLayerNonLocal", "NonLocal2d", "__version__", "create_model", "list_models", "load_model"]
