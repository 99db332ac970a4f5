"""The experiment layout: one source of truth for output folders, default configs and train.py commands.

`scripts/common.sh` and `python -m mmpt.sweep` both build their runs here, so a script run and a sweep job
of the same (stage, trainer, config, dataset, shots, seed) are the same command writing the same folder:

    base2new/train_base/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>     train on the base half (+ test on base)
    base2new/test_new/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>       that model evaluated on the new half
    base2new/test_base/...                                              ZeroshotCLIP only (nothing to train)
    fewshot/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>                 train K shots, test on the full test set
    imagenet/<Trainer>/<cfg>_<K>shots/seed<S>                           cross-dataset / DG source (MaPLe's layout)
    evaluation/<Trainer>/<cfg>_<K>shots/<dataset>/seed<S>               that model on a target (ZeroshotCLIP: <cfg>)

A run with extra KEY VALUE options (OPTS, --opts) replaces <cfg> with `<cfg>__<KEY>=<value>,...`
(mmpt.run_folder.run_tag), so an ablation never lands in, skips because of, or resumes the default run's folder.
A run counts as done when its folder holds a finished result record (result.json, mmpt.experiments.record) and
its recorded config.yaml equals the requested config.

Shell use (what common.sh does; prints bash assignments RUN_DIR, RUN_DONE, RUN_CMD=(...)):

    python -m mmpt.experiments.layout plan --stage base2new_train --trainer MuDPT --cfg CFG --dataset caltech101 \
        --seed 1 --shots 16 --data DATA [--output output] [--python python] [--load-epoch E] \
        [--nproc N [--nnodes M --rdzv-endpoint HOST:PORT]] -- KEY VALUE ...

With --nproc N > 1 (or --nnodes M > 1) the command starts train.py through torchrun: N processes (one per GPU)
on this node, or on each of M nodes meeting at the rendezvous endpoint (docs/DISTRIBUTED.md).
"""
import argparse
import os
import os.path as osp
import shlex
import sys
from dataclasses import asdict, dataclass, field

from dassl.errors import ConfigError
from mmpt import run_folder
from mmpt.experiments import config as train_config
from mmpt.experiments import record

# the repository holding configs/ and train.py (mmpt runs from its checkout); build_job takes another repo_root
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# CoOp's config-file names of the datasets (configs/datasets/<name>.yaml)
DATASETS_11 = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
               "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
XD_TARGETS = DATASETS_11[1:]
DG_TARGETS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
SHOTS = [1, 2, 4, 8, 16]
SEEDS = [1, 2, 3]
SOURCE_DATASET = "imagenet"

ZERO_SHOT = "ZeroshotCLIP"  # the published tables' CLIP row


def declared_methods():
    """{trainer name: trainer class} of every declared method (the repository's and MMPT_TRAINER_MODULES'):
    imports the method package by name (mmpt.experiments.config.import_method_package)."""
    train_config.import_method_package()
    from mmpt.methods import declared_methods as declared

    return declared()


def method(trainer):
    """The declaration of `trainer` (a one-line error naming the declared ones otherwise)."""
    methods = declared_methods()
    if trainer not in methods:
        raise KeyError(f"mmpt.experiments.layout: unknown trainer '{trainer}' (known: {', '.join(methods)})")
    return methods[trainer]


def trainer_folders():
    """{scripts/<folder>: trainer name} of the methods that declare a scripts folder."""
    return {cls.scripts_folder: name for name, cls in declared_methods().items() if cls.scripts_folder}


STAGES = {
    # stage: (protocol of the methods' default_configs, trains?, subsample)
    "base2new_train": ("b2n", True, "base"),
    "base2new_test_new": ("b2n", False, "new"),
    "base2new_test_base": ("b2n", False, "base"),
    "fewshot": ("fewshot", True, "all"),
    "xd_train": ("xd", True, "all"),
    "xd_test": ("xd", False, "all"),
    # transductive methods (`transductive = True`, PromptKD): train on the unlabeled training images of every class
    # of the dataset (evaluated by base2new_test_base / _new) or of each cross-dataset target (tested in the run)
    "base2new_train_all": ("b2n", True, "all"),
    "xd_train_target": ("xd", True, "all"),
}
TRAIN_STAGE_OF = {"base2new_test_new": "base2new_train", "xd_test": "xd_train"}
TRANSDUCTIVE_TRAIN_STAGE = "base2new_train_all"  # the model a transductive method's base2new_test_* evaluates


def dataset_config_file(dataset, repo_root=REPO_ROOT):
    """The dataset yaml of `dataset`: a config name (configs/datasets/<name>.yaml) or the path of a yaml of
    one's own (an OwnDataset anywhere on disk, docs/DATASETS.md)."""
    if dataset.endswith((".yaml", ".yml")):
        return osp.abspath(osp.expanduser(dataset))
    return osp.join(repo_root, "configs", "datasets", f"{dataset}.yaml")


def dataset_name(dataset):
    """The name a dataset's runs and table columns go by: the config name, or the stem of a yaml path."""
    if dataset.endswith((".yaml", ".yml")):
        return osp.splitext(osp.basename(dataset))[0]
    return dataset


def default_config(trainer, stage, dataset, shots):
    """The method's declared default config for the stage's protocol."""
    return method(trainer).default_config(STAGES[stage][0], dataset, shots)


def dataset_opts(trainer, stage, dataset):
    """KEY VALUE options the method declares for this protocol and dataset (its `dataset_opts`, e.g. PromptSRC's
    few-shot GPA), placed ahead of the user's own options (which win)."""
    return method(trainer).dataset_options(STAGES[stage][0], dataset)


def run_dir(stage, trainer, cfg, dataset, seed, shots=16):
    """The run folder of one run, relative to the output root (also the job's id)."""
    tail = osp.join(dataset, f"shots_{shots}", trainer, cfg, f"seed{seed}")
    if stage == "base2new_train":
        return osp.join("base2new", "train_base", tail)
    if stage == "base2new_train_all":
        return osp.join("base2new", "train_all", tail)
    if stage in ("base2new_test_new", "base2new_test_base"):
        return osp.join("base2new", "test_" + STAGES[stage][2], tail)
    if stage == "fewshot":
        return osp.join("fewshot", tail)
    tag = f"{cfg}_{shots}shots" if method(trainer).trains else cfg
    if stage == "xd_train":
        return osp.join(SOURCE_DATASET, trainer, tag, f"seed{seed}")
    if stage in ("xd_test", "xd_train_target"):
        return osp.join("evaluation", trainer, tag, dataset, f"seed{seed}")
    raise KeyError(f"mmpt.experiments.layout: unknown stage '{stage}' (known: {', '.join(STAGES)})")


def is_training_stage(stage, trainer):
    return STAGES[stage][1] and method(trainer).trains


def is_done(output_dir, trains=None, argv=None):
    """True when the run folder holds a finished result record (result.json) and, given the run's command `argv`,
    the folder's recorded config.yaml equals the config that command asks for (else the run is not done: train.py
    then stops with one line naming the differing keys). A corrupt record: RunError naming the file. `trains` is
    kept for callers of the log-reading version (the record says what ran)."""
    if not osp.isdir(output_dir) or not record.is_finished(output_dir):
        return False
    recorded = run_folder.recorded_config(output_dir)
    if argv is None or recorded is None:
        return True
    requested = requested_config_text(argv)
    return requested is not None and not run_folder.config_differences(recorded, run_folder.config_values(requested))


def requested_config_text(argv):
    """The full config (yaml text) that a `python train.py ...` (or torchrun ... train.py ...) command line asks
    for; None when train.py would refuse it (a ConfigError: train.py then reports it in one line)."""
    start = next(i for i, arg in enumerate(argv) if osp.basename(str(arg)) == "train.py") + 1
    try:
        return train_config.config_from_argv([str(a) for a in argv[start:]]).dump()
    except ConfigError:
        return None


def config_max_epoch(config_file, opts=()):
    """OPTIM.MAX_EPOCH after the config file and the KEY VALUE opts (the epoch a test run loads); without either,
    the engine's default (dassl's defaults: one source)."""
    opts = list(opts)
    for i in range(len(opts) - 2, -1, -1):
        if opts[i] == "OPTIM.MAX_EPOCH":
            return int(opts[i + 1])
    import yaml

    if not osp.isfile(config_file):
        raise FileNotFoundError(f"mmpt.experiments.layout: config file not found: {config_file}")
    with open(config_file, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    try:
        return int(data["OPTIM"]["MAX_EPOCH"])
    except (KeyError, TypeError):
        return train_config.default_max_epoch()


def launch_command(python, nproc=1, nnodes=1, rdzv_endpoint="", rdzv_id="mmpt"):
    """The start of a train.py command line: `python`, or torchrun (`python -m torch.distributed.run`) with nproc
    processes per node, standalone on one node or meeting at rdzv_endpoint (HOST:PORT) across nnodes nodes."""
    for name, value in (("nproc", nproc), ("nnodes", nnodes)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"mmpt.experiments.layout: {name}={value!r}: expected an int >= 1")
    if nproc == 1 and nnodes == 1:
        return [python]
    command = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if nnodes == 1:
        return command + ["--standalone"]  # a free local port: several runs can share the node
    if not rdzv_endpoint:
        raise ValueError(f"mmpt.experiments.layout: {nnodes} nodes need a rendezvous endpoint HOST:PORT (a host "
                         f"every node reaches; RDZV_ENDPOINT for the scripts)")
    return command + ["--nnodes", str(nnodes), "--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint,
                      "--rdzv_id", rdzv_id]


@dataclass
class Job:
    """One train.py run. `id` is its folder relative to the output root."""

    id: str
    stage: str
    trainer: str
    cfg: str
    dataset: str
    seed: int
    shots: int
    output_dir: str
    argv: list
    trains: bool
    depends_on: list = field(default_factory=list)
    nproc: int = 1  # processes (GPUs) per node; > 1 or nnodes > 1: argv starts with torchrun
    nnodes: int = 1
    # the Jobs of other runs this one needs that a grid must hold too (PromptKD's teacher run); not a field:
    # the manifest records them as jobs of their own
    prerequisites = ()

    def to_dict(self):
        return asdict(self)

    def shell(self):
        return shlex.join(self.argv)


def build_job(stage, trainer, dataset, seed, shots=16, cfg=None, data_root="", output_root="output",
              opts=(), python="python", load_epoch=None, repo_root=REPO_ROOT, nproc=1, nnodes=1, rdzv_endpoint=""):
    """The Job (command line and folders) of one run; cfg=None takes the default config; nproc / nnodes /
    rdzv_endpoint: launch_command's."""
    if stage not in STAGES:
        raise KeyError(f"mmpt.experiments.layout: unknown stage '{stage}' (known: {', '.join(STAGES)})")
    dataset_file = dataset_config_file(dataset, repo_root)
    dataset_arg, dataset = dataset, dataset_name(dataset)
    cfg = cfg or default_config(trainer, stage, dataset, shots)
    seed, shots = int(seed), int(shots)
    trains = is_training_stage(stage, trainer)
    tag = run_folder.run_tag(cfg, opts)  # extra options: a folder of their own (CoOp's path without)
    rel = run_dir(stage, trainer, tag, dataset, seed, shots)
    output_dir = osp.join(output_root, rel)
    config_file = method(trainer).config_file(cfg, repo_root)
    for path in (config_file, dataset_file):
        if not osp.isfile(path):
            folder = osp.dirname(path)
            known = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if osp.isdir(folder) else []
            raise FileNotFoundError(f"mmpt.experiments.layout: no config file {path} (known: {', '.join(known)})")
    launcher = launch_command(python, nproc, nnodes, rdzv_endpoint, rdzv_id=rel.replace(os.sep, "."))
    argv = launcher + [osp.join(repo_root, "train.py"), "--root", data_root, "--seed", str(seed),
            "--trainer", trainer, "--dataset-config-file", dataset_file, "--config-file", config_file,
            "--output-dir", output_dir]
    depends_on = []
    if not trains:
        argv.append("--eval-only")
        if method(trainer).trains:
            if method(trainer).transductive and stage.startswith("base2new"):
                train_stage = TRANSDUCTIVE_TRAIN_STAGE
            else:
                train_stage = TRAIN_STAGE_OF[stage]
            model_rel = run_dir(train_stage, trainer, tag, dataset if stage != "xd_test" else SOURCE_DATASET,
                                seed, shots)
            epoch = load_epoch if load_epoch is not None else config_max_epoch(config_file, opts)
            argv += ["--model-dir", osp.join(output_root, model_rel), "--load-epoch", str(epoch)]
            depends_on.append(model_rel)
    subsample = STAGES[stage][2]
    if stage.startswith("base2new") or trains:
        argv += ["DATASET.NUM_SHOTS", str(shots)]
    if subsample != "all":
        argv += ["DATASET.SUBSAMPLE_CLASSES", subsample]
    argv += dataset_opts(trainer, stage, dataset)
    argv += [str(o) for o in opts]
    teacher = None
    if method(trainer).teacher_field:
        teacher = teacher_job(stage, trainer, dataset_arg, argv, data_root=data_root, output_root=output_root, opts=opts,
                              python=python, repo_root=repo_root, nproc=nproc, nnodes=nnodes,
                              rdzv_endpoint=rdzv_endpoint)
    if teacher is not None:  # the run reads the teacher's folder (not part of its own folder's name)
        argv += [f"TRAINER.{method(trainer).cfg_node}.{method(trainer).teacher_field}", teacher.output_dir]
        depends_on.append(teacher.id)
    job = Job(id=rel, stage=stage, trainer=trainer, cfg=cfg, dataset=dataset, seed=seed, shots=shots,
              output_dir=output_dir, argv=argv, trains=trains, depends_on=depends_on, nproc=nproc, nnodes=nnodes)
    job.prerequisites = [teacher] if teacher is not None else []
    return job


def teacher_job(stage, trainer, dataset, argv, opts=(), **build_args):
    """The stage-1 run a method with a teacher (`teacher_field`, `teacher_run`) is trained from: its declared
    trainer / config / seed, on the student's dataset (base-to-new) or the cross-dataset source, 16 shots, with
    the user's options except the student's own node. None when the command already names a teacher folder."""
    student = method(trainer)
    cfg = train_config.config_from_argv([str(a) for a in argv[argv.index(osp.join(build_args["repo_root"],
                                                                                "train.py")) + 1:]])
    node = cfg.TRAINER[student.cfg_node]
    if node[student.teacher_field]:
        return None
    teacher_trainer, teacher_cfg, teacher_seed = student.teacher_run(node)
    if STAGES[stage][0] == "xd":
        teacher_stage, teacher_dataset = "xd_train", SOURCE_DATASET
    else:
        teacher_stage, teacher_dataset = "base2new_train", dataset
    pairs = run_folder.option_pairs(opts)
    own = f"TRAINER.{student.cfg_node}."
    teacher_opts = [item for key, value in pairs.items() if not key.startswith(own) for item in (key, value)]
    return build_job(teacher_stage, teacher_trainer, teacher_dataset, teacher_seed, 16, cfg=teacher_cfg,
                     opts=teacher_opts, **build_args)


def check_trained(job, output_root):
    """An evaluation before its training (base2new_test.sh before base2new_train.sh): one line naming the
    training step to run first, instead of train.py's missing-model error."""
    model_dir = osp.join(output_root, job.depends_on[0])
    if run_folder.holds_results(model_dir):
        return
    train_stage = TRAIN_STAGE_OF[job.stage]
    step = train_stage if train_stage == "xd_train" else "base2new_train"
    args = [str(job.seed)] if train_stage == "xd_train" else [job.dataset, str(job.seed)]
    folder = method(job.trainer).scripts_folder
    script = f"scripts/{folder}/{step}.sh" if folder else f"scripts/run.sh {job.trainer} {step}"
    raise ConfigError(f"no trained model in {model_dir}: run the training first, e.g. `bash {script} "
                      f"{' '.join(args)}` with the same DATA, CFG, OUTPUT and options")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmpt.experiments.layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["plan"])
    parser.add_argument("--stage", required=True, choices=list(STAGES))
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--cfg", default="")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--shots", default=16, type=int)
    parser.add_argument("--data", default="")
    parser.add_argument("--output", default="output")
    parser.add_argument("--python", default="python")
    parser.add_argument("--load-epoch", default=None, type=int)
    parser.add_argument("--nproc", default=1, type=int, help="processes (GPUs) per node: > 1 launches torchrun")
    parser.add_argument("--nnodes", default=1, type=int, help="nodes (each runs the same command)")
    parser.add_argument("--rdzv-endpoint", default="", help="HOST:PORT the nodes meet at (--nnodes > 1)")
    parser.add_argument("--teacher", action="store_true", help="plan the stage-1 run (teacher) of this run instead")
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = argv[argv.index("--") + 1:] if "--" in argv else []  # KEY VALUE pairs for train.py
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        job = build_job(args.stage, args.trainer, args.dataset, args.seed, args.shots, cfg=args.cfg or None,
                        data_root=args.data, output_root=args.output, opts=opts, python=args.python,
                        load_epoch=args.load_epoch, nproc=args.nproc, nnodes=args.nnodes,
                        rdzv_endpoint=args.rdzv_endpoint)
        if args.teacher:
            if not job.prerequisites:
                raise ValueError(f"mmpt.experiments.layout: {args.trainer} trains from no teacher run here")
            job = job.prerequisites[0]
        done = is_done(job.output_dir, job.trains, job.argv)
        if not done and job.depends_on:
            check_trained(job, args.output)
    except (KeyError, FileNotFoundError, ValueError) as e:  # ConfigError / RunError included
        sys.exit(str(e).strip("'\""))
    print(f"RUN_DIR={shlex.quote(job.output_dir)}")
    print(f"RUN_DONE={int(done)}")
    print(f"RUN_CMD=({job.shell()})")


if __name__ == "__main__":
    main()
