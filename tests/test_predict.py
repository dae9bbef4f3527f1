"""cnl predict in batches: files, folders, globs and lists; CSV/JSONL rows; unreadable files reported."""

import csv
import json
import os

import pytest
import torch

from cnl.analysis.bench import bench_predict
from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.engine.prediction import predict, predict_batches
from runs import tiny_run_args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    data = generate(root / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40))
    run = root / "run"
    assert main(tiny_run_args(data, run, "resnet18_cnl5")) == 0
    return data, run / "checkpoints" / "best.pt"


def test_inputs_of_every_kind_in_order_with_unreadable_files_reported(trained, tmp_path):
    data, checkpoint = trained
    folder = data / "images" / "001.oval_plain_dot"
    images = sorted(folder.iterdir())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# some images\n{images[0]}\n{broken}\n")
    inputs = [str(images[1]), str(listing), str(data / "images" / "002.*" / "*.jpg"), str(folder)]
    results = predict(checkpoint, inputs, topk=2, device="cpu", batch_size=4, workers=2)
    expected = [images[1], images[0], broken, *sorted((data / "images").glob("002.*/*.jpg")), *images]
    assert [r["image"] for r in results] == [str(p) for p in expected]
    assert "error" in results[2] and "broken.jpg" in results[2]["error"]
    assert all(len(r["predictions"]) == 2 for k, r in enumerate(results) if k != 2)
    one_at_a_time = predict(checkpoint, inputs, topk=2, device="cpu", batch_size=1, workers=0)
    for batched, single in zip(results, one_at_a_time):
        if "predictions" in single:
            assert [p["index"] for p in batched["predictions"]] == [p["index"] for p in single["predictions"]]
            assert batched["predictions"][0]["probability"] == pytest.approx(single["predictions"][0]["probability"])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".CSV"])  # the format by the name's ending, case aside
def test_predictions_written_one_row_per_image(trained, tmp_path, capsys, suffix):
    data, checkpoint = trained
    broken = data / "broken.jpg"
    broken.write_bytes(b"")
    out = tmp_path / f"preds{suffix}"
    assert main(["predict", "--checkpoint", str(checkpoint), str(data / "images"), str(broken), "--topk", "3",
                 "--out", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert f"wrote 19 rows to {out}" in capsys.readouterr().out  # 18 images and the broken file
    if suffix.lower() == ".csv":
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == ["image", "class_1", "probability_1", "class_2", "probability_2", "class_3",
                                 "probability_3", "error"]  # fmt: skip
        assert rows[-1]["image"] == str(broken) and rows[-1]["error"] and not rows[-1]["class_1"]
        assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in rows[:-1])
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 19 and "error" in rows[-1] and len(rows[0]["predictions"]) == 3
    broken.unlink()


def test_bad_inputs_name_what_was_expected(trained, tmp_path, capsys):
    _, checkpoint = trained
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "nothing" / "*.jpg")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--out", "p.xlsx"]) == 2
    assert "expected a .csv or .jsonl file" in capsys.readouterr().err


def test_bench_predict_compares_batches_with_one_image_at_a_time():
    rows = bench_predict("resnet18", img_size=32, batch_size=8, workers=0, count=16, device="cpu")
    assert [r["mode"] for r in rows] == ["one at a time", "batch 8"]
    assert rows[0]["vs_first"] == 1.0 and rows[1]["images_per_s"] > 0


def test_decoding_workers_and_the_model_share_the_cores_then_threads_are_restored(trained):
    data, checkpoint = trained
    before = torch.get_num_threads()
    results = predict_batches(checkpoint, [data / "images"], topk=1, device="cpu", batch_size=2, workers=2)
    first = next(results)
    assert "predictions" in first
    assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) - 2)  # while predicting
    assert len([first, *results]) == 18
    assert torch.get_num_threads() == before


def test_a_batch_normalised_at_once_equals_the_eval_transform_image_by_image(trained):
    """Workers send uint8 crops; the float conversion and ImageNet statistics on the stacked
    batch give exactly the tensors that cnl eval's transform gives one image at a time."""
    from cnl.data import eval_transform, load_image
    from cnl.data.transforms import eval_geometry, normalise

    data, _ = trained
    images = [load_image(p) for p in sorted((data / "images").rglob("*.jpg"))[:5]]
    batched = normalise()(torch.stack([eval_geometry(48)(image) for image in images]))
    assert batched.dtype == torch.float32
    assert torch.equal(batched, torch.stack([eval_transform(48)(image) for image in images]))
