"""Miniature datasets written in each official layout, with the real file formats."""

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.io import savemat


def write_image(path: Path, colour=(200, 30, 30), size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def cell(strings):
    """A MATLAB cell column of strings."""
    array = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        array[i, 0] = s
    return array


def struct_array(rows: list[dict]):
    """A MATLAB 1xN struct array."""
    fields = list(rows[0])
    array = np.empty((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f in fields:
            value = row[f]
            array[0, i][f] = np.array([[value]]) if not isinstance(value, str) else np.array([value])
    return array


CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_cub(root: Path) -> Path:
    """3 classes, 2 train + 1 test images each; ids interleave the splits."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(CUB_CLASSES)))
    return write_tables(
        root, [str(k + 1) for k in range(3)], lambda k, j: str(3 * k + j + 1),
        lambda k, j, _: f"{CUB_CLASSES[k]}/{CUB_CLASSES[k][4:]}_{j:04d}.jpg", "2.0 3.0 10.0 8.0",
    )  # fmt: skip


def write_tables(root: Path, labels: list[str], image_id: Any, relative: Any, box: str) -> Path:
    """The images and four tables CUB and NABirds share (images, labels, the split, boxes):
    3 images of each label, the middle one a test image; ``image_id(k, j)`` and
    ``relative(k, j, image_id)`` name image j of label k."""
    tables: dict[str, list[str]] = {name: [] for name in TABLES}
    for k, label in enumerate(labels):
        for j in range(3):
            identity = image_id(k, j)
            path = relative(k, j, identity)
            write_image(root / "images" / path, (60 * k, 40, 20 * j), size=(30, 20))
            for name, value in zip(TABLES, (path, label, str(int(j != 1)), box)):
                tables[name].append(f"{identity} {value}")
    for name, rows in tables.items():
        (root / name).write_text("\n".join(rows) + "\n")
    return root


TABLES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")


DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def write_dogs(root: Path) -> Path:
    lists = {"train": [], "test": []}
    for k, folder in enumerate(DOG_FOLDERS):
        for j in range(3):
            relative = f"{folder}/{folder.split('-')[0]}_{j}.jpg"
            write_image(root / "Images" / relative, (10, 60 * k, 20))
            lists["test" if j == 2 else "train"].append((relative, k + 1))
    (root / "lists").mkdir()
    for split, entries in lists.items():
        savemat(
            root / "lists" / f"{split}_list.mat",
            {"file_list": cell([e[0] for e in entries]), "labels": np.array([[e[1]] for e in entries], dtype=np.uint8)},
        )
    return root


CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def car_annotation(k: int, **extra) -> dict:
    return {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 15, "bbox_y2": 12, "class": k + 1, **extra}


def write_cars_devkit(root: Path) -> Path:
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(CAR_CLASSES, dtype=object).reshape(1, -1)})
    for split, count in (("train", 2), ("test", 1)):
        rows = []
        for k in range(len(CAR_CLASSES)):
            for _ in range(count):
                fname = f"{len(rows) + 1:05d}.jpg"
                write_image(root / f"cars_{split}" / fname, (k * 70, 0, 0))
                rows.append(car_annotation(k, fname=fname))
        name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        savemat(root / "devkit" / name, {"annotations": struct_array(rows)})
    return root


def write_cars_combined(root: Path) -> Path:
    rows = []
    for k in range(len(CAR_CLASSES)):
        for j in range(3):
            relative = f"car_ims/{len(rows) + 1:06d}.jpg"
            write_image(root / relative, (0, k * 70, 0))
            rows.append(car_annotation(k, relative_im_path=relative, test=int(j == 2)))
    savemat(
        root / "cars_annos.mat",
        {"annotations": struct_array(rows), "class_names": np.array(CAR_CLASSES, dtype=object).reshape(1, -1)},
    )
    return root


AIRCRAFT = [
    ("707-320", "Boeing 707", "Boeing"),
    ("727-200", "Boeing 727", "Boeing"),
    ("Cessna 172", "Cessna 172", "Cessna"),
]


def write_aircraft(root: Path) -> Path:
    data = root / "data"
    levels = {"variant": 0, "family": 1, "manufacturer": 2}
    names = {level: sorted({a[i] for a in AIRCRAFT}) for level, i in levels.items()}
    for level, file in (("variant", "variants"), ("family", "families"), ("manufacturer", "manufacturers")):
        (data / f"{file}.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / f"{file}.txt").write_text("\n".join(names[level]) + "\n")
    listings = {(level, split): [] for level in levels for split in ("train", "val", "trainval", "test")}
    for k, aircraft in enumerate(AIRCRAFT):
        for j in range(3):
            image_id = f"{1000000 + 10 * k + j}"
            write_image(data / "images" / f"{image_id}.jpg", (0, 0, 70 * k))
            splits = [("train", "trainval"), ("val", "trainval"), ("test",)][j]
            for level, i in levels.items():
                for split in splits:
                    listings[(level, split)].append(f"{image_id} {aircraft[i]}")
    for (level, split), lines in listings.items():
        (data / f"images_{level}_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_folder(root: Path, test_dir: str = "test") -> Path:
    for split, count in (("train", 2), (test_dir, 1)):
        for name in ("cardinal", "blue jay"):
            for j in range(count):
                write_image(root / split / name / f"{j}.png", (j * 50, 0, 0))
    return root


def write_list(root: Path, base: int = 0) -> Path:
    lines = {"train": [], "test": []}
    for k in range(2):
        for j in range(3):
            relative = f"images/class {k}/img {j}.jpg"
            write_image(root / relative, (k * 90, j * 40, 0))
            lines["test" if j == 2 else "train"].append(f"{relative} {k + base}")
    for split, entries in lines.items():
        (root / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return root


def write_flowers(root: Path) -> Path:
    """3 classes of 4 images: train and val one each per class, test two."""
    labels, split = [], {"trnid": [], "valid": [], "tstid": []}
    for k in range(3):
        for j in range(4):
            image_id = len(labels) + 1
            write_image(root / "jpg" / f"image_{image_id:05d}.jpg", (k * 60, 200, j * 30))
            labels.append(k + 1)
            split[["trnid", "valid", "tstid", "tstid"][j]].append(image_id)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(root / "setid.mat", {key: np.array([ids], dtype=np.uint16) for key, ids in split.items()})
    return root


# NABirds' classes.txt holds the hierarchy too: 0 is the root, 1 an order, 295 etc. species;
# images are labelled with the leaves only, whose ids are not contiguous.
NABIRDS_CLASSES = {
    "0": "Birds", "1": "Perching Birds", "295": "Red-tailed Hawk (Adult)", "296": "Red-tailed Hawk (Immature)",
    "313": "Ruby-throated Hummingbird",
}  # fmt: skip
NABIRDS_PARENTS = {"1": "0", "295": "1", "296": "1", "313": "1"}


def write_nabirds(root: Path) -> Path:
    """NABirds' files: 3 leaf classes of sparse ids, 2 train + 1 test images each, image ids
    as the dataset writes them (UUIDs), images in folders named by the 4-digit class id."""
    import uuid

    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in NABIRDS_CLASSES.items()))
    (root / "hierarchy.txt").write_text("".join(f"{c} {p}\n" for c, p in NABIRDS_PARENTS.items()))
    leaves = ["295", "296", "313"]
    return write_tables(
        root, leaves, lambda k, j: str(uuid.UUID(int=100 * k + j + 1)),
        lambda k, j, identity: f"{int(leaves[k]):04d}/{identity.replace('-', '')}.jpg", "1 2 10 8",
    )  # fmt: skip
