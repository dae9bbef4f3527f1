"""One source for settings: TrainConfig's fields make the flags, presets inherit, ``--set``
sets anything, and old spellings keep working."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

from cnl.cli import build_parser, main, resolve_train_config
from cnl.engine.config import FIELDS, TrainConfig, make_config, read_yaml
from cnl.engine.runfolder import run_folder_of
from cnl.engine.trainer import resume_checkpoint
from cnl.errors import InvalidValue, MissingFile

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str):
    return resolve_train_config(build_parser().parse_args(["train", "--data-root", "x", *argv]))


def train_help() -> str:
    return build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]


def test_every_field_is_a_flag_whose_help_shows_the_dataclass_default():
    parser = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {action.dest for action in parser._actions}
    assert FIELDS <= flags
    text = " ".join(train_help().split())
    defaults = TrainConfig(data_root="x")
    for name in ("epochs", "lr", "lr_steps", "warmup_epochs", "momentum", "img_size", "crop_scale", "output"):
        value = getattr(defaults, name)
        shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        assert f"(default: {shown}" in text, name
    assert "(default: 110; >= 1)" in text and "(default: 50 70 90; >= 1)" in text  # and the range


def test_flags_are_typed_by_the_fields():
    config = parse("--epochs", "3", "--lr", "0.02", "--lr-steps", "1,2", "3", "--crop-scale", "0.5", "1")
    assert (config.epochs, config.lr, config.lr_steps, config.crop_scale) == (3, 0.02, [1, 2, 3], [0.5, 1])
    assert parse("--val-split", "official").val_split == "official" and parse("--val-split", "0.1").val_split == 0.1
    with pytest.raises(InvalidValue, match="--epochs: epochs must be an integer, got 'three'"):
        parse("--epochs", "three")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--schedule", "linear"])  # choices from the field


def test_booleans_turn_off_what_a_preset_turns_on():
    modern = str(REPO / "configs" / "modern" / "cub_resnet50_cnl5.yaml")
    assert parse("--config", modern).channels_last is True
    assert parse("--config", modern, "--no-channels-last").channels_last is False
    assert parse("--config", modern, "--set", "ema=null").ema is None
    assert parse("--config", modern).wd_norm_bias is False
    assert parse("--config", modern, "--wd-norm-bias").wd_norm_bias is True


def test_set_types_and_checks_any_setting():
    config = parse("--set", "lr=0.02", "--set", "lr_steps=30,60", "--set", "amp=bf16", "--set", "batch-size=8")
    assert (config.lr, config.lr_steps, config.amp) == (0.02, [30, 60], "bf16")
    assert (config.batch_size, config.global_batch_size) == (8, None)  # one way of giving the batch replaces the other
    assert parse("--lr", "0.5", "--set", "lr=0.25").lr == 0.25  # --set comes last
    with pytest.raises(InvalidValue, match="unknown setting 'learning_rate'; did you mean lr"):
        parse("--set", "learning_rate=0.1")
    with pytest.raises(InvalidValue, match="--set epochs=1.5: epochs must be an integer, got 1.5"):
        parse("--set", "epochs=1.5")
    with pytest.raises(InvalidValue, match="expected KEY=VALUE"):
        parse("--set", "lr")
    with pytest.raises(InvalidValue, match="amp must be one of none, bf16, fp16, got 'fp8'"):
        parse("--set", "amp=fp8")


def test_main_reports_a_bad_setting_in_one_line(capsys):
    assert main(["train", "--data-root", "x", "--set", "epoch=3"]) == 2
    assert capsys.readouterr().err == "cnl train: error: --set epoch=3: unknown setting 'epoch'; did you mean epochs?\n"


def test_presets_inherit_and_resolve_as_before_they_did():
    before = json.loads((REPO / "tests" / "fixtures" / "presets_resolved.json").read_text())
    defaults = TrainConfig().to_dict()
    changed = {"modern/cub_resnet50_cnl5.yaml": {"nesterov": True}}  # MMPretrain's CUB recipe
    for name, resolved in before.items():  # written by the code before presets had bases
        now = make_config(read_yaml(REPO / "configs" / name)).to_dict()
        assert {key: now[key] for key in resolved} == resolved, name
        added = now.keys() - resolved.keys()  # settings added since: at their defaults but where a preset adopts one
        expected = {key: defaults[key] for key in added} | changed.get(name, {})
        assert added and {key: now[key] for key in added} == expected, name
    assert (REPO / "configs" / "cub_resnet101_cnl5.yaml").read_text().count("\n") < 8  # only what differs


def test_a_base_chain_a_loop_and_a_missing_base(tmp_path):
    (tmp_path / "a.yaml").write_text("data_root: x\nepochs: 5\nlr: 0.1\nglobal_batch_size: 32\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nepochs: 7\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nbatch_size: 4\n")
    config = make_config(read_yaml(tmp_path / "c.yaml"))
    assert (config.epochs, config.lr, config.batch_size, config.global_batch_size) == (7, 0.1, 4, None)
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(InvalidValue, match="its bases form a loop"):
        read_yaml(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(MissingFile, match=r"nowhere.yaml does not exist \(the base of"):
        read_yaml(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("lr: fast\n")
    with pytest.raises(InvalidValue, match="e.yaml: lr must be a number, got 'fast'"):
        read_yaml(tmp_path / "e.yaml")


def test_resume_takes_auto_no_nothing_or_a_path(tmp_path):
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "last.pt"
    assert resume_checkpoint(run, "auto") is None and resume_checkpoint(run, "no") is None
    with pytest.raises(MissingFile, match="cannot resume: .*last.pt does not exist"):
        resume_checkpoint(run, "yes")
    with pytest.raises(MissingFile, match="cannot resume: checkpoint .*elsewhere.pt does not exist"):
        resume_checkpoint(run, str(tmp_path / "elsewhere.pt"))
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    assert resume_checkpoint(run, "yes") == resume_checkpoint(run, str(checkpoint)) == checkpoint
    assert run_folder_of(str(checkpoint)) == str(run) and run_folder_of("auto") is None
    assert build_parser().parse_args(["train", "--resume"]).resume == "yes"  # nothing: this folder's last.pt


def test_old_spellings_keep_working():
    assert parse("--no-wd-norm-bias").wd_norm_bias is False  # the flag before booleans took --x/--no-x
    assert make_config({"data_root": "x", "no_wd_norm_bias": True}).wd_norm_bias is False  # old config.yaml files
    assert build_parser().parse_args(["train", "--resume", "yes"]).resume == "yes"


def test_ablate_writes_where_the_preset_says(tmp_path, monkeypatch):
    preset = tmp_path / "p.yaml"
    base = os.path.relpath(REPO / "configs" / "cub_resnet50.yaml", tmp_path)  # a base is relative to its preset
    preset.write_text(yaml.safe_dump({"base": base, "output": "here"}))
    args = build_parser().parse_args(["ablate", "--models", "resnet18", "--config", str(preset), "--data-root", "x"])
    assert resolve_train_config(args, default_output="runs/ablation").output == "here"
    args = build_parser().parse_args(["ablate", "--models", "resnet18", "--data-root", "x"])
    assert resolve_train_config(args, default_output="runs/ablation").output == "runs/ablation"


def test_no_field_is_described_twice():
    for setting in dataclasses.fields(TrainConfig):
        assert setting.metadata.get("help"), f"{setting.name} has no help"


def test_resume_from_a_checkpoint_path_continues_its_run_folder(tmp_path):
    from cnl.data.synth import SynthConfig, generate
    from runs import tiny_run_args

    data = generate(tmp_path / "data", SynthConfig(classes=2, train_per_class=2, test_per_class=1, image_size=40))
    run = tmp_path / "run"
    assert main(tiny_run_args(data, run)) == 0
    last = run / "checkpoints" / "last.pt"
    assert main(["train", "--resume", str(last), "--set", "epochs=2"]) == 0  # no --output: the checkpoint's run
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and "epochs: 2" in (run / "config.yaml").read_text()
