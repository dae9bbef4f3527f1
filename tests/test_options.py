"""Fine-tuning options since the paper: each off by default, each doing what it says."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.data.transforms import batch_mix
from cnl.engine import load_model, make_config, read_checkpoint
from cnl.engine.builders import build_ema, build_optimizer
from cnl.engine.loop import StepSettings, TrainParts, train_one_epoch
from cnl.engine.schedule import build_scheduler, lr_factor
from cnl.models import create_model


def toy(**settings):
    """A linear classifier of 8 fixed 3x2x2 images, one batch, and the settings of a step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    images, labels = torch.randn(8, 3, 2, 2) * 10, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    step = StepSettings(torch.device("cpu"), 3, show_progress=False, global_batch=8, **settings)
    return model, images, labels, loader, step


def parts(model, lr=0.0, momentum=0.0, ema=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return TrainParts(model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False), ema)


def test_defaults_are_the_papers_recipe():
    config = make_config({"data_root": "x"})
    assert (config.label_smoothing, config.clip_grad, config.ema, config.mixup, config.cutmix) == (0, None, None, 0, 0)
    assert (config.wd_norm_bias, config.head_lr_mult, config.schedule) == (True, 1.0, "step")
    optimizer = build_optimizer(create_model("resnet18_cnl5", 4), config)
    assert len(optimizer.param_groups) == 1  # one group, as the paper


def test_label_smoothing_is_the_smoothed_cross_entropy():
    model, images, labels, loader, step = toy(label_smoothing=0.2)
    stats = train_one_epoch(parts(model), loader, step, epoch=0)
    expected = F.cross_entropy(model(images), labels, label_smoothing=0.2).item()
    assert stats.loss == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(F.cross_entropy(model(images), labels).item(), rel=1e-3)


def test_clip_grad_bounds_the_update_to_the_norm():
    model, images, labels, loader, step = toy(clip_grad=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(images), labels)
    unclipped = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]).norm()
    assert unclipped > 0.5
    train_one_epoch(parts(model, lr=1.0), loader, step, epoch=0)  # plain SGD: the update is the gradient
    update = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())]).norm()
    assert update.item() == pytest.approx(0.5, rel=1e-5)


def test_ema_equals_the_closed_form_average_after_three_steps():
    model, images, labels, loader, step = toy()
    decay = 0.9
    ema = build_ema(model, decay)
    weights = [model[1].weight.detach().clone()]
    p = parts(model, lr=0.1, ema=ema)
    for epoch in range(3):
        train_one_epoch(p, loader, step, epoch=epoch)
        weights.append(model[1].weight.detach().clone())
    w0, w1, w2, w3 = weights
    closed = decay**3 * w0 + decay**2 * (1 - decay) * w1 + decay * (1 - decay) * w2 + (1 - decay) * w3
    torch.testing.assert_close(ema.module[1].weight, closed, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(ema.module[1].weight, w3)


def test_mixup_feeds_the_model_convex_pairs_and_soft_targets():
    mix = batch_mix(mixup=0.4, cutmix=0.0, num_classes=3)
    model, images, labels, loader, step = toy(mix=mix)
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach().clone()))
    stats = train_one_epoch(parts(model), loader, step, epoch=0)
    (mixed,) = seen
    # v2.MixUp pairs each sample with the previous one: x' = lam x + (1 - lam) roll(x).
    lam = ((mixed - images.roll(1, 0)) / (images - images.roll(1, 0)))[0, 0, 0, 0].item()
    assert 0 < lam < 1
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0), rtol=1e-5, atol=1e-4)
    soft = lam * F.one_hot(labels, 3) + (1 - lam) * F.one_hot(labels.roll(1, 0), 3)
    assert stats.loss == pytest.approx(F.cross_entropy(model(mixed), soft).item(), rel=1e-5)


def test_cutmix_pastes_a_box_of_another_image():
    mix = batch_mix(mixup=0.0, cutmix=1.0, num_classes=3)
    torch.manual_seed(3)
    images, labels = torch.rand(4, 3, 16, 16), torch.tensor([0, 1, 2, 1])
    mixed, targets = mix(images, labels)
    from_other = (mixed == images.roll(1, 0)) & (mixed != images)
    assert from_other.any() and (mixed == images).any()
    area = from_other[0, 0].float().mean().item()
    assert targets[0, labels.roll(1, 0)[0]].item() == pytest.approx(area, abs=1 / 256)
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_parameter_groups_for_head_lr_and_no_decay_on_norms_and_biases():
    model = create_model("resnet18_cnl5", 4)
    config = make_config({"data_root": "x", "lr": 0.01, "head_lr_mult": 10, "wd_norm_bias": False})
    groups = build_optimizer(model, config).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            new = name.startswith(("plug.", "fc."))
            assert group["lr"] == pytest.approx(0.1 if new else 0.01), name
            assert group["weight_decay"] == (0.0 if parameter.ndim == 1 else 1e-4), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    base = [g["lr"] for g in groups]
    scheduler = build_scheduler(torch.optim.SGD(groups, lr=0.01), 10, 1, [5], 0.1)
    warm = [g["lr"] for g in scheduler.optimizer.param_groups]
    assert warm == pytest.approx([lr * 1e-3 for lr in base])  # warmup scales every group from its own rate


def test_cosine_schedule_after_the_same_warmup():
    assert lr_factor(0, 10, [], schedule="cosine", epochs=110) == pytest.approx(1e-3)
    assert lr_factor(5, 10, [], schedule="cosine", epochs=110) == lr_factor(5, 10, [50, 70, 90])
    assert lr_factor(10, 10, [], schedule="cosine", epochs=110) == pytest.approx(1.0)
    assert lr_factor(60, 10, [], schedule="cosine", epochs=110) == pytest.approx(0.5)
    assert lr_factor(35, 10, [], schedule="cosine", epochs=110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, 10, [], schedule="cosine", epochs=110) == pytest.approx(0.0, abs=1e-12)


def test_bad_option_values_are_refused():
    for values, message in [
        ({"label_smoothing": 1.0}, r"label_smoothing must be a finite number in \[0, 1\), got 1.0"),
        ({"ema": 1.5}, r"ema must be a finite number in \(0, 1\), got 1.5"),
        ({"clip_grad": 0}, "clip_grad must be a finite number > 0, got 0"),
        ({"mixup": -1}, "mixup must be a finite number >= 0, got -1"),
        ({"schedule": "linear"}, "schedule must be one of step, cosine"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_config({"data_root": "x", **values})


def test_a_run_with_every_option_checkpoints_and_uses_its_ema(tmp_path, capsys):
    data = generate(tmp_path / "data", SynthConfig(classes=4, train_per_class=5, test_per_class=3, image_size=40))
    output = tmp_path / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--img-size", "32",
        "--epochs", "2", "--warmup-epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu",
        "--width", "16", "--output", str(output), "--label-smoothing", "0.1", "--clip-grad", "1.0", "--ema", "0.9",
        "--mixup", "0.2",
        "--cutmix", "1.0", "--no-wd-norm-bias", "--head-lr-mult", "10", "--schedule", "cosine",
    ]  # fmt: skip
    assert main(args) == 0
    state = read_checkpoint(output / "checkpoints" / "last.pt")
    assert state["config"]["ema"] == 0.9 and "model_ema" in state
    model, _ = load_model(output / "checkpoints" / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model_ema"][key]), key
    assert any(not torch.equal(state["model"][k], state["model_ema"][k]) for k in state["model"])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(output / "checkpoints" / "last.pt"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()][-1]
    assert (evaluated["top1"], evaluated["top5"]) == (logged["top1"], logged["top5"])


def test_the_modern_preset_turns_every_option_on_and_is_not_the_papers():
    from pathlib import Path

    from cnl.engine.config import read_yaml

    repo = Path(__file__).resolve().parents[1]
    modern = make_config(read_yaml(repo / "configs" / "modern" / "cub_resnet50_cnl5.yaml"))
    paper = make_config(read_yaml(repo / "configs" / "cub_resnet50_cnl5.yaml"))
    assert (modern.model, modern.dataset, modern.img_size) == (paper.model, paper.dataset, paper.img_size)
    assert modern.val_split == 0.1 and modern.schedule == "cosine" and not modern.wd_norm_bias
    assert modern.label_smoothing > 0 and modern.mixup > 0 and modern.cutmix > 0 and modern.ema and modern.clip_grad
    assert modern.head_lr_mult == 10
    assert "NOT the paper's recipe" in (repo / "configs" / "modern" / "cub_resnet50_cnl5.yaml").read_text()
