"""A method declared outside the repository (one module plus one config file in a temporary folder, found through
MMPT_TRAINER_MODULES + PYTHONPATH) runs through train.py (train, then --eval-only), the generic scripts
(scripts/run.sh) and the sweep's dry run with no file of the repository touched; an internal error in it keeps its
traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpt.data.fixtures import make_dataset

REPO = Path(__file__).resolve().parents[1]

ARCHITECTURE = REPO / "docs" / "ARCHITECTURE.md"


def walkthrough(name):
    """The code block of docs/ARCHITECTURE.md's walk-through between <!-- walkthrough:NAME --> markers."""
    text = ARCHITECTURE.read_text()
    block = text.split(f"<!-- walkthrough:{name} -->\n", 1)[1].split(f"\n<!-- /walkthrough:{name} -->", 1)[0]
    return block.split("\n", 1)[1].rsplit("```", 1)[0]  # without the fence lines


# the documented method, plus a bug switched on by an environment variable (one context token fewer than the
# sentences' placeholders) for the traceback test
TOY_METHOD = walkthrough("method") + """

if os.environ.get("TOY_PLUGIN_BUG"):
    ToyPluginCLIP.compute_prompts = lambda self: Prompts(text=[self.prompt_learner.ctx[1:]],
                                                         vision=[self.prompt_learner.visual])
"""
TOY_CONFIG = walkthrough("config")

TINY = ["MODEL.BACKBONE.NAME", "random-tiny-ViT", "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "VERBOSE", "False"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """(folder holding toy_plugin.py and toy.yaml, environment that declares it, data root)."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "toy_plugin.py").write_text(TOY_METHOD)
    (folder / "toy.yaml").write_text(TOY_CONFIG)
    data = tmp_path_factory.mktemp("data")
    make_dataset("Caltech101", str(data), num_classes=3, images_per_class=4)
    env = dict(os.environ, MMPT_TRAINER_MODULES="toy_plugin",
               PYTHONPATH=os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]))
    return folder, env, data


def run(args, env):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def train_args(folder, data, output, *extra):
    return ["train.py", "--root", str(data), "--seed", "1", "--trainer", "ToyPlugin",
            "--dataset-config-file", "configs/datasets/caltech101.yaml", "--config-file", str(folder / "toy.yaml"),
            "--output-dir", str(output), *extra, *TINY]


def test_plugin_method_trains_evaluates_and_sweeps(plugin, tmp_path):
    folder, env, data = plugin
    status = run(["-c", "import subprocess; print(subprocess.run(['git', 'status', '--porcelain'], "
                  "capture_output=True, text=True).stdout)"], env)
    trained = run(train_args(folder, data, tmp_path / "train"), env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    log = (tmp_path / "train" / "log.txt").read_text()
    # N_CTX 3 from the config file: 3 x 64 text + 3 x 64 visual (random-tiny-ViT)
    assert "Trainable parameters: 384" in log and "Finish training" in log and "* accuracy:" in log
    # the declared extra term is logged in the epoch lines beside the cross-entropy and the weighted total
    epoch_line = next(line for line in log.splitlines() if line.startswith("epoch [1/1]"))
    assert "loss_ce" in epoch_line and "loss_anchor" in epoch_line, epoch_line

    evaluated = run(train_args(folder, data, tmp_path / "eval", "--eval-only", "--model-dir",
                               str(tmp_path / "train"), "--load-epoch", "1"), env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert "Loading weights to prompt_learner" in log and "* accuracy:" in log

    swept = run(["-m", "mmpt.sweep", "--trainers", "toyplugin", "--protocol", "base2new", "--datasets",
                 "caltech101", "--seeds", "1", "--dry-run", "--data", str(tmp_path), "--output",
                 str(tmp_path / "sweep")], env)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "base2new/train_base/caltech101/shots_16/ToyPlugin/toy/seed1" in swept.stdout
    assert f"--config-file {folder / 'toy.yaml'}" in swept.stdout and "2 jobs" in swept.stdout
    # nothing in the repository was written
    after = run(["-c", "import subprocess; print(subprocess.run(['git', 'status', '--porcelain'], "
                 "capture_output=True, text=True).stdout)"], env)
    assert after.stdout == status.stdout


def test_plugin_bug_keeps_its_traceback_and_a_bad_module_name_is_one_line(plugin, tmp_path):
    folder, env, data = plugin
    broken = run(train_args(folder, data, tmp_path / "bug"), dict(env, TOY_PLUGIN_BUG="1"))
    assert broken.returncode != 0
    # an internal invariant (the encoder's placeholder check), not a user mistake: the full traceback
    assert "Traceback" in broken.stderr
    assert "the shallow text prompt has 2 tokens, the class sentences 3 placeholder words" in broken.stderr
    missing = run(train_args(folder, data, tmp_path / "missing"), dict(env, MMPT_TRAINER_MODULES="no_such_plugin"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == \
        "train.py: error: MMPT_TRAINER_MODULES: cannot import 'no_such_plugin' (is its folder on PYTHONPATH?)"


def test_plugin_method_runs_through_the_generic_scripts_and_records_its_results(plugin, tmp_path):
    """scripts/run.sh (no scripts folder of its own): base-to-new train then test; each run folder gets its
    result record; the sweep's dry run then counts both done; the repository is left untouched."""
    import json

    from mmpt.experiments import record

    folder, env, data = plugin
    status = run(["-c", "import subprocess; print(subprocess.run(['git', 'status', '--porcelain'], "
                  "capture_output=True, text=True).stdout)"], env)
    out = tmp_path / "out"
    script_env = dict(env, DATA=str(data), OUTPUT=str(out), PYTHON=sys.executable,
                      OPTS=" ".join(f"'{value}'" for value in TINY))
    tail = Path("caltech101", "shots_16", "ToyPlugin", run_folder_tag(), "seed1")
    for step, stage_dir, trained in (("base2new_train", "train_base", True), ("base2new_test", "test_new", False)):
        done = subprocess.run(["bash", "scripts/run.sh", "ToyPlugin", step, "caltech101", "1"], cwd=REPO,
                              env=script_env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        run_dir = out / "base2new" / stage_dir / tail
        assert f"Running {step.replace('base2new_test', 'base2new_test_new')} -> {run_dir}" in done.stdout
        result = record.read_result(str(run_dir))
        assert (result.trainer, result.config, result.dataset, result.seed, result.trained) == \
            ("ToyPlugin", "toy", "Caltech101", 1, trained)
        assert result.subsample == ("base" if trained else "new") and result.epoch == 1 and result.finished
        assert f"* accuracy: {result.accuracy:.1f}%" in (run_dir / "log.txt").read_text()
        assert json.loads((run_dir / record.RESULT_FILE).read_text())["version"] == record.RECORD_VERSION
    assert "--model-dir" in done.stdout and result.model_dir.endswith(str(Path("train_base") / tail))

    swept = run(["-m", "mmpt.sweep", "--trainers", "ToyPlugin", "--protocol", "base2new", "--datasets",
                 "caltech101", "--seeds", "1", "--dry-run", "--data", str(tmp_path), "--output", str(out),
                 "--opts", *TINY], env)
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert swept.stdout.count("[done]") == 2 and "[todo]" not in swept.stdout
    after = run(["-c", "import subprocess; print(subprocess.run(['git', 'status', '--porcelain'], "
                 "capture_output=True, text=True).stdout)"], env)
    assert after.stdout == status.stdout


def run_folder_tag():
    from mmpt import run_folder

    return run_folder.run_tag("toy", TINY)
