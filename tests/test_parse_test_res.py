"""parse_test_res.py: mean / std / ci95 over seed folders, --test-log, --multi-exp, resumed-run logs."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import parse_test_res

TRAIN_LOG = """epoch [1/1] batch [1/1] loss 1.0 (1.0) lr 1.0000e-05 eta 0:00:00
Evaluate on the *val* set
=> result
* accuracy: 11.0%
Finish training
Deploy the last-epoch model
Evaluate on the *test* set
=> result
* total: 10
* correct: 7
* accuracy: {acc}%
* error: {err}%
* macro_f1: {f1}%
Elapsed: 0:00:01
"""


def write_run(folder, acc, name="log.txt", f1=50.0):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        f.write(TRAIN_LOG.format(acc=acc, err=round(100 - acc, 1), f1=f1))


def test_mean_std_ci95_over_seeds(tmp_path, capsys):
    accs = [70.0, 72.5, 80.1]
    for seed, acc in enumerate(accs, start=1):
        write_run(tmp_path / f"seed{seed}", acc)
    (tmp_path / "seed4").mkdir()  # an unfinished run without a log
    results = parse_test_res.collect_results(str(tmp_path))
    assert results["per_run"] == {"seed1": 70.0, "seed2": 72.5, "seed3": 80.1}
    assert results["mean"] == pytest.approx(np.mean(accs))
    assert results["std"] == pytest.approx(np.std(accs))
    assert results["ci95"] == pytest.approx(1.96 * np.std(accs) / np.sqrt(3))
    assert parse_test_res.collect_results(str(tmp_path), keyword="macro_f1")["mean"] == 50.0

    args = parse_test_res.get_parser().parse_args([str(tmp_path), "--ci95"])
    means = parse_test_res.main(args, parse_test_res.END_SIGNAL_TRAIN)
    assert means["accuracy"] == pytest.approx(np.mean(accs))
    out = capsys.readouterr().out
    assert f"* accuracy: {np.mean(accs):.2f}% +- {1.96 * np.std(accs) / np.sqrt(3):.2f}%" in out
    assert "seed4" in out  # named as left out


def test_val_results_before_finish_are_ignored_and_test_log_mode(tmp_path):
    write_run(tmp_path / "train" / "seed1", 64.0)
    assert parse_test_res.collect_results(str(tmp_path / "train"))["per_run"] == {"seed1": 64.0}
    # an eval-only log has no "Finish training": only --test-log finds its result
    eval_dir = tmp_path / "eval" / "seed1"
    eval_dir.mkdir(parents=True)
    (eval_dir / "log.txt").write_text("Evaluate on the *test* set\n=> result\n* accuracy: 55.5%\n")
    assert parse_test_res.collect_results(str(tmp_path / "eval"))["n"] == 0
    assert parse_test_res.collect_results(str(tmp_path / "eval"), test_log=True)["per_run"] == {"seed1": 55.5}


def test_resumed_run_reads_latest_log(tmp_path):
    run = tmp_path / "seed1"
    run.mkdir()
    (run / "log.txt").write_text("epoch [1/2] ...\n")  # killed before the end
    time.sleep(0.01)
    write_run(run, 81.2, name="log.txt-2026-01-01-00-00-00")
    assert parse_test_res.collect_results(str(tmp_path))["per_run"] == {"seed1": 81.2}


def test_cli_multi_exp(tmp_path):
    for dataset, accs in {"caltech101": [90.0, 92.0], "dtd": [50.0, 54.0]}.items():
        for seed, acc in enumerate(accs, start=1):
            write_run(tmp_path / dataset / f"seed{seed}", acc)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "parse_test_res.py", str(tmp_path), "--multi-exp"], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "* accuracy: 91.00% +- 1.00%" in proc.stdout and "* accuracy: 52.00% +- 2.00%" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "* accuracy: 71.50%"
    empty = tmp_path / "empty"
    (empty / "seed1").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "parse_test_res.py", str(empty)], cwd=repo, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and proc.stderr.strip().startswith("parse_test_res.py: error: No 'accuracy'")
