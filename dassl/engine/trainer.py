"""TrainerBase / SimpleTrainer / TrainerX: Dassl's trainer lifecycle and printed lines.

Our additions over upstream (docs/ENGINE.md):
- a resumable checkpoint (model + optimizer + scheduler + RNG states) is written at the end of EVERY epoch
  (TRAIN.CHECKPOINT_FREQ = 0: the previous per-epoch file is removed once the new one is in place;
  k > 0: files of every k-th epoch are kept; -1: no per-epoch checkpoints, only the final model);
- restarting into the same OUTPUT_DIR resumes from the last complete epoch and restores the RNG states,
  so the data order, augmentations and LR of the resumed run equal an uninterrupted run;
- trainers with state beyond their models' weights keep it across a resume through the pair of hooks
  checkpoint_extra_state / restore_checkpoint_extra_state (saved as the checkpoint's "extra_state").
"""
import datetime
import os
import os.path as osp
import re
import time
from collections import OrderedDict

import numpy as np
import torch
from tqdm import tqdm

from dassl.data import DataManager
from dassl.evaluation import build_evaluator
from dassl.utils import distributed
from dassl.utils import (
    AverageMeter, ImageReadError, MetricMeter, RunError, get_random_rng_state, load_checkpoint, save_checkpoint,
    set_random_rng_state, tolist_if_not,
)
from dassl.utils.registry import MissingFileError
from dassl.utils.torchtools import POINTER_FILE, restore_checkpoint

_EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")
BEST_MODEL = "best"  # load_model(directory, epoch=BEST_MODEL): the best-validation model
BEST_MODEL_FILE = "model-best.pth.tar"


def _read_pointer(model_dir):
    with open(osp.join(model_dir, POINTER_FILE), "r") as f:
        return f.readline().strip()


def saved_epochs(model_dir):
    """The epochs of the model.pth.tar-<E> files in model_dir, ascending."""
    names = os.listdir(model_dir) if osp.isdir(model_dir) else []
    return sorted(int(m.group(1)) for m in map(_EPOCH_FILE.match, names) if m)


def _epoch_list(model_dir):
    return ", ".join(map(str, saved_epochs(model_dir))) or "none"


class TrainerBase:
    """Model registry, checkpointing and the train loop skeleton."""

    def __init__(self):
        self._models = OrderedDict()
        self._optims = OrderedDict()
        self._scheds = OrderedDict()
        self._writer = None

    def register_model(self, name="model", model=None, optim=None, sched=None):
        if self.__dict__.get("_models") is None:
            raise AttributeError("Cannot assign model before super().__init__() call")
        if self.__dict__.get("_optims") is None:
            raise AttributeError("Cannot assign optim before super().__init__() call")
        if self.__dict__.get("_scheds") is None:
            raise AttributeError("Cannot assign sched before super().__init__() call")
        if name in self._models:
            raise KeyError(f"A model named '{name}' is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None):
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = tolist_if_not(names)
        for name in names:
            if name not in names_real:
                raise KeyError(f"No registered model named '{name}'; registered: {names_real}")
        return names

    # ---------------------------------------------------------------- checkpoints
    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name="", rng_state=None):
        """Save every registered model as directory/<name>/model.pth.tar-<epoch+1> (or `model_name`); in a
        distributed run rank 0 writes and every rank returns once the files are in place."""
        if distributed.is_main_process():
            self._save_models(epoch, directory, is_best, val_result, model_name, rng_state)
        distributed.barrier()

    def _save_models(self, epoch, directory, is_best, val_result, model_name, rng_state):
        for name in self.get_model_names():
            optim = self._optims[name]
            sched = self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
            }
            if rng_state is not None:
                state["rng_state"] = rng_state
            if self.backbone_name():
                state["backbone"] = self.backbone_name()
            extra_state = self.checkpoint_extra_state(name)
            if extra_state is not None:
                state["extra_state"] = extra_state
            save_checkpoint(state, osp.join(directory, name), is_best=is_best, model_name=model_name)

    def backbone_name(self):
        """MODEL.BACKBONE.NAME (or None): saved in every checkpoint, so that weights learnt on one backbone are
        never loaded onto another, even one of the same shapes."""
        cfg = getattr(self, "cfg", None)
        return cfg.MODEL.BACKBONE.NAME if cfg is not None else None

    def check_backbone(self, checkpoint, model_path):
        saved, current = checkpoint.get("backbone"), self.backbone_name()
        if saved and current and saved != current:  # a checkpoint without the entry predates it
            raise RunError(f"{model_path} was trained on the backbone {saved!r}; this run's MODEL.BACKBONE.NAME is "
                           f"{current!r}: evaluate or resume it with that backbone")

    def checkpoint_extra_state(self, name):
        """Hook: trainer state that is not a registered model's weights but must survive a resume (e.g. a running
        average of the weights over epochs), saved with model `name` as the checkpoint's "extra_state". Plain
        values and tensors only (checkpoints load with weights_only=True). None = nothing to add."""
        return None

    def restore_checkpoint_extra_state(self, name, extra_state):
        """Hook: receives the "extra_state" of model `name`'s checkpoint when training resumes (None when the
        checkpoint holds none). Evaluation (load_model) does not call it."""

    def _resume_file_name(self, directory, names):
        """The checkpoint file every model can resume from (the lowest epoch if a save was interrupted
        between two models' folders)."""
        pointed = [_read_pointer(osp.join(directory, name)) for name in names]
        epochs = [_EPOCH_FILE.match(p) for p in pointed]
        if len(set(pointed)) == 1 or not all(epochs):
            return None  # each folder's own pointer
        return f"model.pth.tar-{min(int(m.group(1)) for m in epochs)}"

    def resume_model_if_exist(self, directory):
        """Resume every registered model from directory/<name>/checkpoint; return the completed epochs (0 = none)."""
        names = self.get_model_names()
        if not all(osp.exists(osp.join(directory, name, POINTER_FILE)) for name in names):
            print("No checkpoint found, train from scratch")
            return 0
        print(f'Found checkpoint at "{directory}" (will resume training)')
        fname = self._resume_file_name(directory, names)
        start_epoch, rng_state = 0, None
        for name in names:
            model_dir = osp.join(directory, name)
            fpath = osp.join(model_dir, fname or _read_pointer(model_dir))
            if not osp.isfile(fpath):  # a checkpoint deleted by hand: the epochs it held cannot be rebuilt
                raise RunError(f"{osp.join(model_dir, POINTER_FILE)} names {osp.basename(fpath)}, which is not "
                               f"there (deleted?); epoch files present: {_epoch_list(model_dir)}; restore it, or "
                               f"delete {directory} to train from scratch")
            checkpoint = restore_checkpoint(fpath, self._models[name], self._optims[name], self._scheds[name])
            self.check_backbone(checkpoint, fpath)
            self.restore_checkpoint_extra_state(name, checkpoint.get("extra_state"))
            start_epoch = checkpoint["epoch"]
            rng_state = checkpoint.get("rng_state", rng_state)
        if rng_state is not None:
            set_random_rng_state(rng_state)
            print("Restored the random number generator states")
        self._resumed_best_result(directory, names)
        return start_epoch

    def _resumed_best_result(self, directory, names):
        best_path = osp.join(directory, names[0], "model-best.pth.tar")
        if osp.exists(best_path):
            val_result = load_checkpoint(best_path).get("val_result")
            if val_result is not None:
                self.best_result = val_result

    def load_model(self, directory, epoch=None):
        """Load directory/<name>/model.pth.tar-<epoch> into each model; epoch None: the last epoch file found
        (model-best.pth.tar when there is none), BEST_MODEL: model-best.pth.tar. A missing model folder or
        epoch is one line that says what the folder holds."""
        if not directory:
            print("Note that load_model() is skipped as no pretrained model is given")
            return
        names = self.get_model_names()
        first_dir = osp.join(directory, names[0])
        if not osp.isdir(first_dir):
            raise MissingFileError(f"no trained model in {directory} ({first_dir} does not exist): train it first "
                                   f"(the training command or script of this evaluation), or pass --model-dir "
                                   f"<a training run's output folder>")
        if epoch is None:
            found = saved_epochs(first_dir)
            if found:
                epoch = found[-1]
                print(f"No --load-epoch given: loading the last epoch found, {epoch} (epochs in {first_dir}: "
                      f"{_epoch_list(first_dir)})")
            else:
                epoch = BEST_MODEL
        model_file = BEST_MODEL_FILE if epoch == BEST_MODEL else f"model.pth.tar-{epoch}"
        for name in names:
            model_path = osp.join(directory, name, model_file)
            if not osp.exists(model_path):
                raise MissingFileError(f"Model not found at {model_path}: the epochs saved in "
                                       f"{osp.join(directory, name)} are {_epoch_list(osp.join(directory, name))} "
                                       f"(pass one as --load-epoch, or none for the last)")
            checkpoint = load_checkpoint(model_path)
            print(f'Loading weights to {name} from "{model_path}" (epoch = {checkpoint["epoch"]})')
            self.check_backbone(checkpoint, model_path)
            self.loaded_epoch = checkpoint["epoch"]  # the epoch a result record names
            self.load_state_dict_into(name, checkpoint["state_dict"], model_path)

    def load_state_dict_into(self, name, state_dict, model_path):
        """Load one model's weights (read from model_path); trainers override this to adapt old checkpoints."""
        try:
            self._models[name].load_state_dict(state_dict)
        except RuntimeError as error:  # another trainer's or config's model
            raise RunError(f"{model_path} does not fit {type(self).__name__}'s {name} (other trainer or config?): "
                           f"{' '.join(str(error).split())[:300]}") from None

    # ---------------------------------------------------------------- modes, LR, updates
    def set_model_mode(self, mode="train", names=None):
        for name in self.get_model_names(names):
            if mode == "train":
                self._models[name].train()
            elif mode in ("test", "eval"):
                self._models[name].eval()
            else:
                raise KeyError(f"Unknown model mode '{mode}' (train / eval / test)")

    def update_lr(self, names=None):
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss):
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.sync_gradients(names)
        self.model_update(names)

    def sync_gradients(self, names=None):
        """Distributed runs: every rank's gradients become those of the loss over the global batch (a no-op in a
        single process). Call it between backward and the optimizer step."""
        self.gradients_synced = True
        if distributed.is_distributed():
            distributed.all_reduce_gradients([self._models[name] for name in self.get_model_names(names)],
                                             self.__dict__.get("batch_share", 1.0))

    # ---------------------------------------------------------------- tensorboard (optional)
    def init_writer(self, log_dir):
        if self.__dict__.get("_writer") is not None or not distributed.is_main_process():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            self._writer = None
            return
        print(f"Initialize tensorboard (log_dir={log_dir})")
        self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag, scalar_value, global_step=None):
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ---------------------------------------------------------------- loop
    def train(self, start_epoch, max_epoch):
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.after_train()

    def before_train(self):
        pass

    def after_train(self):
        pass

    def before_epoch(self):
        pass

    def after_epoch(self):
        pass

    def run_epoch(self):
        raise NotImplementedError

    def test(self):
        raise NotImplementedError

    def parse_batch_train(self, batch):
        raise NotImplementedError

    def parse_batch_test(self, batch):
        raise NotImplementedError

    def forward_backward(self, batch):
        raise NotImplementedError

    def model_inference(self, input):
        raise NotImplementedError


class SimpleTrainer(TrainerBase):
    """Data loaders, evaluator, checkpoint policy and evaluation; subclasses implement build_model."""

    def __init__(self, cfg):
        super().__init__()
        self.check_cfg(cfg)
        self.device = torch.device("cuda") if torch.cuda.is_available() and cfg.USE_CUDA else torch.device("cpu")
        self.start_epoch = self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = cfg.OUTPUT_DIR
        self.cfg = cfg
        distributed.sync_random_state()  # every rank starts from rank 0's random state (also with SEED -1)
        with distributed.main_process_first():  # rank 0 writes the split files and few-shot caches
            self.build_data_loader()
        distributed.sync_random_state()  # reading a cache draws nothing, writing it does: rank 0's state wins
        self.build_model()
        distributed.broadcast_parameters(self._models.values())
        self.evaluator = build_evaluator(cfg, lab2cname=self.lab2cname)
        self.best_result = -np.inf
        self.loaded_epoch = None  # the epoch of the last checkpoint load_model read
        self.test_metrics = None  # {name: value} of the last test()'s evaluator (a result record's numbers)

    def check_cfg(self, cfg):
        """Hook: check that the config suits the trainer."""
        pass

    def build_data_loader(self):
        dm = DataManager(self.cfg)
        self.train_loader_x = dm.train_loader_x
        self.train_loader_u = dm.train_loader_u
        self.val_loader = dm.val_loader
        self.test_loader = dm.test_loader
        self.num_classes = dm.num_classes
        self.num_source_domains = dm.num_source_domains
        self.lab2cname = dm.lab2cname
        self.dm = dm

    def build_model(self):
        raise NotImplementedError(f"{type(self).__name__} must implement build_model() "
                                  f"(build the model, optimizer, scheduler and call register_model)")

    def train(self):
        super().train(self.start_epoch, self.max_epoch)

    def before_train(self):
        distributed.check_global_batch(self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE, len(self.dm.dataset.train_x),
                                       distributed.get_world_size())
        directory = self.cfg.RESUME if self.cfg.RESUME else self.cfg.OUTPUT_DIR
        self.start_epoch = self.resume_model_if_exist(directory)
        writer_dir = osp.join(self.output_dir, "tensorboard")
        self.init_writer(writer_dir)
        self.time_start = time.time()

    def after_train(self):
        print("Finish training")
        if not self.cfg.TEST.NO_TEST:
            if self.cfg.TEST.FINAL_MODEL == "best_val":
                print("Deploy the model with the best val performance")
                self.load_model(self.output_dir, epoch=BEST_MODEL)
            else:
                print("Deploy the last-epoch model")
            self.test_result = self.test()
        elapsed = str(datetime.timedelta(seconds=round(time.time() - self.time_start)))
        print(f"Elapsed: {elapsed}")
        self.close_writer()

    def _is_kept_epoch(self, epoch):
        """Whether model.pth.tar-<epoch> (1-based) stays on disk (final model, or CHECKPOINT_FREQ multiple)."""
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        return epoch == self.max_epoch or (freq > 0 and epoch % freq == 0)

    def after_epoch(self):
        completed = self.epoch + 1
        last_epoch = completed == self.max_epoch
        if not self.cfg.TEST.NO_TEST and self.cfg.TEST.FINAL_MODEL == "best_val":
            curr_result = self.test(split="val")
            if curr_result > self.best_result:
                self.best_result = curr_result
                self.save_model(self.epoch, self.output_dir, val_result=curr_result, model_name="model-best.pth.tar")
        if self.cfg.TRAIN.CHECKPOINT_FREQ >= 0 or last_epoch:
            self._save_resumable(completed)

    def _save_resumable(self, completed):
        """Save model.pth.tar-<completed> with the RNG states, then drop the previous non-kept epoch file (rank 0
        writes; rank 0's RNG states are every rank's)."""
        if distributed.is_main_process():
            self._save_resumable_files(completed)
        distributed.barrier()

    def _save_resumable_files(self, completed):
        names = self.get_model_names()
        previous = {}
        for name in names:
            model_dir = osp.join(self.output_dir, name)
            if osp.exists(osp.join(model_dir, POINTER_FILE)):
                previous[name] = _read_pointer(model_dir)
        # captured after any validation pass, right where the next epoch's random draws begin
        self._save_models(self.epoch, self.output_dir, False, None, "", get_random_rng_state())
        # only once every model's new file and pointer are in place
        for name, fname in previous.items():
            match = _EPOCH_FILE.match(fname)
            if match and int(match.group(1)) < completed and not self._is_kept_epoch(int(match.group(1))):
                stale = osp.join(self.output_dir, name, fname)
                if osp.exists(stale):
                    os.remove(stale)

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on TEST.SPLIT (or `split`); print the evaluator block and return its first value (accuracy)."""
        self.set_model_mode("eval")
        self.evaluator.reset()
        split = self.cfg.TEST.SPLIT if split is None else split
        if split == "val" and self.val_loader is not None:
            data_loader = self.val_loader
        else:
            if split == "val":
                print("Note: the dataset has no val split; evaluating on the test set instead (as upstream Dassl)")
            split = "test"
            data_loader = self.test_loader
        print(f"Evaluate on the *{split}* set")
        try:
            for batch in tqdm(data_loader, disable=not distributed.is_main_process()):  # each rank: its shard
                input, label = self.parse_batch_test(batch)
                output = self.model_inference(input)
                self.evaluator.process(output, label)
        except ImageReadError as error:  # from a worker, the message is its traceback: keep the last line
            reason = str(error).strip().splitlines()[-1].split("ImageReadError: ")[-1]
            raise RunError(f"evaluation on the {split} set stopped: {reason}; the checkpoints in {self.output_dir} "
                           f"are kept: replace the file, then run the same command again (a finished training "
                           f"only evaluates)") from None
        results = distributed.evaluate_gathered(self.evaluator)
        self.test_metrics = dict(results)
        for k, v in results.items():
            self.write_scalar(f"{split}/{k}", v, self.epoch)
        return list(results.values())[0]

    def model_inference(self, input):
        return self.model(input)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device, non_blocking=True), batch["label"].to(self.device, non_blocking=True)

    def get_current_lr(self, names=None):
        name = self.get_model_names(names)[0]
        return self._optims[name].param_groups[0]["lr"]


class TrainerX(SimpleTrainer):
    """Trains on labeled data only (train_loader_x); subclasses implement forward_backward(batch)."""

    def run_epoch(self):
        self.set_model_mode("train")
        losses = MetricMeter()
        batch_time = AverageMeter()
        data_time = AverageMeter()
        self.num_batches = len(self.train_loader_x)
        print_freq = self.cfg.TRAIN.PRINT_FREQ
        end = time.time()
        distributed.sync_random_state()  # the ranks draw the same global batches whatever the model drew
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            data_time.update(time.time() - end)
            # distributed: this rank trains on its slice of the global batch (sync_gradients weighs it)
            batch, self.batch_share = distributed.local_batch(batch)
            self.gradients_synced = False
            loss_summary = distributed.average_summary(self.forward_backward(batch), self.batch_share)
            if distributed.is_distributed() and not self.gradients_synced:
                raise RuntimeError(f"{type(self).__name__}.forward_backward stepped without sync_gradients(): "
                                   f"call it between backward and the optimizer step (or use "
                                   f"model_backward_and_update), else the processes train apart")
            batch_time.update(time.time() - end)
            losses.update(loss_summary)
            if (self.batch_idx + 1) % print_freq == 0 or self.num_batches < print_freq:
                nb_remain = self.num_batches - self.batch_idx - 1 + (self.max_epoch - self.epoch - 1) * self.num_batches
                eta = str(datetime.timedelta(seconds=int(batch_time.avg * nb_remain)))
                print(" ".join([
                    f"epoch [{self.epoch + 1}/{self.max_epoch}]",
                    f"batch [{self.batch_idx + 1}/{self.num_batches}]",
                    f"time {batch_time.val:.3f} ({batch_time.avg:.3f})",
                    f"data {data_time.val:.3f} ({data_time.avg:.3f})",
                    f"{losses}",
                    f"lr {self.get_current_lr():.4e}",
                    f"eta {eta}",
                ]))
            n_iter = self.epoch * self.num_batches + self.batch_idx
            for name, meter in losses.meters.items():
                self.write_scalar("train/" + name, meter.avg, n_iter)
            self.write_scalar("train/lr", self.get_current_lr(), n_iter)
            end = time.time()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device, non_blocking=True), batch["label"].to(self.device, non_blocking=True), batch["domain"].to(self.device)
