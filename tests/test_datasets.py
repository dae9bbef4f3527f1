"""Every official layout loads with the right counts, labels and class names."""

import numpy as np
import pytest
import torch

from cnl.data import LayoutError, build_dataset, detect_layout, eval_transform, train_transform
from layouts import (
    AIRCRAFT,
    CAR_CLASSES,
    write_aircraft,
    write_cars_combined,
    write_cars_devkit,
    write_cub,
    write_dogs,
    write_flowers,
    write_folder,
    write_image,
    write_list,
)


def labels_of(dataset):
    return [label for _, label in dataset.samples]


def test_cub(tmp_path):
    root = write_cub(tmp_path)
    train, test = build_dataset("cub", root, "train"), build_dataset("cub", root, "test")
    assert train.classes == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert len(train) == 6 and len(test) == 3
    assert labels_of(train) == [0, 0, 1, 1, 2, 2] and labels_of(test) == [0, 1, 2]
    assert test.samples[1][0] == root / "images" / "002.Laysan_Albatross" / "Laysan_Albatross_0001.jpg"
    image, label = train[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8 and label == 0
    cropped = build_dataset("cub", root, "train", crop_to_box=True)
    assert cropped[0][0].shape == (3, 8, 10)  # x, y, width, height = 2, 3, 10, 8
    pil = build_dataset("cub", root, "train", crop_to_box=True, decoder="pil")
    assert pil[0][0].size == (10, 8) and pil[0][0].mode == "RGB"


def test_cub_inside_its_archive_folder(tmp_path):
    write_cub(tmp_path / "CUB_200_2011")
    assert detect_layout(tmp_path) == "cub"
    assert len(build_dataset("auto", tmp_path, "train")) == 6


def test_dogs(tmp_path):
    root = write_dogs(tmp_path)
    train, test = build_dataset("dogs", root, "train"), build_dataset("dogs", root, "test")
    assert train.classes == ["Chihuahua", "Japanese spaniel", "Maltese dog"]
    assert labels_of(train) == [0, 0, 1, 1, 2, 2] and labels_of(test) == [0, 1, 2]
    pixel = train[3][0][:, 0, 0].tolist()  # class 1's colour, through JPEG
    assert all(abs(a - b) <= 2 for a, b in zip(pixel, (10, 60, 20)))


@pytest.mark.parametrize("writer", [write_cars_devkit, write_cars_combined])
def test_cars_both_layouts(tmp_path, writer):
    root = writer(tmp_path)
    train, test = build_dataset("cars", root, "train"), build_dataset("cars", root, "test")
    assert train.classes == CAR_CLASSES
    assert labels_of(train) == [0, 0, 1, 1, 2, 2] and labels_of(test) == [0, 1, 2]
    assert all(path.is_file() for path, _ in train.samples + test.samples)
    assert build_dataset("cars", root, "train", crop_to_box=True)[0][0].shape == (3, 10, 14)
    assert detect_layout(root) == "cars"


def test_flowers102_official_splits(tmp_path):
    root = write_flowers(tmp_path / "flowers-102")
    sizes = {split: len(build_dataset("flowers102", tmp_path, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 3, "test": 6}
    train = build_dataset("auto", root, "train")
    assert train.classes == ["flower 1", "flower 2", "flower 3"] and labels_of(train) == [0, 1, 2]
    assert train.samples[1][0] == root / "jpg" / "image_00005.jpg" and detect_layout(tmp_path) == "flowers102"


def test_cars_as_kaggle_nests_the_devkit_and_the_first_missing_file_is_named(tmp_path):
    flat = write_cars_devkit(tmp_path / "flat")
    kaggle = tmp_path / "kaggle"
    for split in ("train", "test"):
        (kaggle / f"cars_{split}").mkdir(parents=True)
        (flat / f"cars_{split}").rename(kaggle / f"cars_{split}" / f"cars_{split}")
    (kaggle / "car_devkit").mkdir()
    (flat / "devkit" / "cars_test_annos_withlabels.mat").rename(kaggle / "cars_test_annos_withlabels (1).mat")
    (flat / "devkit").rename(kaggle / "car_devkit" / "devkit")
    assert detect_layout(kaggle) == "cars"
    test = build_dataset("cars", kaggle, "test")
    assert labels_of(test) == [0, 1, 2] and test.samples[0][0].parent == kaggle / "cars_test" / "cars_test"
    (kaggle / "cars_train" / "cars_train" / "00002.jpg").unlink()
    missing = r"cars_train_annos.mat, annotation 2 names .*00002.jpg, which does not exist"
    with pytest.raises(LayoutError, match=missing):
        build_dataset("cars", kaggle, "train")


def test_cars_by_class_folders_and_their_annotation_lists(tmp_path):
    copy = tmp_path / "car_data" / "car_data"
    for split, count in (("train", 2), ("test", 1)):
        for k, name in enumerate(CAR_CLASSES):
            for j in range(count):
                write_image(copy / split / name / f"{k}{j:04d}.jpg", (k * 70, 0, 0))
    (copy / "anno_train.csv").write_text("00000.jpg,1,2,15,12,1\n00001.jpg,1,2,15,12,1\n")
    assert detect_layout(tmp_path) == "cars"
    train = build_dataset("cars", tmp_path, "train")
    assert train.classes == sorted(CAR_CLASSES) and len(train) == 6
    (copy / "anno_train.csv").write_text("00000.jpg,1,2,15,12,1\n09999.jpg,1,2,15,12,1\n")
    with pytest.raises(LayoutError, match=r"anno_train.csv, line 2 names 09999.jpg, which is not under"):
        build_dataset("cars", tmp_path, "train")


@pytest.mark.parametrize("level, index", [("variant", 0), ("family", 1), ("manufacturer", 2)])
def test_aircraft_levels(tmp_path, level, index):
    root = write_aircraft(tmp_path)
    train = build_dataset("aircraft", root, "train", level=level)
    test = build_dataset("aircraft", root, "test", level=level)
    names = sorted({a[index] for a in AIRCRAFT})
    assert train.classes == names and len(train) == 6 and len(test) == 3
    assert [train.classes[label] for label in labels_of(test)] == [a[index] for a in AIRCRAFT]
    assert detect_layout(root) == "aircraft"


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_folder(tmp_path, test_dir):
    root = write_folder(tmp_path, test_dir)
    train, test = build_dataset("folder", root, "train"), build_dataset("folder", root, "test")
    assert train.classes == test.classes == ["blue jay", "cardinal"]
    assert labels_of(train) == [0, 0, 1, 1] and labels_of(test) == [0, 1]
    assert detect_layout(root) == "folder"


@pytest.mark.parametrize("base", [0, 1])
def test_list_files(tmp_path, base):
    root = write_list(tmp_path, base)
    train, test = build_dataset("list", root, "train"), build_dataset("list", root, "test")
    assert labels_of(train) == [0, 0, 1, 1] and labels_of(test) == [0, 1]
    assert train.samples[0][0] == root / "images" / "class 0" / "img 0.jpg"
    assert train.classes == ["class 0", "class 1"]
    (root / "classes.txt").write_text("sparrow\nfinch\n")
    assert build_dataset("auto", root, "test").classes == ["sparrow", "finch"]


def test_missing_metadata_names_the_file_and_layout(tmp_path):
    root = write_cub(tmp_path)
    (root / "train_test_split.txt").unlink()
    with pytest.raises(LayoutError, match=r"train_test_split.txt; expected the CUB-200-2011 layout"):
        build_dataset("cub", root, "train")
    with pytest.raises(LayoutError, match=r"lists/train_list.mat; expected the Stanford Dogs layout"):
        build_dataset("dogs", tmp_path, "train")
    with pytest.raises(LayoutError, match=r"cars_meta.mat; expected the Stanford Cars layout"):
        build_dataset("cars", tmp_path, "train")
    with pytest.raises(LayoutError, match=r"cannot tell the layout"):
        build_dataset("auto", tmp_path / "images", "train")


def test_bad_labels_name_file_and_line(tmp_path):
    root = write_cub(tmp_path)
    labels = (root / "image_class_labels.txt").read_text().replace("2 1\n", "2 7\n")
    (root / "image_class_labels.txt").write_text(labels)
    with pytest.raises(LayoutError, match=r"image_class_labels.txt, image 2: label 7 is outside 1..3"):
        build_dataset("cub", root, "train")
    lists = write_list(tmp_path / "lists")
    (lists / "train.txt").write_text("images/class 0/img 0.jpg zero\n")
    with pytest.raises(LayoutError, match=r"train.txt, line 1: label 'zero'"):
        build_dataset("list", lists, "train")


def test_unknown_names_list_the_choices(tmp_path):
    write_cub(tmp_path)
    choices = "cub, dogs, cars, aircraft, flowers102, nabirds, folder, list"
    with pytest.raises(ValueError, match=f"unknown dataset 'birds'.*{choices}"):
        build_dataset("birds", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_dataset("cub", tmp_path, "dev")
    with pytest.raises(ValueError, match="unknown FGVC-Aircraft level"):
        build_dataset("aircraft", write_aircraft(tmp_path / "a"), "train", level="model")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset("cub", tmp_path / "nowhere", "train")


def test_transforms_follow_the_paper():
    image = write_image.__globals__["Image"].new("RGB", (500, 375), (124, 116, 104))
    train = train_transform(64)(image)
    assert train.shape == (3, 64, 64) and train.dtype == torch.float32
    test = eval_transform(448)
    assert [type(t).__name__ for t in test.transforms][1:3] == ["Resize", "CenterCrop"]
    assert test.transforms[1].size == [512]
    out = test(image)
    assert out.shape == (3, 448, 448)
    # ImageNet mean colour normalises to about zero.
    assert out.abs().max() < 0.02
    crop = train_transform(448).transforms[1]
    assert crop.scale == (0.08, 1.25)


def test_both_decoders_give_the_same_pixels(tmp_path):
    root = write_cub(tmp_path)
    tensors = build_dataset("cub", root, "test")
    images = build_dataset("cub", root, "test", decoder="pil")
    for k in range(len(tensors)):
        from_pil = torch.from_numpy(np.asarray(images[k][0])).permute(2, 0, 1).int()
        assert (tensors[k][0].int() - from_pil).abs().max() <= 2
    with pytest.raises(ValueError, match="unknown decoder 'cv2'"):
        build_dataset("cub", root, "test", decoder="cv2")


def test_nabirds_reads_its_sparse_class_ids_hierarchy_and_boxes(tmp_path, capsys):
    from cnl.cli import main
    from layouts import write_nabirds

    root = write_nabirds(tmp_path / "nabirds")
    train = build_dataset("auto", tmp_path, "train")  # found inside its nabirds/ folder, told from CUB
    test = build_dataset("nabirds", root, "test", crop_to_box=True)
    names = ["Red-tailed Hawk (Adult)", "Red-tailed Hawk (Immature)", "Ruby-throated Hummingbird"]
    assert train.classes == test.classes == names and len(train) == 6 and len(test) == 3
    assert sorted(train.targets) == [0, 0, 1, 1, 2, 2] and test.boxes == [(1.0, 2.0, 11.0, 10.0)] * 3
    assert train.parents == dict.fromkeys(names, "Perching Birds")
    assert main(["data", "check", "--dataset", "nabirds", "--root", str(root)]) == 0
    assert "nabirds" in capsys.readouterr().out
    (root / "image_class_labels.txt").write_text((root / "image_class_labels.txt").read_text().replace(" 313", " 999"))
    with pytest.raises(ValueError, match=r"image_class_labels.txt, image .*: class '999' is not in classes.txt"):
        build_dataset("nabirds", root, "train")


def test_the_catalog_is_the_one_record_of_each_dataset():
    """Every reader, fetcher, published split size, validation split and command-line choice
    comes from cnl.data.catalog: one record a dataset, each with its reader."""
    from cnl.data import check, datasets, download
    from cnl.data.catalog import CATALOG, detection_order
    from cnl.engine.builders import OFFICIAL_VALIDATION

    assert list(datasets.BUILDERS) == list(CATALOG) and set(datasets.READERS) == set(CATALOG)
    assert set(download.SOURCES) == {name for name, record in CATALOG.items() if record.fetchable}
    assert set(check.OFFICIAL) == {name for name, record in CATALOG.items() if record.splits}
    assert OFFICIAL_VALIDATION == {"aircraft": "train_without_val"}
    order = [record.name for record in detection_order()]
    assert order.index("nabirds") < order.index("cub") and order.index("list") < order.index("folder")
    for record in CATALOG.values():
        if record.splits:
            assert set(record.published) <= set(record.splits) and set(record.disjoint) <= set(record.splits)
        if record.validation:
            assert record.validation in record.splits


def test_each_catalog_marker_identifies_its_layout(tmp_path):
    from cnl.data.catalog import CATALOG

    for record in CATALOG.values():
        for marker in record.markers:
            root = tmp_path / record.name / marker.replace("/", "_")
            (root / marker).parent.mkdir(parents=True, exist_ok=True)
            if marker.endswith("train"):  # a folder
                (root / marker).mkdir()
            else:
                (root / marker).touch()
            assert detect_layout(root) == record.name, (record.name, marker)
