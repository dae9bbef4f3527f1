"""The paper's ResNets: torchvision's ``ResNet``, optionally narrower, with the NL blocks and
the CNL module plugged in at torchvision's block names (``layer3.5``) as into any backbone.

The forward computes torchvision's (its stem pooling on a faster CPU kernel, bit for bit
the same) and every backbone key is torchvision's, so its ImageNet weights load as they
are; the new modules live under ``plug.`` (``models/plug.py``). The placement is the rule
every backbone gets (``models/placement.py``), except where the authors' release chose
other blocks (ResNet-101's res4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from cnl.errors import InvalidValue, excerpt
from cnl.models.placement import default_placement
from cnl.models.plug import Site, plug_into

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

# The authors' release: ResNet-101's res4 responses are blocks 5, 12 and 19 of 23 where the
# rule's spacing gives 8, 15 and 22. (ResNet-50's are the rule's: layer2.1, 2.3, 3.1, 3.3, 3.5.)
PAPER_RESPONSES = {"resnet101": ("layer2.1", "layer2.3", "layer3.5", "layer3.12", "layer3.19")}


def stage_blocks(arch: str) -> list[list[str]]:
    """Every residual block, stage by stage, named as torchvision's state dict names it."""
    depths = ARCHITECTURES[arch].depths
    return [[f"{stage}.{index}" for index in range(depth)] for stage, depth in zip(STAGES, depths)]


def layer_names(arch: str) -> list[str]:
    return [name for stage in stage_blocks(arch) for name in stage]


def paper_placement(arch: str) -> tuple[str, tuple[str, ...]]:
    """(query, five responses): the rule on the four stages, or the authors' blocks. The
    query is the second-to-last block of res5 (layer4.1), as in their code."""
    query, responses = default_placement(stage_blocks(arch))
    return query, PAPER_RESPONSES.get(arch, responses)


class ClassifierHead(nn.Linear):
    """Dropout, then the linear classifier: the paper's head after global average pooling.
    A ``Linear`` itself, so its keys are torchvision's ``fc.weight`` and ``fc.bias``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        drop_rate: float = 0.5,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.dropout = nn.Dropout(drop_rate)

    @classmethod
    def around(cls, linear: nn.Linear, drop_rate: float) -> ClassifierHead:
        """A head with ``linear``'s parameters (and so its initialisation), drawing nothing."""
        head = nn.utils.skip_init(cls, linear.in_features, linear.out_features, drop_rate, device=linear.weight.device)
        head.weight, head.bias = linear.weight, linear.bias
        return head

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.dropout(x))


KERNEL, STRIDE, PADDING = 3, 2, 1  # torchvision's stem pooling


class StemMaxPool2d(nn.MaxPool2d):
    """torchvision's stem pooling (3x3, stride 2), computed on channels-last memory on the CPU.

    torch's CPU kernel for an NCHW map walks each channel's plane on its own and is several
    times slower there than its channels-last kernel, which takes all channels of a pixel at
    once: with it the demo's ResNet-18 took 1.3x as long to evaluate a batch and 1.05x as
    long for a training step (``benchmarks/stem_pool.py``). A maximum and the pixel it came
    from do not depend on the memory layout, so both kernels give the same output and the
    same gradient, bit for bit (tests/test_models.py), and map and gradient go on in the
    layout they came in. A channels-last input (``--channels-last``), other devices and
    TorchScript take torch's kernel directly.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=KERNEL, stride=STRIDE, padding=PADDING)

    def forward(self, x: Tensor) -> Tensor:
        return stem_max_pool(x)


@torch.fx.wrap  # one node in an FX graph: its branches on the input's layout are not traced
def stem_max_pool(x: Tensor) -> Tensor:
    if torch.jit.is_scripting() or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return F.max_pool2d(x, KERNEL, STRIDE, PADDING)
    if torch.is_grad_enabled() and x.requires_grad:
        return _channels_last_pool_with_gradient(x)
    return F.max_pool2d(x.contiguous(memory_format=torch.channels_last), KERNEL, STRIDE, PADDING).contiguous()


@torch.jit.unused
def _channels_last_pool_with_gradient(x: Tensor) -> Tensor:
    return ChannelsLastMaxPool.apply(x)


class ChannelsLastMaxPool(torch.autograd.Function):
    """The stem's max pooling of an NCHW map, computed channels-last both ways: its gradient
    too goes back as NCHW, so that the stem's ReLU and convolution get it in the layout they
    saved (torch's ops take a gradient in another layout on slower paths)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        output, indices = F.max_pool2d(x, KERNEL, STRIDE, PADDING, return_indices=True)
        ctx.save_for_backward(x, indices)
        return output.contiguous()

    @staticmethod
    def backward(ctx: Any, gradient: Tensor) -> Tensor:
        x, indices = ctx.saved_tensors
        gradient = gradient.contiguous(memory_format=torch.channels_last)
        pooled = torch.ops.aten.max_pool2d_with_indices_backward(
            gradient, x, [KERNEL] * 2, [STRIDE] * 2, [PADDING] * 2, [1, 1], False, indices
        )
        return pooled.contiguous()


POOLS = ("avg", "")  # global average pooling, or none (the map itself: timm's global_pool="")


class ResNet(tv_resnet.ResNet):
    """torchvision's ResNet with ``width`` channels in the stem and first stage (64 in
    torchvision; every stage scales with it) and dropout before its classifier, with
    timm's model interface (``forward_features``, ``forward_head``, ``reset_classifier``,
    ``num_features``, ``feature_info``, ...; docs/modules.md says why this way).

    The state-dict keys are torchvision's and the forward computes what torchvision's
    does. Another width has no pretrained weights (the demo trains width 16 from scratch).
    ``num_classes=0`` leaves out the classifier; ``global_pool=""`` the pooling too.
    """

    fc: nn.Module  # a ClassifierHead once built (nn.Identity without classes)
    in_chans = 3

    def __init__(
        self,
        arch: str,
        num_classes: int = 1000,
        drop_rate: float = 0.5,
        width: int = STAGE_WIDTHS[0],
        global_pool: str = "avg",
    ):
        if width < 1:
            raise InvalidValue(f"width must be a positive number of channels, got {width}")
        if global_pool not in POOLS:
            raise InvalidValue(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
        spec = ARCHITECTURES[arch]
        self.width = width  # read by _make_layer during ResNet.__init__
        super().__init__(spec.block, list(spec.depths), num_classes=max(num_classes, 1))
        self.maxpool = StemMaxPool2d()
        if width != STAGE_WIDTHS[0]:
            self._narrow_stem_and_head(max(num_classes, 1), STAGE_WIDTHS[-1] * spec.block.expansion)
        self.num_classes, self.drop_rate, self.global_pool = num_classes, drop_rate, global_pool
        linear = self.fc
        assert isinstance(linear, nn.Linear)
        self.num_features: int = linear.in_features
        self.head_hidden_size: int = linear.in_features
        self.fc = ClassifierHead.around(linear, drop_rate) if num_classes else nn.Identity()
        self.feature_info = [
            {"num_chs": width, "reduction": 2, "module": "relu"},
            *({"num_chs": block_channels(arch, stage, width), "reduction": 4 * 2**k, "module": stage}
              for k, stage in enumerate(STAGES)),
        ]  # fmt: skip

    def _new_pass(self) -> None:
        plug = getattr(self, "plug", None)
        if plug is not None:
            plug.new_pass()

    def forward_features(self, x: Tensor) -> Tensor:
        """The map before pooling: stem, then the four stages (the NL/CNL modules run inside)."""
        self._new_pass()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's: the maps at ``feature_info``'s levels (``indices``: those, or the last N;
        default all), and unless ``intermediates_only`` the final map. ``norm`` does nothing
        (a ResNet has no final norm); ``stop_early`` ends after the last level asked for."""
        if output_fmt != "NCHW":
            raise InvalidValue(f"a ResNet's maps are NCHW, not {output_fmt}")
        levels = len(self.feature_info)
        take = list(range(levels))[-indices:] if isinstance(indices, int) else list(indices or range(levels))
        stages = [nn.Sequential(self.conv1, self.bn1, self.relu), nn.Sequential(self.maxpool, self.layer1),
                  self.layer2, self.layer3, self.layer4]  # fmt: skip
        intermediates = []
        self._new_pass()
        for level, stage in enumerate(stages[: max(take) + 1] if stop_early or intermediates_only else stages):
            x = stage(x)
            if level in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling (unless ``global_pool=""``), then the classifier."""
        if self.global_pool:
            x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier of ``num_classes`` (0: none), on the device and in the dtype and
        mode of the model; ``global_pool`` ("avg" or "") changes the pooling, None keeps it."""
        if global_pool is not None:
            if global_pool not in POOLS:
                raise InvalidValue(f"global_pool must be 'avg' or '' (none), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        like = self.conv1.weight
        head: nn.Module = nn.Identity()
        if num_classes:
            head = ClassifierHead(self.num_features, num_classes, self.drop_rate, like.device, like.dtype)
        self.fc = head.train(self.training)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Not offered: recomputing a block in the backward pass would run its NL/CNL hooks twice."""
        raise InvalidValue("gradient checkpointing is not offered by cnl's ResNets: it would run their hooks twice")

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


def add_drop_path(model: tv_resnet.ResNet, rate: float) -> None:
    """Stochastic depth (Huang et al., 2016) in torchvision's blocks, as timm's ResNets have
    it: in training, each sample's residual branch is dropped with a probability rising
    linearly from 0 at the first block to ``rate`` at the last, and kept branches are scaled
    by 1 / (1 - p). A forward hook on each branch's last norm applies it, so the blocks,
    their forward and their state-dict keys stay torchvision's."""
    from torchvision.ops import stochastic_depth

    blocks = [block for stage in STAGES for block in getattr(model, stage)]
    for index, block in enumerate(blocks):
        last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        p = rate * index / max(1, len(blocks) - 1)

        def drop(module: nn.Module, inputs: tuple, output: Tensor, p: float = p) -> Tensor:
            return stochastic_depth(output, p, "row", module.training)

        last.register_forward_hook(drop)


def block_channels(arch: str, layer: str, width: int = STAGE_WIDTHS[0]) -> int:
    """Output channels of the block named ``layer`` (e.g. 2048 for ResNet-50's layer4.1)."""
    stage = STAGES.index(layer.split(".")[0])
    return STAGE_WIDTHS[stage] * width // STAGE_WIDTHS[0] * ARCHITECTURES[arch].block.expansion


def _ordered(arch: str, names: Sequence[str], what: str) -> list[str]:
    order = layer_names(arch)
    unknown = [n for n in names if n not in order]
    if unknown:
        raise InvalidValue(f"unknown {what} {excerpt(unknown)} for {arch}; valid layer names are: {', '.join(order)}")
    if len(set(names)) != len(names):
        raise InvalidValue(f"{what} names a layer twice: {excerpt(list(names))}")
    return sorted(names, key=order.index)


def create_resnet(
    arch: str,
    num_classes: int = 1000,
    *,
    nl_layers: Sequence[str] = (),
    query: str | None = None,
    responses: Sequence[str] = (),
    inner_channels: int | None = None,
    drop_rate: float | None = None,
    width: int = STAGE_WIDTHS[0],
    drop_path: float | None = None,
    global_pool: str = "avg",
) -> nn.Module:
    """A ``ResNet`` with NL blocks after ``nl_layers`` and one CNL module whose query is
    ``query``'s output and whose responses are those of ``responses`` (block names).

    Args:
        arch: a key of ``ARCHITECTURES``.
        num_classes: outputs of the new linear head.
        nl_layers: blocks after which a ``NonLocal2d`` runs (its output feeds the next block).
        query: block whose output is the CNL query; the CNL result feeds the next block.
        responses: blocks whose outputs are the CNL responses.
        inner_channels: width c of the NL/CNL embeddings (module defaults if None).
        drop_rate: dropout before the linear head (None: 0.5, the paper's code).
        width: channels of the stem and first stage (see ``ResNet``).
        drop_path: stochastic depth (``add_drop_path``); None or 0: none.
        global_pool: "avg" (the paper's), or "" for the map without pooling (timm's).
    """
    model = ResNet(arch, num_classes, 0.5 if drop_rate is None else drop_rate, width, global_pool)
    if drop_path:
        add_drop_path(model, drop_path)
    nl = _ordered(arch, nl_layers, "nl_layers")
    chosen = _ordered(arch, responses, "responses")
    if query is not None:
        query = _ordered(arch, [query], "query")[0]
    order = layer_names(arch)
    late = [r for r in chosen if query is not None and order.index(r) > order.index(query)]
    if late:
        raise InvalidValue(f"response layers {late} come after the query layer {query}")
    last = order[-1]  # the map before pooling: a figure's query cells are drawn on its grid
    names = dict.fromkeys([*nl, *chosen, *([query] if query else []), last])
    sites = {n: Site(n, "NCHW", block_channels(arch, n, width)) for n in names}
    return plug_into(model, sites, arch, query, chosen, nl, inner_channels, grid=last)
