"""mmpt.results on a generated output tree: fake run folders (log.txt and result record) with known accuracies."""
import csv
import os
import statistics

import pytest

from mmpt.experiments import layout, published, record, results
from trainers.coop import coop_fewshot_config

TRAIN_LOG = "epoch [1/1] batch [1/1] loss 1.0\nFinish training\nEvaluate on the *test* set\n=> result\n" \
            "* total: 100\n* correct: 50\n* accuracy: {:.2f}%\n* error: 1.0%\nElapsed: 0:00:01\n"
TEST_LOG = "Loading weights\nEvaluate on the *test* set\n=> result\n* total: 100\n* accuracy: {:.2f}%\n"

# (stage, trainer, dataset, shots) -> accuracy per seed
B2N = {
    ("MuDPT", "caltech101"): {"base": [80.0, 82.0], "new": [70.0, 74.0]},
    ("MuDPT", "oxford_pets"): {"base": [90.0, 94.0], "new": [60.0, 61.0]},
}
FEWSHOT = {("CoOp", "caltech101", 1): [50.0, 55.0, 62.0], ("CoOp", "caltech101", 16): [80.0, 81.0, 85.0],
           ("CoOp", "dtd", 16): [60.0, 62.0, 64.0], ("CoOp", "dtd", 1): [30.0, 31.0, 35.0]}


def write_run(root, stage, trainer, dataset, seed, accuracy, shots=16, finished=True):
    job = layout.build_job(stage, trainer, dataset, seed, shots, output_root=str(root))
    os.makedirs(job.output_dir, exist_ok=True)
    text = (TRAIN_LOG if job.trains else TEST_LOG).format(accuracy)
    if not finished:
        text = text.split("Finish training")[0] if job.trains else text.split("=> result")[0]
    with open(os.path.join(job.output_dir, "log.txt"), "w") as f:
        f.write(text)
    if finished:
        write_record(job.output_dir, trainer, accuracy, job.trains)
    return job


def write_record(run_dir, trainer, accuracy, trained=True):
    record.write_result(str(run_dir), record.RunResult(
        trainer=trainer, config="c", dataset="d", seed=1, shots=16, subsample="all", split="test",
        accuracy=accuracy, error_rate=100 - accuracy, macro_f1=accuracy, epoch=1, trained=trained))


@pytest.fixture
def output_tree(tmp_path):
    root = tmp_path / "output"
    for (trainer, dataset), values in B2N.items():
        for seed, (base, new) in enumerate(zip(values["base"], values["new"]), start=1):
            write_run(root, "base2new_train", trainer, dataset, seed, base)
            write_run(root, "base2new_test_new", trainer, dataset, seed, new)
    write_run(root, "base2new_train", "MuDPT", "dtd", 1, 99.0)  # no new-class result: left out of the averages
    write_run(root, "base2new_test_base", "ZeroshotCLIP", "caltech101", 1, 70.0)
    write_run(root, "base2new_test_new", "ZeroshotCLIP", "caltech101", 1, 75.0)
    for (trainer, dataset, shots), values in FEWSHOT.items():
        for seed, acc in enumerate(values, start=1):
            write_run(root, "fewshot", trainer, dataset, seed, acc, shots=shots)
    write_run(root, "fewshot", "CoOp", "dtd", 4, 0.0, shots=16, finished=False)  # killed run: ignored
    for seed, (src, cal, v2) in enumerate([(70.0, 90.0, 60.0), (72.0, 92.0, 64.0)], start=1):
        write_run(root, "xd_train", "MuDPT", "imagenet", seed, src)
        write_run(root, "xd_test", "MuDPT", "caltech101", seed, cal)
        write_run(root, "xd_test", "MuDPT", "imagenetv2", seed, v2)
    write_run(root, "xd_test", "ZeroshotCLIP", "caltech101", 1, 88.0)
    return root


def hm(a, b):
    return 2 * a * b / (a + b)


def test_cells_mean_std(output_tree):
    cells = results.collect(str(output_tree))
    for (trainer, dataset, shots), values in FEWSHOT.items():
        cell = cells[("fewshot", trainer, coop_fewshot_config(dataset, shots), dataset, shots, "accuracy")]
        assert cell.n == 3  # the unfinished seed4 is not counted
        assert cell.mean == pytest.approx(statistics.mean(values))
        assert cell.std == pytest.approx(statistics.pstdev(values))
    cfg = layout.default_config("MuDPT", "xd_train", "imagenet", 16)
    assert cells[("xd", "MuDPT", cfg, "imagenet", 16, "accuracy")].mean == pytest.approx(71.0)
    assert cells[("xd", "MuDPT", cfg, "imagenetv2", 16, "accuracy")].std == pytest.approx(2.0)
    assert cells[("xd", "ZeroshotCLIP", "vit_b16", "caltech101", 0, "accuracy")].mean == 88.0
    assert cells[("base2new", "ZeroshotCLIP", "vit_b16", "caltech101", 16, "base")].mean == 70.0


@pytest.mark.parametrize("convention", ["avg", "per-dataset"])
def test_base2new_harmonic_means(output_tree, convention):
    summary = results.base2new_summary(results.collect(str(output_tree)), convention)
    mudpt = summary["MuDPT"]
    assert mudpt["n"] == 2 and set(mudpt["datasets"]) == {"caltech101", "oxford_pets"}
    means = {d: {m: statistics.mean(v[m]) for m in v} for (_, d), v in B2N.items()}
    per_dataset_hm = {d: hm(m["base"], m["new"]) for d, m in means.items()}
    for d, value in per_dataset_hm.items():
        assert mudpt["datasets"][d]["hm"] == pytest.approx(value)
    avg_base = statistics.mean(m["base"] for m in means.values())
    avg_new = statistics.mean(m["new"] for m in means.values())
    assert mudpt["average"]["base"] == pytest.approx(avg_base)
    assert mudpt["average"]["new"] == pytest.approx(avg_new)
    expected = hm(avg_base, avg_new) if convention == "avg" else statistics.mean(per_dataset_hm.values())
    assert mudpt["average"]["hm"] == pytest.approx(expected)
    assert hm(avg_base, avg_new) != pytest.approx(statistics.mean(per_dataset_hm.values()))  # the two differ here
    assert summary["ZeroshotCLIP"]["average"]["hm"] == pytest.approx(hm(70.0, 75.0))


def test_report_files(output_tree, tmp_path, capsys):
    out = tmp_path / "report"
    assert results.main([str(output_tree), "--out", str(out), "--hm-convention", "per-dataset"]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "results.md").read_text()
    assert markdown in printed
    assert results.HM_CONVENTIONS["per-dataset"] in markdown
    assert "MuDPT (paper)" in markdown and "| 82.71 | 74.50 | 78.39 |" in markdown
    assert "Few-shot recognition, 1 shots" in markdown and "Domain generalisation" in markdown
    assert "Cross-dataset transfer" in markdown
    assert "81.00 ± 1.00" in markdown  # MuDPT caltech101 base
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    row = [r for r in rows if r["table"] == "fewshot_16" and r["method"] == "CoOp" and r["dataset"] == "average"]
    assert float(row[0]["mean"]) == pytest.approx(statistics.mean([statistics.mean(FEWSHOT[("CoOp", "caltech101", 16)]),
                                                                  statistics.mean(FEWSHOT[("CoOp", "dtd", 16)])]))
    paper = [r for r in rows if r["method"] == "CoOp (paper)" and r["dataset"] == "dtd" and r["table"] == "fewshot_16"]
    assert float(paper[0]["mean"]) == published.FEWSHOT_16["CoOp"]["dtd"]
    hm_row = [r for r in rows if r["table"] == "base2new_average" and r["method"] == "MuDPT" and r["metric"] == "hm"]
    means = [hm(statistics.mean(v["base"]), statistics.mean(v["new"])) for v in B2N.values()]
    assert float(hm_row[0]["mean"]) == pytest.approx(statistics.mean(means), abs=1e-4)
    for name in ("fewshot_curves.png", "base2new_bars.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024


def test_published_averages_match_their_rows():
    for name, row in published.FEWSHOT_16.items():
        values = [row[d] for d in layout.DATASETS_11]
        assert statistics.mean(values) == pytest.approx(row["average"], abs=0.02), name
    for name, row in published.CROSS_DATASET.items():
        assert statistics.mean(row[d] for d in layout.XD_TARGETS) == pytest.approx(row["average"], abs=0.02), name
    for name, avg in published.BASE2NEW_AVERAGE.items():
        assert hm(avg["base"], avg["new"]) == pytest.approx(avg["hm"], abs=0.02), name


def test_missing_root_is_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="output folder not found"):
        results.main([str(tmp_path / "nope")])


def test_a_dataset_beyond_the_papers_eleven_gets_no_paper_number(output_tree, tmp_path):
    # a user's own dataset (its own config file) in the few-shot table: the paper rows show "-" there
    cfg = layout.default_config("CoOp", "fewshot", "dtd", 16)
    run_dir = output_tree / "fewshot" / "my_dataset" / "shots_16" / "CoOp" / cfg / "seed1"
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text(TRAIN_LOG.format(40.0))
    write_record(run_dir, "CoOp", 40.0)
    results.write_report(str(output_tree), out_dir=str(tmp_path / "report"), echo=lambda *a: None)
    lines = (tmp_path / "report" / "results.md").read_text().splitlines()
    assert any(line.startswith("| CoOp |") and "40.00" in line for line in lines)
    assert any(line.startswith("| CoOp (paper) |") and "| - |" in line for line in lines)
