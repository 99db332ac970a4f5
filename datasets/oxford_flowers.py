"""OxfordFlowers (CoOp's loader): oxford_flowers/{jpg, imagelabels.mat, cat_to_name.json},
split_zhou_OxfordFlowers.json."""
import os.path as osp
from collections import defaultdict

from dassl.data.datasets import DATASET_REGISTRY
from dassl.utils import read_json

from ._split import SplitDataset, split_per_class


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    required = ("imagelabels.mat", "cat_to_name.json")

    def make_split(self):
        """Image i+1 has label labels[i] (1-based); classes in order of first appearance in imagelabels.mat, each
        shuffled with the global `random` and split 50/20/30 (CoOp's OxfordFlowers.read_data)."""
        from scipy.io import loadmat

        labels = loadmat(osp.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]
        lab2cname = read_json(osp.join(self.dataset_dir, "cat_to_name.json"))
        class_images = defaultdict(list)
        for i, label in enumerate(labels):
            label = int(label)
            impath = osp.join(self.image_dir, f"image_{i + 1:05d}.jpg")
            class_images[(label - 1, lab2cname[str(label)])].append(impath)
        return split_per_class(class_images, source=self.dataset_dir)
