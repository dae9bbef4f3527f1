"""The settings of timm's and torchvision's reference scripts: each off by default,
each built from a library's implementation and doing what it says."""

import json

import pytest
import torch
from torchvision.transforms import v2

from cnl.cli import main
from cnl.data.synth import SynthConfig, generate
from cnl.data.transforms import eval_crops, eval_transform, train_transform
from cnl.engine import distributed, make_config, read_checkpoint
from cnl.engine.builders import build_model, build_optimizer, build_parts, frozen_modules, train_transform_of
from cnl.engine.evaluation import ViewsAveraged, evaluate_checkpoint
from cnl.engine.loop import training
from cnl.errors import InvalidValue
from cnl.models import create_model
from cnl.models.registry import load_weights

CPU = distributed.Context(0, 1, torch.device("cpu"))


def kinds(compose: v2.Compose) -> list[type]:
    return [type(t) for t in compose.transforms]


def test_the_defaults_are_the_papers_transforms_and_optimizer():
    config = make_config({"data_root": "x"})
    assert kinds(train_transform_of(config)) == kinds(train_transform(config.img_size))
    augmentation = (config.augment, config.color_jitter, config.random_erase, config.interpolation)
    assert augmentation == ("none", 0, 0, "bilinear")
    assert config.eval_sizes() == (448, None, "bilinear")
    assert (config.drop_rate, config.drop_path, config.nesterov, config.layer_decay, config.freeze) == (
        None, None, False, None, "none",
    )  # fmt: skip
    assert create_model("resnet18", 3).fc.dropout.p == 0.5  # the paper's dropout when none is asked for


@pytest.mark.parametrize(
    "augment, policy", [("randaugment", v2.RandAugment), ("trivialaugment", v2.TrivialAugmentWide),
                        ("autoaugment", v2.AutoAugment)],
)  # fmt: skip
def test_each_augmentation_policy_is_torchvisions_after_the_crop(augment, policy):
    transform = train_transform_of(make_config({"data_root": "x", "augment": augment, "img_size": 32}))
    assert kinds(transform)[:4] == [v2.ToImage, v2.RandomResizedCrop, v2.RandomHorizontalFlip, policy]
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32


def test_colour_jitter_and_random_erasing_do_what_they_say():
    transform = train_transform(32, augment="none", color_jitter=0.4, random_erase=1.0, interpolation="bicubic")
    jitter = next(t for t in transform.transforms if isinstance(t, v2.ColorJitter))
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.6, 1.4)
    crop = next(t for t in transform.transforms if isinstance(t, v2.RandomResizedCrop))
    assert crop.interpolation == v2.InterpolationMode.BICUBIC
    assert isinstance(transform.transforms[-1], v2.RandomErasing)  # after normalising, as timm
    torch.manual_seed(0)
    out = transform(torch.full((3, 40, 40), 200, dtype=torch.uint8))
    assert (out == 0).all(dim=0).any()  # a rectangle erased to 0 (the mean, once normalised)
    with pytest.raises(InvalidValue, match="color_jitter and augment randaugment are alternatives"):
        make_config({"data_root": "x", "color_jitter": 0.4, "augment": "randaugment"})
    with pytest.raises(InvalidValue, match=r"random_erase must be a finite number in \[0, 1\], got 1.5"):
        make_config({"data_root": "x", "random_erase": 1.5})


def test_evaluation_has_its_own_resize_crop_and_interpolation():
    config = make_config({"data_root": "x", "img_size": 32, "eval_resize": 40, "eval_crop": 36,
                          "eval_interpolation": "bicubic"})  # fmt: skip
    assert config.eval_sizes() == (36, 40, "bicubic")
    transform = eval_transform(*config.eval_sizes())
    resize = next(t for t in transform.transforms if isinstance(t, v2.Resize))
    assert (resize.size, resize.interpolation) == ([40], v2.InterpolationMode.BICUBIC)
    assert transform(torch.zeros(3, 50, 80, dtype=torch.uint8)).shape == (3, 36, 36)
    assert eval_crops(36, 40)(torch.zeros(3, 50, 80, dtype=torch.uint8)).shape == (5, 3, 36, 36)
    with pytest.raises(InvalidValue, match="eval_resize 30 is smaller than the eval crop 32"):
        make_config({"data_root": "x", "img_size": 32, "eval_resize": 30})


def test_drop_path_drops_residual_branches_in_training_only():
    torch.manual_seed(0)
    dropped = create_model("resnet18", 3, drop_path=0.9, drop_rate=0.0).eval()
    plain = create_model("resnet18", 3, drop_rate=0.0).eval()
    plain.load_state_dict(dropped.state_dict())  # the same keys: torchvision's blocks
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropped(images), plain(images))  # evaluation: no drop
        dropped.train(), plain.train()
        torch.manual_seed(1)
        first = dropped(images)
        torch.manual_seed(2)
        second = dropped(images)
    assert not torch.equal(first, second)  # training: each sample's branches dropped at random


def test_drop_rates_go_to_the_backbones_constructor_or_are_refused():
    timm_model = create_model("timm:resnet18_cnl5", 3, drop_rate=0.3, drop_path=0.1)
    assert timm_model.drop_rate == 0.3
    assert max(block.drop_path.drop_prob for block in timm_model.layer4 if block.drop_path is not None) == 0.1
    assert create_model("tv:efficientnet_b0", 3, drop_rate=0.3).classifier[0].p == 0.3
    with pytest.raises(InvalidValue, match="tv:resnet18 has no drop_path .*stochastic_depth_prob"):
        create_model("tv:resnet18", 3, drop_path=0.1)


def test_nesterov_is_sgds_and_needs_momentum():
    model = create_model("resnet18", 3)
    optimizer = build_optimizer(model, make_config({"data_root": "x", "nesterov": True}))
    assert isinstance(optimizer, torch.optim.SGD) and all(group["nesterov"] for group in optimizer.param_groups)
    with pytest.raises(InvalidValue, match="nesterov is SGD's, with momentum"):
        make_config({"data_root": "x", "nesterov": True, "optimizer": "adamw"})
    with pytest.raises(InvalidValue, match="nesterov is SGD's, with momentum"):
        make_config({"data_root": "x", "nesterov": True, "momentum": 0})


def test_layer_decay_scales_each_blocks_lr_by_its_distance_from_the_top():
    model = create_model("resnet18_cnl5", 3)
    config = make_config({"data_root": "x", "lr": 0.1, "layer_decay": 0.5})
    lrs = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in build_optimizer(model, config).param_groups:
        lrs.update({names[id(p)]: group["lr"] for p in group["params"]})
    assert len(lrs) == len(list(model.parameters()))
    # stem 0, the 8 blocks 1..8, the head and the CNL module at the top (9)
    assert lrs["fc.weight"] == lrs["plug.cnl.theta.weight"] == pytest.approx(0.1)
    assert lrs["layer4.1.conv1.weight"] == pytest.approx(0.05)
    assert lrs["layer4.0.conv1.weight"] == pytest.approx(0.025)
    assert lrs["layer1.0.conv1.weight"] == pytest.approx(0.1 * 0.5**8)
    assert lrs["conv1.weight"] == lrs["bn1.weight"] == pytest.approx(0.1 * 0.5**9)


def test_a_frozen_backbone_trains_only_the_modules_and_the_head(tmp_path):
    config = make_config({"data_root": "x", "model": "resnet18_cnl5", "width": 8, "img_size": 32,
                          "global_batch_size": 4, "freeze": "backbone", "device": "cpu"})  # fmt: skip
    model = build_model(config, ["a", "b", "c"], CPU)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(("plug.", "fc.")) for name in trainable)
    assert any(name.startswith("plug.") for name in trainable)
    parts = build_parts(model, config, CPU, steps=1)
    optimized = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert parts.frozen and all(isinstance(m, torch.nn.Module) for m in parts.frozen)
    assert model.bn1 in frozen_modules(model) and model.fc not in frozen_modules(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training(parts)
    assert not model.bn1.training and model.fc.training and model.plug.training
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    parts.optimizer.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("plug.", "fc.")) for k in changed)  # BN statistics too stay


def test_a_run_keeps_the_n_best_checkpoints_and_records_its_settings(tmp_path):
    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40))
    output = tmp_path / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18", "--width", "8",
        "--img-size", "32", "--epochs", "3", "--warmup-epochs", "0", "--global-batch-size", "4", "--workers", "0",
        "--device", "cpu", "--output", str(output), "--keep-best", "2", "--augment", "trivialaugment",
        "--random-erase", "0.25", "--eval-resize", "40", "--drop-path", "0.1", "--nesterov", "--layer-decay", "0.8",
    ]  # fmt: skip
    assert main(args) == 0
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    ranked = sorted(logged, key=lambda row: (-row["top1"], row["epoch"]))[:2]
    kept = sorted(path.name for path in (output / "checkpoints").glob("best-e*.pt"))
    assert kept == sorted(f"best-e{row['epoch']:03d}.pt" for row in ranked)
    state = read_checkpoint(output / "checkpoints" / kept[0])
    assert state["config"]["augment"] == "trivialaugment" and state["config"]["drop_path"] == 0.1
    recorded = (output / "config.yaml").read_text()
    assert "nesterov: true" in recorded and "layer_decay: 0.8" in recorded and "eval_resize: 40" in recorded


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch resnet18_cnl5 run on 3 classes, and its data."""
    root = tmp_path_factory.mktemp("trained")
    data = generate(root / "data", SynthConfig(classes=3, train_per_class=4, test_per_class=2, image_size=40))
    output = root / "run"
    args = [
        "train", "--data-root", str(data), "--dataset", "cub", "--model", "resnet18_cnl5", "--width", "8",
        "--img-size", "32", "--epochs", "1", "--global-batch-size", "4", "--workers", "0", "--device", "cpu",
        "--output", str(output),
    ]  # fmt: skip
    assert main(args) == 0
    return output / "checkpoints" / "last.pt", data


def test_weights_from_another_run_say_what_was_loaded_skipped_and_mapped(trained):
    checkpoint, _ = trained
    state = read_checkpoint(checkpoint)
    classes = list(state["classes"])
    other_count = create_model("resnet18_cnl5", 5, width=8)
    report = load_weights(other_count, "resnet18_cnl5", checkpoint, [f"c{k}" for k in range(5)])
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and "another number of classes" in str(report)
    assert report.loaded == len(state["model"]) - 2 and not report.unexpected

    reordered = create_model("resnet18_cnl5", 3, width=8)
    report = load_weights(reordered, "resnet18_cnl5", checkpoint, classes[::-1])
    assert report.reordered and not report.skipped and "mapped by class name" in str(report)
    assert torch.equal(reordered.fc.weight, state["model"]["fc.weight"].flip(0))

    renamed = create_model("resnet18_cnl5", 3, width=8)
    report = load_weights(renamed, "resnet18_cnl5", checkpoint, ["x", "y", "z"])
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and "the head of other classes" in str(report)

    plain = create_model("resnet18", 3, width=8)
    report = load_weights(plain, "resnet18", checkpoint, classes)
    assert report.unexpected and all(key.startswith("plug.") for key in report.unexpected)
    assert "not in the model (plug.cnl.*" in str(report)


def test_views_averaged_is_the_mean_of_the_views_probabilities():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, width=8).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        flipped = ViewsAveraged(model)(images)
        expected = (model(images).softmax(-1) + model(images.flip(-1)).softmax(-1)) / 2
        assert torch.allclose(flipped.exp(), expected, atol=1e-6)
        crops = torch.randn(2, 5, 3, 32, 32)
        averaged = ViewsAveraged(model)(crops).exp()
        each = [model(crops[:, k]).softmax(-1) + model(crops[:, k].flip(-1)).softmax(-1) for k in range(5)]
        assert torch.allclose(averaged, sum(each) / 10, atol=1e-6)


def test_cnl_eval_tta_is_said_beside_every_figure(trained, tmp_path, capsys):
    checkpoint, _ = trained
    single = evaluate_checkpoint(checkpoint, device="cpu", workers=0)
    flips = evaluate_checkpoint(checkpoint, device="cpu", workers=0, tta="flip")
    crops = evaluate_checkpoint(checkpoint, device="cpu", workers=0, tta="flip+crops")
    assert (single["tta"], flips["tta"], crops["tta"]) == ("none", "flip", "flip+crops")
    assert single["count"] == flips["count"] == crops["count"] == 6
    assert (crops["eval_crop"], crops["eval_resize"]) == (32, 37)  # the crop x 512/448
    capsys.readouterr()
    report = checkpoint.parent.parent / "eval"  # RUN/eval, where the model card finds it
    assert main(["eval", "--checkpoint", str(checkpoint), "--tta", "flip", "--report", str(report)]) == 0
    assert "flip test-time augmentation" in capsys.readouterr().out
    said = json.loads((report / "evaluation.json").read_text())
    assert said["tta"] == "flip" and said["top1"] == flips["top1"]
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hub")]) == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "`cnl eval --tta flip` of last.pt (test-time augmentation: the centre crop of 32 px from 37 px" in card
    assert f"| {flips['top1']:.2f} | {flips['top5']:.2f} | flip |" in card
    import yaml

    trained_result, evaluated_result = yaml.safe_load(card.split("---\n", 2)[1])["model-index"][0]["results"]
    assert "one crop" in trained_result["metrics"][0]["name"]
    assert evaluated_result["metrics"][0] == {
        "type": "accuracy", "name": "top-1 accuracy (cnl eval --tta flip of last.pt)", "value": round(flips["top1"], 2),
    }  # fmt: skip
    (report / "evaluation.json").write_text('{"top1": 250, "tta": "flip"}')
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hub2")]) == 2
    assert "evaluation.json is damaged: expected top1 and top5 in [0, 100]" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["eval", "--checkpoint", str(checkpoint), "--tta", "flip+mirror"])
    assert refused.value.code == 2
    assert "invalid choice: 'flip+mirror'" in capsys.readouterr().err


def test_a_fixed_size_backbone_refuses_another_eval_crop_before_any_data_is_read():
    from cnl.models.registry import check_model

    check_model("timm:vit_tiny_patch16_224", 224, None, eval_crop=224)
    with pytest.raises(InvalidValue, match=r"built for one input size \(224 px, --img-size\): --eval-crop 192"):
        check_model("timm:vit_tiny_patch16_224", 224, None, eval_crop=192)
    check_model("resnet18_cnl5", 224, None, eval_crop=192)  # ours take any size


def test_the_benchmark_times_a_frozen_backbones_step():
    from cnl.analysis.bench import _setup, parse_spec

    spec = parse_spec("resnet18_cnl5+frozen+compile")
    assert (spec.name, spec.frozen, spec.compiled) == ("resnet18_cnl5", True, True)
    model, train_step, _ = _setup("resnet18_cnl5+frozen", img_size=32, batch_size=2, device="cpu", num_classes=3)
    stem, head = model.conv1.weight.clone(), model.fc.weight.clone()
    train_step()
    assert torch.equal(model.conv1.weight, stem) and not torch.equal(model.fc.weight, head)
    assert not model.bn1.training and model.fc.training


def test_every_preset_resolves_and_its_model_builds_with_its_settings():
    from pathlib import Path

    from cnl.engine.config import model_overrides, read_yaml
    from cnl.models.registry import check_model

    presets = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
    assert len(presets) >= 11
    modern = {}
    for preset in presets:
        config = make_config(read_yaml(preset))
        assert not config.cautions(), preset
        check_model(config.model, config.img_size, None, config.eval_crop, **model_overrides(config.to_dict()))
        if preset.parent.name == "modern":
            modern[preset.stem] = config
            assert "NOT the paper's recipe" in preset.read_text() and "come from" in preset.read_text(), preset
    assert modern["cub_resnet50_cnl5"].nesterov and modern["cub_resnet50_cnl5"].schedule == "cosine"
    convnext = modern["cub_convnext_tiny_cnl5"]
    assert (convnext.optimizer, convnext.layer_decay, convnext.augment, convnext.random_erase) == (
        "adamw", 0.8, "randaugment", 0.25,
    )  # fmt: skip
    assert modern["cub_dinov2_probe"].freeze == "backbone"


def test_the_load_report_in_the_docs_is_what_loading_says(tmp_path):
    from pathlib import Path

    from cnl.engine.checkpoint import save_checkpoint

    line = next(
        text for text in (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text().splitlines()
        if text.startswith("weights runs/birds/checkpoints/best.pt:")
    )  # fmt: skip
    trained = create_model("resnet50_cnl5", 3, width=8)
    path = tmp_path / "runs" / "birds" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint({"model": trained.state_dict(), "classes": ["a", "b", "c"]}, path)
    report = load_weights(create_model("resnet50_cnl5", 3, width=8), "resnet50_cnl5", path, ["c", "b", "a"])
    assert str(report).replace(str(path), "runs/birds/checkpoints/best.pt") == line


def probe_config(data, output, model="resnet18_cnl5", **settings):
    values = {
        "data_root": str(data), "dataset": "cub", "model": model, "width": 8, "img_size": 32, "epochs": 2,
        "warmup_epochs": 0, "lr_steps": [], "global_batch_size": 4, "workers": 0, "device": "cpu",
        "freeze": "backbone", "output": str(output), **settings,
    }  # fmt: skip
    return make_config(values)


@pytest.mark.parametrize("model", ["resnet18_cnl5", "resnet18"])
def test_cached_and_uncached_probe_training_give_the_same_weights(model, tmp_path):
    from cnl.data import build_dataset
    from cnl.engine import fit

    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=6, test_per_class=2, image_size=40))
    runs = {}
    for cached in (False, True):
        output = tmp_path / f"cached_{cached}"
        splits = [build_dataset("cub", data, split, eval_transform(32)) for split in ("train", "test")]
        fit(probe_config(data, output, model, cache_features=cached), None, *splits)
        runs[cached] = read_checkpoint(output / "checkpoints" / "last.pt")["model"]
    assert runs[True].keys() == runs[False].keys()
    for key in runs[True]:
        assert torch.allclose(runs[True][key], runs[False][key], rtol=0, atol=1e-5), key
    assert any(not torch.equal(runs[True][k], create_model(model, 3, width=8).state_dict()[k]) for k in ["fc.weight"])
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cached_True" / "features").iterdir()) == ["test", "train"]


def test_the_cache_is_reused_until_its_weights_data_or_transform_change(tmp_path, capsys):
    from cnl.data import build_dataset
    from cnl.engine.builders import freeze_backbone
    from cnl.engine.features import cached_split
    from cnl.models.frozen import split

    data = generate(tmp_path / "data", SynthConfig(classes=3, train_per_class=2, test_per_class=1, image_size=40))
    model = create_model("resnet18_cnl5", 3, width=8)
    freeze_backbone(model)
    dataset = build_dataset("cub", data, "test", eval_transform(32))
    cut = split(model, torch.stack([dataset[0][0]]))
    assert cut.start == "layer4.0" and cut.responses  # the query's block; responses before it cached

    def cached(dataset=dataset):
        features, shapes, computed = cached_split(tmp_path / "features", "test", model, cut, dataset, 2, 0, CPU.device)
        return features, computed

    first, computed = cached()
    assert computed and len(first) == 3 and first[0][0].ndim == 1
    again, computed = cached()
    assert not computed and torch.equal(again.rows, first.rows)
    with torch.no_grad():
        model.fc.weight.add_(1)  # what trains is not what the cache depends on
    assert not cached()[1]
    with torch.no_grad():
        model.layer1[0].conv1.weight.mul_(2)
    assert cached()[1]
    assert cached(build_dataset("cub", data, "test", eval_transform(32, 40)))[1]
    image = dataset.samples[0][0]
    image.write_bytes(image.read_bytes())  # the same bytes, written again: another modification time
    assert cached()[1]
    assert len(list((tmp_path / "features").iterdir())) == 1  # the stale files removed
    (cache,) = (tmp_path / "features").iterdir()
    cache.write_bytes(cache.read_bytes()[:-100])  # damaged: computed again, nothing lost but time
    features, computed = cached()
    assert computed and len(features) == 3


def test_a_cut_is_checked_and_what_cannot_be_cached_is_refused(tmp_path):
    from cnl.engine.builders import freeze_backbone
    from cnl.models.frozen import split

    vit = create_model("timm:vit_tiny_patch16_224", 3)
    freeze_backbone(vit)
    assert split(vit, torch.randn(1, 3, 224, 224)).order == ["head"]  # a linear probe: the head's input
    plugged = create_model("timm:vit_tiny_patch16_224_cnl5", 3)
    freeze_backbone(plugged)
    with pytest.raises(InvalidValue, match="forward is not its top-level modules in sequence"):
        split(plugged, torch.randn(1, 3, 224, 224))
    with pytest.raises(InvalidValue, match="cache_features needs --freeze backbone"):
        make_config({"data_root": "x", "cache_features": True})
    with pytest.raises(InvalidValue, match="cache_features cannot go with mixup, augment"):
        make_config({"data_root": "x", "cache_features": True, "freeze": "backbone", "mixup": 0.2,
                     "augment": "randaugment"})  # fmt: skip


def test_the_cache_size_the_docs_give_for_resnet50_cnl5_at_448():
    from cnl.engine.builders import freeze_backbone
    from cnl.models.frozen import _cut, frozen_part

    with torch.device("meta"):
        model = create_model("resnet50_cnl5", 200)
        freeze_backbone(model)
        tensors = frozen_part(model, _cut(model), torch.empty(1, 3, 448, 448))
    assert round(sum(t.numel() * 4 for t in tensors) / 1e6) == 24  # docs/training.md: "about 24 MB an image"
