"""Run identity and robustness (issue 13): a run folder records its config, extra options get their own folder,
files keep the umask's mode, a killed run's lock is gone at once, and every failure a user can cause ends with
one line (`train.py: error: ...`, non-zero exit, no traceback) naming the file or key."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import train
from conftest import EngineToyLinear, toy_train_args, write_toy_images
from dassl.data.datasets import DatasetBase, Datum
from dassl.errors import RunError
from dassl.utils import atomic_write, save_checkpoint
from mmpt import run_folder
from mmpt.experiments import layout, sweep

REPO_ROOT = str(Path(__file__).resolve().parents[1])


def run(args):
    return train.main(train.get_parser().parse_args(args))


def cli(args, capsys):
    """train.py's command line in this process: (exit status, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        train.cli([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def assert_one_line(status, err, *fragments):
    assert status not in (0, None)
    assert not any("Traceback" in line for line in err), err
    assert err[-1].startswith("train.py: error: "), err
    for fragment in fragments:
        assert str(fragment) in err[-1], (fragment, err[-1])


# ----------------------------------------------------------------------------- 1. run identity
def test_extra_options_get_their_own_folder_in_scripts_and_sweep(tmp_path):
    default = layout.build_job("base2new_train", "MuDPT", "caltech101", 1, data_root="D", output_root="out")
    assert default.id == "base2new/train_base/caltech101/shots_16/MuDPT/vit_b16_c4_ep10_batch4_joint/seed1"
    ablation = layout.build_job("base2new_train", "MuDPT", "caltech101", 1, data_root="D", output_root="out",
                                opts=["TRAINER.MUDPT.INJECTION", "linear"])
    assert ablation.id == "base2new/train_base/caltech101/shots_16/MuDPT/" \
                          "vit_b16_c4_ep10_batch4_joint__INJECTION=linear/seed1"
    # its evaluation loads the ablation's model, not the default one
    test_new = layout.build_job("base2new_test_new", "MuDPT", "caltech101", 1, data_root="D", output_root="out",
                                opts=["TRAINER.MUDPT.INJECTION", "linear"])
    assert test_new.argv[test_new.argv.index("--model-dir") + 1] == ablation.output_dir
    # the order of the options does not matter; printing / paths do not make another run; long lists stay unique
    two = ["OPTIM.LR", "0.01", "OPTIM.MAX_EPOCH", "2"]
    assert run_folder.run_tag("c", two) == run_folder.run_tag("c", two[2:] + two[:2]) == "c__LR=0.01,MAX_EPOCH=2"
    assert run_folder.run_tag("c", ["TRAIN.PRINT_FREQ", "5", "MODEL.BACKBONE.PATH", "/w"]) == "c"
    long_a = [f"TRAINER.X.OPTION_{i}" if j == 0 else str(i) for i in range(12) for j in range(2)]
    long_b = long_a[:-1] + ["99"]
    assert run_folder.run_tag("c", long_a) != run_folder.run_tag("c", long_b)
    assert len(run_folder.run_tag("c", long_a)) <= 3 + run_folder.MAX_TAG_SUFFIX
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        run_folder.run_tag("c", ["OPTIM.LR"])
    # the sweep builds the same folders
    jobs = sweep.expand_grid(["MuDPT"], ["base2new"], ["caltech101"], seeds=[1], output_root="out",
                             opts=["TRAINER.MUDPT.INJECTION", "linear"])
    assert [job.id for job in jobs][0] == ablation.id


def test_rerun_with_another_config_stops_naming_the_keys(toy_data_root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(EngineToyLinear, "crash_at", (1, 1))  # a partial run: it holds epoch 1's checkpoint
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(toy_train_args(toy_data_root, out))
    monkeypatch.setattr(EngineToyLinear, "crash_at", None)
    recorded = run_folder.recorded_config(str(out))
    assert recorded["OPTIM.LR"] == 0.002 and recorded["TRAINER.NAME"] == "EngineToyLinear"
    logs = sorted(os.listdir(out))
    with pytest.raises(RunError, match=r"holds a run of another config .*OPTIM\.LR 0\.002 -> 0\.01"):
        run(toy_train_args(toy_data_root, out, opts=["OPTIM.LR", "0.01"]))
    assert sorted(os.listdir(out)) == logs  # refused before anything was written
    # printing and paths may differ: the resume goes ahead
    trainer = run(toy_train_args(toy_data_root, out, opts=["TRAIN.PRINT_FREQ", "1"]))
    assert list(trainer.lr_per_epoch) == [1, 2, 3]

    # the shell planner does not call a finished run of another config done (train.py then says why)
    argv = ["python", "train.py"] + toy_train_args(toy_data_root, out)
    assert layout.is_done(str(out), True, argv) and layout.is_done(str(out), True)
    assert not layout.is_done(str(out), True, ["python", "train.py"] + toy_train_args(
        toy_data_root, out, opts=["OPTIM.MAX_EPOCH", "5"]))


def test_folder_without_recorded_config_holding_other_shapes_is_one_line(toy_data_root, tmp_path):
    out = tmp_path / "legacy"
    run(toy_train_args(toy_data_root, out, opts=["OPTIM.MAX_EPOCH", "1"]))
    (out / run_folder.CONFIG_FILE).unlink()  # a folder written before runs recorded their config
    with pytest.raises(RunError, match=r"model\.pth\.tar-1 does not fit this run's model"):
        run(toy_train_args(toy_data_root, out, opts=["OPTIM.MAX_EPOCH", "1", "INPUT.SIZE", "(16, 16)"]))


def test_checkpoint_of_another_model_is_one_line(toy_data_root, tmp_path, capsys):
    other = tmp_path / "other"
    save_checkpoint({"state_dict": {"prompt_learner.ctx": torch.zeros(4, 8)}, "epoch": 2}, str(other / "model"),
                    model_name="model.pth.tar-2")
    status, err = cli(toy_train_args(toy_data_root, tmp_path / "eval", "--eval-only", "--model-dir", other,
                                     "--load-epoch", "2"), capsys)
    assert_one_line(status, err, other / "model" / "model.pth.tar-2", "does not fit EngineToyLinear's model")


# ----------------------------------------------------------------------------- 2. file modes, temp files
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "split.json"), lambda f: f.write(b"{}"))
        save_checkpoint({"state_dict": {}, "epoch": 1}, str(tmp_path / "model"))
    finally:
        os.umask(previous)
    for path in [tmp_path / "split.json", tmp_path / "model" / "model.pth.tar-1", tmp_path / "model" / "checkpoint"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_temp_files_of_killed_writes_are_removed(toy_data_root, tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    leftover = out / "model" / ".model.pth.tar-3.k2j4_x9q.tmp"  # atomic_write's name for a killed write
    leftover.write_bytes(b"partial")
    run(toy_train_args(toy_data_root, out, opts=["OPTIM.MAX_EPOCH", "1"]))
    assert not leftover.exists()
    # in a shared folder (no lock) only old temp files are dead: a young one may be another run's live write
    young, old = tmp_path / ".split.json.aaaaaaaa.tmp", tmp_path / ".split.json.bbbbbbbb.tmp"
    young.write_bytes(b"")
    old.write_bytes(b"")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    atomic_write(str(tmp_path / "split.json"), lambda f: f.write(b"{}"))
    assert young.exists() and not old.exists()


# ----------------------------------------------------------------------------- 5. the lock after kill -9
LOCK_THEN_FORK_THEN_DIE = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[3])
from mmpt.run_folder import locked_output_dir
import fcntl
if sys.argv[2] == "flock":  # the lock before issue 13, as a control
    f = open(os.path.join(sys.argv[1], ".lock"), "a"); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
else:
    locked_output_dir(sys.argv[1]).__enter__()
if os.fork() == 0:  # a DataLoader worker: it outlives its parent for a few seconds
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # lets the test's pipe close when the parent dies
    os.dup2(devnull, 2)
    time.sleep(30)
    os._exit(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["lockf", "flock"])
def test_killed_run_with_workers_releases_its_folder_at_once(tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-c", LOCK_THEN_FORK_THEN_DIE, str(out), kind, REPO_ROOT],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == "locked", proc.stderr
    if kind == "flock":  # control: the orphaned child still holds a flock (what issue 13 saw)
        import fcntl

        with open(out / ".lock", "a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    with run_folder.locked_output_dir(str(out)):  # at once, while the forked child still lives
        pass


# ----------------------------------------------------------------------------- 3, 4. one-line errors
def test_output_folder_that_is_a_file_or_read_only_is_one_line(toy_data_root, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    status, err = cli(toy_train_args(toy_data_root, a_file), capsys)
    assert_one_line(status, err, a_file, "is a file")
    status, err = cli(toy_train_args(toy_data_root, a_file / "sub"), capsys)
    assert_one_line(status, err, "cannot create the output folder")

    base = Path(tempfile.mkdtemp())  # traversable by an unprivileged user, unlike pytest's tmp_path
    try:
        base.chmod(0o755)
        read_only = base / "read_only"
        read_only.mkdir(mode=0o555)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # as an unprivileged user (root writes anywhere); stderr into the pipe
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")  # (pytest captures sys.stderr)
            code = 3
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                train.cli([str(a) for a in toy_train_args(toy_data_root, read_only / "out")])
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001  (today's code: a traceback)
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            err = pipe.read().strip().splitlines()
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        assert_one_line(status, err, read_only / "out")
    finally:
        shutil.rmtree(base)


def test_truncated_image_stops_before_training_and_the_check_is_cached(tmp_path, capsys):
    data = write_toy_images(str(tmp_path / "data"))
    bad = Path(data, "test", "green", "1.png")
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:200])
    out = tmp_path / "run"
    status, err = cli(toy_train_args(data, out), capsys)
    assert_one_line(status, err, bad, "nothing was trained")
    log = (out / "log.txt").read_text()
    assert "epoch [" not in log and not (out / "model").exists()
    assert (out / "unreadable_images.txt").read_text().startswith(str(bad))
    cache = Path(data, ".image_check-EngineToyImages.json")
    checked = json.loads(cache.read_text())["files"]
    assert len(checked) == 35 and str(bad) not in checked  # the good files are not checked again
    bad.write_bytes(good_bytes)  # the file is fixed (new size / mtime): only it is checked again
    trainer = run(toy_train_args(data, tmp_path / "run2", opts=["OPTIM.MAX_EPOCH", "1"]))
    assert trainer.test_result is not None
    assert "Checked 1 images" in (tmp_path / "run2" / "log.txt").read_text()


def test_image_failing_at_evaluation_keeps_the_checkpoint_and_says_how_to_evaluate(tmp_path, monkeypatch):
    data = write_toy_images(str(tmp_path / "data"))
    bad = Path(data, "test", "blue", "2.png")
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:200])
    monkeypatch.setattr(train, "check_run_images", lambda *args, **kwargs: 0)  # it broke after the check
    out = tmp_path / "run"
    args = toy_train_args(data, out, opts=["OPTIM.MAX_EPOCH", "2", "DATALOADER.NUM_WORKERS", "1"])
    with pytest.raises(RunError, match=rf"evaluation on the test set stopped: Cannot read image {bad}.*"
                                       r"run the same command again"):
        run(args)
    assert (out / "model" / "model.pth.tar-2").exists()
    bad.write_bytes(good_bytes)
    trainer = run(args)  # evaluates the kept model, trains nothing
    assert trainer.lr_per_epoch == {} and trainer.test_result is not None


def test_truncated_or_garbage_backbone_file_is_one_line(tmp_path, monkeypatch):
    from mmpt import clip_backbone

    weights = tmp_path / "ViT-B-16.pt"
    torch.save({"visual.proj": torch.zeros(64, 64)}, weights)
    weights.write_bytes(weights.read_bytes()[:300])  # an interrupted download
    with pytest.raises(RunError, match=rf"{weights} is not a readable CLIP checkpoint .*fetch https://"):
        clip_backbone.load_clip_by_name("ViT-B/16", str(tmp_path))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ViT-B-16.pt").write_bytes(b"<html>proxy error</html>")
    monkeypatch.setattr(clip_backbone, "clip_cache_dir", lambda: str(cache))
    with pytest.raises(RunError, match=rf"{cache / 'ViT-B-16.pt'} is not a readable CLIP checkpoint"):
        clip_backbone.load_clip_by_name("ViT-B/16")


STOPPABLE_RUN = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
import conftest, train  # conftest registers the toy dataset and trainer
train.cli(sys.argv[2:])
"""


def test_ctrl_c_with_workers_ends_with_one_line_saying_how_to_resume(toy_data_root, tmp_path):
    out = tmp_path / "run"
    args = toy_train_args(toy_data_root, out, opts=["OPTIM.MAX_EPOCH", "100", "DATALOADER.NUM_WORKERS", "2"])
    proc = subprocess.Popen([sys.executable, "-c", STOPPABLE_RUN, REPO_ROOT] + [str(a) for a in args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "model" / "checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # mostly lands while workers start or stop: a signal there must not get lost
    try:
        err = proc.communicate(timeout=60)[1].strip().splitlines()
    finally:
        proc.kill()  # a run that did not stop must not outlive the test
    assert proc.returncode == 128 + signal.SIGINT, err
    assert not any("Traceback" in line or "Exception ignored" in line for line in err), err
    assert err[-1].startswith(f"train.py: error: stopped by SIGINT; run the same command again to continue in {out} "
                              f"(it resumes from {out / 'model' / 'model.pth.tar-'}"), err


def test_sigterm_ends_with_one_line_saying_how_to_resume(toy_data_root, tmp_path, monkeypatch, capsys):
    def terminated_in_epoch_2(self):
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        self.lr_per_epoch[self.epoch] = self.get_current_lr()

    monkeypatch.setattr(EngineToyLinear, "before_epoch", terminated_in_epoch_2)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    status, err = cli(toy_train_args(toy_data_root, out), capsys)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers  # restored
    assert status == 128 + signal.SIGTERM
    assert_one_line(status, err, f"stopped by SIGTERM; run the same command again to continue in {out} (it resumes "
                                 f"from {out / 'model' / 'model.pth.tar-1'})")


def test_sweep_interrupt_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupted_run(self, jobs):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(sweep.LocalRunner, "run", interrupted_run)
    status = sweep.main(["--trainers", "CoOp", "--datasets", "caltech101", "--seeds", "1", "--data", str(tmp_path),
                         "--output", str(tmp_path / "out")], echo=lambda line: None)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 128 + signal.SIGTERM and len(err) == 1
    assert err[0].startswith("mmpt.sweep: stopped by SIGTERM;") and "run the same command again" in err[0]


# ----------------------------------------------------------------------------- warnings
def test_eval_only_without_model_dir_warns(toy_data_root, tmp_path):
    out = tmp_path / "eval"
    run(toy_train_args(toy_data_root, out, "--eval-only"))
    assert "WARNING: --eval-only without --model-dir: EngineToyLinear's learned parts are evaluated untrained" \
        in (out / "log.txt").read_text()


def test_more_shots_than_a_class_has_warns_with_counts(tmp_path, capsys):
    image = tmp_path / "image.jpg"
    image.write_bytes(b"")
    items = [Datum(impath=str(image), label=label, classname=c)
             for label, (c, n) in enumerate([("cat", 5), ("dog", 2), ("eel", 3)]) for _ in range(n)]
    sampled = DatasetBase(train_x=items).generate_fewshot_dataset(items, num_shots=4)
    assert len(sampled) == 4 + 2 + 3
    assert "WARNING: 4 shots asked, but 2 of 3 classes have fewer images: dog (2), eel (3); they keep all their " \
           "images" in capsys.readouterr().out
