"""On the same disk, our loaders select exactly what CoOp's code selects: the split a loader makes when there is
no split json, the few-shot subsets (first run and later runs), and ImageNet's few-shot subset.

The `coop_*` functions below restate CoOp's procedure (its datasets/*.py and Dassl's generate_fewshot_dataset)
independently: they share no code with `datasets/`. CoOp's rules that matter here: folders listed with
`os.listdir` (class folders sorted, images not), per-class shuffles and few-shot draws from the global `random`
module seeded once by train.py, the split step drawing before the few-shot step, dict order = first appearance.
"""
import json
import os
import pickle
import random
from collections import defaultdict

import pytest
from scipy.io import loadmat

import datasets  # noqa: F401  (registers the loaders)
from mmpt.data.fixtures import make_dataset
from tests.test_datasets import build  # the loaders built from a config, as train.py builds them

SHOTS = 2
CALTECH_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_NAMES = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest",
                 "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road"}


# ------------------------------------------------------------------------------ CoOp, restated (items: tuples)
def coop_listdir_nohidden(path):
    return [f for f in os.listdir(path) if not f.startswith(".")]


def coop_read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    categories = [c for c in coop_listdir_nohidden(image_dir) if c not in ignored]
    categories.sort()
    train, val, test = [], [], []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        images = [os.path.join(category_dir, im) for im in coop_listdir_nohidden(category_dir)]
        random.shuffle(images)
        n_total = len(images)
        n_train, n_val = round(n_total * p_trn), round(n_total * p_val)
        assert n_train > 0 and n_val > 0 and n_total - n_train - n_val > 0
        if new_cnames is not None and category in new_cnames:
            category = new_cnames[category]
        train += [(im, label, category) for im in images[:n_train]]
        val += [(im, label, category) for im in images[n_train:n_train + n_val]]
        test += [(im, label, category) for im in images[n_train + n_val:]]
    return train, val, test


def coop_split_trainval(trainval, p_val=0.2):
    tracker = defaultdict(list)
    for idx, item in enumerate(trainval):
        tracker[item[1]].append(idx)
    train, val = [], []
    for label, idxs in tracker.items():
        n_val = round(len(idxs) * p_val)
        assert n_val > 0
        random.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def coop_flowers(dataset_dir):
    tracker = defaultdict(list)
    for i, label in enumerate(loadmat(os.path.join(dataset_dir, "imagelabels.mat"))["labels"][0]):
        tracker[int(label)].append(os.path.join(dataset_dir, "jpg", f"image_{str(i + 1).zfill(5)}.jpg"))
    with open(os.path.join(dataset_dir, "cat_to_name.json")) as f:
        lab2cname = json.load(f)
    train, val, test = [], [], []
    for label, impaths in tracker.items():
        random.shuffle(impaths)
        n_total = len(impaths)
        n_train, n_val = round(n_total * 0.5), round(n_total * 0.2)
        cname = lab2cname[str(label)]
        train += [(im, label - 1, cname) for im in impaths[:n_train]]
        val += [(im, label - 1, cname) for im in impaths[n_train:n_train + n_val]]
        test += [(im, label - 1, cname) for im in impaths[n_train + n_val:]]
    return train, val, test


def coop_pets(dataset_dir):
    def read(split_file):
        items = []
        with open(os.path.join(dataset_dir, "annotations", split_file)) as f:
            for line in f.readlines():
                imname, label, species, _ = line.strip().split(" ")
                breed = "_".join(imname.split("_")[:-1]).lower()
                items.append((os.path.join(dataset_dir, "images", imname + ".jpg"), int(label) - 1, breed))
        return items
    train, val = coop_split_trainval(read("trainval.txt"))
    return train, val, read("test.txt")


def coop_cars(dataset_dir):
    meta = loadmat(os.path.join(dataset_dir, "devkit", "cars_meta.mat"))["class_names"][0]

    def read(image_dir, anno_file):
        annos = loadmat(anno_file)["annotations"][0]
        items = []
        for i in range(len(annos)):
            label = int(annos[i]["class"][0, 0]) - 1
            names = meta[label][0].split(" ")
            names.insert(0, names.pop(-1))
            items.append((os.path.join(dataset_dir, image_dir, annos[i]["fname"][0]), label, " ".join(names)))
        return items
    trainval = read("cars_train", os.path.join(dataset_dir, "devkit", "cars_train_annos.mat"))
    test = read("cars_test", os.path.join(dataset_dir, "cars_test_annos_withlabels.mat"))
    train, val = coop_split_trainval(trainval)
    return train, val, test


def coop_sun397(dataset_dir):
    with open(os.path.join(dataset_dir, "ClassName.txt")) as f:
        cname2lab = {line.strip()[1:]: i for i, line in enumerate(f.readlines())}

    def read(text_file):
        items = []
        with open(os.path.join(dataset_dir, text_file)) as f:
            for line in f.readlines():
                imname = line.strip()[1:]
                classname = os.path.dirname(imname)
                items.append((os.path.join(dataset_dir, "SUN397", imname), cname2lab[classname],
                              " ".join(classname.split("/")[1:][::-1])))
        return items
    train, val = coop_split_trainval(read("Training_01.txt"))
    return train, val, read("Testing_01.txt")


def coop_ucf101(dataset_dir):
    import re
    cname2lab = {}
    with open(os.path.join(dataset_dir, "ucfTrainTestlist/classInd.txt")) as f:
        for line in f.readlines():
            label, classname = line.strip().split(" ")
            cname2lab[classname] = int(label) - 1

    def read(text_file):
        items = []
        with open(os.path.join(dataset_dir, text_file)) as f:
            for line in f.readlines():
                action, filename = line.strip().split(" ")[0].split("/")
                renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
                items.append((os.path.join(dataset_dir, "UCF-101-midframes", renamed, filename.replace(".avi", ".jpg")),
                              cname2lab[action], renamed))
        return items
    train, val = coop_split_trainval(read("ucfTrainTestlist/trainlist01.txt"))
    return train, val, read("ucfTrainTestlist/testlist01.txt")


COOP_SPLITS = {  # registry name -> (CoOp's image_dir, the split json's path prefix; whether CoOp lists its folders;
    #                                  CoOp's split from the raw files)
    "Caltech101": ("101_ObjectCategories", True, lambda d: coop_read_and_split_data(
        os.path.join(d, "101_ObjectCategories"), ignored=CALTECH_IGNORED, new_cnames=CALTECH_NAMES)),
    "DescribableTextures": ("images", True, lambda d: coop_read_and_split_data(os.path.join(d, "images"))),
    "EuroSAT": ("2750", True, lambda d: coop_read_and_split_data(os.path.join(d, "2750"), new_cnames=EUROSAT_NAMES)),
    "Food101": ("images", True, lambda d: coop_read_and_split_data(os.path.join(d, "images"))),
    "OxfordFlowers": ("jpg", False, coop_flowers),
    "OxfordPets": ("images", False, coop_pets),
    "StanfordCars": ("", False, coop_cars),
    "SUN397": ("SUN397", False, coop_sun397),
    "UCF101": ("UCF-101-midframes", False, coop_ucf101),
}


def coop_generate_fewshot(items, num_shots):
    tracker = defaultdict(list)
    for item in items:
        tracker[item[1]].append(item)
    output = []
    for label, group in tracker.items():
        output += random.sample(group, num_shots) if len(group) >= num_shots else group
    return output


def coop_read_split(filepath, path_prefix):
    with open(filepath) as f:
        split = json.load(f)
    return tuple([(os.path.join(path_prefix, impath), label, classname) for impath, label, classname in split[key]]
                 for key in ("train", "val", "test"))


def coop_imagenet_train(image_dir, classnames_file):
    classnames = {}
    with open(classnames_file) as f:
        for line in f.readlines():
            fields = line.strip().split(" ")
            classnames[fields[0]] = " ".join(fields[1:])
    split_dir = os.path.join(image_dir, "train")
    folders = sorted(f.name for f in os.scandir(split_dir) if f.is_dir())
    items = []
    for label, folder in enumerate(folders):
        for imname in coop_listdir_nohidden(os.path.join(split_dir, folder)):
            items.append((os.path.join(split_dir, folder, imname), label, classnames[folder]))
    return items


# ------------------------------------------------------------------------------ helpers
def rows(items):
    return [(item.impath, item.label, item.classname) for item in items]


def scramble_listings(image_dir):
    """Re-create every class folder's files in a shuffled order, so that `os.listdir` is not sorted on
    file systems that list in creation order either; returns True when some listing is not sorted."""
    rng = random.Random(0)
    unsorted = False
    for folder in sorted(os.listdir(image_dir)):
        folder = os.path.join(image_dir, folder)
        names = sorted(os.listdir(folder))
        rng.shuffle(names)
        for name in names:
            os.rename(os.path.join(folder, name), os.path.join(folder, name + ".tmp"))
        for name in names:
            os.rename(os.path.join(folder, name + ".tmp"), os.path.join(folder, name))
        unsorted |= os.listdir(folder) != sorted(os.listdir(folder))
    return unsorted


def make(tmp_path, name, listed_dir=None, images_per_class=10):
    """A 4-class fixture; `listed_dir`: the folder whose class folders CoOp lists (their order is scrambled)."""
    dataset_dir = make_dataset(name, str(tmp_path), num_classes=4, images_per_class=images_per_class)
    if listed_dir is not None and not scramble_listings(os.path.join(dataset_dir, listed_dir)):
        pytest.skip("this file system lists every folder sorted: listing order cannot be tested here")
    return dataset_dir


# ------------------------------------------------------------------------------ the comparisons
@pytest.mark.parametrize("name", sorted(COOP_SPLITS))
def test_split_and_fewshot_equal_coop(tmp_path, name):
    image_subdir, listed, coop_split = COOP_SPLITS[name]
    dataset_dir = make(tmp_path, name, image_subdir if listed else None)
    image_dir = os.path.join(dataset_dir, image_subdir)
    # first run, no split json: CoOp's split draws from the seeded global RNG, then the few-shot step does
    random.seed(3)
    train, val, test = coop_split(dataset_dir)
    expected = (coop_generate_fewshot(train, SHOTS), coop_generate_fewshot(val, min(SHOTS, 4)), test)
    random.seed(3)
    ds = build(tmp_path, name, SHOTS, seed=3)
    assert (rows(ds.train_x), rows(ds.val), rows(ds.test)) == expected
    split_path = os.path.join(dataset_dir, f"split_zhou_{name}.json")
    assert coop_read_split(split_path, image_dir) == (train, val, test)  # the saved split is the one drawn
    with open(os.path.join(dataset_dir, "split_fewshot", f"shot_{SHOTS}-seed_3.pkl"), "rb") as f:
        cached = pickle.load(f)
    assert (rows(cached["train"]), rows(cached["val"])) == expected[:2]
    # a later run with another seed: the split json is read, only the few-shot step draws
    random.seed(1)
    train, val, test = coop_read_split(split_path, image_dir)
    expected = (coop_generate_fewshot(train, 4), coop_generate_fewshot(val, 4), test)
    random.seed(1)
    ds = build(tmp_path, name, 4, seed=1)
    assert (rows(ds.train_x), rows(ds.val), rows(ds.test)) == expected


def test_imagenet_fewshot_equals_coop(tmp_path):
    dataset_dir = make(tmp_path, "ImageNet", "images/train", images_per_class=12)
    classnames_file = os.path.join(dataset_dir, "classnames.txt")  # CoOp's file format, `wnid name`
    wnids = sorted(os.listdir(os.path.join(dataset_dir, "images", "train")))
    with open(classnames_file, "w") as f:
        f.write("".join(f"{wnid} class number {i}\n" for i, wnid in enumerate(wnids)))
    full = coop_imagenet_train(os.path.join(dataset_dir, "images"), classnames_file)
    for seed, shots in ((1, 4), (2, 4), (1, 8)):
        random.seed(seed)
        expected = coop_generate_fewshot(full, shots)
        random.seed(seed)
        ds = build(tmp_path, "ImageNet", shots, seed=seed)
        assert rows(ds.train_x) == expected, (seed, shots)
    # sorted listings would have picked other images (the bug this test guards against)
    random.seed(1)
    assert coop_generate_fewshot(sorted(full), 4) != rows(build(tmp_path, "ImageNet", 4, seed=1).train_x)


def test_train_py_seeds_before_the_split(tmp_path):
    """Through train.py (seed, then trainer and data): the first run's split and few-shot pickle are CoOp's."""
    import train
    from tests.e2e import FAST_OPTS
    dataset_dir = make(tmp_path / "data", "Caltech101", "101_ObjectCategories")
    random.seed(5)
    split = COOP_SPLITS["Caltech101"][2](dataset_dir)
    fewshot = coop_generate_fewshot(split[0], SHOTS)
    args = ["--root", str(tmp_path / "data"), "--seed", "5", "--trainer", "ZeroshotCLIP", "--no-train",
            "--config-file", "configs/trainers/ZeroshotCLIP/vit_b16.yaml", "--output-dir", str(tmp_path / "out"),
            *FAST_OPTS, "DATASET.NAME", "Caltech101", "DATASET.NUM_SHOTS", str(SHOTS)]
    random.seed(0)  # whatever the state before: train.py seeds
    train.main(train.get_parser().parse_args(args))
    image_dir = os.path.join(dataset_dir, "101_ObjectCategories")
    assert coop_read_split(os.path.join(dataset_dir, "split_zhou_Caltech101.json"), image_dir) == split
    with open(os.path.join(dataset_dir, "split_fewshot", f"shot_{SHOTS}-seed_5.pkl"), "rb") as f:
        assert rows(pickle.load(f)["train"]) == fewshot
