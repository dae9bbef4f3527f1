"""The paper's models on torchvision ResNets."""

from cnl.models.registry import create_model, list_models
from cnl.models.resnet import FineGrainedResNet

__all__ = ["FineGrainedResNet", "create_model", "list_models"]
