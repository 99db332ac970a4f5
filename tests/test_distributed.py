"""torch.distributed on CPU (gloo, 2 processes through torchrun) against single-process runs.

The launches are shared by the tests (one module fixture): two torchrun launches of tests/dist_worker.py run
MuDPT, MaPLe, CoCoOp, KgCoOp (a loss term that does not depend on the images), PromptSRC (per-slice losses,
GPA), TCP, MMA (adapters) and MMRL (two logit sets, a per-image cosine term) with a global batch of 5 (slices of 3 and 2 images), a refused batch, a run killed
mid-epoch and its resume, and an evaluation of an odd number of test images.
"""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from dassl.utils import distributed
from mmpt.experiments import layout, sweep
from tests.e2e import FAST_OPTS, make_fixture_dataset, run_train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "MuDPT": "configs/trainers/MuDPT/vit_b16_c4_ep10_batch4_joint.yaml",
    "MaPLe": "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
    "CoCoOp": "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
    "KgCoOp": "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml",
    "PromptSRC": "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",  # per-slice losses, GPA
    "TCP": "configs/trainers/TCP/vit_b16_c4_ep50_batch32.yaml",  # Adam at eps 1e-3, KgCoOp's term
    "MMA": "configs/trainers/MMA/vit_b16_ep5.yaml",  # adapters with gradient scaling
    "MMRL": "configs/trainers/MMRL/vit_b16.yaml",  # two logit sets, per-image cosine term, fixed logit scale
}
TRAINER_OPTS = {
    "MuDPT": ("TRAINER.MUDPT.PROMPT_DEPTH", "2", "TRAINER.MUDPT.INJECTION_WIDTH", "32",
              "TRAINER.MUDPT.INJECTION_HEADS", "2"),
    "MaPLe": ("TRAINER.MAPLE.PROMPT_DEPTH", "2"),
    "CoCoOp": (),
    "KgCoOp": ("TRAINER.KGCOOP.TEMPLATE", "a photo of a {}, a type of pet."),  # its term is live from step 1
    "PromptSRC": ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2",
                  "TRAINER.PROMPTSRC.GPA_MEAN", "1.5"),
    "TCP": ("TRAINER.TCP.INJECT_LAYER", "1"),  # the tiny backbone has 2 layers
    "MMA": ("TRAINER.MMA.ADAPTER_START", "1", "TRAINER.MMA.ADAPTER_END", "2"),
    "MMRL": ("TRAINER.MMRL.REP_LAYERS", "[2]", "TRAINER.MMRL.REP_DIM", "16"),
}
# 5 classes x 9 images: CoOp's split leaves 4 train / 2 val / 3 test images per class -> 15 test images (odd);
# 3 shots -> 15 training images = 3 global batches of 5 per epoch. The configs' random crops and flips stay on.
DATASET_KWARGS = {"num_classes": 5, "images_per_class": 9}
COMMON_OPTS = ("DATASET.NUM_SHOTS", "3", "DATALOADER.TRAIN_X.BATCH_SIZE", "5", "OPTIM.MAX_EPOCH", "2",
               "TRAIN.CHECKPOINT_FREQ", "1", "TEST.PER_CLASS_RESULT", "True", "USE_CUDA", "False")
KILLED = ("MaPLe", 1, 1, 1)  # trainer, 0-based epoch, batch, rank that dies


def train_args(root, trainer, output_dir, *extra, opts=()):
    """train.py arguments as tests.e2e.run_train builds them (seed 1, FAST_OPTS, Caltech101)."""
    return ["--root", str(root), "--seed", "1", "--trainer", trainer, "--config-file", str(REPO / CONFIGS[trainer]),
            "--output-dir", str(output_dir), *extra, *FAST_OPTS, "DATASET.NAME", "Caltech101",
            "DATASET.SUBSAMPLE_CLASSES", "all", *COMMON_OPTS, *TRAINER_OPTS[trainer], *opts]


def torchrun(tmp_path, name, runs, kill_at=None, nproc=2):
    plan = tmp_path / f"{name}.json"
    plan.write_text(json.dumps({"runs": runs, "kill_at": kill_at}))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # the launcher prefix the scripts and the sweep use
    command = layout.launch_command(sys.executable, nproc=nproc) if nproc > 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    return subprocess.run(command + [str(REPO / "tests" / "dist_worker.py"), str(plan)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    root = make_fixture_dataset(tmp / "data", "Caltech101", **DATASET_KWARGS)
    out = {name: tmp / "two" / name for name in CONFIGS}
    out["refused"] = tmp / "two" / "refused"
    out["killed"] = tmp / "two" / "killed"
    trainer, epoch, batch, rank = KILLED
    # launch 1: the 2-process runs (rank 0 writes the few-shot cache the later runs read), a refused batch of 1,
    # and a run killed in its second epoch
    first = torchrun(tmp, "launch1", [train_args(root, name, out[name]) for name in CONFIGS] + [
        train_args(root, "CoCoOp", out["refused"], opts=("DATALOADER.TRAIN_X.BATCH_SIZE", "1")),
        train_args(root, trainer, out["killed"])], kill_at=[len(CONFIGS) + 1, epoch, batch, rank])
    # the same runs in one plain process
    for name in CONFIGS:
        out["one", name] = tmp / "one" / name
        run_train(tmp, name, REPO / CONFIGS[name], output_dir=out["one", name], dataset_kwargs=DATASET_KWARGS,
                  opts=COMMON_OPTS + TRAINER_OPTS[name])
    for n in (1, 2):
        out["resumed", n] = tmp / f"resumed_with_{n}"
        shutil.copytree(out["killed"], out["resumed", n])
    # launch 2: resume with 2 processes; the 1-process MaPLe model evaluated by 2 processes
    out["eval"] = tmp / "two" / "eval"
    second = torchrun(tmp, "launch2", [
        train_args(root, trainer, out["resumed", 2]),
        train_args(root, "MaPLe", out["eval"], "--eval-only", "--model-dir", str(out["one", "MaPLe"]),
                   "--load-epoch", "2")])
    run_train(tmp, trainer, REPO / CONFIGS[trainer], output_dir=out["resumed", 1], dataset_kwargs=DATASET_KWARGS,
              opts=COMMON_OPTS + TRAINER_OPTS[trainer])
    return {"out": out, "launch1": first, "launch2": second}


def prompts(run_dir, epoch=2):
    return torch.load(Path(run_dir) / "prompt_learner" / f"model.pth.tar-{epoch}", weights_only=True)["state_dict"]


def logs(run_dir):
    return "".join(p.read_text() for p in sorted(Path(run_dir).glob("log.txt*")))


def epoch_lines(log):
    """{'epoch [e/E] batch [b/B]': (loss, acc, lr)} of the batch lines."""
    pattern = re.compile(r"^(epoch \[\d+/\d+\] batch \[\d+/\d+\]) .* loss ([\d.]+) .* acc ([\d.]+) .* lr (\S+) eta",
                         re.M)
    return OrderedDict((m.group(1), tuple(float(v) for v in m.group(2, 3, 4))) for m in pattern.finditer(log))


def assert_same_prompts(actual, expected, tol=1e-5):
    assert actual.keys() == expected.keys()
    for key in expected:
        if torch.is_tensor(expected[key]):
            torch.testing.assert_close(actual[key], expected[key], rtol=tol, atol=tol, msg=key)
        else:  # module extra state (MMRL: the dataset and classes trained on)
            assert actual[key] == expected[key], key


def result_block(log):
    return log[log.rindex("=> result"):].split("Elapsed")[0]


def test_launches_ran(runs):
    first, second = runs["launch1"], runs["launch2"]
    assert first.returncode != 0, "the killed run should have stopped the first launch"
    assert "Signals.SIGKILL" in first.stderr or "SIGKILL" in first.stderr, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]


@pytest.mark.parametrize("trainer", list(CONFIGS))
def test_two_processes_end_with_the_single_process_prompts(runs, trainer):
    out = runs["out"]
    two, one = prompts(out[trainer]), prompts(out["one", trainer])
    assert_same_prompts(two, one)
    # the tolerance is meaningful: the second epoch moved the prompts by far more
    moved = max((one[key] - prompts(out["one", trainer], epoch=1)[key]).abs().max().item() for key in one
                if torch.is_tensor(one[key]))
    assert moved > 1e-3
    # same LR schedule and global-batch loss / accuracy (weighted over the slices of 3 and 2 images)
    two_lines, one_lines = epoch_lines(logs(out[trainer])), epoch_lines(logs(out["one", trainer]))
    assert list(two_lines) == list(one_lines) and len(one_lines) == 6  # 2 epochs x 3 global batches
    for step, (loss, acc, lr) in one_lines.items():
        assert two_lines[step][2] == lr, step
        assert two_lines[step][:2] == pytest.approx((loss, acc), abs=2e-4), step
    # rank 0 alone wrote the log and the checkpoints
    assert sorted(p.name for p in out[trainer].iterdir() if p.name.startswith("log.txt")) == ["log.txt"]
    assert sorted(os.listdir(out[trainer] / "prompt_learner")) == ["checkpoint", "model.pth.tar-1",
                                                                   "model.pth.tar-2"]


def test_two_process_evaluation_counts_every_image_once(runs):
    out = runs["out"]
    evaluated, trained = logs(out["eval"]), logs(out["one", "MaPLe"])
    assert "* total: 15\n" in evaluated
    per_class = re.findall(r"^\* class: \d+ .*\ttotal: (\d+)\t", evaluated, re.M)
    assert per_class == ["3"] * 5
    # the same model evaluated by 1 process and by 2 (shards of 8 and 7 images): the same predictions
    assert result_block(evaluated) == result_block(trained)


def test_killed_run_resumes_with_two_or_one_processes(runs):
    out = runs["out"]
    killed = out["killed"]
    assert (killed / "prompt_learner" / "checkpoint").read_text().strip() == "model.pth.tar-1"
    assert "epoch [2/2] batch [2/3]" not in logs(killed)
    uninterrupted = prompts(out[KILLED[0]])
    for n in (1, 2):
        resumed_log = logs(out["resumed", n])
        assert "Restored the random number generator states" in resumed_log
        assert_same_prompts(prompts(out["resumed", n]), uninterrupted)
        # the resumed epoch replays the uninterrupted run's second epoch (batches, augmentations, LR)
        expected = {k: v for k, v in epoch_lines(logs(out[KILLED[0]])).items() if k.startswith("epoch [2/2]")}
        resumed = {k: v for k, v in epoch_lines(resumed_log).items() if k in expected}
        assert resumed.keys() == expected.keys()
        for step in expected:
            assert resumed[step] == pytest.approx(expected[step], abs=2e-4), (n, step)


def test_batch_smaller_than_the_processes_is_refused_in_one_line(runs):
    lines = [line for line in runs["launch1"].stderr.splitlines() if line.startswith("train.py: error:")]
    assert lines and all("DATALOADER.TRAIN_X.BATCH_SIZE=1 is smaller than the 2 processes" in line for line in lines)
    assert not (runs["out"]["refused"] / "prompt_learner").exists()


# ---------------------------------------------------------------- the helpers, in one process
def test_slices_and_shards_cover_every_item_once():
    for n in (1, 5, 15, 16):
        for world_size in (1, 2, 3):
            bounds = [distributed.slice_bounds(n, rank, world_size) for rank in range(world_size)]
            assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            shards = [list(distributed.ShardSampler(range(n), rank, world_size)) for rank in range(world_size)]
            assert sum(shards, []) == list(range(n))


def test_refusal_names_the_key_and_plain_runs_are_untouched():
    with pytest.raises(ValueError, match=r"DATALOADER.TRAIN_X.BATCH_SIZE=3 is smaller than the 4 processes"):
        distributed.check_global_batch(3, 100, 4)
    with pytest.raises(ValueError, match=r"the training set \(2 images\) is smaller than the 4 processes"):
        distributed.check_global_batch(8, 2, 4)
    distributed.check_global_batch(1, 1, 1)
    batch = {"img": torch.zeros(3, 2), "label": torch.arange(3)}
    assert distributed.local_batch(batch) == (batch, 1.0)  # no process group: the batch itself


def test_slicing_keeps_views_and_paths_aligned():
    batch = {"img": [torch.arange(5) * 10, torch.arange(5) * 100], "label": torch.arange(5),
             "impath": [f"{i}.jpg" for i in range(5)], "index": torch.arange(5)}
    part = distributed._slice(batch, 3, 5)
    assert [v.tolist() for v in part["img"]] == [[30, 40], [300, 400]]
    assert part["impath"] == ["3.jpg", "4.jpg"] and part["label"].tolist() == [3, 4]


def test_evaluator_merge_of_shards_equals_one_pass(tmp_path):
    from dassl.config import get_cfg_default
    from dassl.evaluation import build_evaluator

    cfg = get_cfg_default()
    cfg.TEST.PER_CLASS_RESULT = True
    cfg.OUTPUT_DIR = str(tmp_path)
    torch.manual_seed(0)
    logits, labels = torch.randn(15, 4), torch.randint(0, 4, (15,))
    whole = build_evaluator(cfg, lab2cname={i: str(i) for i in range(4)})
    whole.process(logits, labels)
    shards = []
    for start, stop in (distributed.slice_bounds(15, rank, 2) for rank in range(2)):
        part = build_evaluator(cfg, lab2cname={i: str(i) for i in range(4)})
        part.process(logits[start:stop], labels[start:stop])
        shards.append(part.shard_state())
    merged = build_evaluator(cfg, lab2cname={i: str(i) for i in range(4)})
    merged.merge_shards(shards)
    assert merged.evaluate() == whole.evaluate()
    assert merged.shard_state() == whole.shard_state()


# ---------------------------------------------------------------- launching: scripts, sweep
def test_launch_commands():
    assert layout.launch_command("py") == ["py"]
    assert layout.launch_command("py", nproc=4) == ["py", "-m", "torch.distributed.run", "--nproc_per_node", "4",
                                                     "--standalone"]
    assert layout.launch_command("py", nproc=8, nnodes=2, rdzv_endpoint="node1:29400", rdzv_id="run") == [
        "py", "-m", "torch.distributed.run", "--nproc_per_node", "8", "--nnodes", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "node1:29400", "--rdzv_id", "run"]
    with pytest.raises(ValueError, match="2 nodes need a rendezvous endpoint"):
        layout.launch_command("py", nproc=8, nnodes=2)
    with pytest.raises(ValueError, match="nproc=0"):
        layout.launch_command("py", nproc=0)


def test_scripts_launch_torchrun_with_ngpus(tmp_path):
    from tests.test_scripts import SCRIPTS, run_script

    for env, expected_kwargs in (({"NGPUS": 2}, {"nproc": 2}),
                                 ({"NGPUS": 4, "NNODES": 2, "RDZV_ENDPOINT": "n1:29400"},
                                  {"nproc": 4, "nnodes": 2, "rdzv_endpoint": "n1:29400"})):
        result = run_script(SCRIPTS / "maple" / "base2new_train.sh", "caltech101", 1, DATA=tmp_path, DRY_RUN=1,
                            OUTPUT=tmp_path / "out", **env)
        assert result.returncode == 0, result.stderr
        expected = layout.build_job("base2new_train", "MaPLe", "caltech101", 1, data_root=str(tmp_path),
                                    output_root=str(tmp_path / "out"), python=sys.executable, **expected_kwargs)
        printed = result.stdout.split("+ ", 1)[1].strip()
        assert [a.strip("'") for a in printed.split("' '")] == expected.argv
        assert expected.argv[1:3] == ["-m", "torch.distributed.run"]
    result = run_script(SCRIPTS / "maple" / "base2new_train.sh", "caltech101", 1, DATA=tmp_path, DRY_RUN=1, NNODES=2)
    assert result.returncode == 2 and "need a rendezvous endpoint" in result.stderr


def test_sweep_gpu_groups_and_torchrun_commands(tmp_path):
    assert sweep.gpu_slots("0,1,2,3", 2) == ["0,1", "2,3"] and sweep.gpu_slots("", 2) == []
    with pytest.raises(ValueError, match="groups of --gpus-per-run 2"):
        sweep.gpu_slots("0,1,2", 2)
    with pytest.raises(ValueError, match="needs --launcher slurm"):
        sweep.gpu_slots("0,1", 1, nodes=2)
    lines = []
    args = ["--trainers", "MaPLe", "--datasets", "caltech101", "--seeds", "1", "--data", str(tmp_path), "--output",
            str(tmp_path / "out"), "--gpus", "0,1,2,3", "--gpus-per-run", "2", "--dry-run"]
    assert sweep.main(args, echo=lines.append) == 0
    commands = [line.split("\n    ")[1] for line in lines if line.startswith("[todo]")]
    assert len(commands) == 2 and all("-m torch.distributed.run --nproc_per_node 2 --standalone " in c
                                      for c in commands)


def test_sweep_slurm_requests_tasks_and_gpus_per_node(tmp_path, monkeypatch):
    import submitit

    requested = {}

    class FakeExecutor:
        cluster = "fake"

        def __init__(self, folder, cluster=None):
            pass

        def update_parameters(self, **kwargs):
            requested.update(kwargs)

        def batch(self):
            return contextlib.nullcontext()

        def submit(self, fn, chain):
            requested["argv"] = [job["argv"] for job in chain]
            return type("Submitted", (), {"job_id": "1"})()

    monkeypatch.setattr(submitit, "AutoExecutor", FakeExecutor)
    args = ["--trainers", "MaPLe", "--datasets", "caltech101", "--seeds", "1", "--data", str(tmp_path), "--output",
            str(tmp_path / "out"), "--launcher", "slurm", "--gpus-per-run", "4", "--nodes", "2", "--no-wait"]
    assert sweep.main(args, echo=lambda line: None) == 0
    assert (requested["nodes"], requested["tasks_per_node"], requested["gpus_per_node"]) == (2, 4, 4)
    # the SLURM tasks are the processes: each runs the plain train.py command as one rank
    assert all(argv[1].endswith("train.py") for argv in requested["argv"])


# ---------------------------------------------------------------- NCCL (runs only where CUDA is available)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (NCCL)")
def test_nccl_torchrun_matches_the_plain_cuda_run(tmp_path):
    """1 process through torchrun + NCCL, and 2 where 2 GPUs exist, end as the plain CUDA run (fp32; cuDNN's
    algorithm choice may differ between processes, hence a tolerance rather than bit equality)."""
    root = make_fixture_dataset(tmp_path / "data", "Caltech101", **DATASET_KWARGS)
    cuda = ("USE_CUDA", "True", "TRAINER.MAPLE.PREC", "fp32")
    plain = tmp_path / "plain"
    run_train(tmp_path, "MaPLe", REPO / CONFIGS["MaPLe"], output_dir=plain, dataset_kwargs=DATASET_KWARGS,
              opts=COMMON_OPTS + TRAINER_OPTS["MaPLe"] + cuda)
    for nproc in range(1, min(2, torch.cuda.device_count()) + 1):
        out = tmp_path / f"nccl{nproc}"
        result = torchrun(tmp_path, f"nccl{nproc}", [train_args(root, "MaPLe", out, opts=cuda)], nproc=nproc)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "* total: 15\n" in logs(out)
        assert_same_prompts(prompts(out), prompts(plain), tol=1e-4)
