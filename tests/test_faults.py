"""Faults and first-hour mistakes (issue 25): each ends in one line naming the file, key or folder and what to do,
a non-zero exit, nothing lost; a rebuildable cache is rebuilt. docs/TROUBLESHOOTING.md lists every case.

One trained toy run (module fixture `trained_run`, 2 epochs, both epoch files kept) serves the cases that need a
run folder; the others are unit-level.
"""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import train
from dassl.errors import ConfigError, MissingFileError, RunError
from dassl.utils import atomic_torch_save, capped_worker_count, load_checkpoint, read_image
from dassl.utils.registry import closest_name_hint
from mmpt import run_folder
from mmpt.experiments import config as train_config
from mmpt.experiments import layout, logs, record, sweep
from tests.e2e import make_fixture_dataset, run_train

REPO = Path(__file__).resolve().parent.parent
COOP = "configs/trainers/CoOp/vit_b16_ep50.yaml"
RUN_OPTS = ("TRAIN.CHECKPOINT_FREQ", "1", "DATASET.NUM_SHOTS", "2")  # the shared run: both epochs kept, a shot cache


def train_argv(root, output_dir, *extra, trainer="CoOp", config=COOP, dataset="Caltech101"):
    return ["--root", str(root), "--seed", "1", "--trainer", trainer, "--config-file", str(config),
            "--output-dir", str(output_dir), "DATASET.NAME", dataset, "MODEL.BACKBONE.NAME", "random-tiny-ViT",
            "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "VERBOSE", "False", *extra]


def one_error_line(capsys, argv):
    """train.py's command line in-process: (the exit status, stdout, stderr's lines)."""
    with pytest.raises(SystemExit) as exit_info:
        train.cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err.strip().splitlines()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    output_dir, _ = run_train(tmp, "CoOp", COOP, opts=RUN_OPTS)
    return tmp, output_dir


# ----------------------------------------------------------------------------- mistakes caught before anything
def test_mistakes_stop_before_anything_is_built_printed_or_written(tmp_path, capsys):
    root = make_fixture_dataset(tmp_path / "data", "Caltech101")
    cases = {
        ("--trainer", "mudpt"): "Unknown trainer 'mudpt' (TRAINER.NAME / --trainer). Did you mean 'MuDPT'?",
        ("TRAINER.MUDPT.INJECTION", "linaer"): "TRAINER.MUDPT.INJECTION='linaer': expected one of",
        ("MODEL.BACKBONE.NAME", "ViT-B/17"): "MODEL.BACKBONE.NAME='ViT-B/17' is not a CLIP backbone",
        ("MODEL.BACKBONE.NAME", "ViT-B/16", "MODEL.BACKBONE.PATH", str(tmp_path / "ViT-B-16.pt")):
            f"MODEL.BACKBONE.PATH: no CLIP checkpoint for ViT-B/16 at {tmp_path / 'ViT-B-16.pt'}",
        ("DATASET.NAME", "OxfordPets"): f"OxfordPets: dataset folder not found: {root / 'oxford_pets'}",
    }
    for extra, expected in cases.items():
        out_dir = tmp_path / "out"
        argv = train_argv(root, out_dir, trainer="MuDPT", config="configs/trainers/MuDPT/toy_demo.yaml")
        if extra[0] == "--trainer":
            argv[argv.index("--trainer") + 1] = extra[1]
        else:
            argv += list(extra)
        status, out, err = one_error_line(capsys, argv)
        assert status == 1 and len(err) == 1 and err[0].startswith(f"train.py: error: {expected}"), err
        assert out == "", out[:300]  # no config dump, no "Loading dataset"
        assert not out_dir.exists()  # no folder, no log, no config.yaml, no lock
    # the missing-dataset line points at a section that exists
    assert "(see docs/DATASETS.md, section Preparing the data)" in err[0]
    assert "\n### Preparing the data\n" in (REPO / "docs" / "DATASETS.md").read_text()


def test_a_mistake_found_while_building_leaves_no_folder_and_says_what_to_do(tmp_path, capsys):
    root = make_fixture_dataset(tmp_path / "data", "Caltech101")
    out_dir = tmp_path / "out"
    status, _, err = one_error_line(capsys, train_argv(root, out_dir, "TRAINER.MUDPT.PROMPT_DEPTH", "12",
                                                       trainer="MuDPT", config="configs/trainers/MuDPT/toy_demo.yaml"))
    assert status == 1 and err[-1].startswith("train.py: error: TRAINER.MUDPT.PROMPT_DEPTH=12: expected an int in "
                                              "1..2 (the backbone's number of layers): set it to 2 or less, "
                                              "or use a config made for this backbone")
    assert "CFG=toy_demo" in err[-1]
    assert not out_dir.exists()  # refused before its first checkpoint: the folder it created is gone


def test_unknown_names_and_keys_suggest_ignoring_case_with_one_wording():
    assert closest_name_hint("mudpt", ["PromptSRC", "MuDPT", "MaPLe"]) == " Did you mean 'MuDPT'?"
    with pytest.raises(ValueError, match=r"unknown trainer 'mudptt' \(--trainers\). Did you mean 'MuDPT'\?"):
        sweep.resolve_trainer("mudptt")
    with pytest.raises(ConfigError) as from_list:
        train_config.config_from_argv(["--trainer", "CoOp", "OPTIM.MAX_EPOCHS", "3"])
    assert str(from_list.value) == ("Non-existent config key: OPTIM.MAX_EPOCHS (in command-line option "
                                    "'OPTIM.MAX_EPOCHS 3'); did you mean OPTIM.MAX_EPOCH?")


def test_unknown_key_in_a_file_reads_as_on_the_command_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("OPTIM:\n  MAX_EPOCHS: 3\n")
    with pytest.raises(ConfigError) as from_file:
        train_config.config_from_argv(["--trainer", "CoOp", "--config-file", str(bad)])
    assert str(from_file.value) == (f"Non-existent config key: OPTIM.MAX_EPOCHS (in config file {bad}); "
                                    f"did you mean OPTIM.MAX_EPOCH?")


def test_command_line_mistake_is_the_only_line_and_clip_does_not_warn(tmp_path):
    """A fresh process (clip's pkg_resources warning is printed on its first import)."""
    proc = subprocess.run([sys.executable, "train.py", "--trainer", "mudpt", "--output-dir", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="default"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line, no warning
    assert "Did you mean 'MuDPT'?" in proc.stderr and proc.stdout == ""


# ----------------------------------------------------------------------------- faults while running
def mount_tiny_filesystem(folder):
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def test_disk_full_while_writing_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    import torch

    tiny = tmp_path / "tiny"
    mounted = mount_tiny_filesystem(tiny)
    if not mounted:  # no permission to mount: the write fails as it would there
        real_fsync = os.fsync

        def full_disk_fsync(fd):
            if os.fstat(fd).st_size > 64 * 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", full_disk_fsync)
    try:
        path = tiny / "model.pth.tar-1"
        atomic_torch_save({"epoch": 1, "w": torch.ones(10)}, str(path))
        with pytest.raises(RunError) as error:
            atomic_torch_save({"epoch": 2, "w": torch.zeros(100_000)}, str(path))
        assert str(error.value).startswith(f"no space left on device writing {path}: free space")
        assert "the previous file is kept" in str(error.value) and "\n" not in str(error.value)
        assert sorted(os.listdir(tiny)) == ["model.pth.tar-1"]  # no temp file left
        assert torch.equal(load_checkpoint(str(path))["w"], torch.ones(10))  # the previous checkpoint intact
    finally:
        if mounted:
            subprocess.run(["umount", str(tiny)], check=True)


def test_non_finite_loss_names_epoch_batch_and_terms_and_writes_nothing(tmp_path, capsys):
    root = make_fixture_dataset(tmp_path / "data", "Caltech101")
    out_dir = tmp_path / "out"
    argv = train_argv(root, out_dir, "OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "1e38",
                      trainer="KgCoOp", config="configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml")
    status, out, err = one_error_line(capsys, argv)
    assert status == 1, err  # (above it on stderr: the image check's progress bar)
    assert err[-1].startswith("train.py: error: non-finite loss at epoch 2, batch 2: loss=nan, loss_ce=nan, "
                             "loss_kg=nan; training stopped before this step"), err
    # the epoch before the NaN is kept (resumable); nothing of the NaN state was written
    assert sorted(os.listdir(out_dir / "prompt_learner")) == ["checkpoint", "model.pth.tar-1"]
    assert not (out_dir / record.RESULT_FILE).exists() and "* accuracy" not in out


def test_resume_evaluation_and_records_of_a_trained_run(trained_run, tmp_path):
    tmp, run_dir = trained_run
    assert sorted(os.listdir(run_dir / "prompt_learner")) == ["checkpoint", "model.pth.tar-1", "model.pth.tar-2"]
    requested = (run_dir / "config.yaml").read_text()

    # options that change no result neither refuse a resume nor split the folder; others do
    changed = yaml.safe_load(requested)
    changed["DATALOADER"]["NUM_WORKERS"], changed["TRAIN"]["PRINT_FREQ"] = 3, 7
    run_folder.check_config(str(run_dir), yaml.safe_dump(changed))
    changed["OPTIM"]["LR"] = 0.5
    with pytest.raises(RunError, match=r"OPTIM.LR 0.002 -> 0.5"):
        run_folder.check_config(str(run_dir), yaml.safe_dump(changed))
    assert run_folder.run_tag("c", ["DATALOADER.NUM_WORKERS", "0", "TRAIN.PRINT_FREQ", "5"]) == "c"
    assert run_folder.run_tag("c", ["MODEL.BACKBONE.NAME", "toy-ViT", "TRAINER.MUDPT.INJECTION", "linear"]) == \
        "c__BACKBONE.NAME=toy-ViT,INJECTION=linear"

    # a config.yaml that no longer parses: one line naming it (the record cannot be rebuilt)
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "config.yaml").write_text("OPTIM: [LR: 0.002\n")
    with pytest.raises(RunError, match=rf"^{broken / 'config.yaml'} does not parse as a config \(ParserError"):
        run_folder.check_config(str(broken), requested)

    # --eval-only without --load-epoch loads the last epoch found; a cut few-shot cache is rebuilt, the same
    cache = next((tmp / "data").glob("caltech-101/split_fewshot/shot_*.pkl"))
    shots = pickle.loads(cache.read_bytes())
    cache.write_bytes(cache.read_bytes()[:40])
    with pytest.warns(UserWarning, match=rf"few-shot cache {cache} does not unpickle .*: sampling the shots again"):
        _, log, evaluated = run_train(tmp, "CoOp", COOP, eval_only=True, model_dir=run_dir, return_trainer=True,
                                     opts=RUN_OPTS)
    assert evaluated.loaded_epoch == 2
    assert f"No --load-epoch given: loading the last epoch found, 2 (epochs in {run_dir / 'prompt_learner'}: 1, 2)" \
        in log
    rebuilt = pickle.loads(cache.read_bytes())  # sampled again: 2 shots of every class, as the cut file held

    def shots_per_class(data):
        return sorted((label, sum(d.label == label for d in data)) for label in {d.label for d in data})

    assert shots_per_class(rebuilt["train"]) == shots_per_class(shots["train"]) and len(rebuilt["val"]) == \
        len(shots["val"])
    with pytest.raises(MissingFileError, match=r"the epochs saved in .*prompt_learner are 1, 2 \(pass one as "
                                               r"--load-epoch"):
        run_train(tmp, "CoOp", COOP, eval_only=True, model_dir=run_dir, load_epoch=7, output_dir=tmp_path / "e7",
                  opts=RUN_OPTS)

    # a pointer naming a deleted checkpoint: one line naming the pointer and what is there
    (broken / "config.yaml").write_text(requested)
    (broken / "prompt_learner" / "model.pth.tar-2").unlink()
    (broken / record.RESULT_FILE).unlink()
    with pytest.raises(RunError, match=rf"^{broken / 'prompt_learner' / 'checkpoint'} names model.pth.tar-2, which "
                                       rf"is not there \(deleted\?\); epoch files present: 1; restore it, or delete"):
        run_train(tmp, "CoOp", COOP, output_dir=broken, opts=RUN_OPTS)


def test_evaluation_before_training_names_the_train_script(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        layout.main(["plan", "--stage", "base2new_test_new", "--trainer", "MuDPT", "--cfg", "toy_demo", "--dataset",
                     "caltech101", "--seed", "1", "--data", str(tmp_path), "--output", str(tmp_path / "out")])
    assert str(exit_info.value.code).startswith(
        f"no trained model in {tmp_path / 'out'}/base2new/train_base/caltech101/shots_16/MuDPT/toy_demo/seed1: run "
        f"the training first, e.g. `bash scripts/mudpt/base2new_train.sh caltech101 1`")


# ----------------------------------------------------------------------------- images
def test_16_bit_png_is_scaled_to_8_bits_and_the_check_counts_unreadable_apart(tmp_path, capsys):
    from mmpt.data.data_prep import check
    from mmpt.data.fixtures import make_dataset
    from mmpt.data.image_check import image_files

    folder = Path(make_dataset("Caltech101", str(tmp_path), num_classes=2, images_per_class=4))
    images = sorted(folder.rglob("*.jpg"))
    wide = np.random.default_rng(0).integers(0, 65536, size=(8, 8), dtype=np.uint16)
    Image.fromarray(wide).save(images[0].with_suffix(".png"))
    assert Image.open(images[0].with_suffix(".png")).mode == "I;16"
    grey = np.asarray(read_image(str(images[0].with_suffix(".png"))))
    expected = np.floor(wide.astype(np.float64) / 65535 * 255 + 0.5).astype(np.uint8)  # v * 255 / 65535, rounded
    assert grey.shape == (8, 8, 3) and (grey == expected[..., None]).all()  # not clipped to white
    images[1].write_bytes(images[1].read_bytes()[:100])  # truncated
    problems = check("Caltech101", str(tmp_path), workers=1)
    out = capsys.readouterr().out
    assert len(problems) == 1 and str(images[1]) in problems[0]
    assert f"  {len(image_files(str(folder))) - 1} images decoded, 1 unreadable" in out


def test_data_loader_workers_are_capped_at_the_cpus(capsys):
    cpus = len(os.sched_getaffinity(0))
    assert capped_worker_count(cpus) == cpus and capsys.readouterr().out == ""
    assert capped_worker_count(cpus + 7) == cpus == capped_worker_count(cpus + 7)
    assert capsys.readouterr().out.splitlines() == [
        f"Note: DATALOADER.NUM_WORKERS={cpus + 7} but this process may use {cpus} CPU(s): using {cpus} worker(s)"]


# ----------------------------------------------------------------------------- parse_test_res
def write_run(folder, end_line, accuracy):
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text(f"{end_line}\n* accuracy: {accuracy}%\n")


def test_parse_test_res_hints_and_multi_exp_goes_on(tmp_path, capsys):
    write_run(tmp_path / "test_new" / "seed1", logs.END_SIGNAL_TEST, 50.0)
    with pytest.raises(SystemExit, match=r"add --test-log\)$"):
        logs.cli([str(tmp_path / "test_new")])
    write_run(tmp_path / "exps" / "a" / "seed1", logs.END_SIGNAL_TRAIN, 60.0)
    (tmp_path / "exps" / "b" / "seed1").mkdir(parents=True)  # a run without a result
    write_run(tmp_path / "exps" / "c" / "seed1", logs.END_SIGNAL_TRAIN, 70.0)
    logs.cli([str(tmp_path / "exps"), "--multi-exp"])
    out = capsys.readouterr().out
    assert "1 experiment folder(s) without results, left out: b" in out
    assert out.strip().endswith("Average performance\n* accuracy: 65.00%")


# ----------------------------------------------------------------------------- the sweep
def test_sweep_dry_run_needs_data_and_counts(tmp_path):
    args = ["--trainers", "CoOp", "--datasets", "caltech101", "--seeds", "1", "2", "--output", str(tmp_path),
            "--dry-run"]
    with pytest.raises(SystemExit, match="no dataset root: pass --data DIR or set DATA"):
        sweep.main(args + ["--data", ""])
    lines = []
    assert sweep.main(args + ["--data", str(tmp_path)], echo=lines.append) == 0
    assert lines[-1] == "4 jobs: 0 done, 4 to run (0 of them failed in the last sweep)"


def test_sweep_refuses_a_cut_manifest_and_an_output_in_use(tmp_path):
    args = ["--trainers", "CoOp", "--datasets", "caltech101", "--seeds", "1", "--data", str(tmp_path), "--output",
            str(tmp_path)]
    manifest = tmp_path / sweep.MANIFEST_NAME
    manifest.write_text('{"command": "x", "jobs": {"a": {"status": "do')
    with pytest.raises(SystemExit, match=rf"^mmpt.sweep: error: {manifest} does not parse \(JSONDecodeError"):
        sweep.main(args)
    manifest.unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mmpt import run_folder; "
                               "lock = run_folder.locked_output_dir(sys.argv[1], '.sweep.lock'); lock.__enter__(); "
                               "print('locked', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=rf"^mmpt.sweep: error: {tmp_path} is in use by another running python "
                                             rf"-m mmpt.sweep \(lock file {tmp_path / '.sweep.lock'}\)"):
            sweep.main(args)
        assert not manifest.exists()  # the running sweep's manifest is not overwritten
    finally:
        holder.kill()
        holder.wait()


def slow_job(root, name):
    """A job that behaves like train.py for the sweep: it holds its folder's lock, works ~1.5 s, then writes its
    result record and appends its pid to finished.txt."""
    output_dir = os.path.join(root, name)
    code = (f"import os, time\nfrom mmpt import run_folder\nfrom mmpt.experiments import record\nout = {output_dir!r}\n"
            "with run_folder.locked_output_dir(out):\n"
            "    open(os.path.join(out, 'started.txt'), 'a').write(f'{os.getpid()}\\n')\n"
            "    time.sleep(1.5)\n"
            "    record.write_result(out, record.RunResult('CoOp', 'c', 'd', 1, 1, 'all', 'test', 50.0, 50.0, 50.0))\n"
            "    open(os.path.join(out, 'finished.txt'), 'a').write(f'{os.getpid()}\\n')\n")
    return layout.Job(id=name, stage="fewshot", trainer="CoOp", cfg="c", dataset="d", seed=1, shots=1,
                      output_dir=output_dir, argv=[sys.executable, "-c", code], trains=True)


SWEEP_DRIVER = """
import sys
from mmpt.experiments import sweep
from tests.test_faults import slow_job
jobs = [slow_job(sys.argv[1], name) for name in ("a", "b")]
manifest = sweep.Manifest(sys.argv[1], command="test")
sweep.prepare(jobs, manifest)
sweep.LocalRunner(manifest, [None], poll_seconds=0.05, echo=lambda line: print(line, flush=True)).run(jobs)
"""


def test_sweep_killed_with_sigkill_and_restarted_at_once_ends_every_job_done_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def start():
        return subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, str(tmp_path)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start()
    started = tmp_path / "a" / "started.txt"
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    orphan = int(started.read_text().split()[0])
    os.kill(first.pid, signal.SIGKILL)  # mid-job: a has started, b waits
    first.wait()
    second = start()  # at once
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    jobs = json.loads((tmp_path / sweep.MANIFEST_NAME).read_text())["jobs"]
    assert {name: job["status"] for name, job in jobs.items()} == {"a": "done", "b": "done"}, out
    for name in ("a", "b"):  # each job finished exactly once
        assert len((tmp_path / name / "finished.txt").read_text().split()) == 1, out
    assert str(orphan) not in (tmp_path / "a" / "finished.txt").read_text()  # the killed sweep's job died with it
    with pytest.raises(ProcessLookupError):
        os.kill(orphan, 0)


def test_restarted_sweep_waits_for_a_job_still_running_and_adopts_its_result(tmp_path):
    """Where the parent-death signal is missing (or the job ignores it), the job of a killed sweep may still run
    into its folder: the restarted sweep waits for its lock and counts its result, without running it again."""
    job = slow_job(tmp_path, "a")
    os.makedirs(job.output_dir)
    job_code = job.argv[-1]
    job.argv[-1] = "open('ran.txt', 'w')"  # never run: the running process finishes the job
    still_running = subprocess.Popen([sys.executable, "-c", job_code], env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        started = Path(job.output_dir, "started.txt")
        while not started.exists():
            time.sleep(0.02)
        manifest = sweep.Manifest(str(tmp_path), command="test")
        sweep.prepare([job], manifest)
        lines = []
        sweep.LocalRunner(manifest, [None], poll_seconds=0.05, echo=lines.append).run([job])
    finally:
        still_running.wait()
    assert lines[0].startswith(f"[waiting] a (a running process holds {Path(job.output_dir, '.lock')}")
    assert lines[-1] == "[done] a (finished by the job that was running into its folder)"
    assert manifest.status("a") == "done" and not Path(layout.REPO_ROOT, "ran.txt").exists()
