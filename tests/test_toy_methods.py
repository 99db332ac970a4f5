"""Method-level behaviour on the toy world with the pretrained toy-ViT (base-to-new, one shared run per module).

Every trainer trains on 16 shots of the 18 base classes with its toy_demo config, on a compressed schedule
(SCHEDULES: a fraction of the demo's epochs, the learning rate raised by the same factor), seed 1, and is
tested on the base and on the new classes; zero-shot CLIP gives the reference. What the methods are for, as on
the real benchmarks (docs/TOY_WORLD.md): prompt tuning raises base accuracy above zero-shot for every trainer;
CoOp pays for it on the new classes, and methods built to keep CLIP's generality keep more of the new classes
than CoOp does. The margins were measured (see below) and set with headroom.
"""
import re

import pytest

from tests.e2e import run_train

# trainer: (batch size, epochs, learning rate). CoOp, MPL and MMA: their toy_demo configs' (the demo's). The others: the
# config's batch, its epochs divided by a factor and its learning rate multiplied by it (a few seconds each)
SCHEDULES = {
    "CoOp": (32, 50, 0.002),
    "CoCoOp": (8, 2, 0.05),
    "KgCoOp": (128, 20, 0.01),
    "MaPLe": (8, 2, 0.0175),
    "MuDPT": (8, 2, 0.0125),
    "MPL": (8, 4, 0.0035),
    "PromptSRC": (8, 2, 0.005),
    "TCP": (8, 2, 0.004),
    "MMA": (8, 4, 0.0015),  # its toy_demo config's
    "MMRL": (8, 2, 0.002),
}
TRAINERS = list(SCHEDULES)
# new classes above CoOp's: the methods for which the demo's 3-seed means (docs/TOY_WORLD.md) show it too. CoCoOp,
# MaPLe, MMA and MPL are above CoOp here (seed 1) but not on the 3-seed means, so it is not asserted for them
KEEP_NEW_BETTER_THAN_COOP = ["KgCoOp", "MuDPT", "PromptSRC", "TCP"]
COMMON_OPTS = ("MODEL.BACKBONE.NAME", "toy-ViT", "OPTIM.WARMUP_EPOCH", "0", "DATASET.NUM_SHOTS", "16",
               "DATALOADER.TEST.BATCH_SIZE", "100", "TRAIN.PRINT_FREQ", "100")
CHANCE = 100 / 18
# Measured (python -m pytest tests/test_toy_methods.py -s), accuracy % base / new (360 test images each, one
# image = 0.28 points): ZeroshotCLIP 56.9 / 63.1, CoOp 65.8 / 57.5, CoCoOp 58.1 / 58.9, KgCoOp 60.3 / 63.1,
# MaPLe 61.9 / 61.1, MuDPT 61.4 / 60.6, MPL 57.5 / 58.9, PromptSRC 63.6 / 62.2, TCP 61.1 / 63.1, MMA 59.7 / 60.3,
# MMRL 60.0 / 56.7 (base only is asserted for it: it is below CoOp on new, as on the demo's 3 seeds).
# Training is seeded: the same machine repeats them; another CPU may move them by a few images.
# every trainer: base above zero-shot base (smallest measured gain: +0.6, MPL, 2 images; its 3-seed demo mean
# is +2.3; the next smallest +1.2, CoCoOp)
COOP_NEW_LOSS = 3.0  # CoOp: new <= zero-shot new - COOP_NEW_LOSS (measured: -5.6)
NEW_OVER_COOP = 1.5  # KEEP_NEW_BETTER_THAN_COOP: new >= CoOp's new + NEW_OVER_COOP (smallest measured: +3.1, MuDPT)


def accuracy(log):
    values = re.findall(r"\* accuracy: ([\d.]+)%", log)
    assert values, log[-2000:]
    return float(values[-1])


def config(trainer):
    return f"configs/trainers/{trainer}/toy_demo.yaml"


def schedule_opts(trainer):
    batch, epochs, lr = SCHEDULES[trainer]
    return COMMON_OPTS + ("DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), "OPTIM.MAX_EPOCH", str(epochs),
                          "OPTIM.LR", str(lr))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy_methods")
    out = {}
    for subsample in ("base", "new"):
        _, log = run_train(tmp, "ZeroshotCLIP", config("ZeroshotCLIP"), dataset="ToyWorld", opts=COMMON_OPTS,
                           eval_only=True, subsample=subsample, output_dir=tmp / f"zs_{subsample}")
        out[("ZeroshotCLIP", subsample)] = accuracy(log)
    for trainer in TRAINERS:
        opts = schedule_opts(trainer)
        model_dir, log = run_train(tmp, trainer, config(trainer), dataset="ToyWorld", opts=opts, subsample="base")
        out[(trainer, "base")] = accuracy(log)
        _, log = run_train(tmp, trainer, config(trainer), dataset="ToyWorld", opts=opts, subsample="new",
                           eval_only=True, model_dir=model_dir, load_epoch=SCHEDULES[trainer][1])
        out[(trainer, "new")] = accuracy(log)
    print("\nbase-to-new on the toy world:", {f"{t} {s}": v for (t, s), v in out.items()})
    return out


def test_zero_shot_transfers_to_new_classes(results):
    assert results[("ZeroshotCLIP", "new")] >= 60  # CLIP's pretraining saw the new classes too
    assert results[("ZeroshotCLIP", "base")] > 5 * CHANCE


@pytest.mark.parametrize("trainer", TRAINERS)
def test_prompt_tuning_raises_base_accuracy(results, trainer):
    assert results[(trainer, "base")] > results[("ZeroshotCLIP", "base")], results


def test_coop_loses_new_classes(results):
    assert results[("CoOp", "new")] <= results[("ZeroshotCLIP", "new")] - COOP_NEW_LOSS, results


@pytest.mark.parametrize("trainer", KEEP_NEW_BETTER_THAN_COOP)
def test_methods_keep_more_new_accuracy_than_coop(results, trainer):
    assert results[(trainer, "new")] >= results[("CoOp", "new")] + NEW_OVER_COOP, results


def declared_methods():
    import mmpt
    import trainers  # noqa: F401  (declares the methods)

    return mmpt.declared_methods()


@pytest.mark.parametrize("trainer", list(declared_methods()))
def test_toy_demo_configs_fit_toy_vit(trainer):
    """Every declared method's toy_demo config names toy-ViT, 32 px, no loader workers, and prompt depths within
    its 4 layers."""
    from dassl.config import get_cfg_default
    import trainers

    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    method = declared_methods()[trainer]
    cfg.merge_from_file(method.config_file("toy_demo", "."))
    assert (cfg.MODEL.BACKBONE.NAME, cfg.INPUT.SIZE, cfg.DATALOADER.NUM_WORKERS) == ("toy-ViT", (32, 32), 0)
    node = cfg.TRAINER[method.cfg_node]
    depths = [value for key, value in node.items() if "DEPTH" in key and isinstance(value, int)]
    assert all(1 <= depth <= 4 for depth in depths), depths
    layers = [value for key, value in node.items() if key.endswith("LAYER") and isinstance(value, int)]
    assert all(1 <= layer < 4 for layer in layers), layers  # e.g. TCP's INJECT_LAYER: a deep block of toy-ViT
