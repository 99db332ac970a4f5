"""The toy world (mmpt.data.toy_world) as datasets: ToyWorld (36 colour-shape classes, base half first) and
its test-only shifted renderings ToyWorldSketch and ToyWorldNoisy (domain generalisation targets).

Layout: <root>/<dataset_dir>/images/<colour>_<shape>/*.png and split_toy_world.json (CoOp's split format).
A missing world is generated on first use (seeded, identical on every machine, written atomically), or ahead
of time with `python -m mmpt.data_prep --root DATA --datasets toy_world toy_world_sketch toy_world_noisy`.
"""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase
from mmpt.data import toy_world

from ._split import SplitDataset, check_labels, read_split, subsample_classes


def generate(name, root):
    """Make the world of registry name `name` (toy_world.DATASETS) under DATASET.ROOT unless it is there."""
    return toy_world.make_dataset(name, osp.abspath(osp.expanduser(root)))


@DATASET_REGISTRY.register()
class ToyWorld(SplitDataset):
    dataset_dir = "toy_world"
    image_subdir = "images"
    split_file = toy_world.SPLIT_FILE

    def __init__(self, cfg):
        generate(self.name, cfg.DATASET.ROOT)
        super().__init__(cfg)


class ToyWorldShifted(DatasetBase):
    """A test-only rendering of the 36 classes: train_x = test = every image (as ImageNet's variants)."""

    dataset_dir = ""

    def __init__(self, cfg):
        name = type(self).__name__
        dataset_dir = generate(name, cfg.DATASET.ROOT)
        _, _, data = read_split(osp.join(dataset_dir, toy_world.SPLIT_FILE), osp.join(dataset_dir, "images"))
        check_labels(data, name)
        data, = subsample_classes(data, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=data, test=data)


@DATASET_REGISTRY.register()
class ToyWorldSketch(ToyWorldShifted):
    dataset_dir = "toy_world_sketch"


@DATASET_REGISTRY.register()
class ToyWorldNoisy(ToyWorldShifted):
    dataset_dir = "toy_world_noisy"
