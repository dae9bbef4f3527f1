"""torchvision ResNets with the paper's NL and CNL placements.

The backbone is torchvision's own ``ResNet``: every one of its state-dict keys is
unchanged, so torchvision's ImageNet weights load as they are. The NL blocks live under
``nl.<layer>`` and the CNL module under ``cnl.``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cnl.nn import CrossLayerNonLocal, NonLocal2d

STAGES = ("layer1", "layer2", "layer3", "layer4")
STAGE_WIDTHS = (64, 128, 256, 512)


@dataclass(frozen=True)
class Architecture:
    """A torchvision ResNet: block type, blocks per stage, its weights enum."""

    block: type[BasicBlock] | type[Bottleneck]
    depths: tuple[int, int, int, int]
    weights_enum: str  # torchvision's enum name, e.g. "ResNet50_Weights"


ARCHITECTURES = {
    "resnet18": Architecture(BasicBlock, (2, 2, 2, 2), "ResNet18_Weights"),
    "resnet34": Architecture(BasicBlock, (3, 4, 6, 3), "ResNet34_Weights"),
    "resnet50": Architecture(Bottleneck, (3, 4, 6, 3), "ResNet50_Weights"),
    "resnet101": Architecture(Bottleneck, (3, 4, 23, 3), "ResNet101_Weights"),
    "resnet152": Architecture(Bottleneck, (3, 8, 36, 3), "ResNet152_Weights"),
}

# The authors' release (REFERENCE-FACTS.md): two blocks of res3 and three of res4 for
# ResNet-50 and -101; the query is layer4.1, whose CNL output feeds layer4.2.
PAPER_RESPONSES = {
    "resnet50": ("layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"),
    "resnet101": ("layer2.1", "layer2.3", "layer3.5", "layer3.12", "layer3.19"),
}
MODULES_PER_STAGE = {"layer3": 3, "layer2": 2, "layer1": 0}


def layer_names(depths: Sequence[int]) -> list[str]:
    """Every residual block in forward order, named as torchvision's state dict names it."""
    return [f"{stage}.{index}" for stage, depth in zip(STAGES, depths) for index in range(depth)]


def spaced_blocks(depth: int, count: int) -> list[int]:
    """The last block of each of ``count`` equal chunks, counted from the stage's end.

    4 blocks, 2 modules -> 1, 3; 6 blocks, 3 modules -> 1, 3, 5 (the paper's ResNet-50).
    """
    if count == 0:
        return []
    step = depth // count
    return [depth - 1 - step * (count - 1 - k) for k in range(count)]


def default_responses(arch: str) -> tuple[str, ...]:
    """Five response (or NL) layers: the paper's for ResNet-50/101, else a rule.

    The rule puts 3 modules in res4 (layer3) and 2 in res3 (layer2) with
    ``spaced_blocks``; a stage with fewer blocks than its share takes one module per
    block and hands the rest to the stage before it (ResNet-18: layer1.1, layer2.0,
    layer2.1, layer3.0, layer3.1).
    """
    if arch in PAPER_RESPONSES:
        return PAPER_RESPONSES[arch]
    depths = dict(zip(STAGES, ARCHITECTURES[arch].depths))
    names: list[str] = []
    carried = 0
    for stage, share in MODULES_PER_STAGE.items():
        count = min(share + carried, depths[stage])
        carried = share + carried - count
        names = [f"{stage}.{index}" for index in spaced_blocks(depths[stage], count)] + names
    return tuple(names)


def default_query(arch: str) -> str:
    """The second-to-last block of res5 (layer4.1 of a 3-block layer4), as the authors' code."""
    return f"layer4.{ARCHITECTURES[arch].depths[3] - 2}"


class FineGrainedResNet(ResNet):
    """A torchvision ResNet with optional NL blocks and one optional CNL module.

    Args:
        arch: a key of ``ARCHITECTURES``.
        num_classes: outputs of the new linear head.
        nl_layers: blocks after which a ``NonLocal2d`` is inserted (its output feeds
            the next block).
        query: block whose output is the CNL query; the CNL result feeds the next block.
        responses: blocks whose outputs are the CNL responses, shallow to deep.
        inner_channels: width c of the NL/CNL embeddings (module defaults if None).
        drop_rate: dropout before the linear head (0.5 in the paper's code).
        width: channels of the stem and of the first stage (64 in torchvision); every
            stage scales with it. Another width has no pretrained weights: the demo
            uses 32 to train from scratch on 2 CPU cores.
    """

    def __init__(
        self,
        arch: str,
        num_classes: int = 1000,
        *,
        nl_layers: Sequence[str] = (),
        query: str | None = None,
        responses: Sequence[str] = (),
        inner_channels: int | None = None,
        drop_rate: float = 0.5,
        width: int = STAGE_WIDTHS[0],
    ) -> None:
        if width < 1:
            raise ValueError(f"width must be a positive number of channels, got {width}")
        spec = ARCHITECTURES[arch]
        self.width = width  # read by _make_layer during ResNet.__init__
        super().__init__(spec.block, list(spec.depths), num_classes=num_classes)
        if width != STAGE_WIDTHS[0]:
            self._narrow_stem_and_head(num_classes, STAGE_WIDTHS[-1] * spec.block.expansion)
        self.arch = arch
        self.layer_order = layer_names(spec.depths)
        self.nl_layers = tuple(self._check_layers(nl_layers, "nl_layers"))
        self.responses = tuple(self._check_layers(responses, "responses"))
        self.query = self._check_layers([query], "query")[0] if query is not None else None
        self._check_cross_layer_order()
        self.dropout = nn.Dropout(drop_rate)

        self.nl = nn.ModuleDict(
            {self._key(name): NonLocal2d(self.block_channels(name), inner_channels) for name in self.nl_layers}
        )
        self.cnl = (
            CrossLayerNonLocal(
                self.block_channels(self.query), [self.block_channels(r) for r in self.responses], inner_channels
            )
            if self.query is not None
            else None
        )

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        if planes == STAGE_WIDTHS[0]:
            self.inplanes = self.width  # layer1 reads the stem's output
        return super()._make_layer(block, planes * self.width // STAGE_WIDTHS[0], blocks, stride, dilate)

    def _narrow_stem_and_head(self, num_classes: int, features: int) -> None:
        """Stem and head at ``width`` (``features``: the head's input at width 64),
        initialised as torchvision initialises them."""
        self.conv1 = nn.Conv2d(3, self.width, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(self.width)
        self.fc = nn.Linear(features * self.width // STAGE_WIDTHS[0], num_classes)

    @staticmethod
    def _key(layer: str) -> str:
        return layer.replace(".", "_")

    def block_channels(self, layer: str) -> int:
        """Output channels of the block named ``layer`` (e.g. 2048 for ResNet-50's layer4.1)."""
        stage = layer.split(".")[0]
        width = STAGE_WIDTHS[STAGES.index(stage)] * self.width // STAGE_WIDTHS[0]
        return width * ARCHITECTURES[self.arch].block.expansion

    def _check_layers(self, names: Sequence[str], what: str) -> list[str]:
        unknown = [n for n in names if n not in self.layer_order]
        if unknown:
            raise ValueError(
                f"unknown {what} {unknown} for {self.arch}; valid layer names are: {', '.join(self.layer_order)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"{what} names a layer twice: {list(names)}")
        return sorted(names, key=self.layer_order.index)

    def _check_cross_layer_order(self) -> None:
        if (self.query is None) != (not self.responses):
            raise ValueError("a CNL module needs both a query layer and at least one response layer")
        if self.query is not None:
            late = [r for r in self.responses if self.layer_order.index(r) > self.layer_order.index(self.query)]
            if late:
                raise ValueError(f"response layers {late} come after the query layer {self.query}")

    def forward_features(self, x: Tensor, return_attention: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """Pooled-before feature map and, with ``return_attention``, every attention map.

        Attention maps are keyed by layer: the NL block's name for NL, the response
        layer's name for CNL (``[B, HqWq, HrWr]``).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        responses: list[Tensor] = []
        attention: dict[str, Tensor] = {}
        for stage in STAGES:
            for index, block in enumerate(getattr(self, stage)):
                name = f"{stage}.{index}"
                x = block(x)
                if name in self.nl_layers:
                    x = self._apply_nl(name, x, return_attention, attention)
                if name in self.responses:
                    responses.append(x)
                if name == self.query:
                    x = self._apply_cnl(x, responses, return_attention, attention)
        return x, attention

    def _apply_nl(self, name: str, x: Tensor, return_attention: bool, attention: dict[str, Tensor]) -> Tensor:
        block = self.nl[self._key(name)]
        if not return_attention:
            return block(x)
        x, attention[name] = block(x, return_attention=True)
        return x

    def _apply_cnl(
        self, x: Tensor, responses: list[Tensor], return_attention: bool, attention: dict[str, Tensor]
    ) -> Tensor:
        assert self.cnl is not None
        if not return_attention:
            return self.cnl(x, responses)
        x, maps = self.cnl(x, responses, return_attention=True)
        attention.update(zip(self.responses, maps))
        return x

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(features), 1)))

    def forward(self, x: Tensor) -> Tensor:
        features, _ = self.forward_features(x)
        return self.forward_head(features)

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the attention maps of every NL/CNL module (see ``forward_features``)."""
        features, attention = self.forward_features(x, return_attention=True)
        return self.forward_head(features), attention
