"""``cnl export``: a trained checkpoint as ONNX, TorchScript, safetensors with a model card,
or the Hugging Face Hub folder that timm reads (``--format hf``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnl.data.catalog import CATALOG
from cnl.engine.records import Summary
from cnl.engine.runfolder import RunFolder
from cnl.errors import InvalidValue
from cnl.tables import Table, markdown_cell

if TYPE_CHECKING:
    import torch

    from cnl.engine.modelinfo import ModelInfo

# The formats cnl export writes; this module loads torch only when it writes one, so that the
# parser takes its choices from here.
FORMATS = ("onnx", "torchscript", "safetensors", "hf")
ONNX_OPSET = 18


def export(checkpoint: str | Path, fmt: str, out: str | Path) -> list[Path]:
    """Write ``checkpoint``'s model to ``out`` in ``fmt``; returns the files written."""
    import torch

    from cnl.engine.modelfile import card_path, load_model_with_info

    if fmt not in FORMATS:
        raise InvalidValue(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, _, info = load_model_with_info(checkpoint)
    if fmt == "hf":
        return export_hub(model, info, checkpoint, out)
    example = torch.randn(2, 3, info.img_size, info.img_size)
    if fmt == "safetensors":
        save_weights(model, out)
        summary = run_summary(checkpoint)
        card = {k: v for k, v in info.to_json().items() if k != "config"}
        card["summary"] = summary.to_json() if summary is not None else None
        card_path(out).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        return [out, card_path(out)]
    if fmt == "torchscript":
        with torch.no_grad():
            torch.jit.trace(model, example).save(str(out))
        return [out]
    write_onnx(model, example, out)
    return [out]


def write_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path) -> None:
    """``model`` as one ONNX file (weights inside) taking ``images`` of any batch size up
    to 1024 and the example's image size, giving ``logits``."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        model, (example,), str(out), input_names=["images"], output_names=["logits"],
        dynamic_shapes={"x": {0: batch}}, opset_version=ONNX_OPSET, dynamo=True, external_data=False,
    )  # fmt: skip


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict as safetensors (which stores contiguous tensors only), with the
    permissions the umask gives a new file (safetensors' writer makes it private, 0600)."""
    from safetensors.torch import save_file

    from cnl.engine.checkpoint import current_umask

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.chmod(0o666 & ~current_umask())


def run_of(checkpoint: str | Path) -> RunFolder | None:
    """The run folder a checkpoint file belongs to (RUN/checkpoints/best.pt), if it is in one."""
    run = RunFolder.of_checkpoint(checkpoint)
    return run if Path(checkpoint).is_file() and Path(checkpoint).parent == run.checkpoints else None


def run_summary(checkpoint: str | Path) -> Summary | None:
    """The ``summary.json`` of the run a checkpoint belongs to, if any."""
    run = run_of(checkpoint)
    return run.read_summary() if run is not None else None


def run_evaluation(checkpoint: str | Path) -> dict[str, Any] | None:
    """``RUN/eval/evaluation.json`` (``cnl eval --report RUN/eval``) of a checkpoint's run, if any."""
    run = run_of(checkpoint)
    return run.read_evaluation() if run is not None else None


def export_hub(model: torch.nn.Module, info: ModelInfo, checkpoint: str | Path, out: Path) -> list[Path]:
    """``out/config.json``, ``out/model.safetensors`` and ``out/README.md``: a folder to upload as it is."""
    from cnl.engine.hub import CARD, CONFIG, WEIGHTS, hub_config
    from cnl.models.backbones import head_name

    out.mkdir(parents=True, exist_ok=True)
    summary = run_summary(checkpoint)
    config = hub_config(info, head_name(model), summary)
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_weights(model, out / WEIGHTS)
    evaluation = run_evaluation(checkpoint)
    card = model_card(config, out.name, Path(str(checkpoint)).name, evaluation)
    (out / CARD).write_text(card, encoding="utf-8")
    return [out / CONFIG, out / WEIGHTS, out / CARD]


def evaluated_file(evaluation: dict[str, Any]) -> str:
    """The file name of the checkpoint ``cnl eval`` evaluated."""
    return Path(str(evaluation.get("checkpoint", "?"))).name


def evaluated(evaluation: dict[str, Any] | None) -> str:
    """The card's line for ``cnl eval``'s figures, their views said, never mixed with training's."""
    if evaluation is None:
        return ""
    crop, resize = evaluation["eval_crop"], evaluation["eval_resize"]
    views = {
        "none": f"one centre crop of {crop} px from {resize} px",
        "flip": f"test-time augmentation: the centre crop of {crop} px from {resize} px and its mirror image",
        "flip+crops": f"test-time augmentation: five crops of {crop} px from {resize} px and their mirror images",
    }[evaluation["tta"]]
    checkpoint = markdown_cell(evaluated_file(evaluation))
    table = Table.of(
        ["top-1", "top-5", "views"], [[f"{evaluation['top1']:.2f}", f"{evaluation['top5']:.2f}", evaluation["tta"]]]
    )
    return f"\n\n`cnl eval --tta {evaluation['tta']}` of {checkpoint} ({views}):\n\n{table.markdown()}"


def card_metadata(
    name: str, dataset: str, summary: Summary | None, selection: str, evaluation: dict[str, Any] | None
) -> dict[str, Any]:
    """The card's front matter, as the Hub reads it: timm as the library, the task, the
    licence, the dataset, and a ``model-index`` with the test-split figures: training's best
    epoch and, as a result of its own, ``cnl eval``'s with its views."""
    record = CATALOG.get(dataset)
    title = record.title if record is not None and record.fetchable else dataset  # the user's own: by its kind

    def result(top1: float, top5: float, how: str) -> dict[str, Any]:
        return {
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": title, "type": dataset, "split": "test"},
            "metrics": [
                {"type": "accuracy", "name": f"top-1 accuracy ({how})", "value": round(float(top1), 2)},
                {"type": "accuracy", "name": f"top-5 accuracy ({how})", "value": round(float(top5), 2)},
            ],
        }

    results = []
    if summary is not None and summary.best_top1 is not None and summary.best_top5 is not None:
        how = f"best epoch, {summary.best_epoch} of {summary.epochs}, chosen {selection}; one crop"
        results.append(result(summary.best_top1, summary.best_top5, how))
    if evaluation is not None:
        views = f"cnl eval --tta {evaluation['tta']} of {evaluated_file(evaluation)}"
        results.append(result(evaluation["top1"], evaluation["top5"], views))
    return {
        "library_name": "timm",
        "pipeline_tag": "image-classification",
        "license": "mit",
        "tags": ["image-classification", "timm", "cnl", "fine-grained"],
        "datasets": [title],
        **({"model-index": [{"name": name, "results": results}]} if results else {}),
    }


def model_card(config: dict[str, Any], name: str, source: str, evaluation: dict[str, Any] | None = None) -> str:
    """The Hub's README.md: what the model is, how well it does and how that was chosen
    (training's single-crop figures and, apart, ``cnl eval``'s with the views it took),
    its recipe and provenance, licence and citation."""
    cnl = config["cnl"]
    recipe = cnl["config"]
    summary = Summary.checked(cnl["summary"], "config.json: cnl.summary") if cnl["summary"] else None
    chosen = (
        "on the validation split carved from the training images (--val-split)"
        if recipe.get("val_split")
        else "on the test split itself, as the paper does: an optimistic figure"
    )
    if summary is not None and summary.best_top1 is not None and summary.best_top5 is not None:
        best = [f"{summary.best_top1:.2f}", f"{summary.best_top5:.2f}", f"{summary.best_epoch} of {summary.epochs}"]
        results = (
            f"{Table.of(['top-1', 'top-5', 'epoch'], [best]).markdown()}\n\nTest-split accuracy (%) of the run's "
            f"best epoch (its best.pt), chosen {chosen}. These weights come from its {source}."
        )
    else:
        results = f"No results were recorded with {source} (no summary.json beside its run)."
    results += evaluated(evaluation)
    provenance = summary.provenance if summary is not None else {}
    dataset = summary.dataset if summary is not None else recipe.get("dataset", "unknown")  # the layout read
    settings = "\n".join(f"{key}: {json.dumps(value)}" for key, value in recipe.items())
    selection = "on the validation split" if recipe.get("val_split") else "on the test split (optimistic)"
    metadata = card_metadata(name, dataset, summary, selection, evaluation)
    return f"""---
{yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)}---

# {name}: {cnl["model"]} ({config["num_classes"]} classes)

A cross-layer non-local (CNL) network for fine-grained recognition, trained with
[cnl](https://arxiv.org/abs/2005.09153), {config["pretrained_cfg"]["input_size"][1]} px input.

```python
import cnl, timm
model = timm.create_model("hf-hub:ORG/{name}", pretrained=True)   # or "local-dir:PATH"
model, classes = cnl.load_model("hf-hub:ORG/{name}")
```

## Dataset

{dataset} (`{recipe.get("data_root", "")}`), {config["num_classes"]} classes.

## Results

{results}

## Recipe

```yaml
{settings}
```

## Provenance

{json.dumps(provenance, indent=2) if provenance else "Not recorded."}

## License

MIT (the cnl code). The weights inherit the terms of the dataset they were trained on and
of any pretrained backbone.

## Citation

Ye, Hu, Liu, Xia, Lyu, Liu. Associating Multi-Scale Receptive Fields for Fine-Grained
Recognition. ICIP 2020. arXiv:2005.09153.
"""
