"""The dataset loaders on generated fixtures: classes, splits, class names, few-shot caches, base/new, bad data."""
import json
import os
import os.path as osp
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets  # noqa: F401  (registers the loaders)
from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, build_dataset
from dassl.utils import read_image
from datasets._split import DatasetContentError, DatasetNotFoundError
from mmpt.data.data_prep import CONFIG_NAMES, DATASET_FOLDERS
from mmpt.data.fixtures import ImageWriter, make_dataset

CLASSNAME_DIR = Path(__file__).resolve().parents[1] / "datasets" / "classnames"

# the class names each loader must yield for the 6-class fixture, in label order (written out by hand from
# CoOp's rules: Caltech101 sorts case-sensitively and renames; StanfordCars puts the year first; SUN397 puts
# indoor/outdoor first; UCF101 splits CamelCase; EuroSAT uses readable names)
EXPECTED_CLASSNAMES = {
    "Caltech101": ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"],
    "OxfordPets": ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "bengal"],
    "StanfordCars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                     "2008 Acura TL Type-S", "2012 Acura TSX Sedan", "2001 Acura Integra Type R"],
    "OxfordFlowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea",
                      "english marigold", "tiger lily"],
    "Food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"],
    "FGVCAircraft": ["707-320", "727-200", "737-200", "737-300", "737-400", "737-500"],
    "SUN397": ["abbey", "airplane_cabin", "outdoor apartment_building", "badlands", "bamboo_forest", "canyon"],
    "DescribableTextures": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"],
    "EuroSAT": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road",
                "Industrial Buildings", "Pasture Land"],
    "UCF101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Balance_Beam", "Band_Marching"],
    "ImageNet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
    "ImageNetV2": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
    "ImageNetSketch": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
    "ImageNetA": ["stingray", "goldfinch", "junco", "American robin", "jay", "bald eagle"],
    "ImageNetR": ["goldfish", "great white shark", "hammerhead shark", "stingray", "hen", "ostrich"],
}
TEST_ONLY = {"ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"}


def images_per_split(name, n=6):
    """(train, val, test) images per class of an n-image fixture class."""
    if name == "ImageNet":
        return n, n // 2, n // 2  # val = test = the official val folder
    if name in TEST_ONLY:
        return n, 0, n
    return 3, 1, 2  # 50 / 20 / 30 (rounded), or the fixture's official files with the same proportions


def build(root, name, num_shots=-1, seed=1, subsample="all"):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.VERBOSE = False
    return build_dataset(cfg)


def mean_colour(impath):
    return np.asarray(read_image(impath), dtype=np.float32).mean(axis=(0, 1))


# ------------------------------------------------------------------------------------------ class-name data
def read_tsv(filename):
    lines = (CLASSNAME_DIR / filename).read_text().splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def test_imagenet_classname_data():
    rows = read_tsv("imagenet.txt")
    assert len(rows) == 1000 and all(len(row) == 2 for row in rows)
    assert rows[0] == ["n01440764", "tench"] and rows[-1] == ["n15075141", "toilet paper"]
    wnids = [w for w, _ in rows]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000  # label order = sorted wnids (folder order)


@pytest.mark.parametrize("filename,first,last", [("imagenet_a.txt", "n01498041", "n12267677"),
                                                 ("imagenet_r.txt", "n01443537", "n12267677")])
def test_imagenet_subset_data(filename, first, last):
    wnids = [w for w, _ in read_tsv("imagenet.txt")]
    rows = read_tsv(filename)
    assert len(rows) == 200 and len({w for w, _ in rows}) == 200
    assert rows[0][0] == first and rows[-1][0] == last
    assert all(wnids[int(index)] == wnid for wnid, index in rows)  # the indices point at the same wnids


# ------------------------------------------------------------------------------------------ every loader
def test_registry_configs_and_folders():
    for name, config in CONFIG_NAMES.items():
        cfg = get_cfg_default()
        cfg.merge_from_file(f"configs/datasets/{config}.yaml")
        assert cfg.DATASET.NAME == name
        assert DATASET_REGISTRY.get(name).dataset_dir == DATASET_FOLDERS[name]
    assert len(list(Path("configs/datasets").glob("*.yaml"))) >= 15


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSNAMES))
def test_loader_reads_fixture(tmp_path, name):
    dataset_dir = make_dataset(name, str(tmp_path))
    assert dataset_dir == osp.join(str(tmp_path), DATASET_FOLDERS[name])
    ds = build(tmp_path, name)
    assert ds.classnames == EXPECTED_CLASSNAMES[name]
    assert ds.num_classes == 6
    n_train, n_val, n_test = images_per_split(name)
    for items, per_class in ((ds.train_x, n_train), (ds.val or [], n_val), (ds.test, n_test)):
        counts = np.bincount([item.label for item in items], minlength=6)
        assert counts.tolist() == [per_class] * 6
        assert all(ds.lab2cname[item.label] == item.classname for item in items)
    if name not in TEST_ONLY and name != "ImageNet":
        splits = [{item.impath for item in part} for part in (ds.train_x, ds.val, ds.test)]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    # labels match image content: each class has its own colour, so label -> nearest palette colour is one-to-one
    palette = np.array(ImageWriter(6, 32, 0).colours)
    colour_of_label = {}
    for item in ds.train_x + ds.test:
        nearest = int(np.abs(palette - mean_colour(item.impath)).sum(axis=1).argmin())
        colour_of_label.setdefault(item.label, set()).add(nearest)
    assert all(len(colours) == 1 for colours in colour_of_label.values())
    assert len(set.union(*colour_of_label.values())) == 6


@pytest.mark.parametrize("name", ["Caltech101", "OxfordPets", "StanfordCars", "SUN397"])
def test_split_file_is_written_once_and_read(tmp_path, name):
    make_dataset(name, str(tmp_path))
    random.seed(123)  # the split draws from the global RNG, as CoOp's (train.py seeds it with the run's seed)
    first = build(tmp_path, name)
    split_path = Path(first.split_path)
    split = json.loads(split_path.read_text())
    assert sorted(split) == ["test", "train", "val"]
    impath, label, classname = split["train"][0]
    assert not osp.isabs(impath) and osp.join(first.image_dir, impath) == first.train_x[0].impath
    assert (label, classname) == (first.train_x[0].label, first.train_x[0].classname)
    # the same split on a fresh copy with the same seed, another with another seed
    for seed, same in ((123, True), (999, False)):
        other = tmp_path / f"other{seed}"
        make_dataset(name, str(other))
        random.seed(seed)
        build(other, name)
        assert (json.loads((other / DATASET_FOLDERS[name] / split_path.name).read_text()) == split) == same
    # a present split file is what the loader reads: move one test image into train
    moved = split["test"].pop(0)
    split["train"].append(moved)
    split_path.write_text(json.dumps(split))
    second = build(tmp_path, name)
    assert osp.join(first.image_dir, moved[0]) in {item.impath for item in second.train_x}
    assert len(second.test) == len(first.test) - 1


def test_coop_format_split_file(tmp_path):
    """A hand-written split_zhou json in CoOp's format, with its own labels and names, wins over the folders."""
    dataset_dir = Path(make_dataset("Caltech101", str(tmp_path), num_classes=4))
    image_dir = dataset_dir / "101_ObjectCategories"
    rows = [[f"{folder}/{image}", label, name]
            for label, (folder, name) in enumerate([("accordion", "accordion"), ("Faces", "human face")])
            for image in sorted(os.listdir(image_dir / folder))]
    split = {"train": rows[0::3], "val": rows[1::3], "test": rows[2::3]}
    (dataset_dir / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    ds = build(tmp_path, "Caltech101")
    assert ds.classnames == ["accordion", "human face"]
    assert [item.impath for item in ds.test] == [str(image_dir / r[0]) for r in split["test"]]


# ------------------------------------------------------------------------------------------ few-shot, base/new
def test_fewshot_cache_is_reused(tmp_path, capsys):
    make_dataset("Food101", str(tmp_path), images_per_class=12)
    random.seed(0)
    first = build(tmp_path, "Food101", num_shots=2, seed=1)
    cache = tmp_path / "food-101" / "split_fewshot" / "shot_2-seed_1.pkl"
    assert cache.is_file() and "Saving preprocessed few-shot data" in capsys.readouterr().out
    assert np.bincount([i.label for i in first.train_x]).tolist() == [2] * 6
    assert np.bincount([i.label for i in first.val]).tolist() == [2] * 6  # min(K, 4) = 2 of the 2 val images
    assert len(first.test) == 6 * 4  # the full test set
    with open(cache, "rb") as f:
        cached = pickle.load(f)
    assert [i.impath for i in cached["train"]] == [i.impath for i in first.train_x]
    mtime = cache.stat().st_mtime_ns
    random.seed(12345)  # a different RNG state: a fresh sample would differ
    second = build(tmp_path, "Food101", num_shots=2, seed=1)
    assert "Loading preprocessed few-shot data" in capsys.readouterr().out
    assert cache.stat().st_mtime_ns == mtime
    assert [i.impath for i in second.train_x] == [i.impath for i in first.train_x]
    assert [i.impath for i in second.val] == [i.impath for i in first.val]
    build(tmp_path, "Food101", num_shots=1, seed=2)
    assert sorted(os.listdir(cache.parent)) == ["shot_1-seed_2.pkl", "shot_2-seed_1.pkl"]  # no temp files left


def test_fewshot_val_takes_at_most_four(tmp_path):
    make_dataset("DescribableTextures", str(tmp_path), num_classes=2, images_per_class=30)  # 15 / 6 / 9
    ds = build(tmp_path, "DescribableTextures", num_shots=8)
    assert np.bincount([i.label for i in ds.train_x]).tolist() == [8, 8]
    assert np.bincount([i.label for i in ds.val]).tolist() == [4, 4]


@pytest.mark.parametrize("name,num_classes", [("Caltech101", 5), ("ImageNet", 6), ("EuroSAT", 7)])
def test_base_new_halves(tmp_path, name, num_classes):
    make_dataset(name, str(tmp_path), num_classes=num_classes)
    full = build(tmp_path, name)
    base = build(tmp_path, name, subsample="base")
    new = build(tmp_path, name, subsample="new")
    n_base = (num_classes + 1) // 2
    assert base.classnames == full.classnames[:n_base] and new.classnames == full.classnames[n_base:]
    assert not set(base.classnames) & set(new.classnames)
    for ds, offset in ((base, 0), (new, n_base)):
        for part, full_part in ((ds.train_x, full.train_x), (ds.val, full.val), (ds.test, full.test)):
            labels = sorted({i.label for i in part})
            assert labels == list(range(len(ds.classnames)))  # relabelled from 0
            full_label = {i.impath: i.label for i in full_part}
            assert all(full_label[i.impath] == i.label + offset for i in part)
            assert len(part) == sum(offset <= i.label < offset + len(ds.classnames) for i in full_part)


def test_bad_subsample_value(tmp_path):
    make_dataset("Caltech101", str(tmp_path))
    with pytest.raises(ValueError, match="DATASET.SUBSAMPLE_CLASSES.*'half'"):
        build(tmp_path, "Caltech101", subsample="half")


# ------------------------------------------------------------------------------------------ bad data
def one_line(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["Caltech101", "ImageNet", "ImageNetA"])
def test_missing_dataset_folder(tmp_path, name):
    with pytest.raises(DatasetNotFoundError) as excinfo:
        build(tmp_path, name)
    message = one_line(excinfo)
    assert str(tmp_path / DATASET_FOLDERS[name]) in message and "DATASET.ROOT" in message


def test_missing_annotation_file(tmp_path):
    make_dataset("OxfordPets", str(tmp_path))
    os.remove(tmp_path / "oxford_pets" / "annotations" / "test.txt")
    with pytest.raises(DatasetNotFoundError) as excinfo:
        build(tmp_path, "OxfordPets")
    assert str(tmp_path / "oxford_pets" / "annotations" / "test.txt") in one_line(excinfo)


def test_split_referencing_missing_files(tmp_path):
    make_dataset("Caltech101", str(tmp_path))
    ds = build(tmp_path, "Caltech101")
    os.remove(ds.test[3].impath)
    with pytest.raises(DatasetContentError) as excinfo:
        build(tmp_path, "Caltech101")
    message = one_line(excinfo)
    assert ds.split_path in message and ds.test[3].impath in message


def test_empty_class_folder(tmp_path):
    make_dataset("Food101", str(tmp_path))
    class_dir = tmp_path / "food-101" / "images" / "baklava"
    for image in class_dir.iterdir():
        image.unlink()
    with pytest.raises(DatasetContentError) as excinfo:
        build(tmp_path, "Food101")
    assert "empty class" in one_line(excinfo) and str(class_dir) in str(excinfo.value)


def test_empty_class_in_annotation_files(tmp_path):
    make_dataset("FGVCAircraft", str(tmp_path))
    train_file = tmp_path / "fgvc_aircraft" / "images_variant_train.txt"
    train_file.write_text("".join(l + "\n" for l in train_file.read_text().splitlines() if not l.endswith(" 727-200")))
    with pytest.raises(DatasetContentError, match=r"label\(s\) \[1\]"):
        build(tmp_path, "FGVCAircraft")


def test_unknown_class_folder(tmp_path):
    make_dataset("ImageNetA", str(tmp_path))
    os.rename(tmp_path / "imagenet-adversarial" / "imagenet-a" / "n01498041",
              tmp_path / "imagenet-adversarial" / "imagenet-a" / "n01440764")  # tench is not an ImageNet-A class
    with pytest.raises(DatasetContentError, match="unknown class folder .*n01440764"):
        build(tmp_path, "ImageNetA")


def test_corrupt_images(tmp_path):
    make_dataset("Caltech101", str(tmp_path))
    ds = build(tmp_path, "Caltech101")
    corrupt, empty = ds.train_x[0].impath, ds.test[0].impath
    Path(corrupt).write_bytes(b"not an image at all")
    # training images are decoded (header + verify) at load time when a few-shot set is used
    with pytest.raises(DatasetContentError) as excinfo:
        build(tmp_path, "Caltech101", num_shots=16)
    assert corrupt in one_line(excinfo)
    # any other image: read_image names the file when it is read
    with pytest.raises(IOError, match=corrupt):
        read_image(corrupt)
    Path(empty).write_bytes(b"")  # a 0-byte file (an interrupted copy) is caught at load time, shots or not
    with pytest.raises(DatasetContentError, match="0-byte.*" + empty):
        build(tmp_path, "Caltech101")


def test_user_classnames_file_takes_precedence(tmp_path):
    make_dataset("ImageNet", str(tmp_path), num_classes=2)
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tinca tinca\nn01443537 gold fish\n")
    assert build(tmp_path, "ImageNet").classnames == ["tinca tinca", "gold fish"]
    make_dataset("ImageNetV2", str(tmp_path), num_classes=2)  # the variants use ImageNet's file too
    assert build(tmp_path, "ImageNetV2").classnames == ["tinca tinca", "gold fish"]


def test_fixture_images_have_class_colours(tmp_path):
    make_dataset("EuroSAT", str(tmp_path), num_classes=3, image_size=16)
    folder = tmp_path / "eurosat" / "2750"
    means = {c: np.mean([mean_colour(str(p)) for p in (folder / c).iterdir()], axis=0)
             for c in ("AnnualCrop", "Forest", "HerbaceousVegetation")}
    assert Image.open(next((folder / "Forest").iterdir())).size == (16, 16)
    distances = [np.abs(means[a] - means[b]).max() for a in means for b in means if a < b]
    assert min(distances) > 60  # clearly separable by colour


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSNAMES))
def test_smallest_and_larger_fixtures(tmp_path, name):
    """4 images per class is enough for every loader; non-ImageNet fixtures take more classes than they name."""
    num_classes = 3 if name in {"ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"} else 12
    make_dataset(name, str(tmp_path), num_classes=num_classes, images_per_class=4)
    ds = build(tmp_path, name)
    assert ds.num_classes == num_classes and len(set(ds.classnames)) == num_classes
    assert {i.label for i in ds.test} == set(range(num_classes)) and (ds.val is None or len(ds.val) >= num_classes)
    with pytest.raises(ValueError, match="images_per_class must be >= 4"):
        make_dataset(name, str(tmp_path / "x"), images_per_class=3)


def test_imagenet_caches(tmp_path):
    """preprocessed.pkl (the full file lists) is reused; the few-shot cache holds train only; val is test."""
    make_dataset("ImageNet", str(tmp_path), num_classes=3)
    first = build(tmp_path, "ImageNet", num_shots=2)
    preprocessed = tmp_path / "imagenet" / "preprocessed.pkl"
    mtime = preprocessed.stat().st_mtime_ns
    with open(tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_1.pkl", "rb") as f:
        assert list(pickle.load(f)) == ["train"]
    assert first.val is first.test and len(first.test) == 3 * 3 and len(first.train_x) == 3 * 2
    extra = tmp_path / "imagenet" / "images" / "train" / "n01440764" / "zzz_new.JPEG"
    Image.new("RGB", (8, 8)).save(extra)  # not seen: the cached lists are used
    second = build(tmp_path, "ImageNet")
    assert preprocessed.stat().st_mtime_ns == mtime and str(extra) not in {i.impath for i in second.train_x}
    os.remove(second.train_x[0].impath)
    with pytest.raises(DatasetContentError, match="preprocessed.pkl"):
        build(tmp_path, "ImageNet")
