"""The test-only ImageNet variants (CoOp's loaders): ImageNetV2, ImageNetSketch, ImageNetA, ImageNetR.

They are evaluation sets for a model trained on ImageNet (domain generalisation): train_x = test = all images,
labels in class-folder order, class names from ImageNet's (see imagenet.imagenet_classnames). ImageNet-A and
-R hold 200-class subsets; their folders must be wnids of the shipped subset lists.
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
from dassl.utils import listdir_nohidden

from ._split import (DatasetContentError, check_labels, make_items, read_class_folders, require_path,
                     subsample_classes)
from .imagenet import imagenet_classnames, read_subset_wnids, shipped_duplicate_names


class ImageNetVariant(DatasetBase):
    """A test-only set: `<root>/<dataset_dir>/<image_subdir>/<class folder>/*`; NUM_SHOTS does not apply."""

    dataset_dir = ""
    image_subdir = ""
    official_duplicate_classnames = shipped_duplicate_names()

    def __init__(self, cfg):
        root = osp.abspath(osp.expanduser(cfg.DATASET.ROOT))
        name = type(self).__name__
        self.dataset_dir = require_path(osp.join(root, type(self).dataset_dir), name, root)
        self.image_dir = require_path(osp.join(self.dataset_dir, self.image_subdir), name, root, "image folder")
        data = self.read_data(imagenet_classnames(root, self.dataset_dir))  # checks that every file is there
        check_labels(data, name)
        data, = subsample_classes(data, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=data, test=data)

    def read_data(self, classnames):
        return read_class_folders(self.image_dir, classnames, ignored=("README.txt",))


@DATASET_REGISTRY.register()
class ImageNetV2(ImageNetVariant):
    """imagenetv2/imagenetv2-matched-frequency-format-val/<label index>/*.jpeg"""

    dataset_dir = "imagenetv2"
    image_subdir = "imagenetv2-matched-frequency-format-val"

    def read_data(self, classnames):
        wnids = list(classnames)
        folders = [f for f in listdir_nohidden(self.image_dir) if osp.isdir(osp.join(self.image_dir, f))]
        bad = [f for f in folders if not f.isdigit() or int(f) >= len(wnids)]
        if bad:
            raise DatasetContentError(f"{self.image_dir}: class folders must be label indices 0..{len(wnids) - 1}, "
                                      f"found {bad[0]!r}")
        rows = []
        for label in sorted(int(f) for f in folders):
            folder = osp.join(self.image_dir, str(label))
            images = listdir_nohidden(folder)  # os.listdir order, as CoOp
            if not images:
                raise DatasetContentError(f"empty class folder (no images): {folder}")
            rows.extend((osp.join(folder, im), label, classnames[wnids[label]]) for im in images)
        return make_items(rows, self.image_dir)


@DATASET_REGISTRY.register()
class ImageNetSketch(ImageNetVariant):
    """imagenet-sketch/images/<wnid>/*.JPEG"""

    dataset_dir = "imagenet-sketch"
    image_subdir = "images"


class ImageNetSubset(ImageNetVariant):
    subset_file = ""

    def read_data(self, classnames):
        subset = set(read_subset_wnids(self.subset_file))
        return read_class_folders(self.image_dir, {w: n for w, n in classnames.items() if w in subset},
                                  ignored=("README.txt",))


@DATASET_REGISTRY.register()
class ImageNetA(ImageNetSubset):
    """imagenet-adversarial/imagenet-a/<wnid>/*.jpg (200 classes)"""

    dataset_dir = "imagenet-adversarial"
    image_subdir = "imagenet-a"
    subset_file = "imagenet_a.txt"


@DATASET_REGISTRY.register()
class ImageNetR(ImageNetSubset):
    """imagenet-rendition/imagenet-r/<wnid>/*.jpg (200 classes)"""

    dataset_dir = "imagenet-rendition"
    image_subdir = "imagenet-r"
    subset_file = "imagenet_r.txt"
