"""train.py end to end with the toy trainer of conftest.py: train, eval-only reload, resume, killed-run resume."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

import parse_test_res
import train
from conftest import EngineToyLinear, toy_train_args


def run(args):
    return train.main(train.get_parser().parse_args(args))


def read_log(path):
    with open(path) as f:
        return f.read()


def epoch_and_lr(log_text, prefixes):
    """'epoch [e/E] batch [b/B] lr X' of the batch lines starting with one of `prefixes` (timings dropped)."""
    return [line.split(" time ")[0] + " lr" + line.split(" lr")[1].split(" eta")[0]
            for line in log_text.splitlines() if line.startswith(prefixes)]


def final_accuracy_line(log_text):
    return [line for line in log_text.splitlines() if line.startswith("* accuracy: ")][-1]


def test_train_checkpoint_evalonly_resume_and_parse(toy_data_root, tmp_path):
    out = tmp_path / "toy" / "seed0"
    trainer = run(toy_train_args(toy_data_root, out))
    log = read_log(out / "log.txt")
    for line in ["Loading trainer: EngineToyLinear", "Finish training", "Evaluate on the *test* set",
                 "=> result", "* total: 12"]:
        assert line in log
    assert "epoch [4/4] batch [4/4]" in log and " eta " in log
    assert [line for line in log.splitlines() if line.startswith("Elapsed: ")]
    printed = float(final_accuracy_line(log).split()[-1].rstrip("%"))
    assert printed == pytest.approx(trainer.test_result, abs=0.05)
    # default CHECKPOINT_FREQ 0: only the final epoch file and the pointer remain
    assert sorted(os.listdir(out / "model")) == ["checkpoint", "model.pth.tar-4"]
    assert (out / "model" / "checkpoint").read_text().strip() == "model.pth.tar-4"
    ckpt = torch.load(out / "model" / "model.pth.tar-4", weights_only=True)
    assert ckpt["epoch"] == 4 and set(ckpt) >= {"state_dict", "optimizer", "scheduler", "val_result", "rng_state"}
    assert torch.equal(ckpt["state_dict"]["weight"], trainer.model.weight.detach())

    # eval-only reload into a new trainer: same weights, same accuracy
    eval_out = tmp_path / "eval"
    evaluated = run(toy_train_args(toy_data_root, eval_out, "--eval-only", "--model-dir", str(out),
                                   "--load-epoch", "4"))
    assert torch.equal(evaluated.model.weight, trainer.model.weight)
    assert evaluated.test_result == trainer.test_result
    assert final_accuracy_line(read_log(eval_out / "log.txt")) == final_accuracy_line(log)

    # resuming a finished run trains no epoch and reports the same result in a new log file
    resumed = run(toy_train_args(toy_data_root, out))
    assert resumed.lr_per_epoch == {}
    assert torch.equal(resumed.model.weight, trainer.model.weight)
    new_logs = [f for f in os.listdir(out) if f.startswith("log.txt-")]
    assert len(new_logs) == 1 and "Previous epoch: 4" in read_log(out / new_logs[0])

    # parse_test_res reads the printed accuracy back
    results = parse_test_res.collect_results(str(tmp_path / "toy"))
    assert results["per_run"] == {"seed0": printed} and results["n"] == 1
    eval_results = parse_test_res.collect_results(str(tmp_path), test_log=True)
    assert eval_results["per_run"]["eval"] == printed

    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"no trained model in {missing} ({missing / 'model'} "
                                                          f"does not exist): train it first")):
        run(toy_train_args(toy_data_root, tmp_path / "eval2", "--eval-only", "--model-dir", str(missing),
                           "--load-epoch", "9"))


@pytest.mark.parametrize("freq", [0, 2])
def test_killed_run_resumes_to_identical_result(toy_data_root, tmp_path, monkeypatch, freq):
    opts = ["TRAIN.CHECKPOINT_FREQ", str(freq)]
    reference = run(toy_train_args(toy_data_root, tmp_path / "reference", opts=opts))

    out = tmp_path / "killed"
    monkeypatch.setattr(EngineToyLinear, "crash_at", (2, 2))  # in the middle of epoch 3 of 4
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(toy_train_args(toy_data_root, out, opts=opts))
    kept = sorted(os.listdir(out / "model"))
    assert kept == (["checkpoint", "model.pth.tar-2"])
    monkeypatch.setattr(EngineToyLinear, "crash_at", None)
    resumed = run(toy_train_args(toy_data_root, out, opts=opts))

    assert list(resumed.lr_per_epoch) == [2, 3]  # epochs 1-2 came from the checkpoint
    assert resumed.lr_per_epoch == {e: reference.lr_per_epoch[e] for e in (2, 3)}
    for key, value in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert resumed.test_result == reference.test_result
    ref_state = reference.optim.state_dict()["state"]
    for param_id, state in resumed.optim.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], ref_state[param_id]["momentum_buffer"])
    # the printed LR of every batch of the resumed epochs equals the uninterrupted run's
    resumed_log = [f for f in os.listdir(out) if f.startswith("log.txt-")][0]
    lr_lines = epoch_and_lr(read_log(out / resumed_log), ("epoch [",))
    ref_lr_lines = epoch_and_lr(read_log(tmp_path / "reference" / "log.txt"), ("epoch [3/4]", "epoch [4/4]"))
    assert lr_lines == ref_lr_lines and lr_lines
    expected_files = ["checkpoint", "model.pth.tar-2", "model.pth.tar-4"] if freq == 2 else \
        ["checkpoint", "model.pth.tar-4"]
    assert sorted(os.listdir(out / "model")) == expected_files


def test_resume_without_rng_restore_would_differ(toy_data_root, tmp_path, monkeypatch):
    """Control: the RNG restore is what makes the resumed run identical (the test above could not pass by luck)."""
    reference = run(toy_train_args(toy_data_root, tmp_path / "reference"))
    out = tmp_path / "killed"
    monkeypatch.setattr(EngineToyLinear, "crash_at", (2, 0))
    with pytest.raises(RuntimeError):
        run(toy_train_args(toy_data_root, out))
    monkeypatch.setattr(EngineToyLinear, "crash_at", None)
    monkeypatch.setattr("dassl.engine.trainer.set_random_rng_state", lambda state: None)
    resumed = run(toy_train_args(toy_data_root, out))
    assert not torch.equal(resumed.model.weight, reference.model.weight)


def test_setup_cfg_merge_order_and_seed_zero(tmp_path):
    dataset_yaml = tmp_path / "data.yaml"
    dataset_yaml.write_text("DATASET:\n  NAME: EngineToyImages\nOPTIM:\n  LR: 0.5\n  MAX_EPOCH: 3\n")
    method_yaml = tmp_path / "method.yaml"
    method_yaml.write_text("OPTIM:\n  LR: 0.25\nSEED: 7\n")
    args = train.get_parser().parse_args([
        "--seed", "0", "--dataset-config-file", str(dataset_yaml), "--config-file", str(method_yaml),
        "--trainer", "EngineToyLinear", "OPTIM.MAX_EPOCH", "9"])
    cfg = train.setup_cfg(args)
    assert cfg.SEED == 0  # --seed 0 is a real seed (CoOp's `if args.seed:` dropped it)
    assert cfg.OPTIM.LR == 0.25 and cfg.OPTIM.MAX_EPOCH == 9 and cfg.DATASET.NAME == "EngineToyImages"
    assert cfg.is_frozen()
    no_seed = train.setup_cfg(train.get_parser().parse_args(["--config-file", str(method_yaml)]))
    assert no_seed.SEED == 7  # no --seed: the config file's value stands


def test_cli_bad_backbone_name_is_one_line(tmp_path, toy_data_root):
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    proc = subprocess.run([sys.executable, "train.py", "--root", str(toy_data_root), "--trainer", "CoOp",
                           "--dataset-config-file", "configs/datasets/caltech101.yaml",
                           "--output-dir", str(tmp_path / "out"), "MODEL.BACKBONE.NAME", "ViT-B/17"],
                          cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: MODEL.BACKBONE.NAME='ViT-B/17' is not a CLIP backbone"), last


def test_cli_unknown_key_is_one_line(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("OPTIM:\n  NAMEE: sgd\n")
    repo = osp.dirname(osp.dirname(osp.abspath(__file__)))
    proc = subprocess.run([sys.executable, "train.py", "--config-file", str(bad_yaml), "--output-dir",
                           str(tmp_path / "out")], cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    # the error is one line without a traceback (other lines may be library warnings)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"train.py: error: Non-existent config key: OPTIM.NAMEE (in config file {bad_yaml}); did you mean OPTIM.NAME?"


def test_second_run_into_a_live_output_dir_stops_at_once(toy_data_root, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    # another live train.py holds the folder's lock (a POSIX lock belongs to a process: take it in another one)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(train.OutputDirInUseError, match="in use by another running train.py"):
            run(toy_train_args(toy_data_root, out))
        assert not (out / "log.txt").exists()  # nothing of the live run was touched
    finally:
        holder.kill()
        holder.wait()
    trainer = run(toy_train_args(toy_data_root, out))  # the lock is gone with its holder: the run goes ahead
    assert trainer.test_result is not None


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""
