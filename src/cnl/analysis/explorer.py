"""``cnl attention --html``: one self-contained page to explore what the modules attend to.

Per image: the image as the model saw it with its query grid, the top-5 predictions and,
for the query cell under the pointer (or the one clicked), the attention map of every
response layer (CNL) or NL block, laid over the image. Everything is embedded (images as
JPEG, maps as 8-bit values with one float scale each, a few kB of plain JavaScript), so
the page works offline, from a mail attachment as from a disk.

Storage: a map row ``a`` (one query cell, one layer) is kept as ``round(255 * a / max(a))``
with ``max(a)`` as its scale, so a value is known to within ``max(a) / 510``. A
ResNet-50 at 448 has 196 query cells and 2 x 3136 + 3 x 784 response positions: 1.7 MB per
image, 2.3 MB in base64.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnl.analysis.attention import layer_facts, look
from cnl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from cnl.models.plug import name_of

TOPK = 5
JPEG_QUALITY = 90


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _jpeg(x: torch.Tensor) -> str:
    """The normalised input ``[3, S, S]`` back to the image the model saw, as base64 JPEG."""
    from PIL import Image

    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return _b64(buffer.getvalue())


def quantise(rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``rows [cells, N]`` (non-negative) -> uint8 values and a float32 scale per row."""
    scales = rows.amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    values = (rows / scales[:, None] * 255).round().clamp(0, 255).to(torch.uint8)
    return values.numpy(), scales.float().numpy()


@torch.no_grad()
def explore_image(model: Any, classes: list[str], path: str | Path, img_size: int) -> dict[str, Any]:
    """Everything the page needs for one image: pixels, grid, predictions, quantised maps."""
    seen = look(model, path, img_size)
    cells = [(i, j) for i in range(seen.grid[0]) for j in range(seen.grid[1])]
    top = seen.logits.float().softmax(dim=1)[0].topk(min(TOPK, len(classes)))
    entries = []
    for layer in seen.layers:
        values, scales = quantise(torch.stack([seen.row(cell, layer) for cell in cells]))
        entries.append(
            {
                "name": layer,
                "detail": layer_facts(model, layer, seen.shapes[layer][1], img_size),
                "shape": list(seen.shapes[layer]),
                "values": _b64(values.tobytes()),
                "scales": _b64(scales.astype("<f4").tobytes()),
            }
        )
    return {
        "name": Path(path).name,
        "image": _jpeg(seen.x[0]),
        "grid": list(seen.grid),
        "predictions": [[classes[i], p] for p, i in zip(top.values.tolist(), top.indices.tolist())],
        "layers": entries,
    }


def colormap() -> list[list[int]]:
    """inferno as 256 RGB triples (matplotlib's), one per 8-bit value: all 256 differ (two of
    viridis's coincide at 8 bits), so a shown pixel gives back its value."""
    from matplotlib import colormaps

    table = (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(int)
    return table.tolist()


def write_explorer(
    model: Any, classes: list[str], images: Sequence[str | Path], img_size: int, out: str | Path, title: str = ""
) -> Path:
    """Write the page for ``images`` to ``out``; returns its path. A model without NL or CNL
    modules raises ``NothingToShow`` (from ``look``)."""
    data = {
        "model": name_of(model),
        "img_size": img_size,
        "lut": colormap(),
        "images": [explore_image(model, classes, path, img_size) for path in images],
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = PAGE.replace("{{title}}", html.escape(title or f"{name_of(model)}: what the modules attend to"))
    # "</" cannot end the script element early: JSON keeps it as "<\/".
    page = page.replace("{{data}}", json.dumps(data, separators=(",", ":")).replace("</", "<\\/"))
    out.write_text(page, encoding="utf-8")
    return out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body{font-family:sans-serif;margin:0 auto;padding:12px;max-width:1200px;box-sizing:border-box}
*,*:before,*:after{box-sizing:inherit}
h1{font-size:1.3em;overflow-wrap:anywhere}
.image{border-top:1px solid #ccc;padding:12px 0}
.row{display:flex;flex-wrap:wrap;gap:12px}
.query{flex:0 1 320px;min-width:0}
.query canvas{width:100%;height:auto;cursor:crosshair;display:block}
.maps{flex:1 1 320px;display:flex;flex-wrap:wrap;gap:8px;min-width:0}
.panel{flex:0 1 170px;min-width:0}
.stack{position:relative;width:100%}
.stack img{width:100%;display:block}
.stack canvas{position:absolute;left:0;top:0;width:100%;height:100%;opacity:.65}
.label{font-size:.8em;overflow-wrap:anywhere}
ol{padding-left:1.4em;margin:.4em 0;font-size:.9em;overflow-wrap:anywhere}
.controls{font-size:.9em;margin:.5em 0}
</style></head><body>
<h1>{{title}}</h1>
<p class="controls"><label><input type="checkbox" id="shared"> one colour scale for all maps of a query
cell (else each map to its own maximum)</label>. Hover over the image to move the query cell; click to keep it.</p>
<div id="images"></div>
<script id="data" type="application/json">{{data}}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
function bytes(b64) { const s = atob(b64), out = new Uint8Array(s.length);
  for (let k = 0; k < s.length; k++) out[k] = s.charCodeAt(k); return out; }
const explorer = {lut: DATA.lut, images: [], shared: false};
window.cnlExplorer = explorer;
function el(tag, attrs, parent) { const e = document.createElement(tag);
  Object.assign(e, attrs || {}); if (parent) parent.appendChild(e); return e; }
DATA.images.forEach((item, index) => {
  const view = {item, cell: [0, 0], pinned: false, maps: []};
  view.layers = item.layers.map(l => ({...l, values: bytes(l.values),
    scales: new Float32Array(bytes(l.scales).buffer)}));
  const section = el("section", {className: "image"}, document.getElementById("images"));
  el("h2", {textContent: item.name, className: "label"}, section);
  const row = el("div", {className: "row"}, section);
  const left = el("div", {className: "query"}, row);
  const picture = el("img", {src: "data:image/jpeg;base64," + item.image, alt: item.name});
  const canvas = el("canvas", {width: DATA.img_size, height: DATA.img_size}, left);
  view.canvas = canvas; view.picture = picture;
  const list = el("ol", {}, left);
  item.predictions.forEach(([name, p]) => el("li", {textContent: name + " " + p.toFixed(3)}, list));
  const maps = el("div", {className: "maps"}, row);
  view.layers.forEach(layer => {
    const panel = el("div", {className: "panel"}, maps);
    const stack = el("div", {className: "stack"}, panel);
    el("img", {src: picture.src, alt: layer.name}, stack);
    const heat = el("canvas", {width: layer.shape[1], height: layer.shape[0], className: "map"}, stack);
    heat.dataset.layer = layer.name;
    el("div", {className: "label", textContent: layer.name + " (" + layer.detail + ")"}, panel);
    view.maps.push(heat);
  });
  function cellAt(event) { const r = canvas.getBoundingClientRect();
    const i = Math.floor((event.clientY - r.top) / r.height * item.grid[0]);
    const j = Math.floor((event.clientX - r.left) / r.width * item.grid[1]);
    return [Math.min(Math.max(i, 0), item.grid[0] - 1), Math.min(Math.max(j, 0), item.grid[1] - 1)]; }
  canvas.addEventListener("mousemove", e => { if (!view.pinned) show(index, ...cellAt(e)); });
  canvas.addEventListener("click", e => { view.pinned = true; show(index, ...cellAt(e)); });
  picture.onload = () => show(index, ...view.cell);
  explorer.images.push(view);
});
function show(index, i, j) {
  const view = explorer.images[index], item = view.item, cell = i * item.grid[1] + j;
  view.cell = [i, j];
  const ctx = view.canvas.getContext("2d"), s = DATA.img_size;
  ctx.drawImage(view.picture, 0, 0, s, s);
  const h = s / item.grid[0], w = s / item.grid[1];
  ctx.strokeStyle = "rgba(255,255,255,.35)"; ctx.lineWidth = 1;
  for (let k = 1; k < item.grid[0]; k++) { ctx.beginPath(); ctx.moveTo(0, k * h); ctx.lineTo(s, k * h); ctx.stroke(); }
  for (let k = 1; k < item.grid[1]; k++) { ctx.beginPath(); ctx.moveTo(k * w, 0); ctx.lineTo(k * w, s); ctx.stroke(); }
  ctx.strokeStyle = "red"; ctx.lineWidth = 3; ctx.strokeRect(j * w, i * h, w, h);
  const top = Math.max(...view.layers.map(l => l.scales[cell]));
  view.layers.forEach((layer, k) => {
    const n = layer.shape[0] * layer.shape[1], heat = view.maps[k];
    const factor = explorer.shared ? layer.scales[cell] / top : 1;
    const image = heat.getContext("2d").createImageData(layer.shape[1], layer.shape[0]);
    for (let p = 0; p < n; p++) {
      const v = Math.round(layer.values[cell * n + p] * factor), rgb = DATA.lut[v];
      image.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * p);
    }
    heat.getContext("2d").putImageData(image, 0, 0);
  });
}
explorer.show = show;
document.getElementById("shared").addEventListener("change", e => {
  explorer.shared = e.target.checked; explorer.images.forEach((v, k) => show(k, ...v.cell)); });
</script></body></html>
"""
