"""What the modules attend to: the paper's Fig. 3.

One row per query position: the input with the query cell marked, then one heatmap per
response layer (CNL) or NL block, shallow to deep, upsampled and laid over the image,
titled with the layer's name and its receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cnl.analysis.receptive_field import receptive_fields
from cnl.data import eval_transform, load_image
from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cnl.models import FineGrainedResNet

Cell = tuple[int, int]  # (row, column) in the query grid


class NothingToShow(ValueError):
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


def _layer_shapes(model: FineGrainedResNet, layers: list[str]) -> tuple[dict[str, tuple[int, int]], list]:
    """Hooks that record the spatial size of each named block's output."""
    shapes: dict[str, tuple[int, int]] = {}

    def recorder(layer: str):
        def record(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            shapes[layer] = (int(output.shape[-2]), int(output.shape[-1]))

        return record

    hooks = []
    for layer in layers:
        stage, index = layer.split(".")
        hooks.append(getattr(model, stage)[int(index)].register_forward_hook(recorder(layer)))
    return shapes, hooks


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


@torch.no_grad()
def attention_rows(
    model: FineGrainedResNet, image_path: str | Path, img_size: int, queries: list[Cell] | None = None, count: int = 3
) -> AttentionRows:
    """The attention of each query cell over every response (CNL) or NL block's map.

    ``queries`` are cells of the stride-32 grid of the last stage; None picks the
    ``count`` cells where the final features are strongest.
    """
    layers = list(model.responses) + list(model.nl_layers)
    if not layers:
        raise NothingToShow(f"{model.arch} without NL or CNL modules has no attention to show")
    model.eval()
    x = eval_transform(img_size)(load_image(image_path)).unsqueeze(0)
    last = f"layer4.{len(model.layer4) - 1}"
    shapes, hooks = _layer_shapes(model, [*layers, last, *([model.query] if model.query else [])])
    try:
        features, attention = model.forward_features(x, return_attention=True)
    finally:
        for hook in hooks:
            hook.remove()
    grid = (int(features.shape[-2]), int(features.shape[-1]))
    if queries is None:
        queries = strongest_cells(features[0], count)
    for cell in queries:
        if not (0 <= cell[0] < grid[0] and 0 <= cell[1] < grid[1]):
            raise ValueError(f"query cell {cell[0]},{cell[1]} is outside the {grid[0]}x{grid[1]} query grid")
    fields = receptive_fields(model)
    query_grid = shapes[model.query] if model.query is not None else grid
    rows = []
    for cell in queries:
        panels = []
        for layer in sorted(layers, key=model.layer_order.index):
            position = map_cell(cell, grid, query_grid if model.query is not None else shapes[layer])
            heatmap = attention[layer][0, position].float().reshape(shapes[layer]).numpy()
            panels.append(Panel(layer, f"{layer}\n{fields[layer].describe()}", heatmap))
        rows.append(panels)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    image = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    return AttentionRows(image, grid, list(queries), rows)


def render(rows: AttentionRows, out: str | Path, dpi: int = 100) -> Path:
    """Draw the figure (matplotlib, Agg) to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    size = rows.image.shape[0]
    columns = 1 + len(rows.rows[0])
    figure, axes = plt.subplots(len(rows.rows), columns, figsize=(2.2 * columns, 2.4 * len(rows.rows)), squeeze=False)
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
            raise ValueError(f"--query takes 'auto' or ROW,COLUMN cells, got {value!r}") from None
        cells.append((row, column))
    return cells
