"""The paper's models on torchvision ResNets, and NL/CNL modules in any torchvision or timm backbone."""

from cnl.models.plug import Plug, plugged
from cnl.models.registry import create_model, list_models, register_model
from cnl.models.resnet import ResNet

__all__ = ["Plug", "ResNet", "create_model", "list_models", "plugged", "register_model"]
