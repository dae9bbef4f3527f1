"""A run's records (cnl.engine.records): summary.json and metrics.jsonl read as typed records
and written byte for byte as before, old files read, and any damage one line naming the file
and the field.

tests/fixtures/run_records holds the records of two 2-epoch runs written by the trainer
before the records were types (commit 5530f24): ``plain`` (selected on the test split) and
``val`` (``--val-split``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnl.analysis.ablation import collect
from cnl.cli import main
from cnl.engine.config import TrainConfig
from cnl.engine.records import EpochRecord, Summary
from cnl.engine.runfolder import RunFolder
from cnl.errors import DataError
from cnl.export import card_metadata

RECORDS = Path(__file__).parent / "fixtures" / "run_records"
RUNS = ("plain", "val")

# summary.json as the first trainer wrote it (a6b105c): no selection, batch or provenance.
FIRST_SUMMARY = {
    "model": "resnet18_cnl5", "dataset": "cub", "classes": 3, "epochs": 2, "best_top1": 40.0, "best_top5": 100.0,
    "best_epoch": 2, "final_top1": 40.0, "final_top5": 100.0, "params": 11355203, "train_images_per_s": 98.5,
    "world_size": 1, "skipped_images": 0,
}  # fmt: skip


@pytest.mark.parametrize("run", RUNS)
def test_records_written_before_they_were_types_are_written_again_byte_for_byte(run, tmp_path):
    folder = RunFolder(tmp_path)
    summary = RunFolder(RECORDS / run).read_summary()
    assert summary is not None
    folder.write_summary(summary)
    for record in RunFolder(RECORDS / run).read_metrics():
        folder.append_epoch(record)
    assert folder.summary.read_bytes() == (RECORDS / run / "summary.json").read_bytes()
    assert folder.metrics.read_bytes() == (RECORDS / run / "metrics.jsonl").read_bytes()


def test_the_fields_read_are_the_ones_written():
    summary = RunFolder(RECORDS / "val").read_summary()
    assert summary is not None and summary.selection == "val" and summary.best_val_top1 == 100 / 3
    plain = RunFolder(RECORDS / "plain").read_summary()
    assert plain is not None and plain.selection == "test (optimistic)" and plain.best_val_top1 is None
    records = RunFolder(RECORDS / "val").read_metrics()
    assert [record.epoch for record in records] == [1, 2]
    assert records[0].val_top1 is not None and records[0].test_count == 9 and len(records[0].per_class_top1 or []) == 3


def test_the_first_summary_format_reads_and_tables_and_cards_take_it(tmp_path):
    summary = Summary.checked(FIRST_SUMMARY, "summary.json")
    assert summary.selection is None and summary.global_batch_size is None and summary.provenance == {}
    assert summary.to_json() == {**FIRST_SUMMARY, "provenance": {}}  # nothing made up but the empty provenance
    config = TrainConfig(model="resnet18_cnl5", epochs=2, output=str(tmp_path / "run"))
    Path(config.output).mkdir()
    RunFolder(config.output).summary.write_text(json.dumps(FIRST_SUMMARY))
    [row] = collect({"run": config}, {})["resnet18_cnl5"]
    assert (row["top1"], row["best_epoch"], row["params"]) == (40.0, 2, 11355203)
    card = card_metadata("m", "cub", summary, "on the test split", None)
    assert card["model-index"][0]["results"][0]["metrics"][0]["value"] == 40.0


def test_a_resumed_run_keeps_the_epochs_it_finished(tmp_path):
    shutil.copy(RECORDS / "val" / "metrics.jsonl", tmp_path)
    folder = RunFolder(tmp_path)
    folder.keep_epochs(1)
    first = (RECORDS / "val" / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    assert folder.metrics.read_text() == first


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("best_top1", "high", "best_top1 must be a number or null, got 'high'"),
        ("epochs", 2.5, "epochs must be an integer, got 2.5"),
        ("classes", True, "classes must be an integer, got True"),
        ("provenance", [], "provenance must be a mapping, got []"),
        ("model", None, "model must be text, got None"),
    ],
)
def test_a_damaged_summary_field_is_named(field, value, said, tmp_path):
    raw = json.loads((RECORDS / "plain" / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**raw, field: value}))
    with pytest.raises(DataError) as error:
        RunFolder(tmp_path).read_summary()
    assert str(error.value) == f"{tmp_path / 'summary.json'} is damaged: {said}"


def test_a_damaged_epoch_is_named_by_line(tmp_path):
    lines = (RECORDS / "plain" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["top1"]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"metrics.jsonl, line 2: an epoch's record without top1$"):
        RunFolder(tmp_path).read_metrics()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@given(
    summary_edit=st.dictionaries(st.sampled_from(sorted(Summary.__dataclass_fields__)), JSON, max_size=3),
    epoch_edit=st.dictionaries(st.sampled_from(sorted(EpochRecord.__dataclass_fields__)), JSON, max_size=3),
    whole=st.none() | JSON,
)
def test_any_run_records_report_or_are_one_line(summary_edit, epoch_edit, whole, tmp_path_factory, capsys):
    """``cnl report`` of a run whose records were edited (fields replaced, or a whole file
    replaced by any JSON): a report, or one line naming the file, exit 2."""
    run = tmp_path_factory.mktemp("run")
    summary = json.loads((RECORDS / "plain" / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, **summary_edit} if whole is None else whole))
    epochs = [json.loads(line) for line in (RECORDS / "plain" / "metrics.jsonl").read_text().splitlines()]
    epochs[-1].update(epoch_edit)
    (run / "metrics.jsonl").write_text("".join(json.dumps(epoch) + "\n" for epoch in epochs))
    code = main(["report", str(run), "--out", str(run / "report")])
    err = capsys.readouterr().err
    if code == 0:
        assert (run / "report" / "index.html").exists()
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("cnl report: error: "), err
    assert str(run) in lines[0], lines[0]


@pytest.mark.parametrize("name", ["$$", "$5 run", "tab\there"])
def test_a_run_folder_of_any_name_is_reported(name, tmp_path, capsys):
    """A run's label (its folder's name) goes into the figures' legends as written."""
    run = tmp_path / name
    shutil.copytree(RECORDS / "plain", run)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0, capsys.readouterr().err
    assert (tmp_path / "report" / "index.html").exists()


def test_every_old_form_is_read_in_one_module():
    """cnl.upgrades: settings, weights' keys and checkpoint entries of earlier versions."""
    from cnl import upgrades

    assert upgrades.settings({"no_wd_norm_bias": True, "resume": True, "weights": None}) == {
        "wd_norm_bias": False, "resume": None, "weights": "none",
    }  # fmt: skip
    keys = upgrades.state_keys({"nl.layer3_5.g.weight": 1, "fc.bias": 2})
    assert list(keys) == ["plug.nl.layer3_5.g.weight", "fc.bias"]
    state = upgrades.checkpoint({"epoch": 3, "metrics": {"top1": 40.0, "top5": 90.0}})
    assert (state["step"], state["final"], state["rates"], state["kept"]) == (0, {"top1": 40.0, "top5": 90.0}, [], [])
