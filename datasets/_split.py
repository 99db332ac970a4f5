"""Helpers shared by every dataset loader, written once (CoOp's OxfordPets.read_split / save_split /
split_trainval / subsample_classes, DTD.read_and_split_data and the few-shot cache of every CoOp loader).

`SplitDataset` is the common loader flow: find the dataset folder, read `split_zhou_<Name>.json` (or make the
split once and save it), take the cached few-shot subset, then the base/new half. Like CoOp, a split made here
draws from the global `random` (seeded by train.py with the run's seed) before the few-shot subset does, and
lists folders in `os.listdir` order, so on the same disk it selects what CoOp selects (docs/DATA_FIDELITY.md).
A subclass sets `dataset_dir`, `image_subdir`, `split_file` and implements `make_split()`.
"""
import json
import math
import os
import os.path as osp
import pickle
import random
import warnings
from collections import defaultdict

from PIL import Image

from dassl.data.datasets import DatasetBase, Datum
from dassl.utils import ConfigError, MissingFileError, atomic_write, listdir_nohidden, read_json

SUBSAMPLE_CHOICES = ("all", "base", "new")


class DatasetNotFoundError(MissingFileError):
    """A dataset folder or one of its expected files is missing."""


class DatasetContentError(ConfigError):
    """The dataset is there but unusable: an empty class, a split naming missing files, a bad image."""


# --------------------------------------------------------------------------------------------- file checks
def require_path(path, dataset_name, root, what="dataset folder"):
    """Raise DatasetNotFoundError (one line, naming the path and DATASET.ROOT) when `path` does not exist."""
    if not osp.exists(path):
        raise DatasetNotFoundError(
            f"{dataset_name}: {what} not found: {path} (DATASET.ROOT={root}); prepare it with "
            f"`python -m mmpt.data_prep --root {root} --datasets {dataset_name}` (see docs/DATASETS.md, section "
            f"Preparing the data)")
    return path


def check_paths(impaths, source):
    """Every file must exist and be non-empty: a bad split or a truncated download fails now, not mid-epoch."""
    missing, empty = [], []
    for impath in impaths:
        try:
            if os.stat(impath).st_size == 0:
                empty.append(impath)
        except OSError:
            missing.append(impath)
    if missing:
        raise DatasetContentError(f"{source} references {len(missing)} missing image file(s), e.g. {missing[0]}")
    if empty:
        raise DatasetContentError(f"{source}: {len(empty)} empty (0-byte) image file(s), e.g. {empty[0]}")


def check_image_files(items, source, decode_header=False):
    """check_paths for a list of Datum; with `decode_header`, PIL must also recognise and verify each file."""
    check_paths([item.impath for item in items], source)
    if decode_header:
        for item in items:
            try:
                with Image.open(item.impath) as img:
                    img.verify()
            except Exception as e:  # PIL raises many types for corrupt files
                raise DatasetContentError(f"{source}: unreadable image {item.impath} ({type(e).__name__})") from None


def make_items(impaths_labels_names, source):
    """[(impath, label, classname)] -> [Datum], after checking every file (one clear error, not one per file)."""
    check_paths([impath for impath, _, _ in impaths_labels_names], source)
    return [Datum(impath=impath, label=int(label), classname=classname)
            for impath, label, classname in impaths_labels_names]


def read_lines(filepath):
    """(line number, stripped line) of a text annotation file, skipping blank lines and '#' comments."""
    with open(filepath) as f:
        for line_no, line in enumerate(f, 1):
            if line.strip() and not line.startswith("#"):
                yield line_no, line.strip()


def check_labels(items, source):
    """Labels must be 0..C-1 with no gap: DatasetBase derives the class names from them."""
    labels = sorted({item.label for item in items})
    if labels != list(range(len(labels))):
        absent = sorted(set(range(max(labels) + 1)) - set(labels)) if labels else []
        raise DatasetContentError(f"{source}: no images for label(s) {absent[:10]} (an empty class)")


# --------------------------------------------------------------------------------------------- split files
def read_split(filepath, path_prefix):
    """split_zhou_<Name>.json -> (train, val, test) lists of Datum; paths in the file are relative to path_prefix."""
    try:
        split = read_json(filepath)
    except ValueError as e:
        raise DatasetContentError(f"split file {filepath} is not valid JSON: {e}") from None
    output = []
    for key in ("train", "val", "test"):
        if key not in split:
            raise DatasetContentError(f"split file {filepath} has no '{key}' list (keys: {sorted(split)})")
        rows = [(osp.join(path_prefix, impath), label, classname) for impath, label, classname in split[key]]
        output.append(make_items(rows, f"split file {filepath} ({key})"))
    return tuple(output)


def save_split(train, val, test, filepath, path_prefix):
    """Write (train, val, test) as CoOp's split json, paths relative to path_prefix (atomically)."""
    def rows(items):
        return [[osp.relpath(item.impath, path_prefix), item.label, item.classname] for item in items]

    split = {"train": rows(train), "val": rows(val), "test": rows(test)}
    data = json.dumps(split, indent=4, separators=(",", ": ")).encode()
    atomic_write(filepath, lambda f: f.write(data))
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """CoOp's OxfordPets.split_trainval: per class, in order of first appearance, shuffle the class's items with
    the global `random` and hold out the first round(n * p_val) as val (at least 1: CoOp stops there instead)."""
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item.label].append(idx)
    train, val = [], []
    for idxs in tracker.values():
        if len(idxs) < 2:
            raise DatasetContentError(f"class '{trainval[idxs[0]].classname}' has {len(idxs)} train+val image(s); "
                                      "need at least 2 to hold one out for validation")
        n_val = max(1, round(len(idxs) * p_val))
        random.shuffle(idxs)
        val.extend(trainval[idx] for idx in idxs[:n_val])
        train.extend(trainval[idx] for idx in idxs[n_val:])
    return train, val


def partition_sizes(n_total, p_trn=0.5, p_val=0.2):
    """(n_train, n_val, n_test) = round(n p_trn), round(n p_val), rest, each at least 1 (CoOp's rounding)."""
    n_train, n_val = round(n_total * p_trn), round(n_total * p_val)
    n_test = n_total - n_train - n_val
    if min(n_train, n_val, n_test) < 1:
        return None
    return n_train, n_val, n_test


def split_per_class(class_images, p_trn=0.5, p_val=0.2, source=""):
    """{(label, classname): [impath]} -> (train, val, test): each class in the dict's order is shuffled with the
    global `random` (CoOp) and cut p_trn / p_val / rest."""
    train, val, test = [], [], []
    for (label, classname), images in class_images.items():
        images = list(images)
        random.shuffle(images)
        sizes = partition_sizes(len(images), p_trn, p_val)
        if sizes is None:
            raise DatasetContentError(f"{source}: class '{classname}' has {len(images)} image(s); need at least 3 "
                                      "(one each for train, val and test)")
        n_train, n_val, _ = sizes
        for part, paths in ((train, images[:n_train]), (val, images[n_train:n_train + n_val]),
                            (test, images[n_train + n_val:])):
            part.extend(Datum(impath=impath, label=label, classname=classname) for impath in paths)
    return train, val, test


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """CoOp's DTD.read_and_split_data: one folder per class (sorted names = labels); each class's images, in
    `os.listdir` order, shuffled with the global `random` and split p_trn / p_val / rest."""
    categories = sorted(c for c in listdir_nohidden(image_dir) if c not in ignored)
    if not categories:
        raise DatasetContentError(f"no class folders in {image_dir}")
    class_images = {}
    for label, category in enumerate(categories):
        category_dir = osp.join(image_dir, category)
        images = [osp.join(category_dir, name) for name in listdir_nohidden(category_dir)]  # unsorted, as CoOp
        if not images:
            raise DatasetContentError(f"empty class folder (no images): {category_dir}")
        classname = (new_cnames or {}).get(category, category)
        class_images[(label, classname)] = images
    return split_per_class(class_images, p_trn, p_val, source=image_dir)


def read_class_folders(image_dir, folder_to_name, ignored=()):
    """ImageNet and its variants (CoOp's read_data): sorted class folders -> labels 0..C-1, class names from
    `folder_to_name`; each folder's images in `os.listdir` order, as CoOp (few-shot sampling depends on it)."""
    folders = sorted(f for f in listdir_nohidden(image_dir) if f not in ignored and osp.isdir(osp.join(image_dir, f)))
    if not folders:
        raise DatasetContentError(f"no class folders in {image_dir}")
    rows = []
    for label, folder in enumerate(folders):
        if folder not in folder_to_name:
            raise DatasetContentError(f"unknown class folder {osp.join(image_dir, folder)} (not in the class list)")
        folder_dir = osp.join(image_dir, folder)
        images = listdir_nohidden(folder_dir)
        if not images:
            raise DatasetContentError(f"empty class folder (no images): {folder_dir}")
        rows.extend((osp.join(folder_dir, name), label, folder_to_name[folder]) for name in images)
    return make_items(rows, image_dir)


# --------------------------------------------------------------------------------------------- few-shot, base/new
def read_cache(path):
    """The few-shot cache at `path` ({"train", "val"}), or None with a warning when it does not unpickle (cut by a
    full disk or a partial copy): the caller samples it again (seeded, the same shots) and rewrites it."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
        if isinstance(data, dict) and "train" in data:
            return data
        problem = "holds no few-shot split"
    except Exception as error:  # noqa: BLE001  (a cut pickle raises EOFError, UnpicklingError, ValueError, ...)
        problem = f"does not unpickle ({type(error).__name__}: {' '.join(str(error).split())[:80]})"
    warnings.warn(f"few-shot cache {path} {problem} (truncated?): sampling the shots again and rewriting it (drawn "
                  f"from this run's random state, they may differ from the shots earlier runs of this seed used)")
    return None


def load_or_make_fewshot(dataset, train, val, num_shots, seed, cache_dir):
    """CoOp's few-shot cache: `<cache_dir>/shot_<K>-seed_<S>.pkl` holds {"train", "val"} (val: min(K, 4) per class).

    The first run samples with Python's `random` (seeded by the trainer) and writes the pickle atomically;
    every later run with the same K and seed reads it back, so all methods see the same shots.
    `val=None` (ImageNet, whose val is its test set) caches the train part only, as CoOp does.
    """
    if num_shots < 1:
        return train, val
    path = osp.join(cache_dir, f"shot_{num_shots}-seed_{seed}.pkl")
    data = read_cache(path) if osp.exists(path) else None
    if data is not None:
        print(f"Loading preprocessed few-shot data from {path}")
        check_image_files(data["train"] + list(data.get("val") or []),
                          f"few-shot cache {path} (delete it if the dataset moved)")
        return data["train"], (data.get("val") if val is not None else None)
    train = dataset.generate_fewshot_dataset(train, num_shots=num_shots)
    data = {"train": train}
    if val is not None:
        val = dataset.generate_fewshot_dataset(val, num_shots=min(num_shots, 4))
        data["val"] = val
    print(f"Saving preprocessed few-shot data to {path}")
    atomic_write(path, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
    return train, val


def subsample_classes(*datasets, subsample="all"):
    """CoCoOp's base-to-new halves: sort the labels of the first list; base = first ceil(C/2), new = the rest.

    Each half is relabelled from 0 (in label order); the other lists are filtered to the same classes.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ConfigError(f"DATASET.SUBSAMPLE_CLASSES must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}")
    if subsample == "all":
        return datasets
    labels = sorted({item.label for item in datasets[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    relabeler = {y: y_new for y_new, y in enumerate(selected)}
    return tuple([Datum(impath=item.impath, label=relabeler[item.label], domain=item.domain, classname=item.classname)
                  for item in dataset if item.label in relabeler] for dataset in datasets)


# --------------------------------------------------------------------------------------------- loader base
class SplitDataset(DatasetBase):
    """The common flow of the benchmark loaders (a subclass is CoOp's loader minus the shared code).

    Class attributes: `dataset_dir` (folder under DATASET.ROOT), `image_subdir` (the image folder inside it;
    split paths are relative to it), `split_file` (e.g. "split_zhou_Caltech101.json"; None = the official
    split is read every time), `required` (paths inside dataset_dir that must exist).
    """

    dataset_dir = ""
    image_subdir = ""
    split_file = None
    required = ()
    val_is_test = False  # True: the test set doubles as val (ImageNet, as in CoOp)

    def __init__(self, cfg):
        self.root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        self.locate(cfg)
        train, val, test = self.load_split()
        self.finish(cfg, train, val, test)

    @classmethod
    def check_present(cls, cfg):
        """The first check __init__ makes (the dataset folder exists), run before anything is built or printed at
        length; a subclass that finds or makes its folder otherwise (the toy world, one's own yaml) is not
        checked here."""
        if cls.__init__ is SplitDataset.__init__ and cls.locate is SplitDataset.locate:
            root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
            require_path(osp.join(root, cls.dataset_dir), cls.__name__, root)

    def locate(self, cfg):
        """Set dataset_dir, image_dir, split_path and split_fewshot_dir."""
        self.dataset_dir = require_path(osp.join(self.root, type(self).dataset_dir), self.name, self.root)
        self.image_dir = osp.join(self.dataset_dir, self.image_subdir)
        self.split_path = osp.join(self.dataset_dir, self.split_file) if self.split_file else None
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot")

    def finish(self, cfg, train, val, test):
        """The few-shot subset (cached) and the base / new half of the split."""
        check_labels(train, f"{self.name} training set")
        if self.val_is_test:  # ImageNet: no val split of its own, so nothing to sample or cache for it
            val = None
        train, val = load_or_make_fewshot(self, train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED, self.split_fewshot_dir)
        if cfg.DATASET.NUM_SHOTS >= 1:  # the images training iterates over: decode their headers now
            check_image_files(train + list(val or []), f"{self.name} few-shot set", decode_header=True)
        if val is None:
            train, test = subsample_classes(train, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
            val = test
        else:
            train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    @property
    def name(self):
        return type(self).__name__

    def load_split(self):
        if self.split_path and osp.exists(self.split_path):
            require_path(self.image_dir, self.name, self.root, "image folder")
            return read_split(self.split_path, self.image_dir)
        for path in (self.image_subdir, *self.required):
            require_path(osp.join(self.dataset_dir, path), self.name, self.root,
                         "image folder" if path == self.image_subdir else "file")
        train, val, test = self.make_split()
        check_image_files(train + val + test, f"{self.name} ({self.dataset_dir})")
        if self.split_path:
            save_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def make_split(self):
        """(train, val, test) from the dataset's own files, when there is no split file."""
        raise NotImplementedError
