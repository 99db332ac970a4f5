"""DescribableTextures (CoOp's loader): dtd/images/<class>/*.jpg, split_zhou_DescribableTextures.json."""
from dassl.data.datasets import DATASET_REGISTRY

from ._split import SplitDataset, read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(SplitDataset):
    dataset_dir = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"

    def make_split(self):
        return read_and_split_data(self.image_dir)
