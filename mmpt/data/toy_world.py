"""The toy world: a procedurally generated image world in which CLIP-style zero-shot transfer exists.

Every image shows one shape of one colour (the class, e.g. "red circle") with nuisance attributes: a fill
pattern (plain, striped, dotted), a size, a position, a background and pixel noise. 6 colours x 6 shapes give
36 classes. The base / new halves hold out attribute COMBINATIONS, not attribute values: a class is base when
(colour index + shape index) is even, so every colour and every shape occurs in 3 base and 3 new classes. The
benchmark ("ToyWorld") photographs every class in a look of its own (LOOK, class_look) that the pretraining
corpus of mmpt.toy_clip never shows.

Images are drawn 4x larger with PIL, box-filtered down to IMAGE_SIZE (32 px) and given Gaussian noise; each
image's randomness comes from its own seed, so the same (style, class, seed) is the same picture on every run.
Styles: "photo" (the benchmark dataset), and two shifted renderings for domain generalisation: "sketch"
(outline only, on paper-white) and "noisy" (blotchy backgrounds, strong noise).

    from mmpt.data import toy_world
    image = toy_world.render("red", "circle", seed=3, style="photo")   # a 32 x 32 PIL image
    toy_world.make_world("/tmp/data", "photo")                         # the dataset on disk (see write_world)

The datasets built on it are in datasets/toy_world.py; the tiny CLIP pretrained on it in mmpt/toy_clip.py.
"""
import json
import os
import os.path as osp
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

IMAGE_SIZE = 32
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: smooth edges at 32 px

COLOURS = {  # name -> RGB (jittered per image)
    "red": (205, 40, 40),
    "orange": (240, 140, 25),
    "yellow": (230, 215, 45),
    "green": (45, 160, 65),
    "blue": (45, 90, 220),
    "purple": (140, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "cross", "star", "heart")
PATTERNS = ("plain", "striped", "dotted")
STYLES = ("photo", "sketch", "noisy")
# The benchmark's look. Every class of the benchmark is photographed in a look of its own that the pretraining
# corpus never shows: a colour cast (a per-channel gain within 1 +- LOOK["gain"] and offset within
# +- LOOK["offset"], before the noise) and a tilt of the shape (within +- LOOK["tilt"] degrees), drawn once per
# class (class_look). It costs zero-shot toy-ViT about 19 points on the base classes and 13 on the new ones.
# Prompt tuning on the base classes can fit the base classes' looks, but there is no look common to all classes
# to learn and carry over: what a prompt learns about the base classes' looks is of no use for the new classes'
# (a look of its own per class, as a real dataset's classes have their typical backgrounds, viewpoints and
# photographers, which CLIP's web corpus shows otherwise).
LOOK = {"gain": 0.25, "offset": 25.0, "tilt": 25.0}
LOOK_PURPOSE = 7  # the SeedSequence namespace of the looks (images use DATASET_PURPOSE and the corpus's purpose)

# an image's seed is a list [purpose, style, class, index] (numpy's SeedSequence entropy): the benchmark images
# use purpose DATASET_PURPOSE, the pretraining corpus another (mmpt.toy_clip), so no benchmark image is ever a
# pretraining image
DATASET_PURPOSE = 0

# images per class of the benchmark (train / val / test); 16 shots fit in train
SPLIT_SIZES = {"train": 20, "val": 4, "test": 20}
SPLIT_FILE = "split_toy_world.json"
# the datasets: registry name -> (folder under DATASET.ROOT, style, in the benchmark's look, images per class per
# split); the shifted renderings are test-only (evaluation targets of a model trained on ToyWorld)
DATASETS = {
    "ToyWorld": ("toy_world", "photo", True, SPLIT_SIZES),
    "ToyWorldSketch": ("toy_world_sketch", "sketch", False, {"train": 0, "val": 0, "test": SPLIT_SIZES["test"]}),
    "ToyWorldNoisy": ("toy_world_noisy", "noisy", False, {"train": 0, "val": 0, "test": SPLIT_SIZES["test"]}),
}


# ----------------------------------------------------------------------------------------------- classes
def all_classes():
    """[(colour, shape)] in colour-major order."""
    return [(colour, shape) for colour in COLOURS for shape in SHAPES]


def is_base(colour, shape):
    return (list(COLOURS).index(colour) + SHAPES.index(shape)) % 2 == 0


def base_classes():
    return [c for c in all_classes() if is_base(*c)]


def new_classes():
    return [c for c in all_classes() if not is_base(*c)]


def ordered_classes():
    """Label order of the datasets: the base half first, so that DATASET.SUBSAMPLE_CLASSES (first ceil(C/2)
    labels = base) takes exactly the base combinations."""
    return base_classes() + new_classes()


def class_name(colour, shape):
    return f"{colour} {shape}"


def folder_name(colour, shape):
    return f"{colour}_{shape}"


# ----------------------------------------------------------------------------------------------- drawing
def _shape_mask(shape, size, cx, cy, r):
    """An "L" mask of `shape` centred at (cx, cy) with radius r, on a size x size canvas."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        h = 0.82 * r
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - 0.95 * r, cy + 0.8 * r), (cx + 0.95 * r, cy + 0.8 * r)], fill=255)
    elif shape == "cross":
        w = 0.36 * r
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=255)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=255)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        draw.polygon([(cx + rad * np.cos(a), cy - rad * np.sin(a)) for a, rad in zip(angles, radii)], fill=255)
    elif shape == "heart":
        lobe = 0.5 * r
        for sign in (-1, 1):
            draw.ellipse([cx + sign * 0.45 * r - lobe, cy - 0.3 * r - lobe, cx + sign * 0.45 * r + lobe,
                          cy - 0.3 * r + lobe], fill=255)
        draw.polygon([(cx - 0.93 * r, cy - 0.15 * r), (cx + 0.93 * r, cy - 0.15 * r), (cx, cy + 0.95 * r)],
                     fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return mask


def _fill(pattern, size, rgb, rng):
    """The object's paint: plain colour, stripes or dots of a darker shade (period ~4 px at 32 px)."""
    fill = np.empty((size, size, 3), dtype=np.float64)
    fill[:] = rgb
    dark = np.asarray(rgb, dtype=np.float64) * 0.5
    yy, xx = np.mgrid[0:size, 0:size]
    period = 4 * SUPERSAMPLE
    if pattern == "striped":
        coord = xx + yy if rng.random() < 0.5 else (yy if rng.random() < 0.5 else xx)
        fill[(coord // (period // 2)) % 2 == 1] = dark
    elif pattern == "dotted":
        phase = rng.integers(0, period, size=2)
        dy, dx = (yy + phase[0]) % period - period / 2, (xx + phase[1]) % period - period / 2
        fill[dy ** 2 + dx ** 2 < (period * 0.28) ** 2] = dark
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    return fill


def _background(style, size, rng):
    if style == "sketch":
        return np.full((size, size, 3), rng.uniform(225, 255), dtype=np.float64)
    if style == "noisy":  # coloured blotches: coarse random colours, smoothly upsampled
        coarse = rng.uniform(30, 225, size=(4, 4, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), dtype=np.float64)
    level = rng.uniform(70, 190)  # photo: a grey of random brightness, a slight tint and a linear gradient
    tint = rng.uniform(-20, 20, size=3)
    ramp = np.linspace(-1, 1, size)[:, None] * rng.uniform(-25, 25)
    return np.clip(level + tint[None, None, :] + ramp[:, :, None] + np.zeros((size, size, 3)), 0, 255)


def sample_nuisance(rng, style="photo"):
    """The non-class attributes of one image: pattern, size word, background word, geometry."""
    radius = rng.uniform(0.24, 0.42)
    margin = 0.48 - radius
    return {
        "pattern": PATTERNS[rng.integers(len(PATTERNS))] if style != "sketch" else "plain",
        "radius": radius,
        "size": "large" if radius > 0.33 else "small",
        "centre": tuple(0.5 + rng.uniform(-margin, margin, size=2)),
    }


def class_look(colour, shape):
    """The benchmark's look of one class (see LOOK): a per-channel gain and offset and a tilt in degrees, drawn
    once per class from a seed of its own."""
    rng = np.random.default_rng([LOOK_PURPOSE, all_classes().index((colour, shape))])
    # a third row is drawn and not used: the looks stay the ones the figures in docs/TOY_WORLD.md were measured on
    gain, offset, _ = rng.uniform(-1, 1, size=(3, 3))
    return {"gain": 1.0 + LOOK["gain"] * gain, "offset": LOOK["offset"] * offset, "tilt": LOOK["tilt"] * rng.uniform(-1, 1)}


def render(colour, shape, seed, style="photo", return_attributes=False, look=False):
    """One IMAGE_SIZE x IMAGE_SIZE RGB image of a `colour` `shape`, deterministic in (colour, shape, seed, style);
    `seed` is an int or a list of ints (see image_seed). `look`: photographed in the class's benchmark look
    (class_look) instead of neutrally, as the pretraining corpus is."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {', '.join(COLOURS)}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    size = IMAGE_SIZE * SUPERSAMPLE
    attrs = sample_nuisance(rng, style)
    background = _background(style, size, rng)
    in_look = class_look(colour, shape) if look else None
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-22, 22, size=3), 0, 255)
    cx, cy = (c * size for c in attrs["centre"])
    mask = _shape_mask(shape, size, cx, cy, attrs["radius"] * size)
    if in_look is not None:
        mask = mask.rotate(in_look["tilt"], resample=Image.BILINEAR, center=(cx, cy))
    if style == "sketch":  # the outline only: the mask minus its erosion
        mask = Image.fromarray(np.asarray(mask) - np.asarray(mask.filter(ImageFilter.MinFilter(2 * SUPERSAMPLE + 1))))
    alpha = np.asarray(mask, dtype=np.float64)[:, :, None] / 255.0
    canvas = background * (1 - alpha) + _fill(attrs["pattern"], size, rgb, rng) * alpha
    small = np.asarray(Image.fromarray(canvas.round().astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX),
                       dtype=np.float64)
    if in_look is not None:
        small = small * in_look["gain"] + in_look["offset"]
    noise_std = {"photo": 8.0, "sketch": 4.0, "noisy": 28.0}[style]
    pixels = np.clip(small + rng.normal(0, noise_std, size=small.shape), 0, 255).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    if return_attributes:
        attrs.update(colour=colour, shape=shape, style=style,
                     background="light" if float(background.mean()) > 128 else "dark")
        return image, attrs
    return image


def image_seed(purpose, style, colour, shape, index):
    """The seed of one image: independent streams per (purpose, style, class, index)."""
    return [purpose, STYLES.index(style), all_classes().index((colour, shape)), index]


# ----------------------------------------------------------------------------------------------- on disk
def write_world(dataset_dir, style="photo", split_sizes=None, look=False):
    """Render the world into `dataset_dir`: images/<colour>_<shape>/<split>_<i>.png and SPLIT_FILE (CoOp's split
    json: [relative path, label, class name] per image; labels in `ordered_classes()` order, base first).
    Test-only styles put every image in "test" (and the same list in train / val, as ImageNet's variants do)."""
    sizes = dict(SPLIT_SIZES if split_sizes is None else split_sizes)
    split = {"train": [], "val": [], "test": []}
    for label, (colour, shape) in enumerate(ordered_classes()):
        folder = folder_name(colour, shape)
        os.makedirs(osp.join(dataset_dir, "images", folder), exist_ok=True)
        index = 0
        for part in ("train", "val", "test"):
            for i in range(sizes[part]):
                rel = f"{folder}/{part}_{i:03d}.png"
                seed = image_seed(DATASET_PURPOSE, style, colour, shape, index)
                render(colour, shape, seed, style, look=look).save(osp.join(dataset_dir, "images", rel), format="PNG")
                split[part].append([rel, label, class_name(colour, shape)])
                index += 1
    with open(osp.join(dataset_dir, SPLIT_FILE), "w") as f:
        json.dump(split, f, indent=1)


def make_world(dataset_dir, style="photo", split_sizes=None, look=False):
    """`write_world` into a temporary sibling folder, then renamed into place: a reader never sees half a world,
    and two processes making it at once both end with the same complete folder. Returns dataset_dir."""
    if osp.isfile(osp.join(dataset_dir, SPLIT_FILE)):
        return dataset_dir
    parent = osp.dirname(osp.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{osp.basename(dataset_dir)}-", dir=parent)
    try:
        write_world(staging, style, split_sizes, look)
        print(f"Generated the toy world ({style}) in {dataset_dir}")
        try:
            os.rename(staging, dataset_dir)
        except OSError:  # another process finished first (or an empty folder is in the way)
            if osp.isdir(dataset_dir) and not os.listdir(dataset_dir):
                os.rmdir(dataset_dir)
                os.rename(staging, dataset_dir)
            elif not osp.isfile(osp.join(dataset_dir, SPLIT_FILE)):
                raise
    finally:
        if osp.isdir(staging):
            shutil.rmtree(staging)
    return dataset_dir


def make_dataset(name, root):
    """The dataset of registry name `name` (see DATASETS) under root, generated unless it is there; its folder."""
    folder, style, look, sizes = DATASETS[name]
    return make_world(osp.join(root, folder), style, sizes, look)
