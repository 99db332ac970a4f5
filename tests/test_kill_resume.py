"""`kill -9` at random moments, and inside checkpoint writes, each followed by an immediate restart into the same
folder: the run ends bit-identical to an uninterrupted one (CoOp and MMA, tiny CLIP, two DataLoader workers).

One helper process imports train.py once and forks every run from itself (a fresh interpreter per run would
spend most of the test importing torch). The restart follows the kill at once, while the killed run's
orphaned DataLoader workers may still be alive: the folder's lock must not be theirs.
"""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.e2e import FAST_OPTS, make_fixture_dataset

REPO_ROOT = str(Path(__file__).resolve().parents[1])

FORK_SERVER = r"""
import json, os, signal, sys, time
sys.path[:0] = [sys.argv[1]]
import torch, train
torch.set_num_threads(1)  # one thread per run: no oversubscription next to the DataLoader workers

def kill_before_replace(name, nth):
    # SIGKILL this run when it is about to rename its nth temp file for `name` into place: the file is written,
    # the previous one (if any) still stands -- the middle of an atomic checkpoint write
    real_replace, seen = os.replace, [0]
    def replace(src, dst, **kwargs):
        if os.path.basename(dst) == name:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, **kwargs)
    os.replace = replace

reference_s = None
for step in json.loads(sys.argv[2]):
    start = time.time()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            if step.get("kill_before_replace"):
                kill_before_replace(*step["kill_before_replace"])
            train.main(train.get_parser().parse_args(step["argv"]))
        except BaseException as error:
            print(f"run failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            code = 1
        sys.stdout.flush()
        os._exit(code)
    if step.get("kill_at") is not None:  # a fraction of the uninterrupted (reference) run's wall time
        time.sleep(step["kill_at"] * reference_s)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if step["name"] == "reference":
        reference_s = time.time() - start
    with open(sys.argv[3], "a") as results:  # not stdout: a killed run may leave half a line there
        results.write(json.dumps({"step": step["name"], "status": status,
                                  "seconds": round(time.time() - start, 2)}) + "\n")
"""


def checkpoints_equal(a, b, path="checkpoint"):
    """Recursive exact comparison of two loaded checkpoints; returns the first differing path or None."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and \
            a.shape == b.shape and torch.equal(a, b)
        return None if same else path
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path} keys {sorted(map(str, set(a) ^ set(b)))}"
        return next((d for k in a for d in [checkpoints_equal(a[k], b[k], f"{path}.{k}")] if d), None)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} length"
        return next((d for i, (x, y) in enumerate(zip(a, b)) for d in [checkpoints_equal(x, y, f"{path}[{i}]")] if d),
                    None)
    return None if a == b else path


def last_accuracy(run_dir):
    logs = sorted(run_dir.glob("log.txt*"), key=lambda p: p.stat().st_mtime)
    lines = [line for log in logs for line in log.read_text().splitlines() if line.startswith("* accuracy:")]
    return lines[-1] if lines else None


# (trainer, config, its options on the 2-layer tiny CLIP)
RUNS = [("CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", ()),
        ("MMA", "configs/trainers/MMA/vit_b16_ep5.yaml", ("TRAINER.MMA.ADAPTER_START", "1", "TRAINER.MMA.ADAPTER_END", "2"))]


@pytest.mark.parametrize("trainer,config,trainer_opts", RUNS, ids=[run[0] for run in RUNS])
def test_kill_9_anywhere_then_restart_is_bit_identical(tmp_path, trainer, config, trainer_opts):
    data = make_fixture_dataset(tmp_path / "data", "Caltech101")
    epochs = 3

    def argv(output_dir, *flags):
        return ["--root", str(data), "--seed", "1", "--trainer", trainer, "--config-file",
                os.path.join(REPO_ROOT, config), "--output-dir", str(output_dir),
                *flags,
                *FAST_OPTS, "DATASET.NAME", "Caltech101", "OPTIM.MAX_EPOCH", str(epochs), *trainer_opts,
                "DATALOADER.NUM_WORKERS", "2", "USE_CUDA", "False"]  # CPU: bit-identical runs on a GPU machine too

    seed = random.randrange(2 ** 32)
    rng = random.Random(seed)
    killed = tmp_path / "killed"
    plan = [
        # the first run on a data folder writes its split file, drawing from the seeded global RNG: every run
        # below then reads the same data from the same RNG state
        {"name": "prepare the data", "argv": argv(tmp_path / "prepare", "--no-train")},
        {"name": "reference", "argv": argv(tmp_path / "reference")},
        # inside checkpoint writes: epoch 1's file, epoch 2's pointer, the final epoch's file
        {"name": "in write of model.pth.tar-1", "argv": argv(killed), "kill_before_replace": ["model.pth.tar-1", 1]},
        {"name": "in write of the 2nd pointer", "argv": argv(killed), "kill_before_replace": ["checkpoint", 2]},
        {"name": f"in write of model.pth.tar-{epochs}", "argv": argv(killed),
         "kill_before_replace": [f"model.pth.tar-{epochs}", 1]},
    ] + [{"name": f"at {f:.2f} of a run", "argv": argv(killed), "kill_at": f}
         for f in sorted(rng.uniform(0.05, 0.6) for _ in range(2))] + [
        {"name": "to the end", "argv": argv(killed)},
    ]
    # the last in-write kill leaves epoch 2's checkpoint: the random kills then land in a resumed epoch 3 (or its test)
    results = tmp_path / "steps.jsonl"
    proc = subprocess.run([sys.executable, "-c", FORK_SERVER, REPO_ROOT, json.dumps(plan), str(results)],
                          capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    steps = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    context = f"seed {seed}; steps {steps}; stderr tail: {proc.stderr[-2000:]}"
    assert proc.returncode == 0 and len(steps) == len(plan), context
    for step, spec in zip(steps, plan):
        expected = (0,) if spec["name"] in ("prepare the data", "reference", "to the end") else \
            (-signal.SIGKILL,) if "kill_before_replace" in spec else (0, -signal.SIGKILL)
        assert step["status"] in expected, context  # 1 = the restart was refused or failed
    assert "run failed" not in proc.stderr, context

    reference = tmp_path / "reference"
    name = f"model.pth.tar-{epochs}"
    ref_ckpt = torch.load(reference / "prompt_learner" / name, weights_only=True)
    got_ckpt = torch.load(killed / "prompt_learner" / name, weights_only=True)
    assert checkpoints_equal(ref_ckpt, got_ckpt) is None, (checkpoints_equal(ref_ckpt, got_ckpt), context)
    assert last_accuracy(killed) == last_accuracy(reference) is not None, context
    assert not list(killed.rglob("*.tmp")), context  # the restarts removed the killed writes' temp files
