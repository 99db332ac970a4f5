"""OxfordPets (CoOp's loader): oxford_pets/{images, annotations/{trainval,test}.txt}, split_zhou_OxfordPets.json."""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY

from ._split import DatasetContentError, SplitDataset, make_items, read_lines, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    required = ("annotations/trainval.txt", "annotations/test.txt")

    def make_split(self):
        trainval = self.read_data("trainval.txt")
        test = self.read_data("test.txt")
        train, val = split_trainval(trainval)  # official trainval -> 80% train / 20% val per class
        return train, val, test

    def read_data(self, split_file):
        """Lines `Image_name class_id species breed_id`; the breed name is the image name minus its number."""
        filepath = osp.join(self.dataset_dir, "annotations", split_file)
        rows = []
        for line_no, line in read_lines(filepath):
            fields = line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise DatasetContentError(f"{filepath}:{line_no}: expected 'name class_id species breed_id'")
            imname, label = fields[0], int(fields[1]) - 1
            breed = "_".join(imname.split("_")[:-1]).lower()
            rows.append((osp.join(self.image_dir, imname + ".jpg"), label, breed))
        return make_items(rows, filepath)
