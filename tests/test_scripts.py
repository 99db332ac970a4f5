"""scripts/<trainer>/*.sh: syntax, defaults, errors, and every protocol end to end on generated data (tiny CLIP)."""
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mmpt import run_folder
from mmpt.experiments import layout
from trainers.coop import coop_fewshot_config

REPO = Path(layout.REPO_ROOT)
SCRIPTS = REPO / "scripts"
PROTOCOL_SCRIPTS = {"base2new_train": "b2n", "base2new_test": "b2n", "few_shot": "fewshot", "xd_train": "xd",
                    "xd_test": "xd"}
TINY_OPTS = ("MODEL.BACKBONE.NAME random-tiny-ViT INPUT.SIZE '(32, 32)' OPTIM.MAX_EPOCH 1 DATALOADER.NUM_WORKERS 0 "
             "DATALOADER.TRAIN_X.BATCH_SIZE 2 DATALOADER.TEST.BATCH_SIZE 8 TRAIN.PRINT_FREQ 1 VERBOSE False "
             "TRAINER.MUDPT.PROMPT_DEPTH 2 TRAINER.MUDPT.INJECTION_WIDTH 32 TRAINER.MUDPT.INJECTION_HEADS 2")


def all_scripts():
    return sorted(SCRIPTS.glob("*/*.sh")) + [SCRIPTS / "common.sh", SCRIPTS / "run.sh"]


def run_script(path, *args, **env):
    full_env = dict(os.environ, PYTHON=sys.executable, **{k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", str(path), *map(str, args)], capture_output=True, text=True, env=full_env,
                          cwd=REPO)


def test_every_trainer_has_every_protocol_script_and_all_parse():
    folders = layout.trainer_folders()
    assert sorted(folders) == sorted(p.name for p in SCRIPTS.iterdir() if p.is_dir())  # no undeclared folder
    for folder, trainer in folders.items():
        names = {p.stem for p in (SCRIPTS / folder).glob("*.sh")}
        expected = set(PROTOCOL_SCRIPTS) if layout.method(trainer).trains else {"base2new_test", "xd_test"}
        if layout.method(trainer).transductive:  # stage 1 by teacher.sh; a target's student trains and tests there
            expected = {"teacher", "base2new_train", "base2new_test", "xd_train"}
        assert names == expected, folder
    for path in all_scripts():
        result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, (path, result.stderr)
        assert os.access(path, os.X_OK) or path.name == "common.sh", path


def test_scripts_name_their_trainer_and_every_default_config_exists():
    """Scripts only name the trainer: the default config per protocol comes from mmpt.experiments.layout (one source)."""
    for folder, trainer in layout.trainer_folders().items():
        for path in (SCRIPTS / folder).glob("*.sh"):
            text = path.read_text()
            assert f"TRAINER={trainer}\n" in text, path
            assert "DEFAULT_CFG" not in text, path
    for trainer, method in layout.declared_methods().items():
        for stage in ("base2new_train", "fewshot", "xd_train"):
            if layout.STAGES[stage][0] not in method.default_configs:  # e.g. PromptKD: no few-shot protocol
                continue
            for dataset, shots in (("caltech101", 1), ("imagenet", 16), ("dtd", 8)):
                cfg = layout.default_config(trainer, stage, dataset, shots)
                assert (REPO / "configs" / "trainers" / trainer / f"{cfg}.yaml").is_file(), (trainer, cfg)


@pytest.mark.parametrize("dataset,shots", [("caltech101", 1), ("dtd", 4), ("dtd", 16), ("imagenet", 16)])
def test_coop_few_shot_config_by_shots(tmp_path, dataset, shots):
    result = run_script(SCRIPTS / "coop" / "few_shot.sh", dataset, shots, 1, DATA=tmp_path, DRY_RUN=1,
                        OUTPUT=tmp_path / "out")
    assert result.returncode == 0, result.stderr
    expected = layout.build_job("fewshot", "CoOp", dataset, 1, shots, data_root=str(tmp_path),
                                output_root=str(tmp_path / "out"), python=sys.executable)
    assert f"/CoOp/{coop_fewshot_config(dataset, shots)}.yaml" in expected.shell()
    assert f"Running fewshot -> {expected.output_dir}" in result.stdout
    printed = result.stdout.split("+ ", 1)[1].strip()
    assert [a.strip("'") for a in printed.split("' '")] == expected.argv


def test_clear_errors(tmp_path):
    script = SCRIPTS / "mudpt" / "base2new_train.sh"
    env = {k: v for k, v in os.environ.items() if k != "DATA"}
    result = subprocess.run(["bash", str(script), "caltech101", "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "DATA is not set" in result.stderr
    result = run_script(script, "caltech101", DATA=tmp_path)
    assert result.returncode == 2 and "usage:" in result.stderr and "DATASET SEED" in result.stderr
    result = run_script(script, "no_such_dataset", 1, DATA=tmp_path, DRY_RUN=1)
    assert result.returncode == 2 and "no_such_dataset.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_generic_entry_point_runs_what_the_per_method_scripts_run(tmp_path):
    """scripts/run.sh TRAINER STEP ...: the same stages and commands as scripts/<folder>/STEP.sh (here CoOp's
    few-shot and ZeroshotCLIP's two-stage base-to-new test); a bad step or trainer is one line."""
    env = dict(DATA=tmp_path, DRY_RUN=1, OUTPUT=tmp_path / "out")
    for folder, trainer, step, args in (("coop", "CoOp", "few_shot", ("dtd", 4, 2)),
                                        ("zsclip", "ZeroshotCLIP", "base2new_test", ("caltech101", 1))):
        own = run_script(SCRIPTS / folder / f"{step}.sh", *args, **env)
        generic = run_script(SCRIPTS / "run.sh", trainer, step, *args, **env)
        assert own.returncode == generic.returncode == 0, own.stderr + generic.stderr
        assert generic.stdout == own.stdout and generic.stdout.count("Running ") == (2 if folder == "zsclip" else 1)
    bad = run_script(SCRIPTS / "run.sh", "CoOp", "fewshot", "dtd", 4, 1, DATA=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == ("scripts/run.sh: error: unknown step 'fewshot' (known: "
                                                          "base2new_train, base2new_test, few_shot, xd_train, xd_test)")
    short = run_script(SCRIPTS / "run.sh", "CoOp", "few_shot", "dtd", DATA=tmp_path)
    assert short.returncode == 2 and f"bash {SCRIPTS / 'run.sh'} CoOp few_shot DATASET SHOTS SEED" in short.stderr
    unknown = run_script(SCRIPTS / "run.sh", "Nope", "xd_train", 1, DATA=tmp_path)
    assert unknown.returncode == 2 and "unknown trainer 'Nope'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from mmpt.data.fixtures import make_dataset

    root = tmp_path_factory.mktemp("data")
    for name in ("Caltech101", "ImageNet", "ImageNetV2"):
        make_dataset(name, str(root), num_classes=4, images_per_class=4)
    return root


def run_twice(script, args, env, expected_dir, trains):
    """Run a script, check its run folder holds a result, run it again and check it skipped."""
    first = run_script(script, *args, **env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert layout.is_done(str(expected_dir), trains), expected_dir
    log = (expected_dir / "log.txt").read_text()
    assert "* accuracy:" in log and (("Finish training" in log) == trains)
    second = run_script(script, *args, **env)
    assert second.returncode == 0 and f"Skipping {expected_dir}" in second.stdout, second.stdout + second.stderr
    assert "Running" not in second.stdout
    return log


def test_protocols_end_to_end(data_root, tmp_path):
    out = tmp_path / "output"
    env = dict(DATA=data_root, OUTPUT=out, OPTS=TINY_OPTS)
    def tag(cfg):  # the run folder of a config with extra options (OPTS)
        return run_folder.run_tag(cfg, shlex.split(TINY_OPTS))

    cfg = tag(layout.default_config("MuDPT", "base2new_train", "caltech101", 16))
    tail = Path("caltech101", "shots_16", "MuDPT", cfg, "seed1")
    run_twice(SCRIPTS / "mudpt" / "base2new_train.sh", ["caltech101", 1], env, out / "base2new/train_base" / tail, True)
    log = run_twice(SCRIPTS / "mudpt" / "base2new_test.sh", ["caltech101", 1], env, out / "base2new/test_new" / tail,
                    False)
    assert "model.pth.tar-1" in log  # loaded the last epoch of OPTIM.MAX_EPOCH from OPTS
    cfg = tag(coop_fewshot_config("caltech101", 2))
    run_twice(SCRIPTS / "coop" / "few_shot.sh", ["caltech101", 2, 1], env,
              out / "fewshot/caltech101/shots_2/CoOp" / cfg / "seed1", True)
    cfg = tag(layout.default_config("CoOp", "xd_train", "imagenet", 16))
    run_twice(SCRIPTS / "coop" / "xd_train.sh", [1], env, out / "imagenet/CoOp" / f"{cfg}_16shots/seed1", True)
    run_twice(SCRIPTS / "coop" / "xd_test.sh", ["imagenetv2", 1], env,
              out / "evaluation/CoOp" / f"{cfg}_16shots/imagenetv2/seed1", False)
