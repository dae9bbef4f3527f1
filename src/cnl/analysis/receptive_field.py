"""Theoretical receptive fields and strides of a ResNet's blocks (the paper's Fig. 1 argument).

Along the longest path of each block (its main branch), each convolution or pooling of
kernel k, stride s and dilation d grows the receptive field by ``(k - 1) * d * jump``
and multiplies the jump (the stride in input pixels) by s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torchvision.models import ResNet

from cnl.errors import InvalidValue
from cnl.models.plug import name_of, site_roles
from cnl.models.resnet import STAGES
from cnl.tables import Table


@dataclass(frozen=True)
class Field:
    """Theoretical receptive field (pixels) and stride of a layer's output."""

    size: int  # pixels of input seen by one output position
    stride: int  # input pixels between neighbouring output positions

    def describe(self) -> str:
        return f"RF {self.size} px, stride {self.stride}"


def _grow(field: Field, layer: nn.Conv2d | nn.MaxPool2d) -> Field:
    def first(value):
        return value[0] if isinstance(value, tuple) else value

    kernel, stride, dilation = first(layer.kernel_size), first(layer.stride), first(layer.dilation)
    return Field(field.size + (kernel - 1) * dilation * field.stride, field.stride * stride)


def _main_branch(block: nn.Module) -> list[nn.Conv2d]:
    return [m for name, m in block.named_children() if name.startswith("conv") and isinstance(m, nn.Conv2d)]


def has_receptive_fields(model: nn.Module) -> bool:
    """Whether ``receptive_fields`` can work them out: torchvision's ResNets (ours are)."""
    return isinstance(model, ResNet)


def receptive_fields(model: Any) -> dict[str, Field]:
    """Receptive field and stride of every block's output, keyed by torchvision layer name,
    in forward order."""
    if not has_receptive_fields(model):
        raise InvalidValue(
            f"receptive fields are worked out for torchvision's ResNets only, not {name_of(model)}: "
            "cnl profile --placements gives any model's modules with their output shapes"
        )
    field = _grow(_grow(Field(1, 1), model.conv1), model.maxpool)
    fields = {}
    for stage in STAGES:
        for index, block in enumerate(getattr(model, stage)):
            for conv in _main_branch(block):
                field = _grow(field, conv)
            fields[f"{stage}.{index}"] = field
    return fields


def format_fields(name: str, model: Any) -> str:
    """The query's and each response's (or NL block's) field, shallow to deep."""
    fields = receptive_fields(model)
    roles = site_roles(model)
    order = list(fields)
    roles.sort(key=lambda item: order.index(item[0]))
    cells = [[layer, role, fields[layer].size, fields[layer].stride] for layer, role in roles]
    table = Table.of(
        ["layer", "role", "receptive field (px)", "stride (px)"], cells or [["-", "no NL or CNL module", "-", "-"]]
    )
    return f"{name}:\n{table.markdown()}"
