"""A frozen backbone cut in two: the part that only reads the image (computed once, cached)
and the part that trains or follows what trains (run every step).

With ``--freeze backbone`` only the NL/CNL modules and the head train. Everything the
forward computes before the first of them is then a fixed function of the image, so it
can be computed once per image and cached (``cnl train --cache-features``). Two cuts:

- **at the head**, when only the head trains (a linear probe): the cache holds the head's
  input, and a step is the head alone. Any backbone: the head's input is read by a hook.
- **before the first module that trains or that an NL block or the CNL query replaces**,
  for a backbone whose forward is its top-level modules in sequence (ResNets): the cache
  holds that module's input and the outputs of the CNL responses before it, and a step
  runs the modules from there on, the plug's hooks firing as in the model's own forward.

``split`` checks its cut on a batch: the cached part followed by the rest must give what
the model gives, or it is an error that names the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from cnl.errors import InvalidValue
from cnl.models.backbones import head_name


class _Reached(Exception):
    """Raised by a hook to end a forward once the cut is reached."""


@dataclass
class Cut:
    """Where a frozen model's forward is cut (``split``)."""

    head: str  # the classifier's module name
    order: list[str]  # the modules run after the cut, in order (at_head: the head alone)
    responses: tuple[str, ...]  # CNL responses before the cut, whose outputs are cached too
    at_head: bool
    trainable: tuple[str, ...]  # prefixes of the state-dict keys that train: not the cache's

    @property
    def start(self) -> str:
        return self.order[0]


def sequence(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level modules in registration order, each top-level sequence's blocks
    one by one: the order a ResNet's forward runs them in."""
    order = []
    for name, child in model.named_children():
        if name == "plug":
            continue
        if isinstance(child, nn.Sequential):
            order += [(f"{name}.{block}", module) for block, module in child.named_children()]
        else:
            order.append((name, child))
    return order


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _index_of(order: Sequence[tuple[str, nn.Module]], site: str) -> int:
    """The position of the module that is ``site`` or holds it."""
    for index, (name, _) in enumerate(order):
        if site == name or site.startswith(name + "."):
            return index
    raise InvalidValue(f"module {site!r} is not reached by the model's top-level modules")


def _cut(model: nn.Module) -> Cut:
    head = head_name(model)
    plug = getattr(model, "plug", None)
    trainable = ("plug.", head + ".")
    if plug is None or not _trains(plug):
        return Cut(head, [head], (), True, trainable)
    order = sequence(model)
    start = next((i for i, (_, module) in enumerate(order) if _trains(module)), len(order))
    replaced = [*plug.nl_layers, *([plug.query] if plug.query else [])]
    start = min([start, *(_index_of(order, site) for site in replaced)])
    cached = []
    for site in plug.responses:
        index = _index_of(order, site)
        if index < start and order[index][0] == site:
            cached.append(site)
        else:  # inside a module run after the cut, or the cut itself: its hook keeps it then
            start = min(start, index)
    responses = tuple(site for site in cached if _index_of(order, site) < start)
    return Cut(head, [name for name, _ in order[start:]], responses, False, trainable)


@torch.no_grad()
def frozen_part(model: nn.Module, cut: Cut, images: Tensor) -> list[Tensor]:
    """What the cut's later part reads: the outputs of ``cut.responses``, then the input of
    its first module, computed in eval mode (as a frozen part runs while the rest trains).
    The forward ends there (``_Reached``)."""
    found: dict[str, Tensor] = {}
    training = model.training
    model.eval()

    def keep(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: Any, output: Tensor) -> None:
            found[name] = output

        return hook

    def reach(module: nn.Module, args: Any) -> None:
        found[""] = args[0]
        raise _Reached

    handles = [model.get_submodule(name).register_forward_hook(keep(name)) for name in cut.responses]
    handles.append(model.get_submodule(cut.start).register_forward_pre_hook(reach))
    try:
        model(images)
    except _Reached:
        pass
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    if "" not in found:
        raise InvalidValue(f"the model's forward never reached {cut.start!r}: --cache-features cannot cut it there")
    return [found[name] for name in cut.responses] + [found[""]]


def rest(model: nn.Module, cut: Cut, cached: Sequence[Tensor]) -> Tensor:
    """The logits from what ``frozen_part`` gave: the responses handed to the plug as its
    hooks keep them, then the modules after the cut in order (flattened before the head)."""
    plug = getattr(model, "plug", None)
    if plug is not None:
        plug.new_pass()
        for name, output in zip(cut.responses, cached[:-1]):
            plug._keep(name, None, (), output)
    x = cached[-1]
    for name in cut.order:
        if name == cut.head and x.dim() > 2:
            x = torch.flatten(x, 1)
        x = model.get_submodule(name)(x)
    return x


def split(model: nn.Module, images: Tensor) -> Cut:
    """The cut of a frozen ``model`` (``--freeze backbone``), checked on ``images``: in eval
    mode, the cached part and the rest give the model's own logits."""
    cut = _cut(model)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(images)
            try:
                got: Tensor | None = rest(model, cut, frozen_part(model, cut, images))
            except (RuntimeError, ValueError, TypeError):  # the modules in sequence do not even fit
                got = None
    finally:
        model.train(training)
    scale = float(expected.abs().max().clamp_min(1.0))
    if got is None or got.shape != expected.shape or not torch.allclose(got, expected, rtol=0, atol=1e-4 * scale):
        raise InvalidValue(
            f"--cache-features: {getattr(model, 'arch', type(model).__name__)}'s forward is not its top-level modules "
            f"in sequence after {cut.start!r}, so its frozen part cannot be cached; train without --cache-features"
        )
    return cut
