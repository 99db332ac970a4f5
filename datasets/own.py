"""OwnDataset: a user's own images, described by a dataset yaml alone (no code; docs/DATASETS.md).

    DATASET:
      NAME: "OwnDataset"
      OWN:
        DIR: "my_birds"              # the dataset folder: absolute, or relative to DATASET.ROOT
        LIST: ""                     # "" = an image folder; else a CSV / JSON list inside DIR
        CLASSNAMES: ""               # optional class-name file inside DIR (`key class name` per line)
        SPLIT: [0.5, 0.2]            # train / val fraction per class when no split is given (test: the rest)
        SPLIT_SEED: 1
        TEST_ONLY: False             # every image is a test image (a cross-dataset or DG target)
        MATCH_CLASSNAMES: ""         # a DG target: class names matched by name to "imagenet" or a name file

What it reads: DIR/<class>/* (one folder per class), or DIR/{train,val,test}/<class>/* (val optional), or a
list of `path,label[,split]` rows (CSV with an optional header, or JSON: [[path, label, split?], ...] or
[{"path", "label", "split"}, ...]); paths are relative to DIR. A class's key is its folder name or its label;
its name is the key with "_" read as " ", or what the class-name file gives it (CoOp's `key name` format,
e.g. `n01440764 tench` or `3 barn owl`; numeric labels need one).

The split: `DIR/split_own_<train>-<val>-<test>_seed<S>.json` in CoOp's split-file format, made once (per class,
images in sorted order, shuffled with a generator seeded by SPLIT_SEED, cut by SPLIT; given train / test
parts are kept, and a missing val is SPLIT[1] of each class's train images), written atomically and read by
every later run. Delete it after changing the images. Few-shot subsets are cached in
`DIR/split_fewshot/<split file name>/`, base / new halves are taken as for the benchmark datasets.

`python -m mmpt.data_prep --root DATA --datasets path/to/mine.yaml` makes the split and reports what it found
(`describe`); with `--check` it also decodes every image.
"""
import csv
import json
import os.path as osp
import random
from collections import Counter, OrderedDict
from contextlib import contextmanager

from dassl.data.datasets import DATASET_REGISTRY, Datum
from dassl.data.datasets.base_dataset import check_classnames, classname_key
from dassl.utils import ConfigError, listdir_nohidden

from ._split import (DatasetContentError, SplitDataset, check_paths, require_path, split_per_class,
                     split_trainval, subsample_classes)
from .imagenet import imagenet_classnames, read_classnames

SPLITS = ("train", "val", "test")
IGNORED_FOLDERS = ("split_fewshot",)


def image_extensions():
    from mmpt.data.image_check import IMAGE_EXTENSIONS

    return IMAGE_EXTENSIONS


@contextmanager
def seeded_random(seed):
    """The global `random` (what the split helpers draw from) seeded with `seed`, restored afterwards: the split
    depends on SPLIT_SEED only, not on which run (seed, method) makes it."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def own_spec(cfg):
    """(dataset folder, the yaml's OWN node), validated (one ConfigError line per mistake)."""
    own = cfg.DATASET.OWN
    if not own.DIR:
        raise ConfigError("DATASET.OWN.DIR is empty: set it to your dataset folder (absolute, or relative to "
                          "DATASET.ROOT) in the dataset yaml")
    split = tuple(float(p) for p in own.SPLIT)
    if len(split) != 2 or min(split) <= 0 or sum(split) >= 1:
        raise ConfigError(f"DATASET.OWN.SPLIT={list(own.SPLIT)}: expected [train, val] fractions > 0 that leave "
                          "some images for test, e.g. [0.5, 0.2]")
    root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT or "."))
    return osp.normpath(osp.join(root, osp.expanduser(own.DIR))), split


def split_file_name(split, seed):
    train, val = (round(100 * p) for p in split)
    return f"split_own_{train}-{val}-{100 - train - val}_seed{seed}.json"


# --------------------------------------------------------------------------------------------- reading
def is_image(name):
    return name.lower().endswith(image_extensions())


def scan_class_folders(folder, prefix=""):
    """[(relative path, class key)] of DIR/<prefix>/<class>/<image>, in sorted order; and the skipped files."""
    rows, skipped = [], []
    for key in sorted(f for f in listdir_nohidden(folder) if osp.isdir(osp.join(folder, f))
                      and f not in IGNORED_FOLDERS):
        for name in sorted(listdir_nohidden(osp.join(folder, key))):
            rel = osp.join(prefix, key, name)
            (rows if is_image(name) else skipped).append((rel, key))
    return rows, [rel for rel, _ in skipped]


def read_list(path):
    """[(path, label key, split or None)] of a CSV (`path,label[,split]`, optional header) or JSON list."""
    rows = []
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:
            raise DatasetContentError(f"{path} is not valid JSON: {e}") from None
        for i, entry in enumerate(data if isinstance(data, list) else []):
            if isinstance(entry, dict):
                entry = [entry.get("path"), entry.get("label"), entry.get("split")]
            if not isinstance(entry, list) or len(entry) not in (2, 3) or entry[0] is None or entry[1] is None:
                raise DatasetContentError(f"{path}: entry {i} is {entry!r}; expected [path, label(, split)] or "
                                          '{"path", "label"(, "split")}')
            rows.append((str(entry[0]), str(entry[1]), entry[2] if len(entry) == 3 else None))
        if not isinstance(data, list):
            raise DatasetContentError(f"{path}: expected a JSON list of [path, label(, split)] entries")
    else:
        with open(path, newline="", encoding="utf-8") as f:
            for line_no, fields in enumerate(csv.reader(f), 1):
                fields = [x.strip() for x in fields]
                if not any(fields) or fields[0].startswith("#"):
                    continue
                if line_no == 1 and [x.lower() for x in fields[:2]] == ["path", "label"]:
                    continue  # a header
                if len(fields) not in (2, 3):
                    raise DatasetContentError(f"{path}:{line_no}: expected 'path,label' or 'path,label,split', "
                                              f"got {','.join(fields)!r}")
                rows.append((fields[0], fields[1], fields[2] if len(fields) == 3 and fields[2] else None))
    bad = [(p, s) for p, _, s in rows if s is not None and s not in SPLITS]
    if bad:
        raise DatasetContentError(f"{path}: split {bad[0][1]!r} of {bad[0][0]} is not one of {SPLITS}")
    if rows and len({s is None for _, _, s in rows}) > 1:
        raise DatasetContentError(f"{path}: some rows name a split and some do not; give all rows one or none")
    return rows


def scan(dataset_dir, list_file=""):
    """What is on disk: ([(relative path, class key, split or None)], [skipped non-image files])."""
    if list_file:
        path = require_path(osp.join(dataset_dir, list_file), "OwnDataset", dataset_dir, "list file")
        return read_list(path), []
    parts = [s for s in SPLITS if osp.isdir(osp.join(dataset_dir, s))]
    if "train" in parts and "test" in parts:  # DIR/{train,val,test}/<class>/*
        rows, skipped = [], []
        for part in parts:
            found, extra = scan_class_folders(osp.join(dataset_dir, part), part)
            rows += [(rel, key, part) for rel, key in found]
            skipped += extra
        return rows, skipped
    found, skipped = scan_class_folders(dataset_dir)
    return [(rel, key, None) for rel, key in found], skipped


def class_keys(rows):
    """Sorted class keys (numerically when every key is a number): label = index."""
    keys = set(key for _, key, _ in rows)
    if keys and all(k.lstrip("-").isdigit() for k in keys):
        return sorted(keys, key=int)
    return sorted(keys)


def class_names(keys, dataset_dir, names_file=""):
    """key -> class name: the class-name file's, else the key with "_" read as " " (a number needs a name)."""
    renamed = read_classnames(require_path(osp.join(dataset_dir, names_file), "OwnDataset", dataset_dir,
                                           "class-name file")) if names_file else {}
    unknown = [k for k in renamed if k not in keys]
    if unknown:
        raise DatasetContentError(f"{osp.join(dataset_dir, names_file)} names class(es) {unknown[:5]} that are not "
                                  f"in the data (keys: {list(keys)[:5]}...)")
    numeric = [k for k in keys if k not in renamed and k.lstrip("-").isdigit()]
    if numeric:
        raise DatasetContentError(f"{dataset_dir}: label(s) {numeric[:5]} are numbers without a name; list "
                                  "`label class name` lines in a class-name file (DATASET.OWN.CLASSNAMES)")
    return OrderedDict((k, renamed.get(k, k.replace("_", " "))) for k in keys)


def make_split(dataset_dir, rows, names, split, seed):
    """(train, val, test) lists of Datum from the scanned rows (see the module docstring)."""
    labels = {key: label for label, key in enumerate(names)}

    def datum(rel, key):
        return Datum(impath=osp.join(dataset_dir, rel), label=labels[key], classname=names[key])

    with seeded_random(seed):
        if rows[0][2] is None:  # no split given: per class, p_train / p_val / rest
            per_class = OrderedDict(((labels[k], n), []) for k, n in names.items())
            for rel, key, _ in rows:
                per_class[(labels[key], names[key])].append(osp.join(dataset_dir, rel))
            return split_per_class(per_class, split[0], split[1], source=dataset_dir)
        parts = {s: [datum(rel, key) for rel, key, part in rows if part == s] for s in SPLITS}
        train_classes = {i.label for i in parts["train"]}
        for s in ("val", "test"):
            missing = sorted({i.classname for i in parts[s] if i.label not in train_classes})
            if missing:
                raise DatasetContentError(f"{dataset_dir}: class(es) {missing[:5]} have {s} images but no train "
                                          "image")
        if not parts["val"]:
            parts["train"], parts["val"] = split_trainval(parts["train"], split[1])
        return parts["train"], parts["val"], parts["test"]


def source_classnames(match, root, dataset_dir):
    """The source's class list a DG target is matched to: {key: name} of "imagenet" or a class-name file."""
    if match.lower() == "imagenet":
        return imagenet_classnames(root)
    return read_classnames(require_path(osp.join(dataset_dir, match), "OwnDataset", dataset_dir,
                                        "source class-name file (DATASET.OWN.MATCH_CLASSNAMES)"))


def match_to_source(parts, classnames, source, where):
    """Relabel a DG target's classes to the source's order and names. Class `label` (name classnames[label])
    matches the source class whose key is that name (a wnid folder) or whose name reads the same."""
    source_keys = list(source)
    by_name = {}
    for index, key in enumerate(source_keys):
        by_name.setdefault(classname_key(source[key]), index)
    index_of = [source_keys.index(name) if name in source else by_name.get(classname_key(name))
                for name in classnames]
    unmatched = [name for name, index in zip(classnames, index_of) if index is None]
    if unmatched:
        raise DatasetContentError(f"{where}: class(es) {unmatched[:5]} match no class of the source "
                                  "(DATASET.OWN.MATCH_CLASSNAMES); rename them to the source's names")
    order = sorted(range(len(classnames)), key=lambda label: index_of[label])
    relabel = {old: new for new, old in enumerate(order)}
    return [[Datum(impath=i.impath, label=relabel[i.label], classname=source[source_keys[index_of[i.label]]])
             for i in items] for items in parts]


# --------------------------------------------------------------------------------------------- the loader
@DATASET_REGISTRY.register()
class OwnDataset(SplitDataset):
    """A user's images (the module docstring); few-shot, base / new and test-only as the benchmark loaders."""

    def locate(self, cfg):
        self.dataset_dir, self.split_ratios = own_spec(cfg)
        require_path(self.dataset_dir, "OwnDataset", self.root, "dataset folder (DATASET.OWN.DIR)")
        self.own = cfg.DATASET.OWN
        self.image_dir = self.dataset_dir
        split_file = split_file_name(self.split_ratios, self.own.SPLIT_SEED)
        # a test-only target has nothing to split: its folders are read afresh every time
        self.split_path = None if self.own.TEST_ONLY else osp.join(self.dataset_dir, split_file)
        self.split_fewshot_dir = osp.join(self.dataset_dir, "split_fewshot", split_file[:-len(".json")])

    @property
    def name(self):
        return f"OwnDataset ({self.dataset_dir})" if hasattr(self, "dataset_dir") else "OwnDataset"

    def make_split(self):
        rows, _ = scan(self.dataset_dir, self.own.LIST)
        if not rows:
            raise DatasetContentError(f"{self.dataset_dir}: no images found (expected <class>/<image> folders, "
                                      "train/ and test/ above them, or DATASET.OWN.LIST)")
        names = class_names(class_keys(rows), self.dataset_dir, self.own.CLASSNAMES)
        check_classnames(list(names.values()), f"{self.name}")
        if self.own.TEST_ONLY:  # a target: every image is a test image, nothing to split
            labels = {key: label for label, key in enumerate(names)}
            return [], [], [Datum(impath=osp.join(self.dataset_dir, rel), label=labels[key], classname=names[key])
                            for rel, key, _ in rows]
        return make_split(self.dataset_dir, rows, names, self.split_ratios, self.own.SPLIT_SEED)

    def load_split(self):
        train, val, test = super().load_split()
        if self.own.MATCH_CLASSNAMES:
            labels = sorted({(i.label, i.classname) for i in train + val + test})
            source = source_classnames(self.own.MATCH_CLASSNAMES, self.root, self.dataset_dir)
            train, val, test = match_to_source((train, val, test), [name for _, name in labels], source, self.name)
        return train, val, test

    @classmethod
    def data_prep(cls, cfg, workers=None):
        """`python -m mmpt.data_prep --datasets <this yaml>`: the split made and reported (see `prepare`)."""
        return prepare(cfg, workers)

    def finish(self, cfg, train, val, test):
        if not self.own.TEST_ONLY:
            return super().finish(cfg, train, val, test)
        # a target: every image is a test image (as ImageNet's variants); NUM_SHOTS does not apply
        data = sorted(train + val + test, key=lambda i: (i.label, i.impath))
        data, = subsample_classes(data, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super(SplitDataset, self).__init__(train_x=data, test=data)


# --------------------------------------------------------------------------------------------- the report
def describe(cfg):
    """Make (or read) the split and report it: (lines to print, [one line per problem]). Problems: unreadable or
    empty image files, images on disk the split does not hold, duplicate / empty / colliding class names."""
    import clip

    dataset_dir, _ = own_spec(cfg)
    lines, problems = [f"OwnDataset -> {dataset_dir}"], []
    dataset = OwnDataset(cfg)
    train, val, test = dataset.load_split()
    parts = {"train": train, "val": val, "test": test}
    counts = {s: Counter(i.label for i in items) for s, items in parts.items()}
    names = OrderedDict(sorted({(i.label, i.classname) for items in parts.values() for i in items}))
    lines.append(f"  split file: {dataset.split_path or 'none (TEST_ONLY: every image is a test image)'}")
    lines.append(f"  {len(names)} classes; images: " + ", ".join(f"{s} {len(parts[s])}" for s in SPLITS))
    width = max(len(n) for n in names.values())
    lines.append(f"  {'label':>5}  {'class':{width}}  {'train':>6} {'val':>6} {'test':>6}")
    for label, name in names.items():
        lines.append(f"  {label:>5}  {name:{width}}  " + " ".join(f"{counts[s][label]:>6}" for s in SPLITS))
    rows, skipped = scan(dataset_dir, dataset.own.LIST)
    in_split = {i.impath for items in parts.values() for i in items}
    outside = [osp.join(dataset_dir, rel) for rel, _, _ in rows if osp.join(dataset_dir, rel) not in in_split]
    if outside:  # (only with a split file: a test-only target holds every image)
        problems.append(f"{len(outside)} image(s) on disk are not in {dataset.split_path} (e.g. {outside[0]}); "
                        "delete the split file to make it again")
    if skipped:
        lines.append(f"  skipped {len(skipped)} file(s) without an image extension, e.g. {skipped[0]}")
    texts = [f"a photo of a {name}." for name in names.values()]
    ids = clip.tokenize(texts, truncate=True).tolist()
    seen = {}
    for label, row in zip(names, ids):
        other = seen.setdefault(tuple(row), label)
        if other != label:
            problems.append(f"classes {names[other]!r} and {names[label]!r} have the same prompt after CLIP's "
                            "77-token truncation; shorten or rename them")
    try:
        check_paths(sorted(in_split), dataset.split_path or dataset_dir)
    except DatasetContentError as e:
        problems.append(str(e))
    return lines, problems, sorted(in_split)


def prepare(cfg, workers=None):
    """`data_prep` on an own dataset: the split and its report, then every image decoded; returns problems."""
    from mmpt.data.image_check import find_unreadable

    try:
        lines, problems, paths = describe(cfg)
    except ConfigError as e:  # duplicate / empty class names, an empty class, a bad list file
        return [str(e)]
    print("\n".join(lines))
    bad = find_unreadable([p for p in paths if osp.exists(p)], workers, desc="OwnDataset")
    print(f"  {len(paths)} images decoded, {len(bad)} unreadable")
    return problems + [reason if path in reason else f"{path}: {reason}" for path, reason in bad]
