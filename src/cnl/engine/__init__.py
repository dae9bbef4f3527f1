"""Training and evaluation: config, schedule, loops, checkpoints, distributed.

The names below are imported on first use: ``import cnl.engine.config`` does not load the
trainer.
"""

from __future__ import annotations

from cnl.lazy import lazy_attributes

_LAZY = {
    "CheckpointError": "cnl.engine.checkpoint",
    "load_model": "cnl.engine.modelfile",
    "read_checkpoint": "cnl.engine.checkpoint",
    "TrainConfig": "cnl.engine.config",
    "make_config": "cnl.engine.config",
    "fit": "cnl.engine.trainer",
}
__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
