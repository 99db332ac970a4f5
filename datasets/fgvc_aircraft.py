"""FGVCAircraft (CoOp's loader): fgvc_aircraft/{images, variants.txt, images_variant_{train,val,test}.txt};
the official split, read every time (no split file)."""
import os.path as osp

from dassl.data.datasets import DATASET_REGISTRY

from ._split import DatasetContentError, SplitDataset, make_items, read_lines


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"
    required = ("variants.txt", "images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")

    def make_split(self):
        classnames = [line for _, line in read_lines(osp.join(self.dataset_dir, "variants.txt"))]
        cname2lab = {c: i for i, c in enumerate(classnames)}
        return tuple(self.read_data(cname2lab, f"images_variant_{part}.txt") for part in ("train", "val", "test"))

    def read_data(self, cname2lab, split_file):
        """Lines `<image id> <variant name>`."""
        filepath = osp.join(self.dataset_dir, split_file)
        rows = []
        for line_no, line in read_lines(filepath):
            imname, _, classname = line.partition(" ")
            if classname not in cname2lab:
                raise DatasetContentError(f"{filepath}:{line_no}: variant {classname!r} is not in variants.txt")
            rows.append((osp.join(self.image_dir, imname + ".jpg"), cname2lab[classname], classname))
        return make_items(rows, filepath)
