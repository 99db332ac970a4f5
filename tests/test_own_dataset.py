"""OwnDataset (datasets/own.py): a user's images from a dataset yaml, end to end through the scripts and
train.py, in every protocol; the class-name refusals of every dataset."""
import json
import os
import pickle
import random
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import datasets  # noqa: F401  (registers the loaders)
from dassl.config import ConfigError, get_cfg_default
from dassl.data.datasets import build_dataset
from dassl.data.datasets.base_dataset import check_classnames
from mmpt import run_folder
from mmpt.data import data_prep
from mmpt.experiments import layout, results, sweep
from tests.test_scripts import SCRIPTS, TINY_OPTS

CLASSES = ["blue_jay", "snowy_owl", "barn_swallow", "house_sparrow"]  # folder names
RENAMED = {"house_sparrow": "sparrow"}  # the class-name file
NAMES = {c: RENAMED.get(c, c.replace("_", " ")) for c in CLASSES}
PER_CLASS = 6
SPLIT_FILE = "split_own_50-20-30_seed1.json"


def write_image(path, label, index):
    rng = np.random.default_rng(100 * label + index)
    colour = np.array([60 * label % 256, 255 - 50 * label, 40 + 30 * label], dtype=np.int16)
    pixels = np.clip(colour + rng.integers(-20, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def write_yaml(path, **own):
    lines = ["DATASET:", '  NAME: "OwnDataset"', "  OWN:"] + [f"    {k}: {json.dumps(v)}" for k, v in own.items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """DATA/birds/<class>/*.png (an image folder) and DATA/birds_csv/{img/*.png, list.csv} (numeric labels), each
    with a class-name file; their yamls (paths outside configs/)."""
    root = tmp_path_factory.mktemp("own")
    data, yamls = root / "data", root / "yamls"
    yamls.mkdir()
    rows = []
    for label, cls in enumerate(CLASSES):
        for i in range(PER_CLASS):
            write_image(data / "birds" / cls / f"{i:02d}.png", label, i)
            write_image(data / "birds_csv" / "img" / f"{cls}-{i}.png", label, i)
            rows.append(f"img/{cls}-{i}.png,{label}")
    (data / "birds" / "names.txt").write_text("house_sparrow sparrow\n")
    (data / "birds_csv" / "list.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (data / "birds_csv" / "names.txt").write_text("".join(f"{i} {NAMES[c]}\n" for i, c in enumerate(CLASSES)))
    return {"data": data,
            "birds": write_yaml(yamls / "birds.yaml", DIR="birds", CLASSNAMES="names.txt"),
            "birds_csv": write_yaml(yamls / "birds_csv.yaml", DIR="birds_csv", LIST="list.csv",
                                    CLASSNAMES="names.txt")}


def own_cfg(yaml_path, root, **opts):
    cfg = get_cfg_default()
    cfg.merge_from_file(yaml_path)
    cfg.DATASET.ROOT = str(root)
    cfg.VERBOSE = False
    cfg.SEED = 1  # the runs' seed (the few-shot cache is per seed)
    for key, value in opts.items():
        node = cfg
        for part in key.split(".")[:-1]:
            node = getattr(node, part)
        setattr(node, key.split(".")[-1], value)
    return cfg


def expected_split(images_by_class):
    """The split restated independently: per class (sorted keys), sorted images shuffled by Random(SPLIT_SEED),
    cut round(50%) / round(20%) / rest."""
    rng = random.Random(1)
    parts = {"train": [], "val": [], "test": []}
    for key in sorted(images_by_class, key=lambda k: (int(k) if k.isdigit() else k)):
        images = sorted(images_by_class[key])
        rng.shuffle(images)
        n_train, n_val = round(len(images) * 0.5), round(len(images) * 0.2)
        parts["train"] += images[:n_train]
        parts["val"] += images[n_train:n_train + n_val]
        parts["test"] += images[n_train + n_val:]
    return parts


def run_in_process(stage, trainer, yaml_path, data, out, shots=16):
    """The command the scripts run for this stage (layout.build_job), through train.py in this process (the
    scripts themselves run in test_the_documented_example)."""
    import train

    job = layout.build_job(stage, trainer, yaml_path, 1, shots, data_root=str(data), output_root=str(out),
                           opts=shlex.split(TINY_OPTS), python=sys.executable)
    start = next(i for i, arg in enumerate(job.argv) if arg.endswith("train.py")) + 1
    train.main(train.get_parser().parse_args(job.argv[start:]))


@pytest.mark.parametrize("variant", ["birds", "birds_csv"])
def test_base_to_new_through_train_py(own_data, tmp_path, variant):
    data, yaml_path = own_data["data"], own_data[variant]
    out = tmp_path / "output"
    run_in_process("base2new_train", "CoOp", yaml_path, data, out, shots=2)
    run_in_process("base2new_test_new", "CoOp", yaml_path, data, out, shots=2)
    cfg = run_folder.run_tag(layout.default_config("CoOp", "base2new_train", variant, 2), shlex.split(TINY_OPTS))
    tail = Path(variant, "shots_2", "CoOp", cfg, "seed1")  # runs named by the yaml's stem
    train_log = (out / "base2new/train_base" / tail / "log.txt").read_text()
    test_log = (out / "base2new/test_new" / tail / "log.txt").read_text()
    assert "Finish training" in train_log and "* accuracy:" in train_log and "* accuracy:" in test_log
    assert "Saved split to" in train_log and "Saved split to" not in test_log  # made once, then reused

    # the split file: CoOp's format, the seeded split restated independently, class names from names.txt
    dataset_dir = data / variant
    split = json.loads((dataset_dir / SPLIT_FILE).read_text())
    assert sorted(split) == ["test", "train", "val"]
    key_of = (lambda p: p.split("/")[0]) if variant == "birds" else (lambda p: str(CLASSES.index(p[4:-6])))
    images = {}
    for part in split.values():
        for path, _, _ in part:
            images.setdefault(key_of(path), []).append(path)
    assert {part: [row[0] for row in rows] for part, rows in split.items()} == expected_split(images)
    for rows in split.values():
        for path, label, classname in rows:
            cls = CLASSES[int(key_of(path))] if variant == "birds_csv" else key_of(path)
            assert classname == NAMES[cls] and label == sorted(NAMES, key=lambda c: (
                CLASSES.index(c) if variant == "birds_csv" else c)).index(cls)
    assert [len(split[p]) for p in ("train", "val", "test")] == [12, 4, 8]

    # the few-shot subset: 2 of each class's train images, cached next to the data, what the run trained on
    fewshot = dataset_dir / "split_fewshot" / SPLIT_FILE[:-5] / "shot_2-seed_1.pkl"
    with open(fewshot, "rb") as f:
        cached = pickle.load(f)
    train_paths = {osp_rel(i.impath, dataset_dir) for i in cached["train"]}
    assert len(cached["train"]) == 8 and train_paths <= {row[0] for row in split["train"]}
    base = build_dataset(own_cfg(yaml_path, data, **{"DATASET.NUM_SHOTS": 2, "DATASET.SUBSAMPLE_CLASSES": "base"}))
    new = build_dataset(own_cfg(yaml_path, data, **{"DATASET.NUM_SHOTS": 2, "DATASET.SUBSAMPLE_CLASSES": "new"}))
    order = sorted(CLASSES) if variant == "birds" else CLASSES
    assert base.classnames == [NAMES[c] for c in order[:2]] and new.classnames == [NAMES[c] for c in order[2:]]
    assert {osp_rel(i.impath, dataset_dir) for i in base.train_x} <= train_paths and len(base.train_x) == 4


def osp_rel(path, folder):
    return os.path.relpath(path, folder)


def test_given_parts_json_list_and_the_report(tmp_path, capsys):
    """DIR/{train,test}/<class>/* keeps its parts (val carved from train, seeded); a JSON list with a split
    column too; `data_prep --datasets <yaml>` makes the split and reports it."""
    root = tmp_path / "data"
    entries = []
    for label, cls in enumerate(CLASSES[:3]):
        for i in range(5):
            write_image(root / "parts" / "train" / cls / f"{i}.png", label, i)
            entries.append({"path": f"train/{cls}/{i}.png", "label": cls, "split": "train" if i < 4 else "val"})
        for i in range(2):
            write_image(root / "parts" / "test" / cls / f"{i}.png", label, 10 + i)
            entries.append({"path": f"test/{cls}/{i}.png", "label": cls, "split": "test"})
    (root / "parts" / "list.json").write_text(json.dumps(entries))
    folder_yaml = write_yaml(tmp_path / "parts.yaml", DIR="parts")
    ds = build_dataset(own_cfg(folder_yaml, root))
    assert all("/test/" in i.impath for i in ds.test) and len(ds.test) == 6
    assert len(ds.val) == 3 and len(ds.train_x) == 12 and all("/train/" in i.impath for i in ds.val)
    list_yaml = write_yaml(tmp_path / "parts_list.yaml", DIR="parts", LIST="list.json", SPLIT=[0.6, 0.2])
    (root / "parts" / "split_own_50-20-30_seed1.json").unlink()
    ds = build_dataset(own_cfg(list_yaml, root))
    assert sorted(os.path.basename(i.impath) for i in ds.val) == ["4.png"] * 3  # the list's own val rows
    capsys.readouterr()
    Path(root / "parts" / "train" / CLASSES[0] / "0.png").write_bytes(b"not a png")
    assert data_prep.main(["--root", str(root), "--datasets", folder_yaml, "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "3 classes; images: train 12, val 3, test 6" in out
    assert out.split("problem(s):\n")[1].strip().startswith("Cannot read image") and "0.png" in out
    # --check of an own dataset decodes the same images, and a benchmark name next to it works as before
    assert data_prep.main(["--root", str(root), "--datasets", folder_yaml, "--check", "--workers", "0"]) == 1


def test_refusals_in_one_line(tmp_path, capsys):
    import train
    from mmpt.data.fixtures import make_dataset
    from mmpt.sentences import template_sentences

    root = tmp_path / "data"
    for i, cls in enumerate(["Blue_Jay", "blue jay", "owl"]):  # the first two read the same in a prompt
        for j in range(4):
            write_image(root / "dups" / cls / f"{j}.png", i, j)
    dups = write_yaml(tmp_path / "dups.yaml", DIR="dups")
    with pytest.raises(ConfigError, match=r"duplicate class names.*'Blue Jay'.*'blue jay'"):
        build_dataset(own_cfg(dups, root))
    argv = ["--root", str(root), "--trainer", "ZeroshotCLIP", "--dataset-config-file", dups, "--output-dir",
            str(tmp_path / "out"), "--eval-only", "MODEL.BACKBONE.NAME", "random-tiny-ViT", "INPUT.SIZE", "(32, 32)",
            "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train.cli(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and "\n" not in err and err.startswith("train.py: error: ")
    assert "duplicate class names" in err
    # a benchmark dataset too: a DTD class folder that differs from another only in case
    make_dataset("DescribableTextures", str(root), num_classes=3, images_per_class=4)
    images = root / "dtd" / "images"
    first = sorted(p.name for p in images.iterdir())[0]
    (images / first).rename(images / first.upper())
    (images / first.upper()).mkdir(exist_ok=True)
    import shutil
    shutil.copytree(images / sorted(p.name for p in images.iterdir() if p.name != first.upper())[0], images / first)
    cfg = get_cfg_default()
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(root), "DescribableTextures"
    with pytest.raises(ConfigError, match="duplicate class names"):
        build_dataset(cfg)
    # names that differ only after CLIP's 77 tokens: refused where every method builds its class sentences
    long = " ".join(["very"] * 80)
    with pytest.raises(ConfigError, match="same prompt after CLIP's 77-token truncation") as error:
        template_sentences("a photo of a {}.", ["owl", f"{long} red bird", f"{long} blue bird"])
    assert "classes 1 and 2" in str(error.value) and "\n" not in str(error.value)
    # ... and by the own dataset's report, naming both classes, before any training
    for i, cls in enumerate(["a", "b"]):
        for j in range(4):
            write_image(root / "long" / cls / f"{j}.png", i, j)
    (root / "long" / "names.txt").write_text(f"a {long} red bird\nb {long} blue bird\n")
    long_yaml = write_yaml(tmp_path / "long.yaml", DIR="long", CLASSNAMES="names.txt")
    capsys.readouterr()
    assert data_prep.main(["--root", str(root), "--datasets", long_yaml, "--workers", "0"]) == 1
    out = capsys.readouterr().out
    assert "red bird' and " in out and "blue bird' have the same prompt after CLIP's 77-token truncation" in out
    # identical names stay the dataset's business: ImageNet's two official duplicates pass, others do not
    from datasets.imagenet import shipped_duplicate_names

    assert shipped_duplicate_names() == ("missile", "sunglasses")
    check_classnames(["missile", "tench", "missile"], "ImageNet", allowed=shipped_duplicate_names())
    with pytest.raises(ConfigError, match="duplicate class names"):
        check_classnames(["tench", "Tench"], "ImageNet", allowed=shipped_duplicate_names())
    template_sentences("a photo of a {}.", ["missile", "tench", "missile"])  # identical sentences: no refusal


def test_cross_dataset_and_dg_targets_through_the_scripts_and_the_tables(own_data, tmp_path):
    """As a target: the whole dataset is the test set (TEST_ONLY); as a DG target its class names are matched
    to the source's (ImageNet's) by name or wnid, relabelled in the source's order. Zero-shot CLIP evaluates
    both (xd_test's command); the results put one in the cross-dataset table, the other in the DG table."""
    data = own_data["data"]
    for i, folder in enumerate(["Goldfish", "n01440764", "great_white_shark"]):  # by name, by wnid, by name
        for j in range(3):
            write_image(data / "fish" / folder / f"{j}.png", i, j)
    fish = write_yaml(tmp_path / "fish_dg.yaml", DIR="fish", TEST_ONLY=True, MATCH_CLASSNAMES="imagenet")
    ds = build_dataset(own_cfg(fish, data))
    assert ds.classnames == ["tench", "goldfish", "great white shark"] and len(ds.test) == 9
    assert {i.label for i in ds.test if "/n01440764/" in i.impath} == {0}
    write_image(data / "fish" / "dolphin" / "0.png", 5, 0)
    with pytest.raises(ConfigError, match="'dolphin'.* match no class of the source"):
        build_dataset(own_cfg(fish, data))
    (data / "fish" / "dolphin" / "0.png").unlink()
    (data / "fish" / "dolphin").rmdir()
    birds_xd = write_yaml(tmp_path / "birds_xd.yaml", DIR="birds", CLASSNAMES="names.txt", TEST_ONLY=True)
    out = tmp_path / "output"
    for target in (birds_xd, fish):  # what scripts/zsclip/xd_test.sh <yaml> 1 runs (its path: the b2n test's)
        run_in_process("xd_test", "ZeroshotCLIP", target, data, out)
    cells = results.collect(str(out))
    tables = {t.name: t for t in results.build_tables(cells)[0]}
    assert "birds_xd" in tables["cross_dataset"].markdown() and "fish_dg" not in tables["cross_dataset"].markdown()
    assert "fish_dg" in tables["domain_generalisation"].markdown()
    # the sweep takes a yaml path as a dataset; its jobs are the scripts' commands
    jobs = sweep.expand_grid(["CoOp"], ["base2new"], [own_data["birds"]], seeds=[1], data_root=str(data),
                             output_root=str(out))
    assert [j.id.split(os.sep)[:3] for j in jobs] == [["base2new", "train_base", "birds"],
                                                      ["base2new", "test_new", "birds"]]
    assert own_data["birds"] in jobs[0].argv


def doc_examples():
    """{name: text} of the blocks marked `<!-- example: NAME -->` in docs/DATASETS.md."""
    text = (Path(layout.REPO_ROOT) / "docs" / "DATASETS.md").read_text()
    blocks = {}
    for part in text.split("<!-- example: ")[1:]:
        name, rest = part.split(" -->", 1)
        blocks[name] = rest.split("```", 2)[1].split("\n", 1)[1]
    return blocks


def test_the_documented_example(tmp_path):
    """docs/DATASETS.md's example as written: the yaml, the class-name file, the commands (bash, the scripts),
    the report it shows; a tiny backbone through OPTS."""
    examples = doc_examples()
    data = tmp_path / "data"
    for label, cls in enumerate(["barn_swallow", "blue_jay", "house_sparrow", "snowy_owl"]):
        for i in range(6):
            write_image(data / "my_birds" / cls / f"{i}.jpg", label, i)
    (data / "my_birds.yaml").write_text(examples["my_birds.yaml"])
    (data / "my_birds" / "classnames.txt").write_text(examples["my_birds/classnames.txt"])
    (tmp_path / "scripts").symlink_to(SCRIPTS)  # the commands run from a checkout; the output stays in tmp
    env = dict(os.environ, DATA=str(data), OPTS=TINY_OPTS, PYTHON=sys.executable,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=layout.REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(["bash", "-euc", examples["commands"]], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for line in examples["report"].strip("\n").splitlines():
        assert line in result.stdout.splitlines(), line
    assert (data / "my_birds" / SPLIT_FILE).is_file()
    assert "Base-to-new on my_birds" in result.stdout
    runs = list((tmp_path / "output" / "base2new" / "test_new" / "my_birds" / "shots_16" / "CoOp").glob("*/seed1"))
    assert len(runs) == 1 and "* accuracy:" in (runs[0] / "log.txt").read_text()
