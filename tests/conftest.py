"""Shared test fixtures: a tiny image dataset written to disk and a toy linear trainer for the engine tests.

The toy dataset (`EngineToyImages`) and trainer (`EngineToyLinear`) register themselves once, here.
"""
import os

# One intra-op thread for the tests and every process they start (train.py, torchrun, loader workers): the test
# models are tiny, so a second thread buys little, and when two OpenMP thread pools share the 2 cores (a worker
# beside the main process, or any other load) their spin-waits slow a run down by an order of magnitude.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import os.path as osp  # noqa: E402

import numpy as np
import pytest
import torch  # noqa: E402
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # in case torch was imported before this file

from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer

TOY_CLASSES = ["red", "green", "blue"]
TOY_SPLIT_SIZES = {"train": 6, "val": 2, "test": 4}  # images per class


def write_toy_images(root, size=32, seed=0):
    """root/<split>/<class>/<i>.png: noisy images whose dominant colour channel is the class."""
    rng = np.random.default_rng(seed)
    for split, per_class in TOY_SPLIT_SIZES.items():
        for label, classname in enumerate(TOY_CLASSES):
            folder = osp.join(root, split, classname)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 220, size=(size, size, 3))
                pixels[..., label] += 35  # a weak signal: the loss stays far from zero
                Image.fromarray(pixels.astype(np.uint8)).save(osp.join(folder, f"{i}.png"))
    return root


@DATASET_REGISTRY.register()
class EngineToyImages(DatasetBase):
    """Reads DATASET.ROOT/<split>/<class>/*.png (written by write_toy_images)."""

    def __init__(self, cfg):
        splits = {split: self.read_split(osp.join(cfg.DATASET.ROOT, split)) for split in TOY_SPLIT_SIZES}
        train = self.generate_fewshot_dataset(splits["train"], num_shots=cfg.DATASET.NUM_SHOTS)
        super().__init__(train_x=train, val=splits["val"], test=splits["test"])

    @staticmethod
    def read_split(split_dir):
        return [Datum(impath=osp.join(split_dir, classname, fname), label=label, classname=classname)
                for label, classname in enumerate(TOY_CLASSES)
                for fname in sorted(os.listdir(osp.join(split_dir, classname)))]


@TRAINER_REGISTRY.register()
class EngineToyLinear(TrainerX):
    """A linear classifier on flattened images; records the LR of every epoch it runs.

    `crash_at = (epoch, batch)` (0-based) raises RuntimeError in that batch: a simulated kill.
    """

    crash_at = None

    def build_model(self):
        size = self.cfg.INPUT.SIZE
        self.model = nn.Linear(3 * size[0] * size[1], self.num_classes).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)
        self.lr_per_epoch = {}

    def model_inference(self, input):
        return self.model(input.flatten(1))

    def before_epoch(self):
        self.lr_per_epoch[self.epoch] = self.get_current_lr()

    def forward_backward(self, batch):
        if self.crash_at == (self.epoch, self.batch_idx):
            raise RuntimeError("simulated kill")
        image, label, _ = self.parse_batch_train(batch)
        output = self.model_inference(image)
        loss = F.cross_entropy(output, label)
        self.model_backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(output, label)[0].item()}


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory):
    return write_toy_images(str(tmp_path_factory.mktemp("toy_images")))


def toy_train_args(data_root, output_dir, *extra, opts=()):
    """Arguments of train.py for the toy trainer (CPU, NUM_WORKERS 0, 32 px, 3 epochs, cosine + warmup)."""
    return [
        "--root", data_root, "--seed", "0", "--trainer", "EngineToyLinear", "--output-dir", str(output_dir), *extra,
        "DATASET.NAME", "EngineToyImages", "USE_CUDA", "False", "VERBOSE", "False",
        "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_resized_crop', 'random_flip', 'normalize']",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "8",
        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.002", "OPTIM.MAX_EPOCH", "4", "OPTIM.LR_SCHEDULER", "cosine",
        "OPTIM.WARMUP_EPOCH", "1", "OPTIM.WARMUP_TYPE", "linear", "OPTIM.WARMUP_MIN_LR", "0.001",
        "TRAIN.PRINT_FREQ", "2", *opts,
    ]
