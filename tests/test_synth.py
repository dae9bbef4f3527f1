"""The synthetic benchmark: CUB layout, determinism, the class grammar; `cnl data` commands."""

import hashlib
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnl.cli import main
from cnl.data import build_dataset
from cnl.data.synth import BENCHMARK, MARKS, PATTERNS, SILHOUETTES, SynthConfig, class_grid, generate, render_sample

SMALL = SynthConfig(task="parts", classes=4, train_per_class=3, test_per_class=2, image_size=48, seed=3)


def digest(root):
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_writes_the_cub_layout_and_loads_through_the_cub_loader(tmp_path):
    root = generate(tmp_path / "synth", SMALL)
    train, test = build_dataset("cub", root, "train"), build_dataset("auto", root, "test")
    assert len(train) == 12 and len(test) == 8
    # A base class and its three one-part variants, one per scale.
    assert train.classes == ["oval plain dot", "oval plain bar", "oval stripes dot", "diamond plain dot"]
    assert sorted(set(train.targets)) == [0, 1, 2, 3] and train.targets.count(2) == 3
    image, _ = test[0]
    assert image.shape == (3, 48, 48)
    boxes = build_dataset("cub", root, "train", crop_to_box=True)
    assert all(0 < boxes[k][0].shape[2] <= 48 for k in range(3))


def test_same_arguments_same_bytes_other_seed_other_bytes(tmp_path):
    first = digest(generate(tmp_path / "a", SMALL))
    assert first == digest(generate(tmp_path / "b", SMALL))
    other = digest(generate(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 4})))
    assert other.keys() == first.keys() and other != first


def test_classes_differ_by_one_part_at_one_scale():
    grid = class_grid(12)
    assert len(set(grid)) == 12
    # Every attribute varies, and every class has a neighbour differing in one attribute only.
    assert all(len({cell[axis] for cell in grid}) > 1 for axis in range(3))
    one_apart = [(a, b) for a, b in itertools.combinations(grid, 2) if sum(x != y for x, y in zip(a, b)) == 1]
    for axis in range(3):
        assert any(a[axis] != b[axis] for a, b in one_apart)
    assert all(any(c in pair for pair in one_apart) for c in grid)
    assert len(class_grid(len(SILHOUETTES) * len(PATTERNS) * len(MARKS))) == 125


def test_classes_differ_in_pixels_where_their_part_differs():
    """Same seed, classes differing only in the small mark: the images differ, but little.

    Differences of a few levels are ignored: the contrast jitter depends on the image's
    mean, which the mark moves by a fraction of a level.
    """
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    a, _ = render_sample((0, 0, 0), 96, rng())
    b, _ = render_sample((0, 0, 1), 96, rng())
    c, _ = render_sample((1, 0, 0), 96, rng())

    def changed(x, y):
        return (np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)) > 8).any(-1).mean()

    assert 0 < changed(a, b) < 0.02 < changed(a, c)


def test_invalid_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="--classes must be between 2 and 125 for the parts task"):
        generate(tmp_path, SynthConfig(task="parts", classes=500))
    with pytest.raises(ValueError, match="--classes must be between 2 and 12 for the relation task"):
        generate(tmp_path, SynthConfig(task="relation", classes=13))
    with pytest.raises(ValueError, match="--classes must be between 2 and 4 for the skin_control task"):
        generate(tmp_path, SynthConfig(task="skin_control", classes=5))
    valid = "relation, control, parts, skin, skin_control, shape"
    with pytest.raises(ValueError, match=f"unknown task 'shapes'; valid tasks: {valid}"):
        generate(tmp_path, SynthConfig(task="shapes"))
    with pytest.raises(ValueError, match="--seed must be 0 or more, got -1"):  # numpy's seeds are never negative
        generate(tmp_path, SynthConfig(seed=-1))
    with pytest.raises(ValueError, match="4 classes of 1000000000 \\+ 50 images is 4,000,000,200 images; the synth"):
        generate(tmp_path, SynthConfig(task="skin_control", classes=4, train_per_class=10**9, test_per_class=50))
    assert not any(tmp_path.iterdir())  # refused before a file was written
    for size in (8, 100_000):  # the larger asked numpy for 224 GiB
        with pytest.raises(ValueError, match=f"--image-size must be between 32 and 1024 pixels, got {size}"):
            generate(tmp_path, SynthConfig(image_size=size))


@given(
    task=st.sampled_from(["parts", "relation", "skin_control", "shape", "nonsense"]),
    counts=st.tuples(*[st.integers(-5, 10**10)] * 3),
    size=st.integers(-5, 10**6),
    seed=st.integers(-5, 10**12),
)
def test_any_counts_are_a_benchmark_to_write_or_one_line(task, counts, size, seed):
    """Whatever numbers ``cnl data synth`` is given, they are checked before any file is
    written: a benchmark of at most ``MAX_IMAGES`` images, or one line saying what is wrong."""
    from cnl.data.synth import MAX_IMAGE_SIZE, MAX_IMAGES, TASKS
    from cnl.errors import InvalidValue

    classes, train, test = counts
    config = SynthConfig(task, classes, train, test, size, seed)
    try:
        config.validate()
    except InvalidValue as error:
        assert len(str(error).splitlines()) == 1
    else:
        assert task in TASKS and 2 <= classes and 1 <= min(train, test) and 32 <= size <= MAX_IMAGE_SIZE
        assert classes * (train + test) <= MAX_IMAGES and seed >= 0


def test_cli_synth_and_check(tmp_path, capsys):
    out = tmp_path / "s"
    sheet = tmp_path / "sheet.png"
    args = ["--classes", "3", "--train-per-class", "2", "--test-per-class", "1", "--image-size", "40"]
    assert main(["data", "synth", "--out", str(out), *args, "--contact-sheet", str(sheet)]) == 0
    assert sheet.stat().st_size > 0
    assert main(["data", "check", "--root", str(out)]) == 0
    report = capsys.readouterr().out
    assert "train: 6 images, 3 classes" in report and "test: 3 images" in report
    victim = next((out / "images").rglob("*.jpg"))
    victim.unlink()
    assert main(["data", "check", "--dataset", "cub", "--root", str(out)]) == 1
    assert f"missing: {victim}" in capsys.readouterr().out


V010 = ["--task", "parts", "--classes", "12", "--train-per-class", "80", "--test-per-class", "25", "--image-size", "64",
        "--seed", "0"]  # fmt: skip


@pytest.mark.parametrize("flags, config", [([], BENCHMARK), (V010, SynthConfig())])
def test_cnl_data_synth_writes_the_benchmark_and_these_flags_version_0_1_0s(flags, config, tmp_path, monkeypatch):
    """With no flags, the demo's data; the flags docs/datasets.md gives, the parts task that
    version 0.1.0 wrote by default (``SynthConfig``'s defaults are still that version's)."""
    written = []
    monkeypatch.setattr("cnl.data.synth.generate", lambda out, config: written.append(config) or out)
    assert main(["data", "synth", "--out", str(tmp_path), *flags]) == 0
    assert written == [config]


def test_the_demo_trains_on_the_benchmark_at_its_size(tmp_path, monkeypatch):
    from cnl import demo

    written = []
    monkeypatch.setattr(demo, "generate", lambda out, config: written.append(config))
    config = demo.synthetic_config(tmp_path, quick=False)
    assert written == [BENCHMARK] and config.data_root == str(tmp_path / "data")
    assert config.img_size == BENCHMARK.image_size and config.val_split == 0.2  # the epoch chosen on validation
    assert BENCHMARK == SynthConfig(task="skin_control", classes=4, train_per_class=200, test_per_class=50,
                                    image_size=96, seed=1)  # fmt: skip


def test_the_relation_task_needs_the_mark_where_the_body_puts_its_head():
    """In the relation task every image holds its class mark at the head and another kind
    at the tail, and the background marks of every kind: which marks are present does not
    tell the class. The control draws the same object with its class mark alone."""
    from cnl.data.synth import RELATION_MARKS, relation_grid, render_relation_object

    grid = relation_grid(12)
    assert len(set(grid)) == 12 and {s for s, _ in grid} == {0, 1, 2} and {m for _, m in grid} == {0, 1, 2, 3}
    assert relation_grid(4) == [(0, 0), (1, 0), (2, 0), (0, 1)]  # shapes and marks both vary from 4 classes on

    for cell in grid:
        with_tail = render_relation_object(cell, 160, np.random.default_rng(1), tail=True)
        alone = render_relation_object(cell, 160, np.random.default_rng(1), tail=False)
        head, tail = np.asarray(with_tail)[72:88, 140:156], np.asarray(with_tail)[72:88, 28:44]
        assert (np.asarray(alone)[72:88, 140:156] == head).all()  # the same head mark
        assert (np.asarray(alone)[72:88, 28:44] != tail).any()  # a mark at the tail only in the relation task
    assert len(RELATION_MARKS) == 4


def test_the_tasks_write_their_classes_and_same_bytes(tmp_path):
    for task in ("relation", "control"):
        config = SynthConfig(task=task, classes=6, train_per_class=2, test_per_class=1, image_size=48)
        root = generate(tmp_path / task, config)
        train = build_dataset("auto", root, "train")
        assert train.classes[:4] == ["fish dot", "teardrop dot", "arrow dot", "fish bar"] and len(train) == 12
        assert digest(root) == digest(generate(tmp_path / f"{task}-again", config))
    assert digest(tmp_path / "relation") != digest(tmp_path / "control")


def test_the_skin_tasks_write_their_classes_and_same_bytes(tmp_path):
    for task in ("skin", "skin_control"):
        config = SynthConfig(task=task, classes=4, train_per_class=2, test_per_class=1, image_size=48)
        root = generate(tmp_path / task, config)
        train = build_dataset("auto", root, "train")
        assert train.classes == ["stripes skin", "spots skin", "checks skin", "rings skin"] and len(train) == 8
        assert digest(root) == digest(generate(tmp_path / f"{task}-again", config))
    assert digest(tmp_path / "skin") != digest(tmp_path / "skin_control")
    config = SynthConfig(task="shape", classes=4, train_per_class=2, test_per_class=1, image_size=48)
    train = build_dataset("auto", generate(tmp_path / "shape", config), "train")
    assert train.classes == ["fish shape", "teardrop shape", "arrow shape", "diamond shape"]


def test_in_the_skin_task_every_image_wears_every_texture_and_only_the_body_tells_the_class():
    """Which textures an image holds, and how much of each, says nothing of its class: the
    body and three blobs of its area wear the four. The control is the same scene with the
    blobs plain, so that the texture alone tells the class there."""
    from cnl.data.synth import SKIN_PATTERNS, skin_scene

    ratios = []
    for index in range(40):
        kind = index % len(SKIN_PATTERNS)
        scene = skin_scene(kind, 64, np.random.default_rng(index), "skin")
        control = skin_scene(kind, 64, np.random.default_rng(index), "skin_control")
        assert scene[0].texture == SKIN_PATTERNS[kind] and scene[0].marked.any()
        assert sorted(patch.texture for patch in scene) == sorted(SKIN_PATTERNS)
        assert all((a.region == b.region).all() for a, b in zip(scene, control))
        assert (scene[0].marked == control[0].marked).all()
        assert not any(patch.texture or patch.marked.any() for patch in control[1:])
        ratios += [patch.region.sum() / scene[0].region.sum() for patch in scene[1:]]
    assert 0.9 < min(ratios) and max(ratios) < 1.1


def test_in_the_shape_task_the_body_tells_the_class_and_its_texture_does_not():
    """The shape task is the control of a task that a fine detail decides: the same scenes,
    the class in the body's coarse shape, the texture it wears drawn at random."""
    from cnl.data.synth import SHAPES, SKIN_PATTERNS, silhouette_mask, skin_scene

    worn = {kind: set() for kind in range(len(SHAPES))}
    for index in range(40):
        kind = index % len(SHAPES)
        scene = skin_scene(kind, 64, np.random.default_rng(index), "shape")
        worn[kind].add(scene[0].texture)
        assert not any(patch.texture or patch.marked.any() for patch in scene[1:])
    assert all(len(textures) > 1 for textures in worn.values())  # the texture says nothing of the class
    assert set().union(*worn.values()) == set(SKIN_PATTERNS)
    axis = np.linspace(-1, 1, 101)
    u, v = np.meshgrid(axis, axis)
    masks = [silhouette_mask(shape, u, v) for shape in SHAPES]
    assert all((a != b).mean() > 0.05 for k, a in enumerate(masks) for b in masks[k + 1 :])  # shapes tell apart
