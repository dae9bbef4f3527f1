"""What the modules attend to: the paper's Fig. 3.

One row per query position: the input with the query cell marked, then one heatmap per
response layer (CNL) or NL block, shallow to deep, upsampled and laid over the image,
titled with the layer's name and its receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnl.analysis.receptive_field import has_receptive_fields, receptive_fields
from cnl.data import eval_transform, load_image
from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cnl.errors import InvalidValue, UserError
from cnl.models.plug import Plug, attended, forward_with_attention, name_of, plugged
from cnl.tables import figure_text

Cell = tuple[int, int]  # (row, column) in the query grid


class NothingToShow(UserError, ValueError):
    """The model has no NL or CNL module."""


@dataclass
class Panel:
    """One heatmap of a figure row: the layer, its title, the attention at the layer's resolution."""

    layer: str
    title: str
    heatmap: np.ndarray  # the attention row at the layer's own resolution [H, W]


@dataclass
class AttentionRows:
    """Everything a Fig. 3 needs: the image as seen, the query grid, the queries and their panels."""

    image: np.ndarray  # [S, S, 3] in 0..1, as the model saw it
    grid: tuple[int, int]  # the query grid (rows, columns)
    queries: list[Cell]
    rows: list[list[Panel]]


def as_map(model: torch.nn.Module, layer: str, output: torch.Tensor) -> torch.Tensor:
    """A site's output as ``[B, C, H, W]``, through its layout (channels-last maps, ViT tokens)."""
    return plug_of(model).sites[layer].to_map(output)


def grid_layer(model: torch.nn.Module) -> str:
    """The layer whose grid the query cells are drawn on (our ResNets: the last block, stride
    32; another backbone: the CNL query, else its deepest NL block)."""
    grid = plug_of(model).grid
    assert grid is not None  # a model with modules to show has one
    return grid


def plug_of(model: torch.nn.Module) -> Plug:
    """The model's NL/CNL modules; a model without any is ``NothingToShow``."""
    plug = plugged(model)
    if plug is None or not attended(model):
        raise NothingToShow(f"{name_of(model)} without NL or CNL modules has no attention to show")
    return plug


def record_maps(model: torch.nn.Module, layers: list[str]) -> tuple[dict[str, torch.Tensor], list]:
    """Hooks that keep each named block's output map (first image, ``[C, H, W]``)."""
    maps: dict[str, torch.Tensor] = {}

    def recorder(layer: str):
        def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            maps[layer] = as_map(model, layer, output)[0]

        return record

    return maps, [model.get_submodule(layer).register_forward_hook(recorder(layer)) for layer in dict.fromkeys(layers)]


def layer_facts(model: Any, layer: str, width: int, img_size: int) -> str:
    """A layer's receptive field and stride (torchvision's ResNets), or its stride (``width``:
    its map's width at ``img_size``)."""
    if has_receptive_fields(model):
        return receptive_fields(model)[layer].describe()
    return f"stride {img_size / width:g} px"


def strongest_cells(features: torch.Tensor, count: int) -> list[Cell]:
    """Cells of the deepest feature map with the largest L2 norm (``features [C, H, W]``)."""
    norms = features.norm(dim=0)
    flat = norms.flatten().topk(min(count, norms.numel())).indices.tolist()
    return [(i // norms.shape[1], i % norms.shape[1]) for i in flat]


def map_cell(cell: Cell, grid: tuple[int, int], target: tuple[int, int]) -> int:
    """Index of the position of a ``target``-sized map under the centre of ``cell`` of ``grid``."""
    row = min(int((cell[0] + 0.5) * target[0] / grid[0]), target[0] - 1)
    column = min(int((cell[1] + 0.5) * target[1] / grid[1]), target[1] - 1)
    return row * target[1] + column


@dataclass
class Seen:
    """One image through a model: its input, logits, attention maps and each layer's grid."""

    x: torch.Tensor  # [1, 3, S, S], normalised
    logits: torch.Tensor
    attention: dict[str, torch.Tensor]  # per response (CNL) or NL block: [1, queries, positions]
    maps: dict[str, torch.Tensor]  # each recorded layer's output as [C, H, W]
    layers: list[str]  # the responses or NL blocks, shallow to deep
    query: str | None
    grid_layer: str  # whose grid the query cells are drawn on (see ``grid_layer``)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, int]]:
        return {layer: (int(m.shape[-2]), int(m.shape[-1])) for layer, m in self.maps.items()}

    @property
    def grid(self) -> tuple[int, int]:
        return self.shapes[self.grid_layer]

    def row(self, cell: Cell, layer: str) -> torch.Tensor:
        """The attention of the query cell over ``layer``'s positions (float, flat)."""
        target = self.shapes[self.query] if self.query is not None else self.shapes[layer]
        return self.attention[layer][0, map_cell(cell, self.grid, target)].float()


@torch.no_grad()
def look(model: torch.nn.Module, image_path: str | Path, img_size: int) -> Seen:
    """Run ``image_path`` through ``model`` (eval mode) keeping what a figure needs."""
    plug = plug_of(model)
    layers = list(attended(model))
    model.eval()
    x = eval_transform(img_size)(load_image(image_path)).unsqueeze(0)
    last = grid_layer(model)
    maps, hooks = record_maps(model, [*layers, last, *([plug.query] if plug.query else [])])
    try:
        logits, attention = forward_with_attention(model, x)
    finally:
        for hook in hooks:
            hook.remove()
    return Seen(x, logits, attention, maps, layers, plug.query, last)


@torch.no_grad()
def attention_rows(
    model: Any, image_path: str | Path, img_size: int, queries: list[Cell] | None = None, count: int = 3
) -> AttentionRows:
    """The attention of each query cell over every response (CNL) or NL block's map.

    ``queries`` are cells of the grid of ``grid_layer`` (our ResNets: the stride-32 grid of
    the last stage); None picks the ``count`` cells where its features are strongest.
    """
    seen = look(model, image_path, img_size)
    grid = seen.grid
    if queries is None:
        queries = strongest_cells(seen.maps[seen.grid_layer], count)
    for cell in queries:
        if not (0 <= cell[0] < grid[0] and 0 <= cell[1] < grid[1]):
            raise InvalidValue(f"query cell {cell[0]},{cell[1]} is outside the {grid[0]}x{grid[1]} query grid")
    rows = []
    for cell in queries:
        panels = []
        for layer in seen.layers:
            heatmap = seen.row(cell, layer).reshape(seen.shapes[layer]).numpy()
            facts = layer_facts(model, layer, seen.shapes[layer][1], img_size)
            panels.append(Panel(layer, f"{layer}\n{facts}", heatmap))
        rows.append(panels)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    image = (seen.x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return AttentionRows(image, grid, list(queries), rows)


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")  # formats matplotlib writes, by the file's name


def render(rows: AttentionRows, out: str | Path, dpi: int = 100, title: str | None = None) -> Path:
    """Draw the figure (matplotlib, Agg) to ``out``, in the format its name ends in
    (``FIGURE_SUFFIXES``), under ``title`` when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    size = rows.image.shape[0]
    columns = 1 + len(rows.rows[0])
    # No ticks from the start: matplotlib lays out hidden ticks at every draw all the same.
    figsize = (2.2 * columns, 2.4 * len(rows.rows))
    figure, axes = plt.subplots(
        len(rows.rows), columns, figsize=figsize, squeeze=False, subplot_kw={"xticks": [], "yticks": []}
    )
    cell_h, cell_w = size / rows.grid[0], size / rows.grid[1]
    for r, (cell, panels) in enumerate(zip(rows.queries, rows.rows)):
        axes[r][0].imshow(rows.image)
        axes[r][0].add_patch(
            Rectangle((cell[1] * cell_w, cell[0] * cell_h), cell_w, cell_h, fill=False, ec="red", lw=2)
        )
        axes[r][0].set_title(f"query {cell[0]},{cell[1]}", fontsize=8)
        for c, panel in enumerate(panels, 1):
            upsampled = F.interpolate(torch.from_numpy(panel.heatmap)[None, None], size=(size, size), mode="bilinear")
            axes[r][c].imshow(rows.image)
            axes[r][c].imshow(upsampled[0, 0].numpy(), cmap="jet", alpha=0.5)
            axes[r][c].set_title(panel.title, fontsize=7)
    for axis in axes.flat:
        axis.axis("off")
    if title:
        figure.suptitle(figure_text(title), fontsize=9)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi)
    plt.close(figure)
    return out


def parse_queries(values: list[str] | None) -> list[Cell] | None:
    """``["auto"]`` or None -> None; ``["3,4", "0,1"]`` -> [(3, 4), (0, 1)]."""
    if not values or values == ["auto"]:
        return None
    cells = []
    for value in values:
        try:
            row, column = (int(v) for v in value.split(","))
        except ValueError:
            raise InvalidValue(f"--query takes 'auto' or ROW,COLUMN cells, got {value!r}") from None
        cells.append((row, column))
    return cells
