"""NL blocks and a CNL module inside any backbone, placed by module name.

A *site* is a module of the backbone, named as ``model.get_submodule`` names it. Forward
hooks run the new modules inside the backbone's own forward: a response site's output
is kept for the query; at an NL site, or at the query, the module's result replaces the
site's output, so the next block computes on it (the paper's placement, in any
network). Nothing of the backbone is wrapped or renamed: its state-dict keys, and so its
pretrained weights, stay its own, and the new modules live under ``plug.``. Hooks are
bound methods of the ``Plug`` module, so ``copy.deepcopy`` (EMA) rebinds them to the copy,
and ``torch.compile`` and ``torch.onnx.export`` trace through them.

Sites come in three layouts, declared per family, never guessed from a shape:

- ``NCHW``: channels-first maps (CNNs, timm's ConvNeXt blocks);
- ``NHWC``: channels-last maps (timm's and torchvision's Swin stages);
- ``tokens``: ``[B, prefix + H*W, C]`` sequences (ViT). The prefix tokens (class,
  registers) pass through unchanged; the square grid of patch tokens is attended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn

from cnl.errors import InvalidArgument, InvalidValue
from cnl.nn import CrossLayerNonLocal, NonLocal2d

# What plug_into adds to a backbone: the module ``plug`` and one method; everything else about
# the modules is reached through ``plugged(model)``, typed, not through attributes of a foreign class.
ADDED = ("plug", "forward_with_attention")


@dataclass(frozen=True)
class Site:
    """Where a module's output is read or replaced, and how to see it as ``[B, C, H, W]``."""

    name: str
    layout: str
    channels: int
    prefix_tokens: int = 0

    def to_map(self, x: Any) -> Tensor:
        check_output(self.name, x, self.layout)
        if self.layout == "NHWC":
            return x.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            side = grid_side(self.name, x, self.prefix_tokens)
            return x[:, self.prefix_tokens :].transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        return x

    def from_map(self, y: Tensor, x: Tensor) -> Tensor:
        """``y`` back in the site's layout (``x``: the site's own output, for the prefix tokens)."""
        if self.layout == "NHWC":
            return y.permute(0, 2, 3, 1)
        if self.layout == "tokens":
            return torch.cat([x[:, : self.prefix_tokens], y.flatten(2).transpose(1, 2)], dim=1)
        return y


def check_output(name: str, x: Any, layout: str) -> None:
    """An NL/CNL site must output one tensor of its layout's rank; anything else is an error
    that names the module and what it saw."""
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing: the shapes are checked when the graph runs
        return
    if not isinstance(x, Tensor):
        raise InvalidArgument(f"module {name!r} outputs {type(x).__name__}, not a tensor: it cannot be an NL/CNL site")
    rank = 3 if layout == "tokens" else 4
    if x.dim() != rank:
        raise InvalidValue(
            f"module {name!r} outputs shape {tuple(x.shape)}; a {layout} site needs {rank} dimensions "
            f"({'[B, tokens, C]' if layout == 'tokens' else '[B, C, H, W]' if layout == 'NCHW' else '[B, H, W, C]'})"
        )


def grid_side(name: str, x: Tensor, prefix_tokens: int) -> int:
    patches = x.shape[1] - prefix_tokens
    side = math.isqrt(patches)
    if side * side != patches:
        raise InvalidValue(
            f"module {name!r} outputs {tuple(x.shape)}: {patches} tokens after {prefix_tokens} prefix tokens "
            "are not a square grid of patches"
        )
    return side


def site_channels(name: str, x: Any, layout: str) -> int:
    check_output(name, x, layout)
    return int(x.shape[1] if layout == "NCHW" else x.shape[-1])


def key(name: str) -> str:
    """A module name as a ModuleDict key (no dots)."""
    return name.replace(".", "_")


class Plug(nn.Module):
    """The new modules of one backbone and the forward hooks that run them.

    Args:
        sites: every site used below, by module name.
        query: the site whose output is the CNL query (None: no CNL).
        responses: the CNL response sites, in forward order.
        nl_layers: sites followed by a ``NonLocal2d``.
        inner_channels: width c of the NL/CNL embeddings (module defaults if None).
        grid: the site whose map a figure's query cells are drawn on (default: the CNL
            query, else the deepest NL block).
        arch: the backbone's name, as figures and weights name it.
    """

    def __init__(
        self,
        sites: dict[str, Site],
        query: str | None,
        responses: Sequence[str],
        nl_layers: Sequence[str],
        inner_channels: int | None = None,
        grid: str | None = None,
        arch: str = "",
    ) -> None:
        super().__init__()
        self.sites, self.query, self.arch = sites, query, arch
        self.grid = grid or query or (nl_layers[-1] if nl_layers else None)
        self.responses, self.nl_layers = tuple(responses), tuple(nl_layers)
        self.nl = nn.ModuleDict({key(n): NonLocal2d(sites[n].channels, inner_channels) for n in self.nl_layers})
        self.cnl = (
            CrossLayerNonLocal(sites[query].channels, [sites[r].channels for r in self.responses], inner_channels)
            if query is not None
            else None
        )
        self.kept: list[Tensor] = []
        self.attention: dict[str, Tensor] | None = None  # a dict while forward_with_attention runs

    def attach(self, backbone: nn.Module) -> None:
        """Register the hooks: a reset before each forward, then NL, response, query per site
        (in that order where a site has several roles, as in our ResNets)."""
        backbone.register_forward_pre_hook(self._start)
        for name in self.nl_layers:
            backbone.get_submodule(name).register_forward_hook(partial(self._after_nl, name))
        for name in self.responses:
            backbone.get_submodule(name).register_forward_hook(partial(self._keep, name))
        if self.query is not None:
            backbone.get_submodule(self.query).register_forward_hook(self._after_query)

    def _start(self, module: nn.Module, args: Any) -> None:
        self.new_pass()

    def new_pass(self) -> None:
        """What is kept for the query starts empty: before each forward of the backbone (a
        pre-hook), and before a pass that is not its ``forward`` (``forward_features``, a
        pass from a cached cut) or after one that stopped early."""
        self.kept = []

    def _after_nl(self, name: str, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        site = self.sites[name]
        block = self.nl[key(name)]
        if self.attention is None:
            return site.from_map(block(site.to_map(output)), output)
        out, self.attention[name] = block(site.to_map(output), return_attention=True)
        return site.from_map(out, output)

    def _keep(self, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
        self.kept.append(self.sites[name].to_map(output))

    def _after_query(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        assert self.cnl is not None and self.query is not None
        site, responses = self.sites[self.query], self.kept
        self.kept = []
        if len(responses) != len(self.responses):
            raise InvalidValue(
                f"the CNL query {self.query!r} ran after {len(responses)} of its {len(self.responses)} responses: "
                "response modules must run before the query in every forward"
            )
        if self.attention is None:
            return site.from_map(self.cnl(site.to_map(output), responses), output)
        out, maps = self.cnl(site.to_map(output), responses, return_attention=True)
        self.attention.update(zip(self.responses, maps))
        return site.from_map(out, output)


def plugged(model: nn.Module) -> Plug | None:
    """The NL/CNL modules that ``plug_into`` put into ``model`` (sites, query, responses, NL
    blocks, the backbone's name); None for a model cnl did not plug into (one of your own)."""
    plug = model._modules.get("plug")
    return plug if isinstance(plug, Plug) else None


def attended(model: nn.Module) -> tuple[str, ...]:
    """The sites whose attention a figure shows: the CNL responses, then the NL blocks."""
    plug = plugged(model)
    return (*plug.responses, *plug.nl_layers) if plug is not None else ()


def site_roles(model: nn.Module) -> list[tuple[str, str]]:
    """Each site with its role (``response``, ``NL``, ``query``), responses first, the query last."""
    plug = plugged(model)
    if plug is None:
        return []
    roles = [(layer, "response") for layer in plug.responses] + [(layer, "NL") for layer in plug.nl_layers]
    return roles + ([(plug.query, "query")] if plug.query is not None else [])


def name_of(model: nn.Module) -> str:
    """The backbone's name cnl gave it, else its class's."""
    plug = plugged(model)
    return plug.arch if plug is not None and plug.arch else type(model).__name__


def forward_with_attention(model: nn.Module, x: Tensor) -> tuple[Any, dict[str, Tensor]]:
    """The backbone's output and every attention map: per CNL response ``[B, HqWq, HrWr]``,
    per NL block ``[B, HW, HW]``, keyed by site name (none for a model without a ``Plug``)."""
    plug = plugged(model)
    if plug is None:
        return model(x), {}
    plug.attention = {}
    try:
        return model(x), plug.attention
    finally:
        plug.attention = None


def plug_into(
    backbone: nn.Module,
    sites: dict[str, Site],
    name: str,
    query: str | None = None,
    responses: Sequence[str] = (),
    nl_layers: Sequence[str] = (),
    inner_channels: int | None = None,
    grid: str | None = None,
) -> nn.Module:
    """Insert the modules into ``backbone`` in place and return it, with the module ``plug``
    (``plugged(model)``: sites and roles, ``arch`` = ``name``) and the method
    ``forward_with_attention``. ``grid``: see ``Plug`` (its site must be in ``sites``)."""
    taken = [a for a in ADDED if hasattr(backbone, a)]
    if taken:
        raise InvalidValue(f"{name} already has attributes {taken}; cnl cannot plug into it")
    if (query is None) != (not responses):
        raise InvalidValue(f"{name}: a CNL module needs both a query and at least one response")
    plug = Plug(sites, query, responses, nl_layers, inner_channels, grid, name)
    backbone.add_module("plug", plug)
    plug.attach(backbone)
    object.__setattr__(backbone, "forward_with_attention", MethodType(forward_with_attention, backbone))
    return backbone


def record_outputs(model: nn.Module, names: Sequence[str], x: Tensor) -> dict[str, Any]:
    """Each named module's output on ``x`` (eval mode, no gradients; the model's mode is kept)."""
    outputs: dict[str, Any] = {}

    def recorder(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: Any, output: Any) -> None:
            outputs[name] = output

        return record

    handles = [model.get_submodule(n).register_forward_hook(recorder(n)) for n in names]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return outputs
