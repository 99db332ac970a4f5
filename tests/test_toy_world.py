"""The toy world (mmpt.data.toy_world), its datasets (datasets/toy_world.py) and data_prep's generation."""
import json
import os

import numpy as np
import pytest

from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from mmpt.data import data_prep, toy_world

import datasets  # noqa: F401  (registers the loaders)


def build(root, name, subsample="all", shots=-1):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.DATASET.NUM_SHOTS = shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = 1
    return build_dataset(cfg)


def test_base_and_new_hold_out_combinations_not_values():
    base, new = toy_world.base_classes(), toy_world.new_classes()
    assert len(base) == len(new) == 18 and not set(base) & set(new)
    assert sorted(base + new) == sorted(toy_world.all_classes())
    for position, values in ((0, toy_world.COLOURS), (1, toy_world.SHAPES)):
        # every colour and every shape occurs among the base classes, as often as among the new ones
        assert sorted(c[position] for c in base) == sorted(c[position] for c in new) == sorted(list(values) * 3)
    assert toy_world.ordered_classes()[:18] == base


def test_render_is_deterministic_and_seeds_differ():
    first = np.asarray(toy_world.render("red", "star", seed=[0, 0, 3, 7], style="photo"))
    again = np.asarray(toy_world.render("red", "star", seed=[0, 0, 3, 7], style="photo"))
    other = np.asarray(toy_world.render("red", "star", seed=[0, 0, 3, 8], style="photo"))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    assert (first == again).all() and (first != other).any()
    # the benchmark's and the pretraining corpus's seeds never coincide (mmpt.toy_clip uses another purpose)
    assert toy_world.image_seed(toy_world.DATASET_PURPOSE, "photo", "red", "star", 0)[0] == toy_world.DATASET_PURPOSE


def test_the_object_has_its_colour():
    """At the object's centre the pixels are nearest to the class colour among the palette (plain fills)."""
    palette = np.array(list(toy_world.COLOURS.values()), dtype=float)
    checked = 0
    for index, (colour, shape) in enumerate(toy_world.all_classes()):
        for seed in range(3):
            image, attrs = toy_world.render(colour, shape, seed=[9, index, seed], return_attributes=True)
            if attrs["pattern"] != "plain":
                continue
            x, y = (int(c * toy_world.IMAGE_SIZE) for c in attrs["centre"])
            centre = np.asarray(image, dtype=float)[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
            assert list(toy_world.COLOURS)[np.abs(palette - centre).sum(axis=1).argmin()] == colour, (shape, seed)
            checked += 1
    assert checked > 20


def test_loader_generates_the_world_and_splits_base_new(tmp_path):
    full = build(tmp_path, "ToyWorld")
    assert os.path.isfile(tmp_path / "toy_world" / toy_world.SPLIT_FILE)
    assert full.classnames == [toy_world.class_name(*c) for c in toy_world.ordered_classes()]
    assert len(full.train_x) == 36 * 20 and len(full.val) == 36 * 4 and len(full.test) == 36 * 20
    base = build(tmp_path, "ToyWorld", "base", shots=16)
    new = build(tmp_path, "ToyWorld", "new")
    assert base.classnames == [toy_world.class_name(*c) for c in toy_world.base_classes()]
    assert new.classnames == [toy_world.class_name(*c) for c in toy_world.new_classes()]
    assert len(base.train_x) == 18 * 16
    # the folder is not regenerated: the split file is the one written first
    before = (tmp_path / "toy_world" / toy_world.SPLIT_FILE).stat().st_mtime_ns
    build(tmp_path, "ToyWorld")
    assert (tmp_path / "toy_world" / toy_world.SPLIT_FILE).stat().st_mtime_ns == before


def test_the_world_is_the_same_on_every_generation(tmp_path):
    toy_world.make_world(str(tmp_path / "a"), "noisy", {"train": 1, "val": 1, "test": 1})
    toy_world.make_world(str(tmp_path / "b"), "noisy", {"train": 1, "val": 1, "test": 1})
    split = json.loads((tmp_path / "a" / toy_world.SPLIT_FILE).read_text())
    assert split == json.loads((tmp_path / "b" / toy_world.SPLIT_FILE).read_text())
    for rel, _, _ in split["test"]:
        assert (tmp_path / "a" / "images" / rel).read_bytes() == (tmp_path / "b" / "images" / rel).read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no staging folder left behind


@pytest.mark.parametrize("name", ["ToyWorldSketch", "ToyWorldNoisy"])
def test_shifted_worlds_are_test_only_sets_of_the_same_classes(tmp_path, name):
    data_prep.main(["--root", str(tmp_path), "--datasets", data_prep.CONFIG_NAMES[name]])
    assert os.path.isfile(tmp_path / data_prep.DATASET_FOLDERS[name] / toy_world.SPLIT_FILE)
    ds = build(tmp_path, name)
    assert ds.classnames == [toy_world.class_name(*c) for c in toy_world.ordered_classes()]
    assert ds.train_x == ds.test and len(ds.test) == 36 * toy_world.SPLIT_SIZES["test"]
    assert build(tmp_path, name, "new").classnames == [toy_world.class_name(*c) for c in toy_world.new_classes()]


def test_benchmark_look_is_per_class_and_only_on_the_benchmark():
    """Each class has a look of its own (colour cast, tilt), the same on every call; ToyWorld's photos are in it,
    the shifted renderings and the default rendering (the pretraining corpus's) are not."""
    looks = [toy_world.class_look(*c) for c in toy_world.all_classes()]
    assert all(np.array_equal(a["gain"], b["gain"]) and a["tilt"] == b["tilt"]
               for a, b in zip(looks, [toy_world.class_look(*c) for c in toy_world.all_classes()]))
    tilts = [look["tilt"] for look in looks]
    assert len(set(tilts)) == len(tilts) and max(map(abs, tilts)) <= toy_world.LOOK["tilt"]
    assert all(np.abs(look["gain"] - 1).max() <= toy_world.LOOK["gain"] for look in looks)
    assert [toy_world.DATASETS[name][2] for name in ("ToyWorld", "ToyWorldSketch", "ToyWorldNoisy")] == [True, False, False]
    seed = toy_world.image_seed(toy_world.DATASET_PURPOSE, "photo", "red", "square", 0)
    plain = np.asarray(toy_world.render("red", "square", seed), dtype=float)
    looked = np.asarray(toy_world.render("red", "square", seed, look=True), dtype=float)
    assert np.abs(plain - looked).mean() > 5
