"""SUN397 (CoOp's loader): sun397/{SUN397/<letter>/<class>/..., ClassName.txt, Training_01.txt, Testing_01.txt},
split_zhou_SUN397.json."""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY

from ._split import DatasetContentError, SplitDataset, make_items, read_lines, split_trainval


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    required = ("ClassName.txt", "Training_01.txt", "Testing_01.txt")

    def make_split(self):
        classnames = [line[1:] for _, line in read_lines(osp.join(self.dataset_dir, "ClassName.txt"))]  # drop "/"
        cname2lab = {c: i for i, c in enumerate(classnames)}
        trainval = self.read_data(cname2lab, "Training_01.txt")
        test = self.read_data(cname2lab, "Testing_01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        """Lines `/a/abbey/sun_x.jpg`; "/a/apartment_building/outdoor" becomes "outdoor apartment_building"."""
        filepath = osp.join(self.dataset_dir, text_file)
        rows = []
        for line_no, line in read_lines(filepath):
            imname = line[1:]
            classname = osp.dirname(imname)
            if classname not in cname2lab:
                raise DatasetContentError(f"{filepath}:{line_no}: class {classname!r} is not in ClassName.txt")
            readable = " ".join(classname.split("/")[1:][::-1])  # drop the letter; indoor/outdoor first
            rows.append((osp.join(self.image_dir, imname), cname2lab[classname], readable))
        return make_items(rows, filepath)
