"""``cnl report``: an HTML page and a Markdown twin with curves, the ablation and attention figures."""

from __future__ import annotations

import csv
import html
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from cnl.analysis.ablation import ablation_blocks, compared, paired_table, verdicts
from cnl.analysis.evidence import CONFUSION, PER_CLASS
from cnl.engine.config import stored_config
from cnl.engine.modelfile import load_model_with_info
from cnl.engine.runfolder import RunFolder, read_json
from cnl.errors import DataError, MissingFile
from cnl.models.plug import attended
from cnl.tables import Block, Table, figure_text, from_csv_cell, markdown

EVIDENCE_FOLDER = "eval"  # cnl eval --checkpoint RUN/checkpoints/best.pt --report RUN/eval
CLASSES_SHOWN = 12  # the verdict's attention figures: one test image of each of the first classes


class Section(NamedTuple):
    """A part of the report: its title, its paragraphs and tables, its figures."""

    title: str
    blocks: list[Block]
    figures: list[Path]


def expand_runs(paths: list[str | Path]) -> tuple[list[tuple[str, Path]], list[dict[str, Any]], dict | None]:
    """``(label, folder)`` of each run (a folder with metrics.jsonl; an ablation folder stands
    for all its runs, of every seed), the ablation's rows and its record."""
    runs, rows, ablation = [], [], None
    for path in map(Path, paths):
        if (path / "ablation.json").exists():
            ablation = read_json(path / "ablation.json")
            if not isinstance(ablation, dict) or not isinstance(ablation.get("rows"), list):
                raise DataError(f"{path / 'ablation.json'} is damaged: no list of rows")
            rows += ablation["rows"]
            runs += [(run, path / run) for row in ablation["rows"] for run in row.get("runs", [row["model"]])]
        elif RunFolder(path).metrics.exists():
            runs.append((path.name, path))
        else:
            raise MissingFile(f"{path} holds neither metrics.jsonl (a run) nor ablation.json (an ablation)")
    return runs, rows, ablation


def plot_curves(runs: list[tuple[str, Path]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Every log is read first: a damaged one stops the report before a figure opens.
    logs = [(figure_text(label), RunFolder(run).read_metrics()) for label, run in runs]
    figure, (loss_axis, top1_axis) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, metrics in logs:
        epochs = [m.epoch for m in metrics]
        line = loss_axis.plot(epochs, [m.train_loss for m in metrics], label=f"{label} train")[0]
        loss_axis.plot(epochs, [m.test_loss for m in metrics], "--", color=line.get_color(), label=f"{label} test")
        top1_axis.plot(epochs, [m.top1 for m in metrics], color=line.get_color(), label=label)
    loss_axis.set(xlabel="epoch", ylabel="loss", title="loss")
    top1_axis.set(xlabel="epoch", ylabel="top-1 (%)", title="test top-1")
    loss_axis.legend(fontsize=7)
    top1_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def plot_bars(rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    names = [figure_text(r["model"]) for r in rows]
    errors = [row.get("top1_std") or 0.0 for row in rows]
    colours = ["#888888", "#4c72b0", "#dd8452", "#55a868"][: len(rows)] or None
    axis.bar(names, [r["top1"] for r in rows], yerr=errors, capsize=4, color=colours)
    for k, row in enumerate(rows):
        seeds = [run["top1"] for run in row.get("per_seed", [])]
        if len(seeds) > 1:  # each seed's run, beside the mean it makes
            label = "each seed" if k == 0 else None
            axis.plot([k + 0.25] * len(seeds), seeds, "o", color="black", markersize=4, label=label)
        axis.text(k, row["top1"] + errors[k], f"{row['top1']:.1f}", ha="center", va="bottom", fontsize=8)
    if any(len(row.get("per_seed", [])) > 1 for row in rows):
        axis.legend(fontsize=7, loc="lower right")
    spread = " (mean ± sd over seeds, and each seed)" if any(errors) else ""
    axis.set(ylabel="top-1 (%)", title=f"ablation: best test top-1{spread}")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def attention_figures(label: str, run: Path, out_dir: Path, images: int) -> list[Path]:
    """Fig. 3 for the first ``images`` test images of a run with NL or CNL modules, and the
    interactive explorer page of the same images."""
    from cnl.analysis.attention import attention_rows, render
    from cnl.analysis.explorer import write_explorer
    from cnl.data import build_dataset

    checkpoint = RunFolder(run).best
    if not checkpoint.exists():
        return []
    model, classes, info = load_model_with_info(checkpoint)
    config = stored_config(info.config)
    if not attended(model):
        return []
    test = build_dataset(config.dataset, config.data_root, "test")
    step = max(1, len(test) // images)
    positions = range(0, step * images, step)
    chosen = [test.samples[k][0] for k in positions]
    name = label.replace("/", "_")
    paths = []
    for k, image_path in zip(positions, chosen):
        rows = attention_rows(model, image_path, config.img_size, count=2)
        paths.append(render(rows, out_dir / f"attention_{name}_{k}.png"))
    title = f"{label} ({info.model}): what the modules attend to"
    paths.append(write_explorer(model, classes, chosen, config.img_size, out_dir / f"explorer_{name}.html", title))
    return paths


def verdict_section(rows: list[dict[str, Any]]) -> Section | None:
    """The report's opening: one verdict per model compared with the first, then the per-seed
    points behind it (None without a comparison)."""
    if not compared(rows):
        return None
    return Section("Verdict", [verdicts(rows), paired_table(rows)], [])


def test_predictions(run: Path) -> dict[str, str]:
    """Each test image's predicted class name, from the run's predictions.csv ({} without one)."""
    path = RunFolder(run).predictions
    if not path.exists():
        return {}
    with open(path, encoding="utf-8", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] == "test"]
    return {row["image"]: from_csv_cell(row["predicted_name"]) for row in rows}


def class_attention(label: str, run: Path, out_dir: Path) -> tuple[str, list[Path]]:
    """Fig. 3 on the first test image of each class (up to ``CLASSES_SHOWN``), each titled with
    its class and the run's prediction; ("", []) for a run without NL or CNL modules."""
    from cnl.analysis.attention import attention_rows, render
    from cnl.data import build_dataset

    checkpoint = RunFolder(run).best
    if not checkpoint.exists():
        return "", []
    model, classes, info = load_model_with_info(checkpoint)
    if not attended(model):
        return "", []
    config = stored_config(info.config)
    test = build_dataset(config.dataset, config.data_root, "test")
    first: dict[int, Path] = {}
    for path, target in test.samples:
        first.setdefault(target, path)
    predicted = test_predictions(run)
    shown = sorted(first)[:CLASSES_SHOWN]
    figures = []
    for target in shown:
        said = predicted.get(str(first[target]))
        title = f"{classes[target]}" + (f": predicted {said}" if said is not None else "")
        rows = attention_rows(model, first[target], config.img_size, count=1)
        figures.append(render(rows, out_dir / f"class_{label.replace('/', '_')}_{target}.png", title=title))
    some = f"the first {len(shown)} of {len(classes)} classes" if len(shown) < len(classes) else "every class"
    text = (
        f"{label} ({info.model}), on the first test image of {some}: the query cell where the deepest features "
        "are strongest (red) and what it attends to in each layer, shallow to deep; titled with the class and "
        "the run's prediction."
    )
    return text, figures


def class_attention_section(rows: list[dict[str, Any]], runs: dict[str, Path], out_dir: Path) -> list[Section]:
    """Class by class attention of the last model with modules (its first seed's run)."""
    for row in reversed(rows):
        label = row.get("runs", [row["model"]])[0]
        text, figures = class_attention(label, runs[label], out_dir)
        if figures:
            return [Section("What the modules attend to, class by class", [text], figures)]
    return []


def class_evidence(label: str, run: Path, out_dir: Path, worst: int = 10) -> Section | None:
    """The least accurate classes and the confusion figure of ``RUN/eval`` (``cnl eval --report``)."""
    folder = run / EVIDENCE_FOLDER
    if not (folder / PER_CLASS).exists():
        return None
    with open(folder / PER_CLASS, encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row["top1"]]
    rows.sort(key=lambda row: float(row["top1"]))
    table = Table.of(
        ["class", "test images", "top-1", "most confused with"],
        [
            [from_csv_cell(r["class"]), r["images"], f"{float(r['top1']):.1f}",
             f"{from_csv_cell(r['most_confused_with'])} ({r['times']})"]
            for r in rows[:worst]
        ],
    )  # fmt: skip
    figure = out_dir / f"confusion_{label.replace('/', '_')}.png"
    shutil.copyfile(folder / CONFUSION, figure)
    return Section(f"Run {label}: least accurate classes", [table], [figure])


def build_report(paths: list[str | Path], out: str | Path, images: int = 2) -> Path:
    """Write ``out/index.html`` and ``out/index.md``; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, rows, ablation = expand_runs(paths)
    sections: list[Section] = []
    opening = verdict_section(rows)  # rows come from ablation.json alone
    if opening is not None:
        sections.append(opening)
        sections += class_attention_section(rows, dict(runs), out)
    curves = plot_curves(runs, out / "curves.png")
    sections.append(Section("Training curves", ["Loss (train solid, test dashed) and test top-1 per epoch."], [curves]))
    if rows and ablation is not None:
        # The per-image tests and verdicts open the report already.
        blocks = ablation_blocks(rows, stored_config(ablation["config"]), ablation.get("seeds"), tests=opening is None)
        sections.append(Section("Ablation", blocks, [plot_bars(rows, out / "ablation.png")]))
    for label, run in runs:
        summary = RunFolder(run).read_summary()
        figures = attention_figures(label, run, out, images)
        fields = summary.to_json() if summary is not None else {}
        text = ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items() if k != "provenance"
        )
        sections.append(Section(f"Run {label}", [text], figures))
        evidence = class_evidence(label, run, out)
        if evidence is not None:
            sections.append(evidence)
    (out / "index.md").write_text(_markdown(sections))
    (out / "index.html").write_text(_html(sections))
    return out / "index.html"


def _markdown(sections: list[Section]) -> str:
    parts = ["# cnl report", ""]
    for title, blocks, figures in sections:
        parts += [f"## {title}", "", markdown(blocks), ""] + [_markdown_item(f) for f in figures] + [""]
    return "\n".join(parts)


def _markdown_item(figure: Path) -> str:
    if figure.suffix == ".html":
        return f"[Attention explorer (interactive, works offline)]({figure.name})"
    return f"![{figure.stem}]({figure.name})"


def _html_item(figure: Path) -> str:
    if figure.suffix == ".html":
        link = f"<a href='{html.escape(figure.name)}'>Attention explorer</a>"
        return f"<p>{link}: click any query cell of the test images</p>"
    return f"<img src='{html.escape(figure.name)}' alt='{html.escape(figure.stem)}'>"


def _blocks_html(blocks: list[Block]) -> str:
    """Paragraphs (a ``<p>`` a line) and tables, in order."""
    return "".join(
        block.html()
        if isinstance(block, Table)
        else "".join(f"<p>{html.escape(line)}</p>" for line in block.splitlines() if line.strip())
        for block in blocks
    )


def _html(sections: list[Section]) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 12px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}p,h2{overflow-wrap:anywhere}"
        ".wide{overflow-x:auto;max-width:100%}"  # a wide table scrolls inside its box on a phone
    )
    viewport = "<meta name='viewport' content='width=device-width, initial-scale=1'>"
    head = f"<head><meta charset='utf-8'>{viewport}<title>cnl report</title><style>{style}</style></head>"
    parts = [f"<!doctype html><html>{head}<body>",
             "<h1>cnl report</h1>"]  # fmt: skip
    for title, blocks, figures in sections:
        parts += [f"<h2>{html.escape(title)}</h2>", _blocks_html(blocks)]
        parts += [_html_item(f) for f in figures]
    parts.append("</body></html>")
    return "\n".join(parts)
