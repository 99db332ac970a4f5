"""Train / evaluate a trainer (CoOp's train.py interface).

    python train.py --root DATA --seed 1 --trainer CoOp --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml --output-dir output/... DATASET.NUM_SHOTS 16

In-process: `train.main(train.get_parser().parse_args([...]))` returns the trainer (its `test_result` holds the
final accuracy when a test ran).

Several GPUs or nodes: `torchrun --nproc_per_node N train.py <the same arguments>` (docs/DISTRIBUTED.md).
"""
import argparse
import contextlib
import os
import os.path as osp
import sys

import torch

from dassl.config import ConfigKeyError, get_cfg_default
from dassl.engine import build_trainer
from dassl.utils import UnknownNameError, collect_env_info, distributed, set_random_seed, setup_logger

import datasets  # noqa: F401  (registers the datasets)
import trainers  # registers the trainers; trainers.extend_cfg adds their config nodes


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


class OutputDirInUseError(RuntimeError):
    """Another live process is running into the same OUTPUT_DIR."""


@contextlib.contextmanager
def exclusive_output_dir(output_dir):
    """Hold an advisory lock on OUTPUT_DIR for the whole run, so that a second run into the same folder (a sweep
    resubmitting a still-queued job, a script started twice) stops at once instead of interleaving checkpoints
    and logs. The OS drops the lock when the process dies, SIGKILL included, so a killed run never blocks its
    resume. Filesystems without flock run unlocked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(osp.join(output_dir, ".lock"), "a") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUseError(f"{output_dir} is in use by another running train.py (lock file "
                                      f"{osp.join(output_dir, '.lock')}); wait for it or use another --output-dir") from None
        except OSError:
            pass
        yield


def main(args):
    """Run training and/or evaluation; returns the trainer (trainer.test_result: the last test accuracy)."""
    cfg = setup_cfg(args)
    distributed.init_from_env(use_cuda=cfg.USE_CUDA)  # under torchrun / SLURM tasks; a plain run: no-op
    if not distributed.is_main_process():  # rank 0 holds the lock and writes the log; the others stay silent
        with distributed.quiet():
            return run(cfg, args)
    with exclusive_output_dir(cfg.OUTPUT_DIR):
        return run(cfg, args)


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


def _user_errors():
    """Exception types that mean bad input: printed as one line, without a traceback (set MMPT_TRACEBACK=1 to
    see it). ValueError is what every config-value check raises (a backbone name, PREC, a prompt depth, ...)."""
    errors = [ConfigKeyError, UnknownNameError, FileNotFoundError, ValueError, OutputDirInUseError]
    try:
        from mmpt.clip_backbone import BackboneNotFoundError
        errors.append(BackboneNotFoundError)
    except ImportError:
        pass
    return tuple(errors)


if __name__ == "__main__":
    try:
        main(get_parser().parse_args())
    except _user_errors() as e:
        if os.environ.get("MMPT_TRACEBACK"):
            raise
        sys.exit(f"train.py: error: {e}")
