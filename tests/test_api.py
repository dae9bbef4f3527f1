"""cnl.engine.fit for researchers: model and dataset objects, a caller's process group."""

import json
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import cnl
from cnl.engine import TrainConfig, fit


class Pictures(TensorDataset):
    """Random 3x32x32 images whose class is the brightest colour channel."""

    classes = ["red", "green", "blue"]

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        images = torch.rand(count, 3, 32, 32, generator=generator)
        labels = torch.arange(count) % 3
        images[torch.arange(count), labels] += 0.5
        super().__init__(images, labels)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """my_network registered for each test, as cnl.register_model("my_network") would, and
    forgotten after it (list_models stays cnl's own for the other test files)."""
    from cnl.models import registry

    monkeypatch.setattr(registry, "_YOURS", {})
    cnl.register_model("my_network", my_network)


def my_network(num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, num_classes),
    )  # fmt: skip


def small_network() -> nn.Module:
    return my_network(3)


def config(tmp_path) -> TrainConfig:
    return TrainConfig(
        model="my_network", epochs=3, warmup_epochs=0, global_batch_size=8, lr=0.1, lr_steps=[10], workers=0,
        device="cpu", output=str(tmp_path / "run"),
    )  # fmt: skip


def test_fit_takes_a_model_and_dataset_objects(tmp_path):
    network = small_network()
    summary = fit(config(tmp_path), model=network, train_set=Pictures(48, 0), test_set=Pictures(15, 1))
    assert summary["classes"] == 3 and summary["epochs"] == 3
    assert summary["params"] == sum(p.numel() for p in network.parameters())
    assert summary["best_top1"] > 100 / 3  # it learns the brightest channel
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["test_count"] for line in lines] == [15, 15, 15]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best_top1"] == summary["best_top1"]


def test_fit_leaves_the_callers_process_group_as_it_found_it(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        fit(config(tmp_path), model=small_network(), train_set=Pictures(16, 0), test_set=Pictures(6, 1))
        assert dist.is_initialized() and dist.get_world_size() == 1
        dist.barrier()  # still usable
    finally:
        dist.destroy_process_group()


def test_dataset_objects_need_class_names(tmp_path):
    unnamed = TensorDataset(torch.rand(8, 3, 32, 32), torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a 'classes' list"):
        fit(config(tmp_path), model=small_network(), train_set=unnamed, test_set=unnamed)
    with pytest.raises(ValueError, match="give both train_set and test_set"):
        fit(config(tmp_path), model=small_network(), train_set=Pictures(8, 0))


def test_a_model_handed_to_fit_must_be_the_one_its_config_names(tmp_path):
    from cnl.errors import UserError

    unnamed = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    with pytest.raises(UserError, match=r"not what config.model \(my_network\) builds: name yours with"):
        fit(config(tmp_path), model=unnamed, train_set=Pictures(8, 0), test_set=Pictures(6, 1))
    assert not (tmp_path / "run").exists()
    summary = fit(config(tmp_path), model=my_network(3), train_set=Pictures(16, 0), test_set=Pictures(6, 1))
    model, classes = cnl.load_model(tmp_path / "run" / "checkpoints" / "best.pt")  # built again by its name
    assert classes == ["red", "green", "blue"] and summary["best_top1"] >= 0
