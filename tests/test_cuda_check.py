"""benchmarks/cuda_check.sh and its table printer (benchmarks/cuda_table.py), on the CPU: argument handling, the
fail-fast without CUDA, and the Markdown table computed from benchmark records."""
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import cuda_table

SCRIPT = os.path.join("benchmarks", "cuda_check.sh")


def run_script(*args, **env):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def step_record(configuration, wall, trainer="CoOp", classes=1000, peak=None):
    return {"benchmark": "train_step", "device": "NVIDIA H200", "trainer": trainer, "classes": classes, "batch": 4,
            "configuration": configuration, "precision": "bf16", "wall_s": wall, "cpu_s": wall, "peak_bytes": peak}


RECORDS = [
    step_record("all on", 0.050, peak=3 * 2 ** 30),
    step_record("shared prefix off", 0.200),
    step_record("precision fp16 + GradScaler", 0.060),
    step_record("limit: image tower alone", 0.015),
    step_record("limit: text tower alone (prefix shared)", 0.025),
    {"benchmark": "eval", "device": "NVIDIA H200", "trainer": "CoCoOp", "classes": 1000, "batch": 100,
     "configuration": "per batch, shared prefix on", "precision": "fp16", "wall_s": 0.5, "cpu_s": 0.5,
     "images_per_s": 200.0},
]


def test_help_and_bad_arguments():
    done = run_script("--help")
    assert done.returncode == 0 and "usage: benchmarks/cuda_check.sh" in done.stdout
    for args, message in [(["--bogus"], "unknown argument '--bogus'"), (["--repeats", "0"], "--repeats needs"),
                          (["--classes", "100 many"], "--classes: 'many' is not a positive integer"),
                          (["--out"], "--out needs a folder")]:
        done = run_script(*args)
        assert done.returncode == 2, args
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(f"cuda_check.sh: {message}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script would run the whole check")
def test_fails_fast_in_one_line_without_cuda(tmp_path):
    done = run_script("--out", str(tmp_path / "out"))
    assert done.returncode == 3
    assert done.stderr.strip().splitlines() == [
        f"cuda_check.sh: no CUDA device (torch {torch.__version__} with {sys.executable}); this check needs one GPU"]
    assert not (tmp_path / "out").exists()  # nothing started


def test_table_only_prints_the_markdown_table(tmp_path):
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    done = run_script("--table-only", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tmp_path / "table.md").read_text()
    assert "| CoOp | 1000 | 4 | 50 ms | 200 ms | 60 ms |  | 4.00x | 3.00 GiB | 1.25x |" in done.stdout
    assert "| CoCoOp | 1000 | 100 | fp16 |  | 200 |  |" in done.stdout
    assert run_script("--table-only", "--out", str(tmp_path / "none")).returncode == 2


def test_step_table_columns():
    table = cuda_table.step_table(RECORDS).splitlines()
    assert table[0] == "Training step on NVIDIA H200 (median wall time):"
    headers = [cell.strip() for cell in table[2].strip("|").split("|")]
    row = [cell.strip() for cell in table[4].strip("|").split("|")]
    values = dict(zip(headers, row))
    assert values["step, all on (bf16)"] == "50 ms"
    assert values["shared prefix speed-up"] == "4.00x"  # 0.200 / 0.050
    assert values["step / physical limit"] == "1.25x"  # 0.050 / (0.015 + 0.025)
    assert values["fp32"] == ""  # not measured


def test_bad_records_file_is_one_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"benchmark": "eval"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"records.jsonl:2: not a JSON record"):
        cuda_table.read_records([str(path)])
