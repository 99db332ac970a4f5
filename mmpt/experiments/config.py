"""train.py's command line and the config it builds: one function for train.py, the layout, the sweep and tests.

    cfg = config_from_argv(["--trainer", "CoOp", "--config-file", ..., "DATASET.NUM_SHOTS", "16"])

The methods are declared by importing the repository's method package (`trainers`, by module name) and the
modules named in MMPT_TRAINER_MODULES. mmpt does not edit sys.path to find it: it is importable the way the
commands run, from the repository root (`python train.py`, `python -m mmpt.sweep`: the current folder is on
sys.path) or with the repository on PYTHONPATH (scripts/common.sh and the sweep's jobs set it). Otherwise the
import fails with one line saying so.
"""
import argparse
import importlib
import os

from dassl.config import get_cfg_default
from dassl.errors import ConfigError

METHOD_PACKAGE = "trainers"  # the repository's method package: importing it declares every method


def import_method_package():
    """Import the method package (declaring every method, MMPT_TRAINER_MODULES' included); returns it."""
    try:  # (clip's pkg_resources warning is silenced where mmpt is imported: mmpt/__init__.py)
        return importlib.import_module(METHOD_PACKAGE)
    except ModuleNotFoundError as error:
        if error.name != METHOD_PACKAGE:
            raise  # the package exists but one of its own imports failed: keep the traceback
        raise ConfigError(f"cannot import the method package '{METHOD_PACKAGE}': run from the repository root "
                          f"or put the repository on PYTHONPATH") from None


def default_max_epoch():
    """The engine's default OPTIM.MAX_EPOCH (dassl/config/defaults.py: the one source)."""
    return int(get_cfg_default().OPTIM.MAX_EPOCH)


def reset_cfg(cfg, args):
    """Command-line arguments override the config files (CoOp's reset_cfg; `--seed 0` counts)."""
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head
    if getattr(args, "deterministic", False):
        cfg.DETERMINISTIC = True


def setup_cfg(args):
    """defaults -> methods' nodes -> dataset config -> method config -> arguments -> KEY VALUE opts; frozen.
    A bad file, key or value is a ConfigError (one line)."""
    methods = import_method_package()
    cfg = get_cfg_default()
    methods.extend_cfg(cfg)
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def check_inputs(cfg):
    """What a run is given, checked before anything is built, printed at length or written (train.py calls it
    first): the trainer's name and options, the backbone's name and, for real CLIP weights, their file (fetched
    into clip's cache when missing), the dataset's name and folder. A mistake is one ConfigError line, the last
    one the run prints; nothing is created."""
    from dassl.data.datasets.build import dataset_class
    from dassl.engine.build import trainer_class
    from mmpt.clip_backbone import check_backbone_name, find_clip_file, real_backbone_names

    trainer = trainer_class(cfg.TRAINER.NAME)
    cfg_node = getattr(trainer, "cfg_node", None)
    if cfg_node and cfg_node in cfg.TRAINER and hasattr(trainer, "config_from_node"):  # a prompt trainer
        trainer.config_from_node(cfg.TRAINER[cfg_node])  # the method's own value checks
        check_backbone_name(cfg.MODEL.BACKBONE.NAME)
        # real CLIP weights: the file MODEL.BACKBONE.PATH names, or clip's cache, downloaded there when missing
        # (one process of a distributed run must not download alongside the others: there the model loads them)
        single_process = int(os.environ.get("WORLD_SIZE", "1")) == 1
        if cfg.MODEL.BACKBONE.NAME in real_backbone_names() and (cfg.MODEL.BACKBONE.PATH or single_process):
            find_clip_file(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH)
    check_present = getattr(dataset_class(cfg.DATASET.NAME), "check_present", None)
    if check_present is not None:  # the dataset's folder (a loader that makes or finds its own: nothing)
        check_present(cfg)


class _ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, raise_errors=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.raise_errors = raise_errors

    def error(self, message):
        if self.raise_errors:  # in-process callers (the layout): a ConfigError, not an exit
            raise ConfigError(f"train.py: {message}")
        super().error(message)


def get_parser(raise_errors=False):
    """train.py's argument parser (CoOp's interface); raise_errors: a bad argument raises ConfigError instead of
    exiting (for callers that parse a command line they built)."""
    parser = _ArgumentParser(description="Train / evaluate a prompt-tuning trainer (CoOp interface)",
                             raise_errors=raise_errors)
    parser.add_argument("--root", type=str, default="", help="path to the datasets")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory to resume from "
                        "(default: OUTPUT_DIR itself)")
    parser.add_argument("--seed", type=int, default=None, help="only non-negative values fix the seed; -1: random")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to the method config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to the dataset config file")
    parser.add_argument("--trainer", type=str, default="", help="name of the trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of the CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of the head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load the model from this directory for eval-only")
    parser.add_argument("--load-epoch", type=int, help="load the weights of this epoch (default: the last epoch "
                        "found in --model-dir)")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--deterministic", action="store_true", help="deterministic kernels (sets DETERMINISTIC "
                        "True; mmpt/determinism.py says what it sets and costs)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command line (KEY VALUE pairs)")
    return parser


def config_from_argv(argv):
    """The frozen config of train.py's arguments `argv` (without `python train.py`); ConfigError when invalid."""
    return setup_cfg(get_parser(raise_errors=True).parse_args(list(argv)))
