"""Training and evaluation: config, schedule, loops, checkpoints, distributed."""

from cnl.engine.checkpoint import CheckpointError, load_model, read_checkpoint
from cnl.engine.config import TrainConfig, make_config
from cnl.engine.trainer import fit

__all__ = ["CheckpointError", "TrainConfig", "fit", "load_model", "make_config", "read_checkpoint"]
