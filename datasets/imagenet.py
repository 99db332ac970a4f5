"""ImageNet (CoOp's loader): imagenet/images/{train,val}/<wnid>/*.JPEG; val is used as the test set.

Class names: `imagenet/classnames.txt` (CoOp's format, `wnid name` per line) when present, else the shipped
datasets/classnames/imagenet.txt (CLIP's cleaned names). The full file lists are cached in
imagenet/preprocessed.pkl (as CoOp does), so only the first run walks 1.3M files; delete it after changing
classnames.txt.
"""
import os.path as osp
import pickle
from collections import OrderedDict

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import atomic_write

from ._split import (DatasetContentError, SplitDataset, check_image_files, read_class_folders,
                     read_lines, require_path)

SHIPPED_CLASSNAMES = osp.join(osp.dirname(osp.abspath(__file__)), "classnames")


def read_classnames(text_file):
    """`wnid name...` (space or tab separated; '#' lines are comments) -> OrderedDict wnid -> name."""
    classnames = OrderedDict()
    for line_no, line in read_lines(text_file):
        fields = line.split(maxsplit=1)
        if len(fields) != 2:
            raise DatasetContentError(f"{text_file}:{line_no}: expected 'wnid class name', got {line!r}")
        classnames[fields[0]] = fields[1]
    return classnames


def imagenet_classnames(root, dataset_dir=None):
    """wnid -> name: `<dataset_dir>/classnames.txt`, else `<root>/imagenet/classnames.txt`, else the shipped list."""
    candidates = [osp.join(d, "classnames.txt") for d in (dataset_dir, osp.join(root, "imagenet")) if d]
    for path in candidates + [osp.join(SHIPPED_CLASSNAMES, "imagenet.txt")]:
        if osp.isfile(path):
            return read_classnames(path)


def shipped_duplicate_names():
    """The names CLIP's ImageNet list gives to two classes each ("missile", "sunglasses"): CoOp and every
    published number use them as they are, so they are the one duplicate the class-name check lets through."""
    names = list(read_classnames(osp.join(SHIPPED_CLASSNAMES, "imagenet.txt")).values())
    return tuple(sorted({name for name in names if names.count(name) > 1}))


def read_subset_wnids(filename):
    """The wnids of a shipped subset list (imagenet_a.txt / imagenet_r.txt: `wnid<TAB>index`)."""
    return list(read_classnames(osp.join(SHIPPED_CLASSNAMES, filename)))


@DATASET_REGISTRY.register()
class ImageNet(SplitDataset):
    dataset_dir = "imagenet"
    image_subdir = "images"
    val_is_test = True
    official_duplicate_classnames = shipped_duplicate_names()

    def load_split(self):
        preprocessed = osp.join(self.dataset_dir, "preprocessed.pkl")
        if osp.exists(preprocessed):
            with open(preprocessed, "rb") as f:
                data = pickle.load(f)
            train, test = data["train"], data["test"]
            # spot check (the full lists are 1.3M files): a moved dataset folder fails here, not mid-epoch
            check_image_files([train[0], train[-1], test[0], test[-1]],
                              f"{preprocessed} (delete it if the dataset moved)")
            return train, test, test
        for split in ("train", "val"):
            require_path(osp.join(self.image_dir, split), self.name, self.root, "image folder")
        classnames = imagenet_classnames(self.root, self.dataset_dir)
        train = read_class_folders(osp.join(self.image_dir, "train"), classnames)
        test = read_class_folders(osp.join(self.image_dir, "val"), classnames)
        if {(i.label, i.classname) for i in train} != {(i.label, i.classname) for i in test}:
            raise DatasetContentError(f"{self.image_dir}: train/ and val/ hold different class folders")
        data = {"train": train, "test": test}
        atomic_write(preprocessed, lambda f: pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL))
        return train, test, test
