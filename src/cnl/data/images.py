"""Image decoding that survives real data: any PIL mode to RGB, EXIF orientation, size guard."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from cnl.errors import UserError

# PIL's own bomb limit (89.5 Mpx) would only warn up to twice that; we refuse above it.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
WHITE = (255, 255, 255)


class ImageError(UserError):
    """A file that cannot be decoded into an RGB image."""


def unreadable(path: str | Path, error: BaseException) -> ImageError:
    """Why ``path`` gave no image: a file that is not there or not a file is said so; the
    decoder's words are for a file that is there and is no image."""
    if isinstance(error, FileNotFoundError):
        return ImageError(f"{path} does not exist")
    if isinstance(error, IsADirectoryError):
        return ImageError(f"{path} is a folder, not an image")
    if isinstance(error, PermissionError):
        return ImageError(f"cannot read {path}: permission denied")
    return ImageError(f"cannot decode {path}: {error}")


def _from_high_bit_depth(image: Image.Image) -> Image.Image:
    """16-bit (``I;16``, or ``I`` holding 0..65535) and float (0..1) greyscale down to 8 bits."""
    array = np.asarray(image, dtype=np.float64)
    peak = array.max(initial=0)
    if image.mode == "F" and peak <= 1.0:
        array = array * 255.0
    elif peak > 255:
        array = array * (255.0 / 65535.0)
    return Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white rather than their hidden colour."""
    if image.mode.startswith(("I", "F")):
        image = _from_high_bit_depth(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode ``path`` fully into an upright RGB image, or raise ``ImageError`` saying why."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(f"{path}: {image.width}x{image.height} pixels is over the limit of {max_pixels}")
                image.load()  # decode now, so a truncated file fails here and not later
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise unreadable(path, error) from error


JPEG_SUFFIXES = (".jpg", ".jpeg")


def decode_with_torchvision(path: str | Path, max_pixels: int = MAX_PIXELS):
    """``[3, H, W]`` uint8 tensor through torchvision.io (libjpeg-turbo), EXIF applied."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        with Image.open(path) as header:  # reads the header only
            if header.width * header.height > max_pixels:
                raise ImageError(f"{path}: {header.width}x{header.height} pixels is over the limit of {max_pixels}")
        with warnings.catch_warnings():
            # torchvision 0.29 announces the move of its decoders to TorchCodec; they still work.
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except ImageError:
        raise
    except (OSError, RuntimeError, ValueError, SyntaxError) as error:
        raise unreadable(path, error) from error


def load_tensor(path: str | Path, max_pixels: int = MAX_PIXELS):
    """``[3, H, W]`` uint8: JPEGs through torchvision.io (1.4x PIL's rate with the training
    transform, docs/benchmarks.md), every other format through ``load_image``."""
    if Path(path).suffix.lower() in JPEG_SUFFIXES:
        return decode_with_torchvision(path, max_pixels)
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(load_image(path, max_pixels))


DECODERS = {"pil": load_image, "torchvision": decode_with_torchvision}
