"""``cnl demo --dataset``: the comparison on a balanced subset of real photos, fetched by
``cnl data get`` from a server on 127.0.0.1 or read from the user's folder; the subset
drawn the same way every time; the report opening with the verdict and the class-by-class
attention."""

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archives import serve
from cnl.cli import main
from cnl.data.subset import SubsetSpec, folder_name, write_subset
from layouts import write_folder, write_image

MODELS = ("resnet18", "resnet18_nl5", "resnet18_cnl5")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_flowers102_is_fetched_subset_and_compared_in_one_command(server, tmp_path, monkeypatch, capsys):
    serve(server, "flowers102", tmp_path / "served", monkeypatch)
    output, root = tmp_path / "demo", tmp_path / "data"
    argv = ["demo", "--dataset", "flowers102", "--root", str(root), "--mirror", server.url, "--quick"]
    assert main([*argv, "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert sorted(set(server.fetched())) == ["102flowers.tgz", "imagelabels.mat", "setid.mat"]
    assert "\nMachine: " in out and " kernels, " in out  # which processor printed the table
    run = output / "quick" / "flowers102"
    # The miniature's 3 classes of 4 images, pooled over train, val and test: 2 + 1 of each drawn.
    for split, count in (("train", 2), ("test", 1)):
        folders = sorted(p.name for p in (run / "data" / split).iterdir())
        assert folders == ["flower 1", "flower 2", "flower 3"]
        assert all(len(list((run / "data" / split / f).iterdir())) == count for f in folders)
    for name in MODELS:
        assert f"| {name} |" in out
        assert (run / "ablation" / name / "seed1" / "checkpoints" / "best.pt").is_file()
    report = (run / "report" / "index.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[:2] == ["## Verdict", "## What the modules attend to, class by class"]
    assert "resnet18_cnl5: " in report.split("## What")[0] and "McNemar" in report.split("## What")[0]
    assert "resnet18_cnl5/seed0 (resnet18_cnl5), on the first test image of every class" in report
    assert len(list((run / "report").glob("class_resnet18_cnl5_seed0_*.png"))) == 3
    server.requests.clear()  # a second call downloads nothing and reuses the subset and the runs
    assert main([*argv, "--output", str(output)]) == 0
    assert server.fetched() == []
    assert "reusing" in capsys.readouterr().out


def test_any_folder_of_the_users_runs_the_same_comparison(tmp_path, capsys):
    root = write_folder(tmp_path / "photos")
    assert main(["demo", "--dataset", "folder", "--data-root", str(root), "--quick", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| resnet18_cnl5 |" in out and "McNemar, 2 images" in out
    assert sorted(p.name for p in (tmp_path / "quick" / "folder" / "data" / "train").iterdir()) == [
        "blue jay",
        "cardinal",
    ]


def test_the_same_settings_draw_the_same_bytes_and_another_seed_another_draw(tmp_path):
    root = tmp_path / "photos"
    for k in range(3):
        for j in range(6):
            write_image(root / "train" / f"class {k}" / f"{j}.png", (k * 80, j * 40, 7), size=(300, 200))
        write_image(root / "test" / f"class {k}" / "0.png", (k * 80, 250, 9), size=(300, 200))
    spec = SubsetSpec("folder", str(root), classes=2, train=4, test=2, short_side=50)
    first, again = write_subset(spec, tmp_path / "a"), write_subset(spec, tmp_path / "b")
    assert files_of(first) == files_of(again) and len(files_of(first)) == 2 * (4 + 2) + 1
    record = json.loads((first / "subset.json").read_text())
    assert list(record["classes"]) == ["class 0", "class 1"]  # the first classes, in the dataset's order
    assert all(len(drawn["train"]) == 4 and len(drawn["test"]) == 2 for drawn in record["classes"].values())
    from PIL import Image

    assert Image.open(next((first / "train" / "class 0").iterdir())).size == (75, 50)  # the shorter side 50
    stamp = (first / "subset.json").stat().st_mtime_ns
    assert write_subset(spec, first) == first and (first / "subset.json").stat().st_mtime_ns == stamp
    for damage in (b"{", b"[1, 2]", b"\xff\xfe", b'{"spec": 3}'):  # a damaged record: drawn again, the same
        (first / "subset.json").write_bytes(damage)
        assert write_subset(spec, first) == first and files_of(first) == files_of(again)
    other = json.loads((write_subset(dataclasses.replace(spec, seed=1), tmp_path / "c") / "subset.json").read_text())
    assert other["classes"] != record["classes"]


def test_class_names_become_one_safe_folder_each():
    taken: set[str] = set()
    assert [folder_name(n, taken) for n in ("F-16A/B", "F-16A_B", "=cmd", "..", "a\\b")] == [
        "F-16A_B",
        "F-16A_B 2",
        "=cmd",
        "_..",
        "a_b",
    ]


@pytest.mark.parametrize(
    "argv, said",
    [
        (["--dataset", "folder", "--classes", "1"], "--classes must be at least 2, got 1"),
        (["--dataset", "folder", "--test-per-class", "0"], "--test-per-class must be at least 1, got 0"),
        (["--dataset", "folder"], "cnl data get cannot fetch 'folder'"),
        (["--dataset", "cars"], "cnl data get cars says where to get it"),
        (["--dataset", "nonsense", "--data-root", "."], "unknown dataset 'nonsense'"),
        (["--dataset", "folder", "--data-root", "PHOTOS", "--train-per-class", "9"], "has 0 classes with at least"),
    ],
)
def test_what_the_photo_demo_cannot_do_is_one_line(argv, said, tmp_path, capsys):
    root = write_folder(tmp_path / "photos")
    argv = [str(root) if a == "PHOTOS" else a for a in argv]
    assert main(["demo", *argv, "--root", str(tmp_path / "data"), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.pt"))


@given(names=st.lists(st.text(max_size=12), max_size=8))
def test_any_class_names_become_distinct_single_path_components(names):
    taken: set[str] = set()
    folders = [folder_name(name, taken) for name in names]
    assert len(set(folders)) == len(folders)
    for folder in folders:
        assert folder and folder not in (".", "..") and not {"/", "\\", "\0"} & set(folder), repr(folder)
