"""Cross-layer non-local networks for fine-grained recognition (Ye et al., ICIP 2020)."""

from cnl.engine.checkpoint import load_model
from cnl.models import create_model, list_models
from cnl.nn import CrossLayerNonLocal, NonLocal2d

__version__ = "0.1.0"
__all__ = ["CrossLayerNonLocal", "NonLocal2d", "__version__", "create_model", "list_models", "load_model"]
