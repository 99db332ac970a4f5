"""Train / evaluate a trainer (CoOp's train.py interface).

    python train.py --root DATA --seed 1 --trainer CoOp --dataset-config-file configs/datasets/caltech101.yaml \
        --config-file configs/trainers/CoOp/vit_b16.yaml --output-dir output/... DATASET.NUM_SHOTS 16

In-process: `train.main(train.get_parser().parse_args([...]))` returns the trainer (its `test_result` holds the
final accuracy when a test ran).

Several GPUs or nodes: `torchrun --nproc_per_node N train.py <the same arguments>` (docs/DISTRIBUTED.md).
"""
import os
import signal
import sys

from dassl.config import ConfigError
from dassl.engine import build_trainer
from dassl.utils import (
    collect_env_info, distributed, remove_temp_files, set_random_seed, setup_logger,
)
from mmpt.data.image_check import check_run_images
from mmpt.determinism import set_backend_flags
from mmpt.experiments.config import (  # noqa: F401  (train.setup_cfg for callers)
    check_inputs, get_parser, reset_cfg, setup_cfg,
)
from mmpt.experiments.record import run_result, write_result
from mmpt.experiments.run_cost import CostMeter, environment
from mmpt.run_folder import (  # noqa: F401  (OutputDirInUseError: train.OutputDirInUseError for callers)
    OutputDirInUseError, RunInterrupted, check_config, interrupt_on_stop_signals, locked_output_dir, record_config,
    remove_refused_run_folder, stop_signal_received,
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


def main(args):
    """Run training and/or evaluation; returns the trainer (trainer.test_result: the last test accuracy)."""
    cfg = setup_cfg(args)
    check_inputs(cfg)  # a mistake stops here: nothing built, printed at length or written
    distributed.init_from_env(use_cuda=cfg.USE_CUDA)  # under torchrun / SLURM tasks; a plain run: no-op
    if not distributed.is_main_process():  # rank 0 locks, checks and records the folder, writes the log
        with distributed.quiet():
            return run(cfg, args)
    new_folder = not os.path.exists(cfg.OUTPUT_DIR)
    try:
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
    except ConfigError as error:
        if new_folder and not isinstance(error, RunInterrupted):
            remove_refused_run_folder(cfg.OUTPUT_DIR)  # its error line says it all; a rerun starts clean
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
    restore_backend_flags = set_backend_flags(cfg)  # cudnn autotuning, or deterministic mode
    try:
        print_args(args, cfg)
        if cfg.VERBOSE:
            print("Collecting env info ...")
            print(f"** System info **\n{collect_env_info()}\n")
        trainer = build_trainer(cfg)
        trainer.cost_meter = CostMeter(trainer)  # the result record's cost
        learns = any(trainer._optims[name] is not None for name in trainer.get_model_names())
        if args.eval_only and not args.model_dir and learns:
            print(f"WARNING: --eval-only without --model-dir: {cfg.TRAINER.NAME}'s learned parts are evaluated "
                  f"untrained (their initial values); pass --model-dir <the training run's output folder>")
        check_run_images(cfg, trainer.dm.dataset, trains=not (args.eval_only or args.no_train))
        if args.eval_only:
            trainer.load_model(args.model_dir, epoch=args.load_epoch)
            trainer.test_result = trainer.test()
            record_result(cfg, args, trainer, trained=False)
            return trainer
        if not args.no_train:
            trainer.train()
            if getattr(trainer, "test_result", None) is not None:  # TEST.NO_TEST: nothing was tested, nothing to record
                record_result(cfg, args, trainer, trained=True)
        return trainer
    finally:
        restore_backend_flags()
        sys.stdout.flush()
        setup_logger(None)  # stop teeing into this run's log.txt (in-process callers run several)


def record_result(cfg, args, trainer, trained):
    """The run folder's result.json (mmpt.experiments.record): what the scripts, the sweep and the results tables
    read. Written after the test, so a record means a finished run."""
    if not distributed.is_main_process():
        return
    epoch = trainer.loaded_epoch if not trained or cfg.TEST.FINAL_MODEL == "best_val" else trainer.max_epoch
    write_result(cfg.OUTPUT_DIR, run_result(cfg, args.config_file, trainer.test_metrics, epoch, trained,
                                            args.model_dir if not trained else "", env=environment(cfg, trainer),
                                            cost=trainer.cost_meter.cost()))


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
