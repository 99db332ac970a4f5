"""mmpt.demo in pieces (a full demo run costs minutes of CPU: tests/test_toy_methods.py trains the same configs)."""
import os

from mmpt.data import toy_world
from mmpt.experiments import demo, layout, record


def demo_jobs(tmp_path, epochs=None):
    return demo.demo_jobs(str(tmp_path / "data"), str(tmp_path / "output"), epochs)


def test_demo_commands_are_the_toy_configs(tmp_path):
    import train  # the repository's train.py: the commands must parse into configs on the toy backbone

    jobs = demo_jobs(tmp_path, epochs=3)
    expected = [("ZeroshotCLIP", "base2new_test_base"), ("ZeroshotCLIP", "base2new_test_new")]
    for trainer in demo.DEMO_TRAINERS[1:]:
        expected += [(trainer, "base2new_train"), (trainer, "base2new_test_new")]
    assert [(j.trainer, j.stage) for j in jobs] == expected
    for job in jobs:
        cfg = train.setup_cfg(train.get_parser().parse_args(job.argv[2:]))
        assert cfg.MODEL.BACKBONE.NAME == "toy-ViT" and cfg.DATASET.NAME == "ToyWorld"
        assert cfg.OPTIM.MAX_EPOCH == 3 and cfg.INPUT.SIZE == (32, 32) and cfg.DATALOADER.NUM_WORKERS == 0
        assert job.cfg == demo.DEMO_CONFIG
        if job.trains:
            assert job.argv[job.argv.index("DATASET.SUBSAMPLE_CLASSES") + 1] == "base"
        elif job.trainer != "ZeroshotCLIP":
            assert job.argv[job.argv.index("--load-epoch") + 1] == "3"
    # without --epochs the configs' own schedules apply
    assert all("OPTIM.MAX_EPOCH" not in job.argv for job in demo_jobs(tmp_path))


def test_demo_data_is_the_toy_world_made_once(tmp_path):
    root = str(tmp_path / "data")
    folder = demo.make_demo_data(root)
    assert sorted(os.listdir(os.path.join(folder, "images"))) == sorted(
        toy_world.folder_name(*c) for c in toy_world.all_classes())
    split = os.path.join(folder, toy_world.SPLIT_FILE)
    before = os.path.getmtime(split)
    demo.make_demo_data(root)
    assert os.path.getmtime(split) == before


def test_demo_orchestration_on_finished_runs(tmp_path):
    """With every run already finished, the demo skips them and prints the banner, the sweep, table and chart."""
    accuracy = {"ZeroshotCLIP": (50.0, 40.0), "CoOp": (70.0, 30.0), "CoCoOp": (65.0, 38.0), "KgCoOp": (66.0, 39.0),
                "MaPLe": (72.0, 41.0), "PromptSRC": (74.0, 43.0), "TCP": (69.0, 45.0), "MMA": (73.0, 44.0),
                "MPL": (71.0, 42.0), "MuDPT": (80.0, 60.0)}
    assert sorted(accuracy) == sorted(demo.DEMO_TRAINERS)
    jobs = demo_jobs(tmp_path)
    for job in jobs:
        os.makedirs(job.output_dir)
        base, new = accuracy[job.trainer]
        value = new if job.stage == "base2new_test_new" else base
        head = "Finish training\n" if job.trains else ""
        with open(os.path.join(job.output_dir, "log.txt"), "w") as f:
            f.write(f"{head}=> result\n* accuracy: {value}%\n")
        record.write_result(job.output_dir, record.RunResult(job.trainer, job.cfg, job.dataset, job.seed, job.shots,
                                                             "all", "test", value, 100 - value, value))
    lines = []
    code, report = demo.run_demo(str(tmp_path), echo=lines.append)
    assert code == 0
    assert lines[0] == demo.BANNER
    assert any(f"{len(jobs)} runs ({len(jobs)} already finished)" in line for line in lines)
    assert report["summary"]["MuDPT"]["average"]["hm"] == 2 * 80 * 60 / 140
    assert any("| MuDPT | 1 | 80.00 | 60.00 | 68.57 |" in line for line in lines)
    chart = [line for line in lines if line.rstrip().endswith("68.57") and "hm" in line]
    assert chart and chart[0].count("#") == round(68.57 / 100 * demo.CHART_WIDTH)
    assert os.path.getsize(report["files"]["base2new_bars"]) > 1024
    # the demo's own table ends the output: its trainers in its order (zero-shot first, then by paper), the note
    start = lines.index("| method | base | new | HM |")
    table = lines[start:start + len(demo.DEMO_TRAINERS) + 4]
    assert lines[start + len(table)].startswith("Done in") and table[:2] == ["| method | base | new | HM |", "|---|---|---|---|"] and table[-2:] == ["", demo.TABLE_NOTE]
    assert [row.split(" | ")[0][2:] for row in table[2:-2]] == demo.DEMO_TRAINERS
    assert "| MuDPT | 80.00 | 60.00 | 68.57 |" in table
    first = jobs[0]
    assert layout.is_done(first.output_dir, first.trains)  # skipped, not rerun: the fake record is still there
    assert "stdout.log" not in os.listdir(first.output_dir)
