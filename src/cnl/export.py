"""``cnl export``: a trained checkpoint as ONNX, TorchScript, or safetensors with a model card."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cnl.engine.checkpoint import card_path, load_model_with_info
from cnl.errors import InvalidValue

FORMATS = ("onnx", "torchscript", "safetensors")
ONNX_OPSET = 18


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> list[Path]:
    """Write ``checkpoint``'s model to ``out`` in ``fmt``; returns the files written."""
    if fmt not in FORMATS:
        raise InvalidValue(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, _, info = load_model_with_info(checkpoint)
    example = torch.randn(2, 3, info["img_size"], info["img_size"])
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
        summary_path = Path(checkpoint).parent.parent / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        card = {**{k: v for k, v in info.items() if k != "config"}, "summary": summary}
        card_path(out).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        return [out, card_path(out)]
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(out))
        return [out]
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model, (example,), str(out), input_names=["images"], output_names=["logits"],
        dynamic_shapes={"x": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True, external_data=False,
    )  # fmt: skip
    return [out]
