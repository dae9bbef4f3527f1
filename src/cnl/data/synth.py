"""A synthetic multi-scale fine-grained benchmark, written in the CUB-200-2011 layout.

Six tasks (``SynthConfig.task``):

- **parts** (``SynthConfig``'s default, the demo's in version 0.1.0): a conjunction of a
  silhouette, a wing pattern and a head mark, one per scale, described below.
- **relation**: a class is a body shape and the small mark at its *head*.
  Every object carries a second mark, of another kind, at its tail, and marks of every
  kind lie about the background at the same size: which marks an image holds says
  nothing of its class. Only the mark at the place the coarse shape defines (its head,
  turned any way) does: the class needs a fine detail *related to* the whole object,
  as a bird's species is in a small mark at a particular place on a particular body.
- **control**: the same classes, objects and backgrounds, but the head mark is the only
  mark in the image: detecting each part on its own separates the classes, no relation
  between scales is needed.
- **skin**: a class is the fine texture the outlined body wears; three ellipses of the
  body's area beside it wear the other textures, so every image holds every texture over
  about the same area, and only the coarse shape that wears one tells which is the class's.
- **skin_control** (``BENCHMARK``: ``cnl data synth``'s default and the demo's): the same
  images with plain ellipses: the texture alone tells the class, a fine detail far below
  the deep layers' scale at 96 px, as a bird's species is often in its plumage's pattern.
- **shape**: the scenes of skin_control, but a class is the body's coarse shape and the
  texture it wears is drawn at random: the control of a task that a fine detail decides.

The relation and skin tasks are built so that association across scales is required;
docs/synthetic.md says what training from scratch on them showed.

In the parts task each class is an object described by three parts, one per scale:

- a **silhouette** (coarse, the whole object): oval, diamond, fish, capsule, hexagon;
- a **wing pattern** (mid-size, a region inside the body): plain, stripes, spots, checks, rings;
- a **mark** (small, a few pixels wide, at the head): dot, ring, cross, bar, pair.

Classes are the first N cells of a near-cubic grid over these three attributes, so most
classes have neighbours that differ in one attribute only, at one scale: no single
receptive-field size separates every pair. Colours carry no class information. Each
image puts its object at a random position, scale and rotation on a cluttered
background that also holds stray marks and pattern patches, may occlude the back of the
object, and jitters brightness, contrast and saturation.

Images are drawn with numpy and PIL from a generator seeded by (seed, class, index), and
saved as baseline JPEG, so the same arguments write the same bytes.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

from cnl.errors import InvalidValue

SILHOUETTES = ("oval", "diamond", "fish", "capsule", "hexagon")
PATTERNS = ("plain", "stripes", "spots", "checks", "rings")
MARKS = ("dot", "bar", "cross", "ring", "pair")  # the most distinct first: small grids use those
MAX_CLASSES = len(SILHOUETTES) * len(PATTERNS) * len(MARKS)

WING_CENTRE, WING_AXES = (-0.12, 0.0), (0.40, 0.30)
HEAD = (0.60, 0.0)
PATTERN_FREQUENCY = 5.0  # cycles per half-object: a period of a tenth of the object
MARK_RADIUS = 0.12  # of the half-object: about 3 px for a 55 px object
JPEG_QUALITY = 90
# Each image is drawn in float64 arrays of its size: 1024 px takes tens of MB; 100000 px
# asked numpy for 224 GiB and stopped with a MemoryError.
MAX_IMAGE_SIZE = 1024
MAX_IMAGES = 1_000_000  # a benchmark to train on, not a disk to fill (a typo of a few zeros)


TASKS = ("relation", "control", "parts", "skin", "skin_control", "shape")
SKIN_PATTERNS = ("stripes", "spots", "checks", "rings")
SHAPES = ("fish", "teardrop", "arrow", "diamond")  # the shape task's classes
SCENE_TASKS = ("skin", "skin_control", "shape")  # drawn by skin_scene
RELATION_SILHOUETTES = ("fish", "teardrop", "arrow")  # each with a head and a tail
RELATION_MARKS = ("dot", "bar", "cross", "ring")
TAIL = (-0.55, 0.0)


@dataclass(frozen=True)
class SynthConfig:
    """Arguments of the synthetic benchmark (``cnl data synth``); the defaults are the parts task's,
    the demo's benchmark in version 0.1.0 (``BENCHMARK`` is today's)."""

    task: str = "parts"
    classes: int = 12
    train_per_class: int = 80
    test_per_class: int = 25
    image_size: int = 64
    seed: int = 0
    max_rotation: float = 30.0  # degrees either way
    object_scale: tuple[float, float] = (0.7, 0.95)  # of the image side

    def validate(self) -> None:
        if self.task not in TASKS:
            raise InvalidValue(f"unknown task {self.task!r}; valid tasks: {', '.join(TASKS)}")
        most = {
            "parts": MAX_CLASSES,
            "skin": len(SKIN_PATTERNS),
            "skin_control": len(SKIN_PATTERNS),
            "shape": len(SHAPES),
        }.get(self.task, len(RELATION_SILHOUETTES) * len(RELATION_MARKS))
        if not 2 <= self.classes <= most:
            raise InvalidValue(f"--classes must be between 2 and {most} for the {self.task} task, got {self.classes}")
        if self.seed < 0:
            raise InvalidValue(f"--seed must be 0 or more, got {self.seed}")
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise InvalidValue("--train-per-class and --test-per-class must be at least 1")
        total = self.classes * (self.train_per_class + self.test_per_class)
        if total > MAX_IMAGES:
            raise InvalidValue(
                f"{self.classes} classes of {self.train_per_class} + {self.test_per_class} images is {total:,} images; "
                f"the synthetic benchmark holds at most {MAX_IMAGES:,}"
            )
        if not 32 <= self.image_size <= MAX_IMAGE_SIZE:
            raise InvalidValue(f"--image-size must be between 32 and {MAX_IMAGE_SIZE} pixels, got {self.image_size}")


# The benchmark: `cnl data synth`'s defaults and `cnl demo`'s data. A class is the fine texture
# the object wears, the one synthetic task on which the modules made a difference
# (docs/synthetic.md); its seed is not the one of the experiments there, so that the demo's
# test images are new to the choice of the task.
BENCHMARK = SynthConfig(task="skin_control", classes=4, train_per_class=200, test_per_class=50, image_size=96, seed=1)


def class_grid(count: int) -> list[tuple[int, int, int]]:
    """(silhouette, pattern, mark) of ``count`` classes, from a near-cubic grid.

    From 4 classes on every attribute takes at least two values, and cells nearest the
    first come first, so even 4 classes are a base and its three one-part variants.
    """
    sizes = [1, 1, 1]
    while math.prod(sizes) < count or (count >= 4 and min(sizes) < 2):
        smallest = min(range(3), key=lambda axis: sizes[axis])
        sizes[smallest] += 1
    cells = sorted(((s, p, m) for s, p, m in itertools.product(*(range(n) for n in sizes))), key=sum)
    return cells[:count]


def class_name(attributes: tuple[int, int, int]) -> str:
    silhouette, pattern, mark = attributes
    return f"{SILHOUETTES[silhouette]}_{PATTERNS[pattern]}_{MARKS[mark]}"


# --- masks in object coordinates (u, v in [-1, 1], the head towards +u) --------------


def silhouette_mask(kind: int | str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    name = SILHOUETTES[kind] if isinstance(kind, int) else kind
    if name == "teardrop":  # a round head, a pointed tail
        head = ((u - 0.3) / 0.65) ** 2 + (v / 0.55) ** 2 <= 1
        return head | ((u <= 0.3) & (u >= -0.95) & (av <= 0.55 * (u + 0.95) / 1.25))
    if name == "arrow":  # a pointed head, a notched tail
        shaft = (u >= -0.9) & (u <= 0.3) & (av <= 0.3) & ~((u < -0.65) & (av < (-0.65 - u) * 1.2))
        return shaft | ((u > 0.3) & (u <= 0.95) & (av <= (0.95 - u) * 0.9))
    if name == "oval":
        return (u / 0.95) ** 2 + (v / 0.62) ** 2 <= 1
    if name == "diamond":
        return au / 0.95 + av / 0.66 <= 1
    if name == "fish":
        body = ((u - 0.22) / 0.73) ** 2 + (v / 0.56) ** 2 <= 1
        tail = (u < -0.45) & (u > -0.97) & (av <= (-0.45 - u) * 1.3)
        return body | tail
    if name == "capsule":
        return (av <= 0.45) & ((au <= 0.5) | ((au - 0.5) ** 2 + v**2 <= 0.45**2))
    return (av <= 0.55) & (au + 0.55 * av <= 0.95)  # hexagon


def pattern_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    f = PATTERN_FREQUENCY
    name = PATTERNS[kind]
    if name == "plain":
        return np.ones_like(u, dtype=bool)
    if name == "stripes":
        return np.sin(2 * np.pi * f * u) > 0
    if name == "spots":
        return ((u * f) % 1 - 0.5) ** 2 + ((v * f) % 1 - 0.5) ** 2 < 0.3**2
    if name == "checks":
        return (np.floor(u * f) + np.floor(v * f)) % 2 == 0
    return np.sin(2 * np.pi * f * np.hypot(u - WING_CENTRE[0], v)) > 0  # rings


def draw_mark(draw: ImageDraw.ImageDraw, kind: int, x: float, y: float, r: float, colour: tuple) -> None:
    width = max(1, round(r / 2.5))
    name = MARKS[kind]
    if name == "dot":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif name == "ring":
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=width)
    elif name == "cross":
        draw.line((x - r, y, x + r, y), fill=colour, width=width)
        draw.line((x, y - r, x, y + r), fill=colour, width=width)
    elif name == "bar":
        draw.line((x, y - 1.3 * r, x, y + 1.3 * r), fill=colour, width=width + 1)
    else:  # pair
        for dy in (-0.9 * r, 0.9 * r):
            draw.ellipse((x - r / 2, y + dy - r / 2, x + r / 2, y + dy + r / 2), fill=colour)


# --- colours -------------------------------------------------------------------------


def hsv_colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]) -> np.ndarray:
    import colorsys

    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return np.array(rgb) * 255


def contrasting(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A colour far from ``colour`` in brightness, so parts stay visible."""
    light = colour.mean() > 128
    return hsv_colour(rng, (0.2, 0.9), (0.05, 0.35) if light else (0.7, 1.0))


# --- one image -----------------------------------------------------------------------


def render_object(attributes: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """The object on a transparent canvas of ``size`` pixels, head towards +x."""
    silhouette, pattern, mark = attributes
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(axis, axis)
    body = silhouette_mask(silhouette, u, v)
    wing = body & (((u - WING_CENTRE[0]) / WING_AXES[0]) ** 2 + ((v - WING_CENTRE[1]) / WING_AXES[1]) ** 2 <= 1)
    body_colour = hsv_colour(rng, (0.3, 0.9), (0.35, 0.95))
    wing_colour = contrasting(rng, body_colour)
    rgba = np.zeros((size, size, 4), dtype=np.float64)
    rgba[body, :3] = body_colour
    rgba[wing & pattern_mask(pattern, u, v), :3] = wing_colour
    rgba[body, 3] = 255
    image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    draw = ImageDraw.Draw(image)
    half = size / 2
    mark_colour = tuple(int(c) for c in contrasting(rng, body_colour)) + (255,)
    draw_mark(draw, mark, half + HEAD[0] * half, half + HEAD[1] * half, max(1.5, MARK_RADIUS * half), mark_colour)
    if rng.random() < 0.4:  # an occluder over the back half, never over the head
        angle = rng.uniform(0.6 * math.pi, 1.4 * math.pi)
        cx, cy = half + 0.8 * half * math.cos(angle), half + 0.8 * half * math.sin(angle)
        radius = rng.uniform(0.18, 0.3) * half
        colour = tuple(int(c) for c in hsv_colour(rng, (0.0, 0.6), (0.2, 0.9))) + (255,)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    return image


def corner(rng: np.random.Generator, span: int) -> tuple[int, int]:
    x, y = rng.uniform(0, span, 2)
    return int(x), int(y)


def noisy_gradient(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background's pixels (float, ``size`` x ``size`` x 3): a vertical gradient between two
    random colours, with noise; and its top colour."""
    top, bottom = hsv_colour(rng, (0.1, 0.6), (0.3, 0.9)), hsv_colour(rng, (0.1, 0.6), (0.3, 0.9))
    ramp = np.linspace(0, 1, size)[:, None, None]
    return top * (1 - ramp) + bottom * ramp + rng.normal(0, 8, (size, size, 3)), top


def render_background(size: int, rng: np.random.Generator, stray_marks: bool = True) -> Image.Image:
    """A noisy gradient with clutter: blobs, lines, stray marks (unless not asked) and pattern patches."""
    pixels, _ = noisy_gradient(size, rng)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    colour = lambda: tuple(int(c) for c in hsv_colour(rng, (0.0, 0.8), (0.1, 1.0)))  # noqa: E731
    for _ in range(rng.integers(3, 7)):
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.04, 0.15) * size
        draw.ellipse((x - r, y - r * rng.uniform(0.3, 1), x + r, y + r), fill=colour())
    for _ in range(rng.integers(2, 5)):
        draw.line(tuple(rng.uniform(0, size, 4)), fill=colour(), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(2, 5) if stray_marks else 0):
        r = max(1.5, MARK_RADIUS * size * 0.3)
        kind = int(rng.integers(len(MARKS)))
        x, y = rng.uniform(0, size, 2)
        draw_mark(draw, kind, float(x), float(y), r, colour())
    for _ in range(rng.integers(1, 3)):
        patch = int(rng.uniform(0.12, 0.25) * size)
        axis = np.linspace(-1, 1, patch)
        pu, pv = np.meshgrid(axis * patch / (0.3 * size), axis * patch / (0.3 * size))
        inside = np.hypot(*np.meshgrid(axis, axis)) <= 1
        texture = inside & pattern_mask(int(rng.integers(1, len(PATTERNS))), pu, pv)
        mask = Image.fromarray((texture * 255).astype(np.uint8), "L")
        image.paste(
            Image.new("RGB", (patch, patch), colour()),
            corner(rng, size - patch),
            mask,
        )
    return image


def render_sample(
    attributes: tuple[int, int, int],
    size: int,
    rng: np.random.Generator,
    max_rotation: float = 30.0,
    object_scale: tuple[float, float] = (0.7, 0.95),
) -> tuple[Image.Image, tuple]:
    """One image of a class and the object's box (x, y, width, height)."""
    image = render_background(size, rng)
    object_size = int(size * rng.uniform(*object_scale))
    thing = render_object(attributes, object_size, rng).rotate(
        rng.uniform(-max_rotation, max_rotation), Image.Resampling.BICUBIC, expand=True
    )
    return place(image, thing, rng)


def place(image: Image.Image, thing: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """``thing`` pasted at a random place, then brightness, contrast and colour jittered;
    the image and the object's box (x, y, width, height)."""
    size = image.width
    left = int(rng.integers(0, max(1, size - thing.width + 1)))
    top = int(rng.integers(0, max(1, size - thing.height + 1)))
    image.paste(thing, (left, top), thing)
    x0, y0, x1, y1 = thing.getchannel("A").getbbox() or (0, 0, thing.width, thing.height)
    box = (left + x0, top + y0, min(size, left + x1) - left - x0, min(size, top + y1) - top - y0)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.75, 1.25))
    return image, box


# --- the relation and control tasks ---------------------------------------------------


def relation_grid(count: int) -> list[tuple[int, int]]:
    """(body shape, head mark) of ``count`` classes: every shape with each mark in turn, so
    that a few classes already hold two shapes and the marks that tell them apart."""
    cells = [(s, m) for m in range(len(RELATION_MARKS)) for s in range(len(RELATION_SILHOUETTES))]
    return cells[:count]


def relation_name(cell: tuple[int, int]) -> str:
    return f"{RELATION_SILHOUETTES[cell[0]] if cell[0] >= 0 else 'any'}_{RELATION_MARKS[cell[1]]}"


def render_relation_object(cell: tuple[int, int], size: int, rng: np.random.Generator, tail: bool) -> Image.Image:
    """The body with its class mark at the head (+x) and, when ``tail``, a mark of another
    kind at the tail, in the same colour: which is which only the body's shape says."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(axis, axis)
    shape = cell[0] if cell[0] >= 0 else int(rng.integers(len(RELATION_SILHOUETTES)))  # -1: any shape
    body = silhouette_mask(RELATION_SILHOUETTES[shape], u, v)
    body_colour = hsv_colour(rng, (0.3, 0.9), (0.35, 0.95))
    rgba = np.zeros((size, size, 4), dtype=np.float64)
    rgba[body, :3] = body_colour
    texture = body & pattern_mask(int(rng.integers(len(PATTERNS))), u, v)  # a pattern of no meaning
    rgba[texture, :3] = 0.75 * body_colour + 0.25 * contrasting(rng, body_colour)
    rgba[body, 3] = 255
    image = Image.fromarray(rgba.astype(np.uint8), "RGBA")
    draw = ImageDraw.Draw(image)
    half = size / 2
    colour = tuple(int(c) for c in contrasting(rng, body_colour)) + (255,)
    radius = max(1.5, MARK_RADIUS * half)
    kinds = [(cell[1], HEAD)]
    if tail:
        others = [m for m in range(len(RELATION_MARKS)) if m != cell[1]]
        kinds.append((others[int(rng.integers(len(others)))], TAIL))
    for kind, (x, y) in kinds:
        draw_mark(draw, MARKS.index(RELATION_MARKS[kind]), half + x * half, half + y * half, radius, colour)
    return image


def render_relation_sample(
    cell: tuple[int, int], size: int, rng: np.random.Generator, task: str, object_scale: tuple[float, float]
) -> tuple[Image.Image, tuple]:
    """One image of the relation (or control) task and the object's box (x, y, width, height):
    the object turned any way, and in the relation task marks of every kind about the background."""
    image = render_background(size, rng, stray_marks=False)
    object_size = int(size * rng.uniform(*object_scale))
    mark_radius = max(1.5, MARK_RADIUS * object_size / 2)
    if task == "relation":
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(2, 5)):
            x, y = rng.uniform(0, size, 2)
            kind = MARKS.index(RELATION_MARKS[int(rng.integers(len(RELATION_MARKS)))])
            draw_mark(
                draw,
                kind,
                float(x),
                float(y),
                mark_radius,
                tuple(int(c) for c in hsv_colour(rng, (0.0, 0.8), (0.1, 1.0))),
            )
    thing = render_relation_object(cell, object_size, rng, tail=task == "relation")
    thing = thing.rotate(rng.uniform(-180, 180), Image.Resampling.BICUBIC, expand=True)
    return place(image, thing, rng)


# --- the skin tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """One region of a skin-task image: its pixels (``region``), those of its second colour
    (``marked``, the texture's), the texture's name ('' for a plain blob), its two colours."""

    region: np.ndarray
    marked: np.ndarray
    texture: str
    colour: np.ndarray
    second: np.ndarray


def texture(kind: str, x: np.ndarray, y: np.ndarray, period: float) -> np.ndarray:
    """A two-tone texture of ``kind`` in pixel coordinates ``x``, ``y`` (already turned), ``period`` px."""
    return pattern_mask(PATTERNS.index(kind), x / (PATTERN_FREQUENCY * period), y / (PATTERN_FREQUENCY * period))


def skin_scene(kind: int, size: int, rng: np.random.Generator, task: str) -> list[Patch]:
    """The object (first: a body of any relation shape, turned any way) wearing texture
    ``kind``, then three ellipses of the object's area, in shuffled quarters of the image:
    in ``skin`` they wear the three other textures, in ``skin_control`` none. Both tasks draw
    the same random numbers, so an image of the control is its skin image with plain blobs.
    In ``shape`` the body's shape is ``SHAPES[kind]`` and its texture any of the four, the
    ellipses plain."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    period = max(3.0, size / 14)  # about 4.6 px at 64 px: a fine detail, 6 periods across the object
    quarter = size / 2
    others = [SKIN_PATTERNS[k] for k in range(len(SKIN_PATTERNS)) if k != kind]
    patches: list[Patch] = []
    for slot, cell in enumerate(rng.permutation(4)):
        cx = (cell % 2 + 0.5) * quarter + rng.uniform(-0.08, 0.08) * size
        cy = (cell // 2 + 0.5) * quarter + rng.uniform(-0.08, 0.08) * size
        angle = rng.uniform(-math.pi, math.pi)
        x = (xx - cx) * math.cos(angle) + (yy - cy) * math.sin(angle)
        y = -(xx - cx) * math.sin(angle) + (yy - cy) * math.cos(angle)
        half = quarter * rng.uniform(0.44, 0.5)
        if slot == 0:
            drawn = int(rng.integers(len(RELATION_SILHOUETTES)))
            shape = SHAPES[kind] if task == "shape" else RELATION_SILHOUETTES[drawn]
            region = silhouette_mask(shape, x / half, y / half)
            worn = SKIN_PATTERNS[int(rng.integers(len(SKIN_PATTERNS))) if task == "shape" else kind]
            area = region.sum()
        else:  # same area as the object, so that no texture covers more of the image than another
            length = half * rng.uniform(0.75, 0.95)
            region = (x / length) ** 2 + (y / (area / (math.pi * length))) ** 2 <= 1
            worn = others[slot - 1] if task == "skin" else ""
        colour = hsv_colour(rng, (0.3, 0.9), (0.35, 0.95))
        second = contrasting(rng, colour)
        marked = region & texture(worn, x, y, period) if worn else np.zeros_like(region)
        patches.append(Patch(region, marked, worn, colour, second))
    return patches


def render_skin_sample(kind: int, size: int, rng: np.random.Generator, task: str) -> tuple[Image.Image, tuple]:
    """One image of the skin (or skin_control) task and the object's box (x, y, width, height):
    a noisy gradient, the scene's patches, and an outline round the object alone."""
    pixels, top = noisy_gradient(size, rng)
    scene = skin_scene(kind, size, rng, task)
    for patch in reversed(scene):  # the object last, on top
        pixels[patch.region] = patch.colour
        pixels[patch.marked] = patch.second
    body = scene[0].region
    grown = body | np.roll(body, 1, 0) | np.roll(body, -1, 0) | np.roll(body, 1, 1) | np.roll(body, -1, 1)
    pixels[grown & ~body] = contrasting(rng, top)
    rows, columns = np.nonzero(grown)
    box = (float(columns.min()), float(rows.min()), float(np.ptp(columns) + 1), float(np.ptp(rows) + 1))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.75, 1.25))
    return image, box


# --- the dataset on disk ---------------------------------------------------------------


def task_classes(config: SynthConfig) -> tuple[list[Any], Callable[[Any], str]]:
    """The classes of ``config.task``, each as its renderer takes it, and the name of each."""
    if config.task == "parts":
        return class_grid(config.classes), class_name
    if config.task in SCENE_TASKS:
        kinds = list(range(config.classes))
        return kinds, (lambda kind: f"{SHAPES[kind]}_shape") if config.task == "shape" else skin_name
    return relation_grid(config.classes), relation_name


def skin_name(kind: int) -> str:
    return f"{SKIN_PATTERNS[kind]}_skin"


def generate(out: str | Path, config: SynthConfig, progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the benchmark under ``out`` in the CUB-200-2011 layout; returns ``out``."""
    config.validate()
    out = Path(out)
    grid, name_of = task_classes(config)
    folders = [f"{k + 1:03d}.{name_of(a)}" for k, a in enumerate(grid)]
    per_class = config.train_per_class + config.test_per_class
    images: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    boxes: list[str] = []
    total = config.classes * per_class
    for label, (attributes, folder) in enumerate(zip(grid, folders)):
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng([config.seed, label, index])
            if config.task in SCENE_TASKS:
                image, box = render_skin_sample(attributes, config.image_size, rng, config.task)
            elif config.task == "parts":
                image, box = render_sample(attributes, config.image_size, rng, config.max_rotation, config.object_scale)
            else:
                image, box = render_relation_sample(
                    attributes, config.image_size, rng, config.task, config.object_scale
                )
            relative = f"{folder}/{name_of(attributes)}_{index:04d}.jpg"
            image.save(out / "images" / relative, "JPEG", quality=JPEG_QUALITY)
            image_id = len(images) + 1
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {label + 1}")
            splits.append(f"{image_id} {int(index < config.train_per_class)}")
            boxes.append(f"{image_id} " + " ".join(f"{float(v):.1f}" for v in box))
            if progress:
                progress(image_id, total)
    tables = {
        "classes.txt": [f"{k + 1} {f}" for k, f in enumerate(folders)],
        "images.txt": images,
        "image_class_labels.txt": labels,
        "train_test_split.txt": splits,
        "bounding_boxes.txt": boxes,
    }
    for name, lines in tables.items():
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "synth.json").write_text(json.dumps(asdict(config), indent=2) + "\n", encoding="utf-8")
    return out


def contact_sheet(root: str | Path, out: str | Path, per_class: int = 6, max_classes: int = 12) -> Path:
    """A PNG grid: one row per class (its name on the left), ``per_class`` training images."""
    from PIL import ImageFont

    from cnl.data.datasets import build_cub

    dataset = build_cub(Path(root), "train")
    rows = [
        [p for p, label in dataset.samples if label == k][:per_class]
        for k in range(min(max_classes, len(dataset.classes)))
    ]
    cell = 80
    label_width = 150
    sheet = Image.new("RGB", (label_width + per_class * cell, len(rows) * cell), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for row, paths in enumerate(rows):
        draw.text((6, row * cell + cell // 2 - 6), dataset.classes[row], fill="black", font=font)
        for column, path in enumerate(paths):
            with Image.open(path) as image:
                sheet.paste(
                    image.convert("RGB").resize((cell - 4, cell - 4)), (label_width + column * cell + 2, row * cell + 2)
                )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, optimize=True)
    return out
