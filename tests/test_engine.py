"""Unit tests of the dassl engine: registry, config errors, schedulers, checkpoints, logging, data, metrics."""
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from dassl.config import ConfigKeyError, get_cfg_default
from dassl.data.datasets import DatasetBase, Datum
from dassl.engine import TRAINER_REGISTRY, build_trainer
from dassl.evaluation.evaluator import macro_f1_score
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import (
    AverageMeter, Registry, UnknownNameError, load_checkpoint, read_image, save_checkpoint, setup_logger,
)
from dassl.utils import torchtools


# ------------------------------------------------------------------ registry / build_trainer
def test_registry_rejects_duplicate_names():
    registry = Registry("TEST")

    @registry.register()
    class Thing:
        pass

    with pytest.raises(KeyError, match="already registered"):
        registry.register(Thing)
    assert registry.get("Thing") is Thing


def test_build_trainer_suggests_closest_name(capsys):
    cfg = get_cfg_default()
    cfg.TRAINER.NAME = "EngineToyLinearr"
    with pytest.raises(UnknownNameError) as err:
        build_trainer(cfg)
    message = str(err.value)
    assert "\n" not in message
    assert "'EngineToyLinearr'" in message and "Did you mean 'EngineToyLinear'?" in message
    assert "EngineToyLinear" in TRAINER_REGISTRY


# ------------------------------------------------------------------ config errors
def test_config_has_engine_keys():
    cfg = get_cfg_default()
    assert cfg.MODEL.BACKBONE.PATH == "" and cfg.DATASET.SUBSAMPLE_CLASSES == "all"
    assert cfg.OPTIM.WARMUP_RECOUNT is True and cfg.TEST.FINAL_MODEL == "last_step"
    assert tuple(cfg.INPUT.SIZE) == (224, 224) and cfg.SEED == -1
    assert get_cfg_default() is not get_cfg_default()  # a fresh clone each time


def test_unknown_key_in_yaml_is_one_line_naming_key_and_file(tmp_path):
    yaml_path = tmp_path / "method.yaml"
    yaml_path.write_text("OPTIM:\n  NAME: sgd\n  LEARNING_RATE: 0.1\n")
    cfg = get_cfg_default()
    with pytest.raises(ConfigKeyError) as err:
        cfg.merge_from_file(str(yaml_path))
    message = str(err.value)
    assert "\n" not in message
    assert "OPTIM.LEARNING_RATE" in message and str(yaml_path) in message


def test_unknown_key_on_command_line_is_one_line_naming_option():
    cfg = get_cfg_default()
    with pytest.raises(ConfigKeyError) as err:
        cfg.merge_from_list(["OPTIM.LR", "0.1", "DATASET.NUM_SHOT", "16"])
    message = str(err.value)
    assert "\n" not in message
    assert "DATASET.NUM_SHOT" in message and "command-line option 'DATASET.NUM_SHOT 16'" in message
    assert cfg.OPTIM.LR == 0.1  # the valid pair before it was merged


def test_plain_yacs_trainer_node_merges_from_file(tmp_path):
    # CoOp-style trainers add their node with yacs' own CfgNode; a config file must still merge into it
    from yacs.config import CfgNode as CN

    cfg = get_cfg_default()
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.EXTRA = CN()
    cfg.TRAINER.COOP.EXTRA.DEPTH = 1
    path = tmp_path / "coop.yaml"
    path.write_text("TRAINER:\n  COOP:\n    N_CTX: 4\n    EXTRA:\n      DEPTH: 9\n")
    cfg.merge_from_file(str(path))
    assert (cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.EXTRA.DEPTH) == (4, 9)
    with pytest.raises(ConfigKeyError, match="TRAINER.COOP.UNKNOWN"):
        cfg.merge_from_list(["TRAINER.COOP.UNKNOWN", "1"])


def test_type_mismatch_names_the_key():
    cfg = get_cfg_default()
    with pytest.raises(ConfigKeyError, match="OPTIM.MAX_EPOCH"):
        cfg.merge_from_list(["OPTIM.MAX_EPOCH", "'ten'"])


# ------------------------------------------------------------------ schedulers
def _optimizer(lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _sched_cfg(**overrides):
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.update(LR=0.1, MAX_EPOCH=6, LR_SCHEDULER="cosine", WARMUP_EPOCH=2, WARMUP_CONS_LR=1e-4,
                     WARMUP_MIN_LR=1e-3)
    optim_cfg.update(**overrides)
    return optim_cfg


def _lr_trajectory(scheduler, optimizer, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _cosine(base, step, t_max):
    return base * (1 + math.cos(math.pi * step / t_max)) / 2


@pytest.mark.parametrize("warmup_type", ["constant", "linear"])
def test_warmup_values_follow_the_formula(warmup_type):
    optim_cfg = _sched_cfg(WARMUP_TYPE=warmup_type)
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    lrs = _lr_trajectory(scheduler, optimizer, 6)
    if warmup_type == "constant":
        expected_warmup = [1e-4, 1e-4]
    else:
        expected_warmup = [1e-3, 0.1 * 1 / 2]
    # after warmup: cosine counted from the end of warmup (WARMUP_RECOUNT), as upstream Dassl
    expected = expected_warmup + [_cosine(0.1, e - 2, 6) for e in range(2, 6)]
    assert lrs[2] == pytest.approx(0.1)  # the first epoch after warmup runs at the base LR (CoOp's logs)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_warmup_without_recount_and_single_step():
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, _sched_cfg(WARMUP_TYPE="constant", WARMUP_RECOUNT=False))
    expected = [1e-4, 1e-4] + [_cosine(0.1, e if e > 2 else 0, 6) for e in range(2, 6)]
    assert _lr_trajectory(scheduler, optimizer, 6) == pytest.approx(expected, rel=1e-12)
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, _sched_cfg(LR_SCHEDULER="single_step", STEPSIZE=(2,), GAMMA=0.5,
                                                         WARMUP_EPOCH=1, WARMUP_TYPE="constant"))
    expected = [1e-4] + [0.1 * 0.5 ** ((e - 1) // 2) for e in range(1, 6)]
    assert _lr_trajectory(scheduler, optimizer, 6) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("stop_at", [1, 2, 4])  # inside warmup, at its end, after it
def test_scheduler_state_roundtrip_continues_exact_trajectory(tmp_path, stop_at):
    optim_cfg = _sched_cfg(WARMUP_TYPE="linear")
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    reference = _lr_trajectory(scheduler, optimizer, 6)

    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    first = _lr_trajectory(scheduler, optimizer, stop_at)
    path = tmp_path / "sched.pth"
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path)

    state = torch.load(path, weights_only=True)  # plain values only
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, optim_cfg)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert first + _lr_trajectory(scheduler, optimizer, 6 - stop_at) == reference


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "amsgrad", "rmsprop", "radam"])
def test_build_optimizer_names(name):
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.NAME = name
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(model, optim_cfg)
    assert optimizer.param_groups[0]["lr"] == optim_cfg.LR
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"]) == 8


TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "amsgrad": torch.optim.Adam, "adamw": torch.optim.AdamW,
                    "radam": torch.optim.RAdam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


def _steps(optimizer, model, n=3):
    """n seeded steps of a quadratic loss; returns the final weights."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(n):
        optimizer.zero_grad()
        (model(torch.randn(4, 3, generator=generator)) ** 2).sum().backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "amsgrad", "rmsprop", "radam"])
def test_default_eps_is_torchs_default(name):
    """OPTIM.EPS's default 1e-8 is torch's own: every optimizer steps bit-identically to torch's defaults."""
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.NAME = name
    torch.manual_seed(0)
    ours_model, torch_model = nn.Linear(3, 2), nn.Linear(3, 2)
    torch_model.load_state_dict(ours_model.state_dict())
    ours = build_optimizer(ours_model, optim_cfg)
    settings = {"lr": optim_cfg.LR, "weight_decay": optim_cfg.WEIGHT_DECAY}  # no eps: torch's default
    if name == "sgd":
        settings.update(momentum=optim_cfg.MOMENTUM)
    elif name == "rmsprop":
        settings.update(momentum=optim_cfg.MOMENTUM, alpha=optim_cfg.RMSPROP_ALPHA)
    else:
        settings.update(betas=(optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2))
        if name == "amsgrad":
            settings.update(amsgrad=True)
    reference = TORCH_OPTIMIZERS[name](torch_model.parameters(), **settings)
    assert ours.defaults.get("eps") == reference.defaults.get("eps")  # None for sgd, which has no eps
    assert torch.equal(_steps(ours, ours_model), _steps(reference, torch_model))


def test_eps_reaches_the_adam_family_and_changes_the_update():
    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.EPS = 1e-3  # TCP's setting
    for name in ("adam", "amsgrad", "adamw", "radam", "rmsprop"):
        optim_cfg.NAME = name
        assert build_optimizer(nn.Linear(3, 2), optim_cfg).param_groups[0]["eps"] == 1e-3, name
    optim_cfg.NAME = "adam"
    torch.manual_seed(0)
    model, default_model = nn.Linear(3, 2), nn.Linear(3, 2)
    default_model.load_state_dict(model.state_dict())
    large_eps = _steps(build_optimizer(model, optim_cfg), model)
    default_eps = _steps(build_optimizer(default_model, get_cfg_default().OPTIM), default_model)
    assert not torch.allclose(large_eps, default_eps)
    optim_cfg.NAME = "sgd"  # no epsilon: unaffected
    assert "eps" not in build_optimizer(nn.Linear(3, 2), optim_cfg).defaults


@pytest.mark.parametrize("value", [0.0, -1e-3, "1e-3", True])
def test_bad_eps_is_one_line_error(value):
    from dassl.utils import ConfigError

    optim_cfg = get_cfg_default().OPTIM
    optim_cfg.EPS = value
    with pytest.raises(ConfigError, match=r"^OPTIM\.EPS=.*: expected a number > 0"):
        build_optimizer(nn.Linear(3, 2), optim_cfg)


# ------------------------------------------------------------------ checkpoints
def _state(epoch=3):
    model = nn.Linear(3, 2)
    optimizer = _optimizer()
    scheduler = build_lr_scheduler(optimizer, _sched_cfg())
    return {"state_dict": model.state_dict(), "epoch": epoch, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "val_result": 12.5}


def test_checkpoint_loads_with_weights_only(tmp_path):
    state = _state()
    fpath = save_checkpoint(state, str(tmp_path))
    assert os.path.basename(fpath) == "model.pth.tar-3"
    assert (tmp_path / "checkpoint").read_text().strip() == "model.pth.tar-3"
    loaded = torch.load(fpath, weights_only=True)
    assert loaded["epoch"] == 3 and loaded["val_result"] == 12.5
    assert torch.equal(loaded["state_dict"]["weight"], state["state_dict"]["weight"])
    assert loaded["scheduler"]["successor"]["T_max"] == 6.0


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    save_checkpoint(_state(epoch=1), str(tmp_path), model_name="model.pth.tar-1")
    good_bytes = (tmp_path / "model.pth.tar-1").read_bytes()
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(10)  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(torchtools.torch, "save", save_then_die)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(epoch=1), str(tmp_path), model_name="model.pth.tar-1")
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(epoch=2), str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.pth.tar-1"]  # no temp file, no -2
    assert (tmp_path / "model.pth.tar-1").read_bytes() == good_bytes  # old file intact
    assert (tmp_path / "checkpoint").read_text().strip() == "model.pth.tar-1"  # pointer never moved


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_checkpoint(str(tmp_path / "nothing.pth"))


# ------------------------------------------------------------------ logging
def test_setup_logger_tees_and_does_not_overwrite(tmp_path, capsys):
    first = setup_logger(str(tmp_path))
    print("first run")
    second = setup_logger(str(tmp_path))
    print("second run")
    setup_logger(None)
    print("after")
    assert first == str(tmp_path / "log.txt")
    assert os.path.basename(second).startswith("log.txt-") and second != first
    assert open(first).read() == "first run\n"
    assert open(second).read() == "second run\n"
    assert capsys.readouterr().out == "first run\nsecond run\nafter\n"


# ------------------------------------------------------------------ data
def test_read_image_corrupt_file_is_one_line(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(IOError) as err:
        read_image(str(bad))
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((4, 5), dtype=np.uint8)).save(good)
    assert read_image(str(good)).mode == "RGB" and read_image(str(good)).size == (5, 4)


def test_datasetbase_fewshot_and_datum_pickle(tmp_path):
    items = []
    for label, name in enumerate(["cat", "dog"]):
        for i in range(5):
            path = tmp_path / f"{name}{i}.png"
            path.write_bytes(b"x")
            items.append(Datum(impath=str(path), label=label, classname=name))
    dataset = DatasetBase(train_x=items, test=items[:3])
    assert dataset.num_classes == 2 and dataset.classnames == ["cat", "dog"]
    assert dataset.lab2cname == {0: "cat", 1: "dog"}
    fewshot = dataset.generate_fewshot_dataset(items, num_shots=3)
    assert sorted(d.label for d in fewshot) == [0, 0, 0, 1, 1, 1]
    assert len(dataset.generate_fewshot_dataset(items, num_shots=7, repeat=True)) == 14
    assert len(dataset.generate_fewshot_dataset(items, num_shots=7)) == 10
    restored = pickle.loads(pickle.dumps(items[0]))
    # upstream's attribute names: few-shot caches written by CoOp unpickle into our Datum
    assert vars(restored) == {"_impath": items[0].impath, "_label": 0, "_domain": 0, "_classname": "cat"}
    with pytest.raises(FileNotFoundError, match="missing.png"):
        Datum(impath=str(tmp_path / "missing.png"))


# ------------------------------------------------------------------ metrics
def test_compute_accuracy_and_macro_f1():
    output = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    target = torch.tensor([0, 2, 2, 1])
    top1, top2 = compute_accuracy(output, target, topk=(1, 2))
    assert top1.item() == pytest.approx(50.0) and top2.item() == pytest.approx(100.0)
    pred = output.argmax(1).tolist()  # [0, 1, 2, 0]
    # per class F1 by hand: class0 P=1/2 R=1 -> 2/3; class1 P=0 -> 0; class2 P=1 R=1/2 -> 2/3
    assert macro_f1_score(target.tolist(), pred) == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)
    meter = AverageMeter()
    meter.update(2.0, n=1)
    meter.update(torch.tensor(5.0), n=3)
    assert meter.avg == pytest.approx(17 / 4) and meter.val == 5.0


class _Pickled:
    """A custom object, as upstream Dassl's pickled warmup scheduler."""


def test_upstream_checkpoint_with_objects_loads_with_warning(tmp_path):
    path = tmp_path / "old.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1, "scheduler": {"successor": _Pickled()}}, path)
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = load_checkpoint(str(path))
    assert isinstance(loaded["scheduler"]["successor"], _Pickled)


def test_resume_uses_epoch_common_to_all_models(tmp_path, capsys):
    """A kill between two models' checkpoint writes: resume from the last epoch both models completed."""
    from dassl.engine import TrainerBase

    def make_trainer():
        trainer = TrainerBase()
        for name in ("a", "b"):
            trainer.register_model(name, nn.Linear(2, 1), None, None)
        return trainer

    saved = {}
    for epoch in (1, 2):
        trainer = make_trainer()
        saved[epoch] = {name: model.weight.detach().clone() for name, model in trainer._models.items()}
        names = ["a", "b"] if epoch == 1 else ["a"]  # epoch 2 died after model "a"
        for name in names:
            save_checkpoint({"state_dict": trainer._models[name].state_dict(), "epoch": epoch, "optimizer": None,
                             "scheduler": None, "val_result": None}, str(tmp_path / name))
    resumed = make_trainer()
    assert resumed.resume_model_if_exist(str(tmp_path)) == 1
    for name in ("a", "b"):
        assert torch.equal(resumed._models[name].weight, saved[1][name])


def test_datamanager_batches_and_summary(toy_data_root, capsys):
    from dassl.data import DataManager

    cfg = get_cfg_default()
    cfg.merge_from_list(["DATASET.ROOT", toy_data_root, "DATASET.NAME", "EngineToyImages", "DATASET.NUM_SHOTS", "2",
                         "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip']",
                         "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                         "DATALOADER.TEST.BATCH_SIZE", "5", "USE_CUDA", "False"])
    dm = DataManager(cfg)
    summary = capsys.readouterr().out
    assert "# train_x    6" in summary and "# test       12" in summary and "# classes    3" in summary
    assert dm.num_classes == 3 and dm.lab2cname == {0: "red", 1: "green", 2: "blue"}
    train_batches = list(dm.train_loader_x)
    assert len(train_batches) == 1  # 6 shots, batch 4, drop_last
    batch = train_batches[0]
    assert set(batch) == {"img", "label", "domain", "impath", "index"}
    assert batch["img"].shape == (4, 3, 32, 32) and 0 <= batch["img"].min() and batch["img"].max() <= 1
    test_batches = list(dm.test_loader)
    assert [len(b["label"]) for b in test_batches] == [5, 5, 2]  # no drop_last at test time
    assert torch.cat([b["index"] for b in test_batches]).tolist() == list(range(12))  # sequential


def test_open_specified_layers():
    from dassl.utils import open_specified_layers

    model = nn.Sequential()
    model.add_module("body", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 1))
    open_specified_layers(model, "head")
    assert [p.requires_grad for p in model.body.parameters()] == [False, False]
    assert [p.requires_grad for p in model.head.parameters()] == [True, True]
    with pytest.raises(KeyError, match="neck"):
        open_specified_layers(model, ["neck"])
