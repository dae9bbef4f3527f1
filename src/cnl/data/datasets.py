"""Fine-grained datasets in their official layouts, and the user's own folders or lists.

Every loader parses the metadata up front (a missing file is an error naming it and the
expected layout) and returns a ``FineGrainedDataset``: ``classes`` (readable names,
index = label), ``samples`` (path, label) with 0-based labels, and images decoded on
demand. A file that cannot be decoded is skipped with a warning, recorded, and replaced
by the next readable sample, so one bad file never ends an epoch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from torch.utils.data import Dataset

from cnl.data.catalog import CATALOG, dataset_root, detection_order
from cnl.data.images import ImageError, load_image, load_tensor
from cnl.errors import DataError, InvalidValue, printable

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


class LayoutError(DataError):
    """Metadata that does not match the expected layout."""


class FineGrainedDataset(Dataset):
    """``(image, label)`` pairs with readable class names.

    Args:
        samples: ``(path, label)`` pairs, labels 0-based.
        classes: class names, index = label.
        transform: applied to the RGB PIL image.
        boxes: optional per-sample crop boxes (x0, y0, x1, y1), e.g. CUB's bounding boxes.
        skip_log: optional file to which each skipped path is appended, so that skips in
            DataLoader workers reach the main process.
        decoder: ``"tensor"`` (default): images as ``[3, H, W]`` uint8 tensors, JPEGs
            decoded by torchvision.io, the faster path; ``"pil"``: RGB PIL images.
        origins: per sample, where the metadata names it (``"ROOT/train.txt, line 3"``),
            for error messages.
    """

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: list[str],
        transform: Callable[[Image.Image], Any] | None = None,
        boxes: list[Box] | None = None,
        skip_log: str | Path | None = None,
        decoder: str = "tensor",
        origins: list[str] | None = None,
    ) -> None:
        if decoder not in ("tensor", "pil"):
            raise InvalidValue(f"unknown decoder {decoder!r}; valid decoders: tensor, pil")
        self.decoder = decoder
        self.origins = origins
        self.samples = samples
        self.classes = classes
        self.transform = transform
        self.boxes = boxes
        self.skip_log = skip_log
        self.skipped: dict[str, str] = {}
        self.parents: dict[str, str] = {}  # class name -> its parent's, where a dataset has a hierarchy

    def subset(self, indices: list[int], transform: Callable[[Image.Image], Any] | None) -> FineGrainedDataset:
        """The samples at ``indices`` with another transform (a validation set carved from a training split)."""
        return FineGrainedDataset(
            [self.samples[i] for i in indices],
            self.classes,
            transform,
            boxes=[self.boxes[i] for i in indices] if self.boxes else None,
            skip_log=self.skip_log,
            decoder=self.decoder,
            origins=[self.origins[i] for i in indices] if self.origins else None,
        )

    def missing(self) -> list[int]:
        """Indices of the samples whose image file does not exist."""
        return [index for index, (path, _) in enumerate(self.samples) if not Path(path).is_file()]

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Any:
        """The RGB image of sample ``index`` (cropped to its box if any); raises ImageError."""
        path = self.samples[index][0]
        if self.decoder == "pil":
            image = load_image(path)
            if not self.boxes:
                return image
            x0, y0, x1, y1 = (round(v) for v in self.boxes[index])
            return image.crop((x0, y0, x1, y1))
        image = load_tensor(path)
        if self.boxes:
            x0, y0, x1, y1 = (round(v) for v in self.boxes[index])
            image = image[:, max(0, y0) : y1, max(0, x0) : x1]
        return image

    def _record_skip(self, path: Path, error: ImageError) -> None:
        self.skipped[str(path)] = str(error)
        name, why = printable(str(path)), printable(str(error))  # one record a line, two fields
        logger.warning("skipping unreadable image %s: %s", name, why)
        if self.skip_log is not None:
            with open(self.skip_log, "a", encoding="utf-8") as log:
                log.write(f"{name}\t{why}\n")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        for offset in range(len(self.samples)):
            current = (index + offset) % len(self.samples)
            path, label = self.samples[current]
            try:
                image = self.load(current)
            except ImageError as error:
                self._record_skip(path, error)
                continue
            return (self.transform(image) if self.transform else image), label
        raise DataError(f"no readable image among the {len(self.samples)} samples")


def require(path: Path, layout: str) -> Path:
    """``path`` if it exists, else a LayoutError naming it and the expected layout."""
    if not path.exists():
        raise LayoutError(f"missing {path}; expected the {layout}")
    return path


def read_rows(path: Path, layout: str, columns: int) -> list[tuple[int, list[str]]]:
    """Whitespace-separated rows with their 1-based line numbers; blank lines skipped."""
    rows = []
    for number, line in enumerate(require(path, layout).read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split(maxsplit=columns - 1)
        if not fields:
            continue
        if len(fields) != columns:
            raise LayoutError(f"{path}, line {number}: expected {columns} fields, got {line!r}")
        rows.append((number, fields))
    return rows


def read_table(path: Path, layout: str, columns: int) -> dict[str, list[str]]:
    """Rows keyed by their first field (an image id)."""
    return {fields[0]: fields[1:] for _, fields in read_rows(path, layout, columns)}


def check_split(split: str, valid: tuple[str, ...]) -> str:
    if split not in valid:
        raise InvalidValue(f"unknown split {split!r}; valid splits: {', '.join(valid)}")
    return split


def parse_label(text: str, where: str, num_classes: int, base: int = 1) -> int:
    """A ``base``-based label as 0-based, checked against the number of classes."""
    try:
        label = int(float(text)) - base
    except ValueError:
        raise LayoutError(f"{where}: label {text!r} is not a number") from None
    if not 0 <= label < num_classes:
        raise LayoutError(f"{where}: label {text} is outside {base}..{num_classes - 1 + base}")
    return label


def pretty_name(folder: str) -> str:
    """``"001.Black_footed_Albatross" -> "Black footed Albatross"``; ``"n02085620-Chihuahua" -> "Chihuahua"``."""
    for separator in (".", "-"):
        head, _, tail = folder.partition(separator)
        if tail and (head.isdigit() or (head[:1] == "n" and head[1:].isdigit())):
            folder = tail
            break
    return folder.replace("_", " ")


# --- CUB-200-2011 -------------------------------------------------------------------

CUB_LAYOUT = "CUB-200-2011 layout: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/"


def cub_root(root: Path) -> Path:
    return root / "CUB_200_2011" if (root / "CUB_200_2011" / "images.txt").exists() else root


class TableRow(NamedTuple):
    """One image of CUB's or NABirds' tables."""

    image_id: str
    relative: str  # under images/
    label: str  # as written in image_class_labels.txt
    box: Box | None
    in_split: bool


def image_tables(root: Path, split: str, layout: str, crop_to_box: bool) -> list[TableRow]:
    """Every image of the tables CUB-200-2011 and NABirds share (images.txt,
    image_class_labels.txt, train_test_split.txt, bounding_boxes.txt), each id checked in
    every table, and whether it is in ``split``."""
    images = read_table(root / "images.txt", layout, 2)
    labels = read_table(root / "image_class_labels.txt", layout, 2)
    is_train = read_table(root / "train_test_split.txt", layout, 2)
    boxes = read_table(root / "bounding_boxes.txt", layout, 5) if crop_to_box else {}
    want = "1" if check_split(split, ("train", "test")) == "train" else "0"
    rows = []
    for image_id, (relative,) in images.items():
        for table, name in ((labels, "image_class_labels.txt"), (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise LayoutError(f"{root / name}: no entry for image id {image_id} of images.txt")
        box = None
        if crop_to_box:
            if image_id not in boxes:
                raise LayoutError(f"{root / 'bounding_boxes.txt'}: no box for image id {image_id}")
            x, y, w, h = (float(v) for v in boxes[image_id])
            box = (x, y, x + w, y + h)
        rows.append(TableRow(image_id, relative, labels[image_id][0], box, is_train[image_id][0] == want))
    return rows


def table_dataset(
    root: Path,
    rows: list[TableRow],
    classes: list[str],
    label_of: Callable[[str, str], int],
    crop_to_box: bool,
    **kwargs: Any,
) -> FineGrainedDataset:
    """The dataset of ``image_tables``'s rows in the split; every label is read
    (``label_of(text, where)``), not only the split's, so that a bad file stops any run."""
    samples, boxes, origins = [], [], []
    for row in rows:
        label = label_of(row.label, f"{root / 'image_class_labels.txt'}, image {row.image_id}")
        if row.in_split:
            samples.append((root / "images" / row.relative, label))
            origins.append(f"{root / 'images.txt'}, image {row.image_id}")
            boxes.append(row.box)
    return FineGrainedDataset(samples, classes, boxes=boxes if crop_to_box else None, origins=origins, **kwargs)  # type: ignore[arg-type]


def build_cub(root: Path, split: str, crop_to_box: bool = False, **kwargs: Any) -> FineGrainedDataset:
    root = cub_root(root)
    classes_rows = read_rows(root / "classes.txt", CUB_LAYOUT, 2)
    classes = [pretty_name(fields[1]) for _, fields in classes_rows]
    rows = image_tables(root, split, CUB_LAYOUT, crop_to_box)
    return table_dataset(root, rows, classes, lambda text, where: parse_label(text, where, len(classes)), crop_to_box,
                         **kwargs)  # fmt: skip


# --- NABirds ------------------------------------------------------------------------

NABIRDS_LAYOUT = (
    "NABirds layout: images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, hierarchy.txt, images/"
)


def nabirds_root(root: Path) -> Path:
    return root / "nabirds" if (root / "nabirds" / "hierarchy.txt").exists() else root


def build_nabirds(root: Path, split: str, crop_to_box: bool = False, **kwargs: Any) -> FineGrainedDataset:
    """NABirds as the Cornell Lab gives it. Its classes.txt holds the whole hierarchy (1,011
    ids: orders, families, species, and the 555 visual categories images are labelled
    with); the classes are the ids that label images, in the order of their ids, named as
    classes.txt names them. ``dataset.parents`` maps each class name to its parent's
    (hierarchy.txt), where the file is there."""
    root = nabirds_root(root)
    names = {fields[0]: fields[1] for _, fields in read_rows(root / "classes.txt", NABIRDS_LAYOUT, 2)}
    rows = image_tables(root, split, NABIRDS_LAYOUT, crop_to_box)
    for row in rows:
        if row.label not in names:
            where = f"{root / 'image_class_labels.txt'}, image {row.image_id}"
            raise LayoutError(f"{where}: class {row.label!r} is not in classes.txt")
    used = sorted({row.label for row in rows}, key=lambda text: (len(text), text))  # ids in numeric order
    index = {class_id: k for k, class_id in enumerate(used)}
    dataset = table_dataset(
        root, rows, [names[c] for c in used], lambda text, where: index[text], crop_to_box, **kwargs
    )
    hierarchy = root / "hierarchy.txt"
    if hierarchy.exists():
        parent_of = {fields[0]: fields[1] for _, fields in read_rows(hierarchy, NABIRDS_LAYOUT, 2)}
        dataset.parents = {names[c]: names.get(parent_of.get(c, ""), "") for c in used}
    return dataset


# --- Stanford Dogs ----------------------------------------------------------------

DOGS_LAYOUT = "Stanford Dogs layout: Images/<wnid-breed>/*.jpg, lists/train_list.mat, lists/test_list.mat"


def load_mat(path: Path, layout: str) -> dict[str, Any]:
    from scipy.io import loadmat

    require(path, layout)
    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:  # scipy raises many kinds on a damaged file; all mean the same here
        raise LayoutError(f"{path}: not a readable .mat file ({error}); expected the {layout}") from error


def mat_list(mat: dict[str, Any], key: str, path: Path, layout: str) -> list[Any]:
    """Variable ``key`` of a loaded .mat file as a list (squeezed, an array of one element
    is a scalar: it becomes a list of one)."""
    if key not in mat:
        raise LayoutError(f"{path}: no variable {key!r}; expected the {layout}")
    value = mat[key]
    return list(value) if hasattr(value, "__len__") and not isinstance(value, str) else [value]


def build_dogs(root: Path, split: str, **kwargs: Any) -> FineGrainedDataset:
    check_split(split, ("train", "test"))
    path = root / "lists" / f"{split}_list.mat"
    mat = load_mat(path, DOGS_LAYOUT)
    files = [str(f) for f in mat_list(mat, "file_list", path, DOGS_LAYOUT)]
    labels = [int(v) for v in mat_list(mat, "labels", path, DOGS_LAYOUT)]
    if len(files) != len(labels):
        raise LayoutError(f"{path}: {len(files)} files but {len(labels)} labels")
    # The breed folders, in wnid order, are the 120 classes; the lists number them 1..120.
    folders = sorted(p.name for p in require(root / "Images", DOGS_LAYOUT).iterdir() if p.is_dir())
    classes = [pretty_name(f) for f in folders]
    samples = [
        (root / "Images" / f, parse_label(str(v), f"{path}, entry {i + 1}", len(classes)))
        for i, (f, v) in enumerate(zip(files, labels))
    ]
    origins = [f"{path}, entry {i + 1}" for i in range(len(samples))]
    return FineGrainedDataset(samples, classes, origins=origins, **kwargs)


# --- Stanford Cars ----------------------------------------------------------------

CARS_LAYOUT = (
    "Stanford Cars layout: devkit/cars_train_annos.mat, devkit/cars_test_annos_withlabels.mat, "
    "devkit/cars_meta.mat with cars_train/ and cars_test/ (also as Kaggle's archive nests them: "
    "cars_train/cars_train/, car_devkit/devkit/), or cars_annos.mat with car_ims/, or the by-class "
    "folder copy: car_data/car_data/train/<class>/, test/<class>/"
)


def _car_class_names(mat: dict[str, Any], path: Path) -> list[str]:
    return [str(n) for n in mat_list(mat, "class_names", path, CARS_LAYOUT)]


def _car_box(a: Any) -> Box:
    return (float(a.bbox_x1), float(a.bbox_y1), float(a.bbox_x2), float(a.bbox_y2))


def _first(*paths: Path) -> Path:
    """The first of ``paths`` that exists (the last, to be named in the error, when none does)."""
    return next((path for path in paths if path.exists()), paths[-1])


def cars_by_class(root: Path) -> Path | None:
    """The folder of the by-class copy (``train/<class>/``, ``test/<class>/``), if ``root`` holds one."""
    for candidate in (root / "car_data" / "car_data", root / "car_data", root):
        if (candidate / "train").is_dir() and (candidate / "test").is_dir():
            return candidate
    return None


def _check_by_class(root: Path, folder: Path, dataset: FineGrainedDataset, split: str) -> FineGrainedDataset:
    """The by-class copy's ``anno_<split>.csv`` (``file,x1,y1,x2,y2,class``), where it came with
    one: every file it names must be among the split's images."""
    listing = _first(*(place / f"anno_{split}.csv" for place in (folder, folder.parent, root)))
    if listing.exists():
        present = {path.name for path, _ in dataset.samples}
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            name = line.split(",")[0].strip()
            if name.lower().endswith(IMAGE_SUFFIXES) and name not in present:  # a header line names no image
                raise LayoutError(
                    f"{listing}, line {number} names {name}, which is not under {folder / split}/<class>/"
                )
    return dataset


def _cars_devkit(root: Path, split: str) -> tuple[Path, Path, Path]:
    """(cars_meta.mat, the split's annotations, the split's image folder) in the devkit layout,
    as the original files unpack or as Kaggle's archive nests them."""
    devkit = _first(root / "car_devkit" / "devkit", root / "devkit")
    meta = devkit / "cars_meta.mat"
    if split == "train":
        annotations = devkit / "cars_train_annos.mat"
    else:  # the labelled test annotations came out after the devkit: beside it, or at the top
        names = ("cars_test_annos_withlabels.mat", "cars_test_annos_withlabels (1).mat")
        annotations = _first(*(folder / name for folder in (root, devkit) for name in names), devkit / names[0])
    images = _first(root / f"cars_{split}" / f"cars_{split}", root / f"cars_{split}")
    return meta, annotations, images


def build_cars(root: Path, split: str, crop_to_box: bool = False, **kwargs: Any) -> FineGrainedDataset:
    check_split(split, ("train", "test"))
    by_class = cars_by_class(root)
    if by_class is not None:
        return _check_by_class(root, by_class, build_folder(by_class, split, **kwargs), split)
    combined = root / "cars_annos.mat"
    if combined.exists() and (root / "car_ims").is_dir():
        mat = load_mat(combined, CARS_LAYOUT)
        classes = _car_class_names(mat, combined)
        want_test = split == "test"
        annotations = [a for a in mat_list(mat, "annotations", combined, CARS_LAYOUT) if bool(a.test) == want_test]
        images = [root / str(a.relative_im_path) for a in annotations]
        where = combined
    else:
        meta, where, folder = _cars_devkit(root, split)
        classes = _car_class_names(load_mat(meta, CARS_LAYOUT), meta)
        annotations = mat_list(load_mat(where, CARS_LAYOUT), "annotations", where, CARS_LAYOUT)
        images = [folder / str(a.fname) for a in annotations]
    samples = [
        (path, parse_label(str(getattr(a, "class")), f"{where}, annotation {i + 1}", len(classes)))
        for i, (path, a) in enumerate(zip(images, annotations))
    ]
    boxes = [_car_box(a) for a in annotations] if crop_to_box else None
    origins = [f"{where}, annotation {i + 1}" for i in range(len(samples))]
    dataset = FineGrainedDataset(samples, classes, boxes=boxes, origins=origins, **kwargs)
    missing = dataset.missing()  # community copies drop or rename files: the first is named
    if missing:
        path = samples[missing[0]][0]
        raise LayoutError(f"{origins[missing[0]]} names {path}, which does not exist; expected the {CARS_LAYOUT}")
    return dataset


# --- Oxford 102 Flowers ------------------------------------------------------------

FLOWERS_LAYOUT = (
    "Oxford 102 Flowers layout: jpg/image_NNNNN.jpg, imagelabels.mat (labels), setid.mat (trnid, valid, tstid)"
)
FLOWERS_SPLITS = {"train": "trnid", "val": "valid", "test": "tstid"}


def flowers_root(root: Path) -> Path:
    return root / "flowers-102" if (root / "flowers-102" / "setid.mat").exists() else root


def build_flowers102(root: Path, split: str, **kwargs: Any) -> FineGrainedDataset:
    """The official splits: 10 images a class for train and val, the remaining 6,149 for test.
    The files carry no class names: classes are "flower 1" to "flower 102"."""
    check_split(split, tuple(FLOWERS_SPLITS))
    root = flowers_root(root)
    labels_path, ids_path = root / "imagelabels.mat", root / "setid.mat"
    labels = [int(v) for v in mat_list(load_mat(labels_path, FLOWERS_LAYOUT), "labels", labels_path, FLOWERS_LAYOUT)]
    ids = [
        int(v) for v in mat_list(load_mat(ids_path, FLOWERS_LAYOUT), FLOWERS_SPLITS[split], ids_path, FLOWERS_LAYOUT)
    ]
    classes = [f"flower {k}" for k in range(1, max(labels, default=0) + 1)]
    samples, origins = [], []
    for image_id in ids:
        if not 1 <= image_id <= len(labels):
            raise LayoutError(
                f"{ids_path}: image id {image_id} of {FLOWERS_SPLITS[split]} has no label in {labels_path}"
            )
        where = f"{ids_path}, {FLOWERS_SPLITS[split]} id {image_id}"
        samples.append(
            (root / "jpg" / f"image_{image_id:05d}.jpg", parse_label(str(labels[image_id - 1]), where, len(classes)))
        )
        origins.append(where)
    return FineGrainedDataset(samples, classes, origins=origins, **kwargs)


# --- FGVC-Aircraft ----------------------------------------------------------------

AIRCRAFT_LAYOUT = "FGVC-Aircraft layout: data/images/, data/images_<level>_<split>.txt, data/<levels>.txt"
AIRCRAFT_LEVELS = {"variant": "variants", "family": "families", "manufacturer": "manufacturers"}


def build_aircraft(root: Path, split: str, level: str = "variant", **kwargs: Any) -> FineGrainedDataset:
    if level not in AIRCRAFT_LEVELS:
        raise InvalidValue(f"unknown FGVC-Aircraft level {level!r}; valid levels: {', '.join(AIRCRAFT_LEVELS)}")
    # "train" is the standard trainval split (train + val); "train_without_val" is the official
    # train split alone, to go with its val split.
    splits = ("train", "trainval", "train_without_val", "val", "test")
    split = {"train": "trainval", "train_without_val": "train"}.get(check_split(split, splits), split)
    data = root / "data" if (root / "data").is_dir() else root
    names = [
        line.strip()
        for line in require(data / f"{AIRCRAFT_LEVELS[level]}.txt", AIRCRAFT_LAYOUT)
        .read_text(encoding="utf-8")
        .splitlines()
        if line.strip()
    ]
    index = {name: i for i, name in enumerate(names)}
    listing = data / f"images_{level}_{split}.txt"
    samples, origins = [], []
    for number, (image_id, name) in read_rows(listing, AIRCRAFT_LAYOUT, 2):
        if name not in index:
            raise LayoutError(f"{listing}, line {number}: {name!r} is not in {AIRCRAFT_LEVELS[level]}.txt")
        samples.append((data / "images" / f"{image_id}.jpg", index[name]))
        origins.append(f"{listing}, line {number}")
    return FineGrainedDataset(samples, names, origins=origins, **kwargs)


# --- the user's folders and lists -------------------------------------------------

FOLDER_LAYOUT = "folder layout: root/train/<class>/*, root/test/<class>/* (or root/val/<class>/*)"
LIST_LAYOUT = "list layout: root/train.txt and root/test.txt, one 'relative/path label' per line"


def folder_split(root: Path, split: str) -> Path:
    check_split(split, ("train", "val", "test"))
    if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
        return root / "val"
    return require(root / split, FOLDER_LAYOUT)


def build_folder(root: Path, split: str, **kwargs: Any) -> FineGrainedDataset:
    directory = folder_split(root, split)
    # Class names from every split, so that train and test agree on the label numbers.
    class_dirs = {
        p.name for s in ("train", "val", "test") if (root / s).is_dir() for p in (root / s).iterdir() if p.is_dir()
    }
    classes = sorted(class_dirs)
    samples = [
        (path, label)
        for label, name in enumerate(classes)
        if (directory / name).is_dir()
        for path in sorted((directory / name).rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES
    ]
    return FineGrainedDataset(samples, classes, **kwargs)


def list_file(root: Path, split: str) -> Path:
    check_split(split, ("train", "val", "test"))
    for name in (f"{split}.txt", f"{split}.list"):
        if (root / name).exists():
            return root / name
    return require(root / f"{split}.txt", LIST_LAYOUT)


def read_list(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, relative path, label text)``; the label is the last field, so paths may hold spaces."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.rsplit(maxsplit=1)
        if len(fields) != 2:
            raise LayoutError(f"{path}, line {number}: expected 'relative/path label', got {line!r}")
        entries.append((number, fields[0], fields[1]))
    return entries


def list_labels(path: Path, entries: list[tuple[int, str, str]]) -> list[int]:
    for number, _, text in entries:
        if not text.lstrip("-").isdigit():
            raise LayoutError(f"{path}, line {number}: label {text!r} is not a whole number")
    return [int(text) for _, _, text in entries]


def build_list(root: Path, split: str, **kwargs: Any) -> FineGrainedDataset:
    path = list_file(root, split)
    entries = read_list(path)
    # Numbering (from 0, as the authors' lists, or from 1) and class count come from all
    # splits together, so that train and test agree.
    every_label = [
        label
        for other in sorted(root.glob("*.txt")) + sorted(root.glob("*.list"))
        if other.stem in ("train", "val", "test")
        for label in list_labels(other, read_list(other))
    ]
    base = 0 if min(every_label, default=0) <= 0 else 1
    names_file = root / "classes.txt"
    if names_file.exists():
        classes = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        classes = [f"class {k}" for k in range(max(every_label, default=-1) - base + 1)]
    samples = [
        (root / relative, parse_label(text, f"{path}, line {number}", len(classes), base))
        for number, relative, text in entries
    ]
    origins = [f"{path}, line {number}" for number, _, _ in entries]
    return FineGrainedDataset(samples, classes, origins=origins, **kwargs)


# The reader of each dataset of the catalog, in its order.
READERS: dict[str, Callable[..., FineGrainedDataset]] = {
    "cub": build_cub,
    "dogs": build_dogs,
    "cars": build_cars,
    "aircraft": build_aircraft,
    "flowers102": build_flowers102,
    "nabirds": build_nabirds,
    "folder": build_folder,
    "list": build_list,
}
BUILDERS = {name: READERS[name] for name in CATALOG}


def detect_layout(root: str | os.PathLike[str]) -> str:
    """The dataset whose identifying files (``cnl.data.catalog``) are found under ``root``."""
    root = dataset_root(root)
    markers = [(record.name, marker) for record in detection_order() for marker in record.markers]
    for name, marker in markers:
        if (root / marker).exists():
            return name
    raise LayoutError(f"cannot tell the layout of {root}: none of {', '.join(m for _, m in markers)} is there")


def build_dataset(
    name: str, root: str | os.PathLike[str], split: str, transform: Callable | None = None, **options: Any
) -> FineGrainedDataset:
    """A dataset in one of the official layouts.

    Args:
        name: ``cub``, ``dogs``, ``cars``, ``aircraft``, ``flowers102``, ``folder``, ``list`` or ``auto``.
        root: the dataset's folder.
        split: ``train`` or ``test`` (``val`` for folder/list/aircraft/flowers102; aircraft's ``train`` is
            its trainval, ``train_without_val`` its train alone).
        transform: applied to each RGB PIL image.
        **options: ``crop_to_box`` (cub, cars), ``level`` (aircraft), ``skip_log``,
            ``decoder`` (``"tensor"`` or ``"pil"``).
    """
    root = dataset_root(root)
    if name == "auto":
        name = detect_layout(root)
    if name not in BUILDERS:
        raise InvalidValue(f"unknown dataset {name!r}; valid datasets: auto, {', '.join(BUILDERS)}")
    dataset = BUILDERS[name](root, split, transform=transform, **options)
    if not dataset.samples:
        raise LayoutError(f"the {split} split of {root} ({name}) has no images")
    return dataset
