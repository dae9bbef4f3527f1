"""cnl eval --report: per-class accuracy and the most confused classes; cnl report shows them."""

import csv
import json

import numpy as np
from PIL import Image

from cnl.analysis.evidence import most_confused, write_evidence
from cnl.analysis.report import build_report
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from runs import tiny_run_args


def test_per_class_rows_and_most_confused_pairs(tmp_path):
    confusion = [[5, 1, 0], [3, 2, 0], [0, 0, 4]]  # [true][predicted]
    assert most_confused(np.array(confusion), 5) == [(1, 0, 3), (0, 1, 1)]
    csv_path, png = write_evidence(confusion, ["a", "b", "c"], tmp_path)
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["class"], r["images"], r["correct"], r["top1"]) for r in rows] == [
        ("a", "6", "5", "83.33"), ("b", "5", "2", "40.00"), ("c", "4", "4", "100.00"),
    ]  # fmt: skip
    assert (rows[1]["most_confused_with"], rows[1]["times"]) == ("a", "3") and rows[2]["most_confused_with"] == ""
    assert Image.open(png).size[0] > 200


def test_eval_report_agrees_with_eval_and_appears_in_cnl_report(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=4, train_per_class=4, test_per_class=3, image_size=40))
    run = tmp_path / "run"
    assert main(tiny_run_args(data, run)) == 0
    capsys.readouterr()
    checkpoint = run / "checkpoints" / "best.pt"
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", "--report", str(run / "eval")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader((run / "eval" / "per_class.csv").open()))
    assert sum(int(r["images"]) for r in rows) == result["count"] == 12
    assert 100 * sum(int(r["correct"]) for r in rows) / 12 == result["top1"]
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["per_class_top1"]
    assert [float(r["top1"]) for r in rows] == [round(v, 2) for v in logged]
    # predictions.csv: training wrote the best epoch's, eval --report the same of best.pt, image by image.
    trained, evaluated = (list(csv.DictReader((folder / "predictions.csv").open())) for folder in (run, run / "eval"))
    assert trained == evaluated and [r["split"] for r in trained] == ["test"] * 12
    assert list(trained[0]) == ["split", "index", "image", "label", "label_name", "predicted", "predicted_name",
                                "correct", "top5", "p_label"]  # fmt: skip
    assert 100 * sum(r["correct"] == "1" for r in trained) / 12 == result["top1"]
    top5 = [list(map(int, r["top5"].split())) for r in trained]
    assert all(len(t) == 4 and t[0] == int(r["predicted"]) for t, r in zip(top5, trained))  # 4 classes: top-4
    assert all(r["image"].endswith(".jpg") and 0 < float(r["p_label"]) < 1 for r in trained)
    page = build_report([run], tmp_path / "report", images=1).read_text()
    assert "least accurate classes" in page and "confusion_run.png" in page
    assert (tmp_path / "report" / "confusion_run.png").is_file()
