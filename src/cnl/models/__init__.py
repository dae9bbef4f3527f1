"""The paper's models on torchvision ResNets, and NL/CNL modules in any torchvision or timm backbone."""

from cnl.models.registry import create_model, list_models, register_model
from cnl.models.resnet import ResNet

__all__ = ["ResNet", "create_model", "list_models", "register_model"]
