"""Small fake datasets in each benchmark's REAL on-disk layout (for tests and the demo).

    from mmpt.data.fixtures import make_dataset
    dataset_dir = make_dataset("Caltech101", "/tmp/data")      # -> "/tmp/data/caltech-101"

Every class gets its own colour (evenly spaced hues) plus pixel noise, so a model can learn something.
The files are the ones the loaders in `datasets/` read when there is no split file (annotation text files,
.mat files, json), with real class-folder names (Caltech101's BACKGROUND_Google / Faces_easy included).
"""
import json
import os
import os.path as osp
import re
from pathlib import Path

import numpy as np
from PIL import Image

from mmpt.data.data_prep import DATASET_FOLDERS

# where the ImageNet wnid lists live (the repository's datasets/classnames/, shipped with the loaders)
CLASSNAME_DIR = Path(__file__).resolve().parents[2] / "datasets" / "classnames"

CLASSES = {
    "Caltech101": ["Faces", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor", "ant", "barrel", "bass",
                   "beaver"],
    "OxfordPets": ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
                   "Birman", "Bombay", "boxer", "British_Shorthair"],
    "StanfordCars": ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012",
                     "Acura TL Type-S 2008", "Acura TSX Sedan 2012", "Acura Integra Type R 2001",
                     "Acura ZDX Hatchback 2012", "Aston Martin V8 Vantage Convertible 2012",
                     "Aston Martin V8 Vantage Coupe 2012", "Audi RS 4 Convertible 2008"],
    "OxfordFlowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                      "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
                      "globe thistle"],
    "Food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad",
                "beignets", "bibimbap", "bread_pudding", "breakfast_burrito"],
    "FGVCAircraft": ["707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700",
                     "737-800", "A300B4"],
    "SUN397": ["/a/abbey", "/a/airplane_cabin", "/a/apartment_building/outdoor", "/b/badlands",
               "/b/bamboo_forest", "/c/canyon", "/c/church/indoor", "/d/dam", "/d/desert/sand", "/e/escalator/indoor"],
    "DescribableTextures": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked",
                            "crosshatched", "crystalline"],
    "EuroSAT": ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                "PermanentCrop", "Residential", "River", "SeaLake"],
    "UCF101": ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
               "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress"],
}
# names of further classes when more are asked for than CLASSES lists (same shape as the real ones)
EXTRA_CLASS = {
    "Caltech101": "object{:03d}", "OxfordPets": "breed{:03d}", "StanfordCars": "Make Model{:03d} Sedan 2010",
    "OxfordFlowers": "flower {:03d}", "Food101": "dish_{:03d}", "FGVCAircraft": "variant-{:03d}",
    "SUN397": "/x/scene_{:03d}", "DescribableTextures": "texture{:03d}", "EuroSAT": "LandUse{:03d}",
    "UCF101": "Action{:03d}",
}
IMAGENET_CLASS_FILES = {"ImageNet": "imagenet.txt", "ImageNetV2": "imagenet.txt", "ImageNetSketch": "imagenet.txt",
                        "ImageNetA": "imagenet_a.txt", "ImageNetR": "imagenet_r.txt"}


def read_wnids(filename):
    """The first column of a shipped class-name file (comment lines start with '#')."""
    lines = (CLASSNAME_DIR / filename).read_text().splitlines()
    return [line.split("\t")[0] for line in lines if line and not line.startswith("#")]


def fixture_classes(name, num_classes):
    """The raw class identifiers (folder names, wnids, ...) a fixture of `num_classes` classes uses."""
    if name in IMAGENET_CLASS_FILES:
        available = read_wnids(IMAGENET_CLASS_FILES[name])
    elif name in CLASSES:
        available = CLASSES[name] + [EXTRA_CLASS[name].format(i) for i in range(len(CLASSES[name]), num_classes)]
    else:
        raise KeyError(f"make_dataset: unknown dataset name {name!r}; choose from {sorted(DATASET_FOLDERS)}")
    if not 1 <= num_classes <= len(available):
        raise ValueError(f"make_dataset({name!r}): num_classes must be in 1..{len(available)}, got {num_classes}")
    return available[:num_classes]


class ImageWriter:
    """Writes small noisy images whose mean colour is the class's hue."""

    def __init__(self, num_classes, image_size, seed):
        self.rng = np.random.default_rng(seed)
        self.size = image_size
        hues = np.arange(num_classes) / num_classes
        self.colours = [self._hue_to_rgb(h) for h in hues]

    @staticmethod
    def _hue_to_rgb(hue):
        # full saturation / value: each channel is a triangle wave of the hue
        return np.clip(np.abs((hue * 6 + np.array([0, 4, 2])) % 6 - 3) - 1, 0, 1) * 200 + 25

    def write(self, path, class_index):
        os.makedirs(osp.dirname(path), exist_ok=True)
        noise = self.rng.normal(0, 20, size=(self.size, self.size, 3))
        pixels = np.clip(self.colours[class_index] + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, format="PNG" if path.endswith(".png") else "JPEG", quality=90)


def _split_counts(n):
    """Images per class of (train, val, test) for datasets with official split files: ~50/20/30, each >= 1."""
    n_val = max(1, round(n * 0.2))
    n_test = max(1, round(n * 0.3))
    return n - n_val - n_test, n_val, n_test


def _write_lines(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))


# ------------------------------------------------------------------------------------ one writer per layout
def _folder_per_class(image_dir, ext, ignored=()):
    """<image_dir>/<class>/<class>_<i>.<ext> (Caltech101, Food101, DTD, EuroSAT)."""
    def write(ds_dir, classes, n, img):
        for folder in ignored:  # e.g. Caltech101's BACKGROUND_Google: present on disk, dropped by the loader
            for i in range(2):
                img.write(osp.join(ds_dir, image_dir, folder, f"{folder}_{i + 1:04d}.{ext}"), 0)
        for c, cls in enumerate(classes):
            for i in range(n):
                img.write(osp.join(ds_dir, image_dir, cls, f"image_{i + 1:04d}.{ext}"), c)
    return write


def _oxford_pets(ds_dir, classes, n, img):
    trainval, test = [], []
    n_test = _split_counts(n)[2]
    for c, breed in enumerate(classes):
        species = 1 if breed[0].isupper() else 2  # cats are capitalised in the real file names
        for i in range(n):
            imname = f"{breed}_{i + 1}"
            img.write(osp.join(ds_dir, "images", imname + ".jpg"), c)
            (test if i < n_test else trainval).append(f"{imname} {c + 1} {species} 1")
    _write_lines(osp.join(ds_dir, "annotations", "trainval.txt"), trainval)
    _write_lines(osp.join(ds_dir, "annotations", "test.txt"), test)


def _stanford_cars(ds_dir, classes, n, img):
    from scipy.io import savemat

    n_test = _split_counts(n)[2]
    annos = {"cars_train": [], "cars_test": []}
    for c in range(len(classes)):
        for i in range(n):
            folder = "cars_test" if i < n_test else "cars_train"
            fname = f"{len(annos[folder]) + 1:05d}.jpg"
            img.write(osp.join(ds_dir, folder, fname), c)
            annos[folder].append((fname, c + 1))

    def struct(rows):  # a 1 x N MATLAB struct array with fields fname, class (as in the real devkit)
        array = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
        for k, (fname, label) in enumerate(rows):
            array[0, k] = (fname, np.array([[label]], dtype=np.uint8))
        return array

    meta = np.empty((1, len(classes)), dtype=object)
    meta[0, :] = classes
    os.makedirs(osp.join(ds_dir, "devkit"), exist_ok=True)
    savemat(osp.join(ds_dir, "devkit", "cars_meta.mat"), {"class_names": meta})
    savemat(osp.join(ds_dir, "devkit", "cars_train_annos.mat"), {"annotations": struct(annos["cars_train"])})
    savemat(osp.join(ds_dir, "cars_test_annos_withlabels.mat"), {"annotations": struct(annos["cars_test"])})


def _oxford_flowers(ds_dir, classes, n, img):
    from scipy.io import savemat

    labels = []
    for i in range(n * len(classes)):  # interleaved classes, as the real image numbering is not by class
        c = i % len(classes)
        img.write(osp.join(ds_dir, "jpg", f"image_{i + 1:05d}.jpg"), c)
        labels.append(c + 1)
    savemat(osp.join(ds_dir, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    with open(osp.join(ds_dir, "cat_to_name.json"), "w") as f:
        json.dump({str(c + 1): name for c, name in enumerate(classes)}, f)


def _fgvc_aircraft(ds_dir, classes, n, img):
    parts = {"train": [], "val": [], "test": []}
    counts = dict(zip(parts, _split_counts(n)))
    image_id = 1000000
    for c, variant in enumerate(classes):
        for part, count in counts.items():
            for _ in range(count):
                image_id += 1
                img.write(osp.join(ds_dir, "images", f"{image_id}.jpg"), c)
                parts[part].append(f"{image_id} {variant}")
    _write_lines(osp.join(ds_dir, "variants.txt"), classes)
    for part, lines in parts.items():
        _write_lines(osp.join(ds_dir, f"images_variant_{part}.txt"), lines)


def _sun397(ds_dir, classes, n, img):
    train, test = [], []
    n_test = _split_counts(n)[2]
    for c, cls in enumerate(classes):
        for i in range(n):
            imname = f"{cls}/sun_{c:03d}{i:04d}.jpg"
            img.write(osp.join(ds_dir, "SUN397", imname[1:]), c)
            (test if i < n_test else train).append(imname)
    _write_lines(osp.join(ds_dir, "ClassName.txt"), classes)
    _write_lines(osp.join(ds_dir, "Training_01.txt"), train)
    _write_lines(osp.join(ds_dir, "Testing_01.txt"), test)


def _ucf101(ds_dir, classes, n, img):
    train, test = [], []
    n_test = _split_counts(n)[2]
    for c, action in enumerate(classes):
        folder = "_".join(re.findall("[A-Z][^A-Z]*", action))  # the midframes folders split CamelCase
        for i in range(n):
            stem = f"v_{action}_g{i + 1:02d}_c01"
            img.write(osp.join(ds_dir, "UCF-101-midframes", folder, stem + ".jpg"), c)
            (test if i < n_test else train).append(f"{action}/{stem}.avi" + ("" if i < n_test else f" {c + 1}"))
    _write_lines(osp.join(ds_dir, "ucfTrainTestlist", "classInd.txt"), [f"{c + 1} {a}" for c, a in enumerate(classes)])
    _write_lines(osp.join(ds_dir, "ucfTrainTestlist", "trainlist01.txt"), train)
    _write_lines(osp.join(ds_dir, "ucfTrainTestlist", "testlist01.txt"), test)


def _imagenet(ds_dir, classes, n, img):
    n_val = max(1, n // 2)
    for c, wnid in enumerate(classes):
        for i in range(n):
            img.write(osp.join(ds_dir, "images", "train", wnid, f"{wnid}_{i + 1}.JPEG"), c)
        for i in range(n_val):
            img.write(osp.join(ds_dir, "images", "val", wnid, f"ILSVRC2012_val_{c * 100 + i + 1:08d}.JPEG"), c)


def _imagenet_variant(image_dir, ext, by_label=False, readme=False):
    """Test-only ImageNet variants: <image_dir>/<wnid or label index>/<i>.<ext>."""
    def write(ds_dir, classes, n, img):
        for c, wnid in enumerate(classes):
            for i in range(n):
                img.write(osp.join(ds_dir, image_dir, str(c) if by_label else wnid, f"{i + 1:04d}.{ext}"), c)
        if readme:  # ImageNet-A / -R ship a README.txt beside the class folders
            _write_lines(osp.join(ds_dir, image_dir, "README.txt"), ["fixture"])
    return write


WRITERS = {
    "Caltech101": _folder_per_class("101_ObjectCategories", "jpg", ignored=("BACKGROUND_Google", "Faces_easy")),
    "OxfordPets": _oxford_pets,
    "StanfordCars": _stanford_cars,
    "OxfordFlowers": _oxford_flowers,
    "Food101": _folder_per_class("images", "jpg"),
    "FGVCAircraft": _fgvc_aircraft,
    "SUN397": _sun397,
    "DescribableTextures": _folder_per_class("images", "jpg"),
    "EuroSAT": _folder_per_class("2750", "jpg"),
    "UCF101": _ucf101,
    "ImageNet": _imagenet,
    "ImageNetV2": _imagenet_variant("imagenetv2-matched-frequency-format-val", "jpeg", by_label=True),
    "ImageNetSketch": _imagenet_variant("images", "JPEG"),
    "ImageNetA": _imagenet_variant("imagenet-a", "jpg", readme=True),
    "ImageNetR": _imagenet_variant("imagenet-r", "jpg", readme=True),
}


def make_dataset(name, root, num_classes=6, images_per_class=6, image_size=32, seed=0):
    """Write a small fake dataset of registry name `name` in its real layout under `root`.

    `images_per_class` images of each of the first `num_classes` real classes (ImageNet family: the first
    wnids of the class list / the -A, -R subsets). Returns the dataset folder (`root/<folder>`).
    Datasets without an ImageNet class list take any number of classes (real names first, then made-up
    ones). At least 4 images per class are needed (CoOp's 50/20/30 rounding leaves 3 without a test image).
    The toy worlds (ToyWorld, ToyWorldSketch, ToyWorldNoisy) are generated whole (mmpt.data.toy_world); the
    size arguments do not apply to them.
    """
    from mmpt.data import toy_world

    if name in toy_world.DATASETS:
        return toy_world.make_dataset(name, root)
    if name not in WRITERS:
        raise KeyError(f"make_dataset: unknown dataset name {name!r}; choose from {sorted(WRITERS)}")
    if images_per_class < 4:
        raise ValueError(f"make_dataset({name!r}): images_per_class must be >= 4, got {images_per_class}")
    classes = fixture_classes(name, num_classes)
    dataset_dir = osp.join(root, DATASET_FOLDERS[name])
    os.makedirs(dataset_dir, exist_ok=True)
    WRITERS[name](dataset_dir, classes, images_per_class, ImageWriter(num_classes, image_size, seed))
    return dataset_dir
