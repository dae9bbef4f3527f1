"""Decoding real-world files: every mode to RGB, EXIF, size guard, bad files skipped."""

import io

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from cnl.data import FineGrainedDataset, ImageError, load_image, train_transform
from cnl.errors import DataError


def save(path, image, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def jpeg_bytes(size=(64, 48)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (0, 128, 255)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_alpha_becomes_white_not_hidden_colour(tmp_path):
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    loaded = load_image(save(tmp_path / "a.png", image))
    assert loaded.mode == "RGB" and loaded.getpixel((1, 1)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (10, 20, 30)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    loaded = load_image(save(tmp_path / "p.png", image, transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255) and loaded.getpixel((2, 2)) == (200, 0, 0)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    array = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    loaded = load_image(save(tmp_path / "deep.png", Image.fromarray(array)))
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_cmyk_and_grayscale_jpeg(tmp_path):
    cmyk = load_image(save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95))
    red, green, blue = cmyk.getpixel((4, 4))
    assert cmyk.mode == "RGB" and red > 240 and green < 15 and blue < 15
    grey = load_image(save(tmp_path / "grey.jpg", Image.new("L", (8, 8), 90)))
    assert grey.mode == "RGB" and abs(grey.getpixel((3, 3))[0] - 90) <= 1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    image.paste((0, 0, 255), (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(save(tmp_path / "rotated.jpg", image, exif=exif.tobytes(), quality=95))
    assert loaded.size == (10, 20)
    # The left (red) half is on top after the rotation.
    assert loaded.getpixel((5, 2))[0] > 200 and loaded.getpixel((5, 17))[2] > 200


def test_size_guard_and_non_ascii_path(tmp_path):
    path = tmp_path / "岩鹨 ñ" / "é.jpg"
    path.parent.mkdir()
    path.write_bytes(jpeg_bytes())
    assert load_image(path).size == (64, 48)
    with pytest.raises(ImageError, match="64x48 pixels is over the limit of 1000"):
        load_image(path, max_pixels=1000)


@pytest.mark.parametrize(
    "content",
    [jpeg_bytes()[:300], b"", b"this is not an image\n"],
    ids=["truncated", "empty", "text"],
)
def test_unreadable_files_raise_image_error(tmp_path, content):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg"):
        load_image(path)


@pytest.mark.parametrize("read", ["load_image", "load_tensor"])
def test_a_path_that_is_no_file_is_said_so_not_called_undecodable(read, tmp_path):
    """A list handed to ``cnl predict`` named a file that was gone: "cannot decode x.jpg:
    [Errno 2] No such file or directory: 'x.jpg'", as if the file were damaged."""
    from cnl.data import images

    (tmp_path / "folder.jpg").mkdir()
    for name, said in (("gone.jpg", "does not exist"), ("folder.jpg", "is a folder, not an image")):
        with pytest.raises(ImageError) as raised:
            getattr(images, read)(tmp_path / name)
        assert str(raised.value) == f"{tmp_path / name} {said}"


def bad_and_good(tmp_path):
    good = [tmp_path / f"good{k}.jpg" for k in range(3)]
    for k, path in enumerate(good):
        save(path, Image.new("RGB", (16, 16), (k * 100, 0, 0)))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(jpeg_bytes()[:200])
    return [(good[0], 0), (bad, 1), (good[1], 2), (good[2], 3)]


def test_dataset_skips_unreadable_files_and_records_them(tmp_path):
    log = tmp_path / "skipped.txt"
    dataset = FineGrainedDataset(bad_and_good(tmp_path), ["a", "b", "c", "d"], skip_log=log)
    image, label = dataset[1]
    assert label == 2 and image[0, 0, 0] > 90  # the next readable sample
    assert list(dataset.skipped) == [str(tmp_path / "bad.jpg")]
    assert log.read_text().startswith(f"{tmp_path / 'bad.jpg'}\t")


def test_an_epoch_with_workers_survives_a_bad_file(tmp_path):
    log = tmp_path / "skipped.txt"
    dataset = FineGrainedDataset(bad_and_good(tmp_path), list("abcd"), transform=train_transform(16), skip_log=log)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=2))
    assert sum(len(labels) for _, labels in batches) == 4
    assert [line.split("\t")[0] for line in log.read_text().splitlines()] == [str(tmp_path / "bad.jpg")]


def test_all_unreadable_is_an_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    with pytest.raises(DataError, match="no readable image among the 1 samples"):
        FineGrainedDataset([(bad, 0)], ["a"])[0]
