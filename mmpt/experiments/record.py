"""A finished run's result record: `result.json` in its run folder (one typed value, written atomically).

train.py writes it when a run has tested its model: a training run after `Finish training` and its final test,
an `--eval-only` run after its test (into its own output folder). The scripts, the sweep and the results tables
read it to decide whether a run is done and to get its numbers; nobody matches log text for that (the logs keep
their format for researchers' own parsers: parse_test_res.py, mmpt.experiments.logs).

    {"version": 1, "trainer": "CoOp", "config": "vit_b16_ep50", "dataset": "Caltech101", "seed": 1,
     "shots": 16, "subsample": "base", "split": "test", "accuracy": 93.1, "error_rate": 6.9,
     "macro_f1": 92.7, "metrics": {...every value the evaluator returned...}, "epoch": 50, "trained": true,
     "model_dir": "", "finished": true,
     "env": {"torch": "2.4.1", "cuda": "12.1", "cudnn": 90100, "device": "NVIDIA A100-SXM4-40GB",
             "precision": "amp (bf16 autocast)", "deterministic": false, "backbone": "ViT-B/16", "world_size": 1},
     "cost": {"trainable_params": 8192, "train_time_s": 312.4, "epochs_timed": 50, "epoch_time_s": 6.2,
              "peak_memory_mb": 3021.5, "peak_memory_kind": "cuda_max_allocated", "eval_time_s": 21.7},
     "extra": {}}

`env` and `cost` (mmpt.experiments.run_cost) say what the run ran on and what it cost: train_time_s is the wall
time of trainer.train() less its final test (epochs, validation, checkpoints), epoch_time_s the mean wall time
of the epochs this process ran (a resumed run times only its own), eval_time_s the final test's wall time, and
peak memory CUDA's peak allocated memory, or the process's peak RSS on the CPU (getrusage: for the whole process,
so in-process callers that run several runs see the largest so far). An evaluation records no train time.

Adding a field: give it a default in RunResult (an older record then reads with that default) and keep
RECORD_VERSION unless a field changes meaning. A record holding fields this code does not know reads with them
in `extra`, so a newer writer does not break an older reader. A corrupt or truncated record is refused with one
line naming the file (RunError). This module does not import torch.
"""
import json
import os.path as osp
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Optional

from dassl.errors import RunError

RESULT_FILE = "result.json"
RECORD_VERSION = 1
# env.track of a method that declares no `track` attribute; tables keep other tracks (a method's declared
# `track`, e.g. "transductive") in tables of their own, never beside published numbers
STANDARD_TRACK = "standard"


@dataclass
class RunResult:
    """What one finished run computed, and of which run."""

    trainer: str  # TRAINER.NAME
    config: str  # the method config's name (its file name without .yaml)
    dataset: str  # DATASET.NAME
    seed: int
    shots: int  # DATASET.NUM_SHOTS
    subsample: str  # DATASET.SUBSAMPLE_CLASSES: all / base / new
    split: str  # the evaluated split (TEST.SPLIT)
    accuracy: float  # percent, as `* accuracy:` prints it (unrounded)
    error_rate: float
    macro_f1: float
    metrics: dict = field(default_factory=dict)  # every value the evaluator returned ({name: float})
    epoch: Optional[int] = None  # epoch (1-based) of the evaluated model's checkpoint; None: not loaded/trained
    trained: bool = False  # True: this run trained the model; False: an evaluation (--eval-only)
    model_dir: str = ""  # --model-dir of an evaluation
    finished: bool = True
    env: dict = field(default_factory=dict)  # versions, device, precision, deterministic (run_cost.environment)
    cost: dict = field(default_factory=dict)  # params, times, peak memory (run_cost.CostMeter); {}: not measured
    extra: dict = field(default_factory=dict)  # fields of a newer writer that this code does not know
    version: int = RECORD_VERSION

    def to_dict(self):
        return asdict(self)


def result_path(run_dir):
    return osp.join(run_dir, RESULT_FILE)


def write_result(run_dir, result):
    """Write run_dir/result.json atomically (temp file + os.replace: a reader never sees half a record)."""
    from dassl.utils import atomic_write  # torch: only the writer (train.py) needs it

    text = json.dumps(result.to_dict(), indent=1) + "\n"
    atomic_write(result_path(run_dir), lambda f: f.write(text.encode("utf-8")))
    return result_path(run_dir)


def read_result(run_dir):
    """The RunResult of run_dir, or None when it has no record; RunError (one line naming the file) when the
    record is not a readable record."""
    path = result_path(run_dir)
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: not a readable result record ({type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}); delete it and run the run again") \
            from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: not a result record (a JSON object expected); delete it and run the run again")
    if data.get("version") != RECORD_VERSION:
        raise RunError(f"{path}: result record version {data.get('version')!r}, this code reads version "
                       f"{RECORD_VERSION}; rerun the run or update the code")
    known = {f.name for f in fields(RunResult)}
    missing = [f.name for f in fields(RunResult)
               if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise RunError(f"{path}: result record without {', '.join(missing)}; delete it and run the run again")
    extra = dict(data.get("extra") or {})
    extra.update({k: v for k, v in data.items() if k not in known})
    values = {k: v for k, v in data.items() if k in known and k != "extra"}
    return RunResult(**values, extra=extra)


def is_finished(run_dir):
    """True when run_dir holds a finished run's record (RunError for a corrupt one)."""
    result = read_result(run_dir)
    return result is not None and result.finished


def run_result(cfg, config_file, metrics, epoch, trained, model_dir="", env=None, cost=None):
    """The RunResult of a run of config `cfg` (built from `config_file`) whose evaluator returned `metrics`;
    env / cost: mmpt.experiments.run_cost's."""
    metrics = {name: float(value) for name, value in metrics.items()}
    config = osp.splitext(osp.basename(config_file or ""))[0]
    return RunResult(trainer=cfg.TRAINER.NAME, config=config, dataset=cfg.DATASET.NAME, seed=int(cfg.SEED),
                     shots=int(cfg.DATASET.NUM_SHOTS), subsample=cfg.DATASET.SUBSAMPLE_CLASSES, split=cfg.TEST.SPLIT,
                     accuracy=metrics.get("accuracy", float("nan")), error_rate=metrics.get("error_rate", float("nan")),
                     macro_f1=metrics.get("macro_f1", float("nan")), metrics=metrics,
                     epoch=None if epoch is None else int(epoch), trained=bool(trained), model_dir=model_dir or "",
                     env=dict(env or {}), cost=dict(cost or {}))
