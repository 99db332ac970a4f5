"""EuroSAT (CoOp's loader): eurosat/2750/<class>/*.jpg, split_zhou_EuroSAT.json; readable class names."""
from dassl.data.datasets import DATASET_REGISTRY

from ._split import SplitDataset, read_and_split_data

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(SplitDataset):
    dataset_dir = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"

    def make_split(self):
        return read_and_split_data(self.image_dir, new_cnames=NEW_CNAMES)
