"""StanfordCars (CoOp's loader): stanford_cars/{cars_train, cars_test, devkit/*.mat,
cars_test_annos_withlabels.mat}, split_zhou_StanfordCars.json (paths relative to stanford_cars/)."""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY

from ._split import SplitDataset, make_items, split_trainval


@DATASET_REGISTRY.register()
class StanfordCars(SplitDataset):
    dataset_dir = "stanford_cars"
    image_subdir = ""  # the split file's paths start with cars_train/ or cars_test/
    split_file = "split_zhou_StanfordCars.json"
    required = ("cars_train", "cars_test", "devkit/cars_train_annos.mat", "devkit/cars_meta.mat",
                "cars_test_annos_withlabels.mat")

    def make_split(self):
        meta_file = osp.join(self.dataset_dir, "devkit", "cars_meta.mat")
        trainval = self.read_data("cars_train", osp.join(self.dataset_dir, "devkit", "cars_train_annos.mat"), meta_file)
        test = self.read_data("cars_test", osp.join(self.dataset_dir, "cars_test_annos_withlabels.mat"), meta_file)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, image_dir, anno_file, meta_file):
        """Class names become "<year> <make model>" (CoOp puts the year first)."""
        from scipy.io import loadmat

        annotations = loadmat(anno_file)["annotations"][0]
        class_names = loadmat(meta_file)["class_names"][0]
        rows = []
        for anno in annotations:
            label = int(anno["class"][0, 0]) - 1
            names = str(class_names[label][0]).split(" ")
            names.insert(0, names.pop(-1))
            rows.append((osp.join(self.dataset_dir, image_dir, str(anno["fname"][0])), label, " ".join(names)))
        return make_items(rows, anno_file)
