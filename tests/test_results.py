"""mmpt.results on a generated output tree: fake run folders (log.txt and result record) with known accuracies."""
import csv
import os
import statistics

import pytest
import yaml

from mmpt import run_folder
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


def write_config(run_dir, seed, backbone="ViT-B/16", dataset_name="Caltech101", **keys):
    """A run folder's config.yaml as train.py records it (the keys mmpt.results reads, and `keys`: dotted)."""
    config = {"SEED": seed, "OUTPUT_DIR": str(run_dir), "MODEL": {"BACKBONE": {"NAME": backbone}},
              "DATASET": {"NAME": dataset_name, "ROOT": "/data"}, "OPTIM": {"LR": 0.002}}
    for dotted, value in keys.items():
        node = config
        *parents, last = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, run_folder.CONFIG_FILE), "w") as f:
        yaml.safe_dump(config, f)


def write_run(root, stage, trainer, dataset, seed, accuracy, shots=16, finished=True, backbone="ViT-B/16",
              cost=None, **keys):
    job = layout.build_job(stage, trainer, dataset, seed, shots, output_root=str(root))
    write_config(job.output_dir, seed, backbone, **keys)
    text = (TRAIN_LOG if job.trains else TEST_LOG).format(accuracy)
    if not finished:
        text = text.split("Finish training")[0] if job.trains else text.split("=> result")[0]
    with open(os.path.join(job.output_dir, "log.txt"), "w") as f:
        f.write(text)
    if finished:
        write_record(job.output_dir, trainer, accuracy, job.trains, cost)
    return job


def write_record(run_dir, trainer, accuracy, trained=True, cost=None, env=None):
    env = env or ({"device": "cpu (test)", "precision": "fp32", "deterministic": False} if cost else {})
    record.write_result(str(run_dir), record.RunResult(
        trainer=trainer, config="c", dataset="d", seed=1, shots=16, subsample="all", split="test",
        accuracy=accuracy, error_rate=100 - accuracy, macro_f1=accuracy, epoch=1, trained=trained, env=env,
        cost=cost or {}))


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
    # the published base-to-new averages are over the 11 datasets: not beside MuDPT's two
    b2n_average = markdown.split("### Base-to-new generalisation, average")[1].split("###")[0]
    assert "MuDPT (paper)" not in b2n_average and "not shown beside MuDPT (2)" in b2n_average
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
    write_config(run_dir, 1)
    (run_dir / "log.txt").write_text(TRAIN_LOG.format(40.0))
    write_record(run_dir, "CoOp", 40.0)
    results.write_report(str(output_tree), out_dir=str(tmp_path / "report"), echo=lambda *a: None)
    lines = (tmp_path / "report" / "results.md").read_text().splitlines()
    assert any(line.startswith("| CoOp |") and "40.00" in line for line in lines)
    assert any(line.startswith("| CoOp (paper) |") and "| - |" in line for line in lines)


def cost_of(train_time_s, epochs=2):
    return {"trainable_params": 2048, "train_time_s": train_time_s, "epochs_timed": epochs,
            "epoch_time_s": train_time_s / epochs, "peak_memory_mb": 300.0, "peak_memory_kind": "cpu_max_rss",
            "eval_time_s": 1.5}


def test_two_configs_in_one_cell_are_kept_apart_in_the_tables_and_by_parse_test_res(tmp_path, capsys):
    import parse_test_res

    root = tmp_path / "output"
    write_run(root, "fewshot", "CoOp", "dtd", 1, 75.0)
    write_run(root, "fewshot", "CoOp", "dtd", 2, 25.0, **{"OPTIM.LR": 0.2})  # another learning rate, same folder
    write_run(root, "fewshot", "CoOp", "dtd", 3, 77.0, **{"DATASET.ROOT": "/elsewhere"})  # a place: same config
    lines = []
    report = results.write_report(str(root), out_dir=str(tmp_path / "report"), echo=lines.append)
    cfg = coop_fewshot_config("dtd", 16)
    cell = report["cells"][("fewshot", "CoOp", cfg, "dtd", 16, "accuracy")]
    assert dict(cell.per_seed) == {"seed1": 75.0, "seed3": 77.0}
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "seed2 ran another config than seed1, seed3" in warnings[0]
    assert "OPTIM.LR 0.002 -> 0.2" in warnings[0] and "SEED" not in warnings[0] and "ROOT" not in warnings[0]
    markdown = (tmp_path / "report" / "results.md").read_text()
    assert "| CoOp | 76.00 ± 1.00 (n=2) |" in markdown and "50.00" not in markdown
    apart = markdown.split("### Runs of another config")[1]
    assert "OPTIM.LR 0.002 -> 0.2" in apart and "accuracy 25.00 (n=1)" in apart

    folder = root / "fewshot" / "dtd" / "shots_16" / "CoOp" / cfg
    parsed = parse_test_res.collect_results(str(folder))
    assert parsed["per_run"] == {"seed1": 75.0, "seed3": 77.0} and parsed["apart"] == {"seed2": 25.0}
    assert parsed["mean"] == 76.0 and "OPTIM.LR 0.002 -> 0.2" in parsed["warnings"][0]
    capsys.readouterr()
    parse_test_res.cli([str(folder)])
    out = capsys.readouterr().out
    assert "WARNING: " in out and "OPTIM.LR 0.002 -> 0.2" in out and "* accuracy: 76.00% +- 1.00%" in out


@pytest.fixture
def mixed_tree(tmp_path):
    """Toy-world base-to-new (one seed), the papers' backbone on a generated benchmark layout (base-to-new on the
    11 datasets with 3 seeds; few-shot with 3 seeds, 1 seed, and a dataset of one's own), a random backbone."""
    root = tmp_path / "output"
    toy = dict(backbone="toy-ViT", dataset_name="ToyWorld")
    for trainer, (base, new, seconds) in {"ZeroshotCLIP": (50.0, 40.0, 0.0), "MuDPT": (80.0, 38.3, 30.0),
                                          "CoOp": (82.0, 30.0, 12.0)}.items():
        stage = "base2new_test_base" if trainer == layout.ZERO_SHOT else "base2new_train"
        write_run(root, stage, trainer, "toy_world", 1, base, cost=cost_of(seconds), **toy)
        write_run(root, "base2new_test_new", trainer, "toy_world", 1, new, cost=cost_of(0.0), **toy)
    for dataset in layout.DATASETS_11:
        for seed, (base, new) in enumerate([(82.0, 70.0), (83.0, 71.0), (84.0, 72.0)], start=1):
            write_run(root, "base2new_train", "MuDPT", dataset, seed, base, cost=cost_of(100.0))
            write_run(root, "base2new_test_new", "MuDPT", dataset, seed, new)
    for seed, value in enumerate([80.0, 81.0, 85.0], start=1):
        write_run(root, "fewshot", "CoOp", "caltech101", seed, value)
    write_run(root, "fewshot", "CoOp", "dtd", 1, 38.3)
    cfg = coop_fewshot_config("dtd", 16)
    own = root / "fewshot" / "my_dataset" / "shots_16" / "CoOp" / cfg / "seed1"
    write_config(own, 1, dataset_name="OwnDataset")
    write_record(own, "CoOp", 40.0)
    rand = root / "fewshot" / "caltech101" / "shots_16" / "CoOp" / f"{cfg}__NAME=random-tiny-ViT" / "seed1"
    write_config(rand, 1, backbone="random-tiny-ViT")
    write_record(rand, "CoOp", 12.0)
    for seed in (1, 2, 3):  # a method of another declared track (PromptKD's transductive): a table of its own
        job = write_run(root, "fewshot", "CoCoOp", "caltech101", seed, 90.0)
        write_record(job.output_dir, "CoCoOp", 90.0 + seed, env={"track": "transductive"})
    return root


def test_mixed_set_tables_and_plots(mixed_tree, tmp_path):
    out = tmp_path / "report"
    report = results.write_report(str(mixed_tree), out_dir=str(out), echo=lambda *a: None)
    tables = {t.name: t for t in report["tables"]}
    markdown = (out / "results.md").read_text()
    assert "± 0.00" not in markdown and "38.30 (n=1)" in markdown
    for table in tables.values():  # toy world and random backbone: labelled, never beside a published number
        if "toy world" in table.title or "random backbone" in table.title or "track" in table.title:
            assert not any(row[0].endswith("(paper)") for row in table.rows), table.title
            assert not table.sources and all(r["source"] == "ours" for r in table.records)
    toy = tables["base2new_average_toy_world"]
    assert toy.title.endswith("toy world, toy-ViT")
    assert [row[:5] for row in toy.rows if row[0] == "MuDPT"] == [["MuDPT", "1", "80.00", "38.30", f"{hm(80.0, 38.3):.2f}"]]
    assert "random backbone random-tiny-ViT (tests the pipeline, not the methods)" in tables[
        "fewshot_16_random_tiny_vit"].title
    transductive = tables["fewshot_16_vit_b_16_transductive"]
    assert transductive.title.endswith("ViT-B/16, transductive track") and not transductive.sources
    assert [row[0] for row in transductive.rows] == ["CoCoOp"]  # not beside CoCoOp's published row
    assert "CoCoOp" not in [row[0] for row in tables["fewshot_16"].rows]

    # the papers' backbone: few-shot CoOp beside its published row, marked, averaged over both sides only
    fewshot = tables["fewshot_16"]
    assert fewshot.title.endswith(", ViT-B/16") and fewshot.columns == ["Method", "caltech101", "dtd", "my_dataset",
                                                                        "Average"]
    ours, paper = [row for row in fewshot.rows if row[0] in ("CoOp", "CoOp (paper)")]
    assert ours[1:4] == ["82.00 ± 2.16 (n=3)", "38.30 (n=1)", "40.00 (n=1)"]
    assert ours[4] == results.fmt(statistics.mean([82.0, 38.3])) + " (2/3)"
    # 92.43 lies outside 82 ± 2 * 2.16; one seed of dtd is too few to say; no published number for my_dataset
    assert paper[1:] == ["92.43 †", "64.20 ?", "-", results.fmt(statistics.mean([92.43, 64.20]))]
    assert "CoOp and CoOp (paper): averages over caltech101, dtd only" in fewshot.markdown()
    assert published.source_of("CoOp") in fewshot.markdown()

    # base-to-new on the 11 datasets, 3 seeds: the published average beside ours, marked against 2 std over seeds
    b2n = tables["base2new_average"]
    assert [r[0] for r in b2n.rows] == ["MuDPT", "MuDPT (paper)"]
    seed_hms = [hm(b, n) for b, n in [(82.0, 70.0), (83.0, 71.0), (84.0, 72.0)]]
    assert b2n.rows[0] == ["MuDPT", "11", "83.00 ± 0.82", "71.00 ± 0.82",
                           f"{hm(83.0, 71.0):.2f} ± {statistics.pstdev(seed_hms):.2f}", "3"]
    assert b2n.rows[1][2:5] == ["82.71", "74.50 †", "78.39 †"]

    # plots: a published bar only in the ViT-B/16 panel, right beside its method; none beside a toy-world bar
    panels = {world.short: [label for label, _ in bars] for world, bars, _ in
              results.base2new_bar_panels(report["summary"])}
    assert panels == {"ViT-B/16": ["MuDPT", "MuDPT (paper)"], "toy world": ["CoOp", "MuDPT", "ZeroshotCLIP"]}
    points = {world.short: {label: (seconds, round(value, 2)) for label, seconds, value, _ in p}
              for world, p in results.hm_time_points(report["summary"], report["cells"]).items()}
    assert points["toy world"] == {"CoOp": (12.0, round(hm(82.0, 30.0), 2)), "MuDPT": (30.0, round(hm(80.0, 38.3), 2)),
                                   "ZeroshotCLIP": (0.0, round(hm(50.0, 40.0), 2))}
    assert points["ViT-B/16"]["MuDPT"][0] == 100.0
    cost = tables["cost_base2new_toy_world"]
    assert cost.title.endswith("toy world, toy-ViT")
    assert [row[:4] for row in cost.rows if row[0] == "MuDPT"] == [["MuDPT", "1", "2,048", "30.0"]]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["source"] for r in rows if r["world"] == "toy world, toy-ViT"} == {"ours"}
    assert {r["source"] for r in rows if r["world"] == "ViT-B/16"} == {"ours", "paper"}
    for name in ("fewshot_curves", "base2new_bars", "hm_vs_train_time"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_real_run_records_its_environment_and_cost(tmp_path):
    """One short training (tests.e2e.run_train: tiny random CLIP, 2 epochs) in deterministic mode, then its
    evaluation: both records say what they ran on and what they cost; the backends' flags come back after."""
    import torch

    from tests.e2e import run_train

    config = os.path.join(layout.REPO_ROOT, "configs", "trainers", "CoOp", "vit_b16_ep50.yaml")
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    train_dir, log = run_train(tmp_path, "CoOp", config, opts=["DETERMINISTIC", "True"])
    assert "Deterministic mode: torch.use_deterministic_algorithms(True)" in log
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    trained = record.read_result(str(train_dir))
    env, cost = trained.env, trained.cost
    assert env["torch"] == torch.__version__ and env["cuda"] == torch.version.cuda and "cudnn" in env
    assert env["device"].startswith("cpu") and env["precision"] == "amp (fp32)" and env["deterministic"] is True
    assert env["backbone"] == "random-tiny-ViT"
    n_ctx, width = 16, 64  # CoOp's context vectors in the tiny CLIP's text width
    assert cost["trainable_params"] == n_ctx * width
    assert cost["epochs_timed"] == 2 and 0 < cost["epoch_time_s"] * 2 <= cost["train_time_s"]
    assert 0 < cost["eval_time_s"] and cost["peak_memory_kind"] == "cpu_max_rss"
    import resource

    assert 50 < cost["peak_memory_mb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 0.1  # rounded
    from mmpt.experiments.config import config_from_argv

    assert config_from_argv(["--trainer", "CoOp", "--config-file", config, "--deterministic"]).DETERMINISTIC
    assert not config_from_argv(["--trainer", "CoOp", "--config-file", config]).DETERMINISTIC
    eval_dir, _ = run_train(tmp_path, "CoOp", config, eval_only=True, model_dir=train_dir, load_epoch=2)
    evaluated = record.read_result(str(eval_dir))
    assert evaluated.cost["train_time_s"] is None and evaluated.cost["epochs_timed"] == 0
    assert evaluated.cost["eval_time_s"] > 0 and evaluated.env["deterministic"] is False
