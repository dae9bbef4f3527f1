"""torch.hub entry points: every model of ``cnl.list_models()``.

torch.hub.load("OWNER/cnl", "resnet50_cnl5", num_classes=200, weights="IMAGENET1K_V1")
torch.hub.load("/path/to/cnl", "resnet50_cnl5", source="local", num_classes=200)
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # a checkout that was not pip-installed

from cnl.models import create_model, list_models  # noqa: E402


def _entry(name):
    def entry(num_classes=1000, weights=None, **overrides):
        return create_model(name, num_classes=num_classes, weights=weights, **overrides)

    entry.__name__ = name
    entry.__doc__ = f"{name}: see cnl.create_model (num_classes, weights, query, responses, ...)."
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
