"""UCF101 (CoOp's loader): ucf101/{UCF-101-midframes/<Action_Name>/*.jpg, ucfTrainTestlist/*.txt},
split_zhou_UCF101.json."""
import os.path as osp
import re

from dassl.data.datasets import DATASET_REGISTRY

from ._split import DatasetContentError, SplitDataset, make_items, read_lines, split_trainval


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"
    split_file = "split_zhou_UCF101.json"
    required = ("ucfTrainTestlist/classInd.txt", "ucfTrainTestlist/trainlist01.txt", "ucfTrainTestlist/testlist01.txt")

    def make_split(self):
        cname2lab = {}
        for _, line in read_lines(osp.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt")):
            label, classname = line.split()
            cname2lab[classname] = int(label) - 1
        trainval = self.read_data(cname2lab, "trainlist01.txt")
        test = self.read_data(cname2lab, "testlist01.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_data(self, cname2lab, text_file):
        """Lines `Action/v_Action_gXX_cYY.avi [label]` -> the middle frame <Action_Name>/v_..._cYY.jpg."""
        filepath = osp.join(self.dataset_dir, "ucfTrainTestlist", text_file)
        rows = []
        for line_no, line in read_lines(filepath):
            action, _, filename = line.split()[0].partition("/")
            if action not in cname2lab:
                raise DatasetContentError(f"{filepath}:{line_no}: action {action!r} is not in classInd.txt")
            renamed_action = "_".join(re.findall("[A-Z][^A-Z]*", action))  # ApplyEyeMakeup -> Apply_Eye_Makeup
            impath = osp.join(self.image_dir, renamed_action, filename.replace(".avi", ".jpg"))
            rows.append((impath, cname2lab[action], renamed_action))
        return make_items(rows, filepath)
