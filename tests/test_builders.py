"""The builders of a run, each called alone (engine/builders.py)."""

import pytest
import torch

from cnl.data.check import preflight
from cnl.data.synth import SynthConfig, generate
from cnl.engine import distributed, make_config
from cnl.engine.builders import (
    build_datasets,
    build_model,
    build_parts,
    build_step_settings,
    class_names,
    steps_per_epoch,
)
from cnl.errors import DataError


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data = generate(tmp_path_factory.mktemp("synth"), SynthConfig(classes=3, train_per_class=4, test_per_class=2))
    settings = {"dataset": "cub", "model": "resnet18_cnl5", "width": 8, "img_size": 32, "global_batch_size": 4}
    return make_config(settings, {"data_root": str(data), "val_split": 0.25, "ema": 0.9, "device": "cpu"})


def test_each_builder_builds_its_one_thing(config, tmp_path):
    ctx = distributed.Context(0, 1, torch.device("cpu"))
    train, val, test = build_datasets(config, tmp_path)
    assert (len(train), len(val), len(test)) == (9, 3, 6) and class_names(train) == train.classes
    assert steps_per_epoch(train, 4, config.data_root) == 2
    model = build_model(config, ["a", "b", "c"], ctx)
    torch.manual_seed(config.seed)
    again = build_model(config, ["a", "b", "c"], ctx)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    parts = build_parts(model, config, ctx, steps=2)
    assert parts.model is model and parts.ema is not None and parts.scheduler.get_last_lr()
    settings = build_step_settings(config, ctx, 3, 4)
    assert (settings.num_classes, settings.global_batch, settings.world_size) == (3, 4, 1)


def test_the_one_preflight_names_missing_files_and_empty_classes(config, tmp_path):
    train, _, _ = build_datasets(config, tmp_path)
    missing = train.samples[0][0]
    missing.rename(missing.with_suffix(".gone"))
    try:
        with pytest.raises(DataError, match=f"(?s)1 train images of x named by its metadata .*{missing.name}"):
            preflight(train, "train", "x")
    finally:
        missing.with_suffix(".gone").rename(missing)
    with pytest.raises(DataError, match="the global batch 64 is larger than the 9 training images of x"):
        steps_per_epoch(train, 64, "x")
