"""Food101 (CoOp's loader): food-101/images/<class>/*.jpg, split_zhou_Food101.json."""
from dassl.data.datasets import DATASET_REGISTRY

from ._split import SplitDataset, read_and_split_data


@DATASET_REGISTRY.register()
class Food101(SplitDataset):
    dataset_dir = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"

    def make_split(self):
        return read_and_split_data(self.image_dir)
