"""The datasets cnl reads: one record each, the one place their facts are written.

A record says what a dataset is called (``--dataset NAME``), the files whose presence
identifies its layout in a folder (``detect_layout`` tries the records in order, NABirds
before CUB, whose files are a subset of its own, a list file before a train/ folder), its
official split sizes (our split names) and classes (``cnl data check``, ``cnl data get``),
the splits its publisher gives, its official validation split, which of its splits hold
different images, and where ``cnl data get`` fetches it from (archives with pinned
digests and sizes, the page, and what a person must do where no host serves it). The
readers that parse each layout are ``cnl.data.datasets.READERS``, one per record.

Torch-free: the command line reads it to build its choices and help.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cnl.errors import MissingFile


@dataclass(frozen=True)
class Archive:
    """One file of a dataset: its name on the host (and under ``--mirror``), its official
    address (None where the host is gone), its published digest (MD5 or SHA-256 by length;
    None: recorded on first download), its size, and the folder under ROOT it is unpacked
    (or, for a plain file such as a ``.mat``, copied) into."""

    file: str
    url: str | None
    digest: str | None
    size: int | None = None
    into: str = ""


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset: its name and title, its page, its archives, the folder under ROOT that
    ``cnl data get`` unpacks it into; the files that identify its layout; its official
    images per split and classes (None: no official splits); the splits its publisher
    gives, in our names; the training split that leaves out its official validation split
    (None: it has none); its splits that hold different images; where no host serves it,
    what a person does instead; and the datasets whose markers its own folders also hold,
    which ``detect_layout`` must try after it."""

    name: str
    title: str
    page: str | None
    archives: tuple[Archive, ...]
    folder: str
    markers: tuple[str, ...] = ()
    splits: dict[str, int] | None = None
    classes: int | None = None
    published: tuple[str, ...] = ("train", "test")
    validation: str | None = None
    disjoint: tuple[str, ...] = ("train", "test")
    manual: str | None = None
    detect_before: tuple[str, ...] = ()
    publisher: str = ""  # who hosts it, as the page's link text in docs/datasets.md
    pinned_by: str = ""  # the well-kept library whose digests (and sizes) the archives carry

    @property
    def fetchable(self) -> bool:
        """Whether ``cnl data get`` knows where this dataset comes from."""
        return self.page is not None

    @property
    def downloadable(self) -> bool:
        """Whether ``cnl data get`` downloads it with no step of a person's (terms, a mirror)."""
        return self.fetchable and self.manual is None


CARS_PAGE = "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"
_PUBLISHED = {
    "cub": DatasetRecord(
        "cub",
        "CUB-200-2011",
        "https://www.vision.caltech.edu/datasets/cub_200_2011/",
        # MD5 as pinned by Avalanche (avalanche.benchmarks.datasets.CUB200) for this archive.
        (
            Archive(
                "CUB_200_2011.tgz",
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78",
                1150585339,
            ),
        ),
        "CUB_200_2011",
        markers=("images.txt", "CUB_200_2011/images.txt"),
        splits={"train": 5994, "test": 5794},
        classes=200,
        published=("train", "test"),
        publisher="Caltech",
        pinned_by="Avalanche (MD5)",
    ),  # fmt: skip
    "dogs": DatasetRecord(
        "dogs",
        "Stanford Dogs",
        "http://vision.stanford.edu/aditya86/ImageNetDogs/",
        # SHA-256 and sizes as pinned by TensorFlow Datasets (url_checksums/stanford_dogs.txt).
        (
            Archive(
                "images.tar",
                "http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar",
                "a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58",
                793579520,
                "StanfordDogs",
            ),
            Archive(
                "lists.tar",
                "http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar",
                "34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c",
                481280,
                "StanfordDogs/lists",
            ),
        ),
        "StanfordDogs",
        markers=("lists/train_list.mat",),
        splits={"train": 12000, "test": 8580},
        classes=120,
        published=("train", "test"),
        publisher="Stanford",
        pinned_by="TensorFlow Datasets (SHA-256)",
    ),  # fmt: skip
    "aircraft": DatasetRecord(
        "aircraft",
        "FGVC-Aircraft",
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        # SHA-256 and size as pinned by TensorFlow Datasets (url_checksums/fgvc.txt).
        (
            Archive(
                "fgvc-aircraft-2013b.tar.gz",
                "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                "d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75",
                2770575360,
            ),
        ),
        "fgvc-aircraft-2013b",
        markers=("data/variants.txt", "variants.txt"),
        # Our "train" is the usual trainval (3,334 + 3,333); "train_without_val" the train split alone.
        splits={"train": 6667, "trainval": 6667, "train_without_val": 3334, "val": 3333, "test": 3333},
        classes=100,
        published=("train_without_val", "val", "test"),
        publisher="Oxford VGG",
        pinned_by="TensorFlow Datasets (SHA-256)",
        validation="train_without_val",
    ),  # fmt: skip
    "flowers102": DatasetRecord(
        "flowers102",
        "Oxford 102 Flowers",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        # MD5s as pinned by torchvision (torchvision.datasets.Flowers102).
        (
            Archive(
                "102flowers.tgz",
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                "52808999861908f626f3c1f4e79d11fa",
                None,
                "flowers-102",
            ),
            Archive(
                "imagelabels.mat",
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                "e0620be6f572b9609742df49c70aed4d",
                None,
                "flowers-102",
            ),
            Archive(
                "setid.mat",
                "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                "a5357ecc9cb78c4bef273ce3793fc85c",
                None,
                "flowers-102",
            ),
        ),
        "flowers-102",
        markers=("setid.mat", "flowers-102/setid.mat"),
        splits={"train": 1020, "val": 1020, "test": 6149},  # train and val: 10 images a class
        classes=102,
        published=("train", "val", "test"),
        publisher="Oxford VGG",
        pinned_by="torchvision (MD5)",
    ),  # fmt: skip
    "cars": DatasetRecord(
        "cars",
        "Stanford Cars",
        CARS_PAGE,
        # The original files, by their original names, with the SHA-256 and sizes pinned by
        # TensorFlow Datasets (url_checksums/cars196.txt): what --mirror fetches and checks.
        (
            Archive(
                "cars_train.tgz",
                None,
                "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288",
                979269282,
                "StanfordCars",
            ),
            Archive(
                "cars_test.tgz",
                None,
                "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243",
                977350468,
                "StanfordCars",
            ),
            Archive(
                "car_devkit.tgz",
                None,
                "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",
                330960,
                "StanfordCars",
            ),
            Archive(
                "cars_test_annos_withlabels.mat",
                None,
                "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",
                185758,
                "StanfordCars/devkit",
            ),
        ),
        "StanfordCars",
        markers=(
            "cars_annos.mat",
            "devkit/cars_meta.mat",
            "car_devkit/devkit/cars_meta.mat",
            "car_data/car_data/train",
        ),
        splits={"train": 8144, "test": 8041},
        classes=196,
        published=("train", "test"),
        publisher="Stanford",
        pinned_by="TensorFlow Datasets (SHA-256)",
        manual=(
            "Stanford Cars' original host is gone (since 2023), so there is nothing official to download.\n"
            "Either give --mirror URL of a copy that keeps the original file names (cars_train.tgz, "
            "cars_test.tgz, car_devkit.tgz, cars_test_annos_withlabels.mat; their SHA-256 are checked), or "
            "put one of the two community copies under ROOT/StanfordCars yourself and run cnl data check:\n"
            "  - Kaggle's 'stanford-cars-dataset' archive: cars_train/cars_train/*.jpg, cars_test/cars_test/*.jpg, "
            "car_devkit/devkit/*.mat, and cars_test_annos_withlabels.mat for the test labels;\n"
            "  - the by-class folder copy ('stanford-car-dataset-by-classes-folder'): car_data/car_data/train/<class>/ "
            "and test/<class>/, with anno_train.csv and anno_test.csv.\n"
            "Both read with --dataset cars; docs/datasets.md says how."
        ),
    ),  # fmt: skip
    "nabirds": DatasetRecord(
        "nabirds",
        "NABirds",
        "https://dl.allaboutbirds.org/nabirds",
        (),
        "nabirds",
        markers=("hierarchy.txt", "nabirds/hierarchy.txt"),
        detect_before=("cub",),  # a NABirds folder holds CUB's files too
        # The 555 visual categories that label its images (classes.txt holds 1,011 ids with the hierarchy).
        splits={"train": 23929, "test": 24633},
        classes=555,
        published=("train", "test"),
        manual=(
            "NABirds is given out by the Cornell Lab of Ornithology to a person who accepts its terms of use: "
            "cnl cannot download it for you.\n"
            "Ask for it at https://dl.allaboutbirds.org/nabirds, then unpack nabirds.tar.gz under ROOT "
            "(ROOT/nabirds/images/, ROOT/nabirds/classes.txt, ...): --dataset nabirds --data-root ROOT/nabirds reads "
            "it, and cnl data check --dataset nabirds --root ROOT/nabirds compares it with the published splits."
        ),
    ),  # fmt: skip
}

_OWN = {
    "list": DatasetRecord(
        "list", "a list of images", None, (), "", markers=("train.txt", "train.list"), detect_before=("folder",)
    ),
    "folder": DatasetRecord(
        "folder", "folders of images", None, (), "", markers=("train",)
    ),
}  # fmt: skip
CATALOG: dict[str, DatasetRecord] = {
    name: {**_PUBLISHED, **_OWN}[name]
    for name in ("cub", "dogs", "cars", "aircraft", "flowers102", "nabirds", "folder", "list")
}


def detection_order() -> list[DatasetRecord]:
    """The records in the order ``detect_layout`` tries them: the catalog's, except that a
    record goes before those it must be told from first (``detect_before``)."""
    order = list(CATALOG)
    for name, record in CATALOG.items():
        for other in record.detect_before:
            if order.index(name) > order.index(other):
                order.remove(name)
                order.insert(order.index(other), name)
    return [CATALOG[name] for name in order]


def dataset_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as a Path, checked to be a folder: what every reader, ``detect_layout`` and
    the command line's check before it loads torch (``cnl train`` and ``cnl ablate``) ask first."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFile(f"dataset root {root} {'is not a folder' if root.exists() else 'does not exist'}")
    return root
