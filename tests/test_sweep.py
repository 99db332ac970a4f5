"""mmpt.sweep: grid expansion, the local runner (failures, kills, resume, manifest) and the submitit path."""
import json
import os
import sys
from pathlib import Path

import pytest

from mmpt import run_folder
from mmpt.experiments import layout, record, results, sweep

TINY = ["MODEL.BACKBONE.NAME", "random-tiny-ViT", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "DATALOADER.TEST.BATCH_SIZE", "8",
        "VERBOSE", "False", "TRAINER.MUDPT.PROMPT_DEPTH", "2", "TRAINER.MUDPT.INJECTION_WIDTH", "32",
        "TRAINER.MUDPT.INJECTION_HEADS", "2"]


def test_expand_base2new_grid_orders_dependencies():
    jobs = sweep.expand_grid(["mudpt", "CoOp"], ["base2new"], ["caltech101", "dtd"], seeds=[1, 2],
                             output_root="/o")
    assert len(jobs) == 2 * 2 * 2 * 2
    position = {job.id: i for i, job in enumerate(jobs)}
    for job in jobs:
        if job.stage == "base2new_test_new":
            (dep,) = job.depends_on
            assert position[dep] < position[job.id]
            assert dep == job.id.replace("test_new", "train_base")
            assert job.argv[job.argv.index("--model-dir") + 1] == os.path.join("/o", dep)
            assert "--eval-only" in job.argv
            assert job.argv[job.argv.index("DATASET.SUBSAMPLE_CLASSES") + 1] == "new"
        else:
            assert job.stage == "base2new_train" and not job.depends_on and job.trains
    assert {job.trainer for job in jobs} == {"MuDPT", "CoOp"}


def test_expand_other_protocols():
    jobs = sweep.expand_grid(["MuDPT"], ["xd", "dg"], seeds=[1], output_root="/o")
    assert [j.stage for j in jobs].count("xd_train") == 1  # shared by xd and dg
    assert sorted(j.dataset for j in jobs if j.stage == "xd_test") == sorted(layout.XD_TARGETS + layout.DG_TARGETS)
    assert all(j.depends_on == [jobs[0].id] for j in jobs[1:])
    fewshot = sweep.expand_grid(["CoOp"], ["fewshot"], ["dtd"], seeds=[1, 2, 3], shots=[1, 4, 16])
    assert len(fewshot) == 9 and {j.cfg for j in fewshot} == {"vit_b16_ep50", "vit_b16_ep100", "vit_b16"}
    zs = sweep.expand_grid(["zsclip"], ["base2new", "fewshot"], ["dtd"], seeds=[1])
    assert [j.stage for j in zs] == ["base2new_test_base", "base2new_test_new", "xd_test"]
    assert all(not j.depends_on and "--model-dir" not in j.argv for j in zs)
    with pytest.raises(ValueError, match="unknown trainer 'nope'"):
        sweep.expand_grid(["nope"], ["base2new"])


def fake_job(root, name, behaviour, depends_on=()):
    """A job whose command is a tiny Python program: 'ok' writes a finished log and record, 'fail' exits 3,
    'kill' SIGKILLs itself, 'silent' exits 0 without a result."""
    output_dir = os.path.join(root, name)
    code = {
        "ok": f"import os; open(os.path.join({output_dir!r}, 'log.txt'), 'w').write("
              "'Finish training\\n=> result\\n* accuracy: 50.0%\\n'); print('epoch [1/1] batch [1/1]'); "
              "from mmpt.experiments import record; record.write_result("
              f"{output_dir!r}, record.RunResult('CoOp', 'c', 'd', 1, 1, 'all', 'test', 50.0, 50.0, 50.0))",
        "fail": "import sys; print('boom'); sys.exit(3)",
        "kill": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
        "silent": "print('nothing')",
    }[behaviour]
    return layout.Job(id=name, stage="fewshot", trainer="CoOp", cfg="c", dataset="d", seed=1, shots=1,
                      output_dir=output_dir, argv=[sys.executable, "-c", code], trains=True,
                      depends_on=list(depends_on))


def run_local(root, jobs, slots=2):
    manifest = sweep.Manifest(str(root), command="test")
    sweep.prepare(jobs, manifest)
    lines = []
    sweep.LocalRunner(manifest, [None] * slots, poll_seconds=0.05, echo=lines.append).run(jobs)
    failed = sweep.summarize(manifest, jobs, lines.append)
    return json.loads(Path(manifest.path).read_text()), lines, failed


def test_local_runner_failures_do_not_stop_others_and_resume(tmp_path):
    jobs = [fake_job(tmp_path, "a", "ok"), fake_job(tmp_path, "b", "fail"), fake_job(tmp_path, "c", "kill"),
            fake_job(tmp_path, "b_eval", "ok", depends_on=["b"]), fake_job(tmp_path, "a_eval", "ok", ["a"]),
            fake_job(tmp_path, "d", "silent")]
    manifest, lines, failed = run_local(tmp_path, jobs)
    status = {k: v["status"] for k, v in manifest["jobs"].items()}
    assert status == {"a": "done", "b": "failed", "c": "failed", "b_eval": "failed", "a_eval": "done", "d": "failed"}
    assert failed == 4
    records = manifest["jobs"]
    assert records["b"]["returncode"] == 3 and records["b"]["error"] == "exit code 3"
    assert records["c"]["error"] == "killed by signal 9"
    assert records["b_eval"]["error"] == "dependency failed" and records["b_eval"]["returncode"] is None
    assert "no result record (result.json)" in records["d"]["error"]
    assert "boom" in Path(records["b"]["log"]).read_text()
    assert any(f"FAILED b: exit code 3; log: {records['b']['log']}" in line for line in lines)
    assert records["a"]["command"].startswith(sys.executable) and records["a"]["attempts"] == 1

    # second run: b and c now succeed (e.g. a fixed bug / a run that is not killed again); a is not rerun
    jobs = [fake_job(tmp_path, "a", "ok"), fake_job(tmp_path, "b", "ok"), fake_job(tmp_path, "c", "ok"),
            fake_job(tmp_path, "b_eval", "ok", ["b"]), fake_job(tmp_path, "a_eval", "ok", ["a"]),
            fake_job(tmp_path, "d", "ok")]
    manifest, lines, failed = run_local(tmp_path, jobs, slots=1)
    status = {k: v["status"] for k, v in manifest["jobs"].items()}
    assert status == {"a": "skipped", "b": "done", "c": "done", "b_eval": "done", "a_eval": "skipped", "d": "done"}
    assert failed == 0 and manifest["jobs"]["b"]["attempts"] == 2 and manifest["jobs"]["a"]["attempts"] == 1
    assert Path(manifest["jobs"]["b"]["log"]).read_text().count("=== ") == 2  # the log keeps both attempts


def test_manifest_write_is_atomic(tmp_path):
    path = tmp_path / "m.json"
    sweep.write_json_atomic(str(path), {"x": 1})
    sweep.write_json_atomic(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left behind


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from mmpt.data.fixtures import make_dataset

    root = tmp_path_factory.mktemp("data")
    make_dataset("Caltech101", str(root), num_classes=4, images_per_class=4)
    return str(root)


def sweep_args(data_root, out, *extra):
    return ["--trainers", "CoOp", "MuDPT", "--protocol", "base2new", "--datasets", "caltech101", "--seeds", "1", "2",
            "--data", data_root, "--output", str(out), *extra, "--opts", *TINY]


def read_manifest(out):
    return json.loads((out / sweep.MANIFEST_NAME).read_text())["jobs"]


def test_real_grid_local_resume_and_submitit(data_root, tmp_path):
    out = tmp_path / "output"
    lines = []
    assert sweep.main(sweep_args(data_root, out, "--jobs", "2"), echo=lines.append) == 0, "\n".join(lines)
    jobs = read_manifest(out)
    assert len(jobs) == 8 and {j["status"] for j in jobs.values()} == {"done"}
    cells = results.collect(str(out))
    for trainer in ("CoOp", "MuDPT"):
        cfg = run_folder.run_tag(layout.default_config(trainer, "base2new_train", "caltech101", 16), TINY)  # extra options: their own folder
        for metric in ("base", "new"):
            assert cells[("base2new", trainer, cfg, "caltech101", 16, metric)].n == 2

    # a sweep killed while a job ran: the manifest says running, the run folder holds a log without a result
    killed = next(k for k, j in jobs.items() if j["stage"] == "base2new_test_new" and j["trainer"] == "MuDPT")
    log = out / killed / "log.txt"
    log.write_text(log.read_text().split("=> result")[0])
    (out / killed / record.RESULT_FILE).unlink()  # killed before its test: no record
    manifest = json.loads((out / sweep.MANIFEST_NAME).read_text())
    manifest["jobs"][killed]["status"] = "running"
    (out / sweep.MANIFEST_NAME).write_text(json.dumps(manifest))
    assert sweep.main(sweep_args(data_root, out, "--jobs", "2"), echo=lines.append) == 0
    jobs_after = read_manifest(out)
    assert {k: j["status"] for k, j in jobs_after.items()} == {k: "done" if k == killed else "skipped" for k in jobs}
    assert layout.is_done(str(out / killed), False)

    # the SLURM path (submitit's local executor) runs the same job list; a half-trained run resumes there
    retrain = next(k for k, j in jobs.items() if j["stage"] == "base2new_train" and j["trainer"] == "CoOp")
    log = out / retrain / "log.txt"
    log.write_text(log.read_text().split("Finish training")[0])
    (out / retrain / record.RESULT_FILE).unlink()
    dry = []
    sweep.main(sweep_args(data_root, out, "--dry-run"), echo=dry.append)
    assert [line.split("\n")[0] for line in dry if line.startswith("[todo]")] == [f"[todo] {retrain}"]
    args = sweep_args(data_root, out, "--launcher", "slurm", "--submitit-cluster", "local", "--partition", "p",
                      "--time", "10", "--gpus-per-job", "0", "--cpus-per-job", "1")
    assert sweep.main(args, echo=lines.append) == 0, "\n".join(lines)
    jobs_slurm = read_manifest(out)
    assert [(k, j["command"]) for k, j in jobs_slurm.items()] == [(k, j["command"]) for k, j in jobs.items()]
    assert {k: j["status"] for k, j in jobs_slurm.items()} == {k: "done" if k == retrain else "skipped" for k in jobs}
    assert jobs_slurm[retrain]["submitit_job"]
    assert layout.is_done(str(out / retrain), True)


def test_gpu_slots_set_cuda_visible_devices(tmp_path):
    jobs = []
    for name in ("g1", "g2", "g3"):
        job = fake_job(tmp_path, name, "ok")
        job.argv[-1] += "; print('CUDA_VISIBLE_DEVICES=' + os.environ['CUDA_VISIBLE_DEVICES'])"
        jobs.append(job)
    manifest = sweep.Manifest(str(tmp_path), command="test")
    sweep.prepare(jobs, manifest)
    sweep.LocalRunner(manifest, ["3", "5"], poll_seconds=0.05, echo=lambda line: None).run(jobs)
    for name in ("g1", "g2", "g3"):
        record = manifest.data["jobs"][name]
        assert record["status"] == "done"
        assert f"CUDA_VISIBLE_DEVICES={record['gpu']}" in Path(record["log"]).read_text()
    assert {manifest.data["jobs"][n]["gpu"] for n in ("g1", "g2")} == {"3", "5"}  # both GPUs busy at once


def test_interrupt_stops_running_jobs_and_records_them(tmp_path):
    job = fake_job(tmp_path, "slow", "ok")
    job.argv[-1] = "import time; time.sleep(60)"
    manifest = sweep.Manifest(str(tmp_path), command="test")
    sweep.prepare([job], manifest)

    def echo(line):  # Ctrl-C as soon as the job runs
        if line.startswith("[running]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep.LocalRunner(manifest, [None], poll_seconds=0.05, echo=echo).run([job])
    record = json.loads(Path(manifest.path).read_text())["jobs"]["slow"]
    assert record["status"] == "failed" and record["error"] == "interrupted" and record["returncode"] < 0
