"""What a run ran on and what it cost: the `env` and `cost` of its result record (mmpt.experiments.record).

    meter = CostMeter(trainer)      # right after build_trainer: times trainer.train / run_epoch / test
    trainer.train()
    record.run_result(..., env=environment(cfg, trainer), cost=meter.cost())

CostMeter wraps the trainer instance's own methods (the engine's loop is unchanged): the epochs this process
runs, the final test-split evaluation, and the whole of train(); train time = train() less that final test.
Peak memory: torch.cuda.max_memory_allocated on CUDA (the counter is reset when the meter starts), else the
process's peak resident set size (resource.getrusage, which cannot be reset: it covers the whole process).
"""
import platform
import sys
import time

import torch

from dassl.utils import distributed
from mmpt.experiments.record import STANDARD_TRACK


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment(cfg, trainer):
    """{torch, cuda, cudnn, device, precision, deterministic, backbone, world_size, python, track} of a run."""
    device = trainer.device
    precision = getattr(trainer, "precision", None)
    if precision is None:
        prec = "fp32"
    else:
        dtype = precision.dtype
        prec = f"{precision.prec} ({'fp32' if dtype is None else str(dtype).replace('torch.', '') + ' autocast'})"
    return {"torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": device_name(device), "precision": prec, "deterministic": bool(cfg.DETERMINISTIC),
            "backbone": cfg.MODEL.BACKBONE.NAME, "world_size": distributed.get_world_size(),
            "python": platform.python_version(), "track": str(getattr(type(trainer), "track", None) or STANDARD_TRACK)}


def trainable_parameters(trainer):
    """Parameters that require grad in the trainer's model (or, without a `model`, its registered models)."""
    model = getattr(trainer, "model", None)
    modules = [model] if isinstance(model, torch.nn.Module) else \
        [m for m in getattr(trainer, "_models", {}).values() if isinstance(m, torch.nn.Module)]
    params = {id(p): p for m in modules for p in m.parameters() if p.requires_grad}
    return int(sum(p.numel() for p in params.values()))


def peak_rss_mb():
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class CostMeter:
    """Times a trainer's training, epochs and final test; peak memory; trainable parameters (see the module)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cuda = trainer.device.type == "cuda"
        self.epoch_times, self.eval_time_s, self.train_call_s = [], None, None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(trainer.device)
        self._wrap("run_epoch", self._epoch_done)
        self._wrap("test", self._test_done)
        self._wrap("train", self._train_done)

    def _now(self):
        if self.cuda:
            torch.cuda.synchronize(self.trainer.device)
        return time.perf_counter()

    def _wrap(self, name, done):
        original = getattr(self.trainer, name)

        def timed(*args, **kwargs):
            start = self._now()
            try:
                return original(*args, **kwargs)
            finally:
                done(self._now() - start, *args, **kwargs)

        setattr(self.trainer, name, timed)

    def _epoch_done(self, seconds):
        self.epoch_times.append(seconds)

    def _test_done(self, seconds, split=None):
        if split in (None, "test"):  # validation passes during training count as training
            self.eval_time_s = seconds

    def _train_done(self, seconds):
        self.train_call_s = seconds

    def cost(self):
        """The record's `cost`: {trainable_params, train_time_s, epochs_timed, epoch_time_s, peak_memory_mb,
        peak_memory_kind, eval_time_s} (None where it was not measured: an evaluation has no train time)."""
        train_time = None
        if self.train_call_s is not None:
            train_time = self.train_call_s - (self.eval_time_s or 0.0)
        if self.cuda:
            peak, kind = torch.cuda.max_memory_allocated(self.trainer.device) / 2 ** 20, "cuda_max_allocated"
        else:
            peak, kind = peak_rss_mb(), "cpu_max_rss"
        return {"trainable_params": trainable_parameters(self.trainer), "train_time_s": train_time,
                "epochs_timed": len(self.epoch_times),
                "epoch_time_s": sum(self.epoch_times) / len(self.epoch_times) if self.epoch_times else None,
                "peak_memory_mb": round(peak, 1), "peak_memory_kind": kind, "eval_time_s": self.eval_time_s}
