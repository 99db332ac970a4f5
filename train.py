"""Train / evaluate a trainer (CoOp's train.py interface).

    python train.py --root DATA --seed 1 --trainer CoOp --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml --output-dir output/... DATASET.NUM_SHOTS 16

In-process: `train.main(train.get_parser().parse_args([...]))` returns the trainer (its `test_result` holds the
final accuracy when a test ran).

Several GPUs or nodes: `torchrun --nproc_per_node N train.py <the same arguments>` (docs/DISTRIBUTED.md).
"""
import argparse
import os
import signal
import sys

import torch

from dassl.config import ConfigError, get_cfg_default
from dassl.engine import build_trainer
from dassl.utils import (
    collect_env_info, distributed, remove_temp_files, set_random_seed, setup_logger,
)
from mmpt.data.image_check import check_run_images
from mmpt.run_folder import (  # noqa: F401  (OutputDirInUseError: train.OutputDirInUseError for callers)
    OutputDirInUseError, RunInterrupted, check_config, interrupt_on_stop_signals, locked_output_dir, record_config,
    stop_signal_received,
)

import datasets  # noqa: F401  (registers the datasets)


def print_args(args, cfg):
    print("***************")
    print("** Arguments **")
    print("***************")
    for key in sorted(args.__dict__):
        print(f"{key}: {args.__dict__[key]}")
    print("************")
    print("** Config **")
    print("************")
    print(cfg)


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


def setup_cfg(args):
    """defaults -> trainers' nodes -> dataset config -> method config -> arguments -> KEY VALUE opts; frozen."""
    import trainers  # declares every method (and MMPT_TRAINER_MODULES'); imported here, where a bad module name
                     # is a ConfigError that main's caller prints as one line
    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    if args.dataset_config_file:
        cfg.merge_from_file(args.dataset_config_file)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    reset_cfg(cfg, args)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    return cfg


def main(args):
    """Run training and/or evaluation; returns the trainer (trainer.test_result: the last test accuracy)."""
    cfg = setup_cfg(args)
    distributed.init_from_env(use_cuda=cfg.USE_CUDA)  # under torchrun / SLURM tasks; a plain run: no-op
    if not distributed.is_main_process():  # rank 0 locks, checks and records the folder, writes the log
        with distributed.quiet():
            return run(cfg, args)
    with locked_output_dir(cfg.OUTPUT_DIR):
        try:
            prepare_run_folder(cfg)
            return run(cfg, args)
        except BaseException as error:
            # Ctrl-C, SIGTERM, and whatever else broke because of them (a DataLoader worker killed by the same
            # signal): one line that says how to resume
            if isinstance(error, KeyboardInterrupt) or stop_signal_received():
                raise RunInterrupted(cfg.OUTPUT_DIR, stop_signal_received() or signal.SIGINT) from None
            raise


def prepare_run_folder(cfg):
    """Under the folder's lock: drop the temp files of writes killed mid-way, check that the folder (and RESUME)
    holds no checkpoint or result of another config, record this run's config.yaml."""
    remove_temp_files(cfg.OUTPUT_DIR)
    cfg_text = cfg.dump()
    for folder in dict.fromkeys(f for f in (cfg.OUTPUT_DIR, cfg.RESUME) if f):
        check_config(folder, cfg_text)
    record_config(cfg.OUTPUT_DIR, cfg_text)


def run(cfg, args):
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    setup_logger(cfg.OUTPUT_DIR if distributed.is_main_process() else None)
    try:
        if torch.cuda.is_available() and cfg.USE_CUDA:
            torch.backends.cudnn.benchmark = True
        print_args(args, cfg)
        if cfg.VERBOSE:
            print("Collecting env info ...")
            print(f"** System info **\n{collect_env_info()}\n")
        trainer = build_trainer(cfg)
        learns = any(trainer._optims[name] is not None for name in trainer.get_model_names())
        if args.eval_only and not args.model_dir and learns:
            print(f"WARNING: --eval-only without --model-dir: {cfg.TRAINER.NAME}'s learned parts are evaluated "
                  f"untrained (their initial values); pass --model-dir <the training run's output folder>")
        check_run_images(cfg, trainer.dm.dataset, trains=not (args.eval_only or args.no_train))
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test_result = trainer.test()
            return trainer
        if not args.no_train:
            trainer.train()
        return trainer
    finally:
        sys.stdout.flush()
        setup_logger(None)  # stop teeing into this run's log.txt (in-process callers run several)


def get_parser():
    parser = argparse.ArgumentParser(description="Train / evaluate a prompt-tuning trainer (CoOp interface)")
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
    parser.add_argument("--load-epoch", type=int, help="load the weights of this epoch (default: model-best)")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="modify config options using the command line (KEY VALUE pairs)")
    return parser


def cli(argv=None):
    """The command line: a user mistake (ConfigError, RunError included) and an interruption end with one
    `train.py: error: ...` line on stderr and a non-zero exit status (128 + the signal number for SIGINT /
    SIGTERM); MMPT_TRACEBACK=1 shows the traceback. Any other exception is a bug and keeps its traceback."""
    with interrupt_on_stop_signals():
        try:
            main(get_parser().parse_args(argv))
        except ConfigError as e:
            if os.environ.get("MMPT_TRACEBACK"):
                raise
            print(f"train.py: error: {e}", file=sys.stderr)
            sys.exit(128 + e.signum if isinstance(e, RunInterrupted) else 1)


if __name__ == "__main__":
    cli()
