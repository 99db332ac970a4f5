"""mmpt.demo in pieces (a full demo run costs ~1 min of CPU: tests/test_sweep.py runs the same runner for real)."""
import os

from mmpt.experiments import demo, layout, sweep


def demo_jobs(tmp_path, epochs=1):
    return sweep.expand_grid(demo.DEMO_TRAINERS, ["base2new"], [demo.DEMO_DATASET[1]], seeds=[1],
                             data_root=str(tmp_path / "data"), output_root=str(tmp_path / "output"),
                             opts=demo.tiny_opts(epochs))


def test_demo_commands_are_valid_tiny_configs(tmp_path):
    import train  # the repository's train.py: the commands must parse into configs on the tiny backbone

    jobs = demo_jobs(tmp_path, epochs=3)
    assert [(j.trainer, j.stage) for j in jobs] == [("MuDPT", "base2new_train"), ("MuDPT", "base2new_test_new"),
                                                     ("CoOp", "base2new_train"), ("CoOp", "base2new_test_new")]
    for job in jobs:
        cfg = train.setup_cfg(train.get_parser().parse_args(job.argv[2:]))
        assert cfg.MODEL.BACKBONE.NAME == "random-tiny-ViT" and cfg.OPTIM.MAX_EPOCH == 3
        assert cfg.INPUT.SIZE == (32, 32) and cfg.DATALOADER.NUM_WORKERS == 0
        assert cfg.TRAINER.MUDPT.PROMPT_DEPTH == 2  # the tiny backbone has 2 layers
        if not job.trains:
            assert job.argv[job.argv.index("--load-epoch") + 1] == "3"


def test_demo_data_is_made_once(tmp_path):
    root = demo.make_demo_data(str(tmp_path / "data"))
    folder = os.path.join(root, "caltech-101", "101_ObjectCategories")
    classes = sorted(os.listdir(folder))
    assert len(classes) >= 4
    before = os.path.getmtime(os.path.join(folder, classes[0]))
    demo.make_demo_data(str(tmp_path / "data"))
    assert os.path.getmtime(os.path.join(folder, classes[0])) == before


def test_demo_orchestration_on_finished_runs(tmp_path):
    """With every run already finished, the demo skips them and prints the banner, the sweep and the tables."""
    accuracy = {"MuDPT": (80.0, 60.0), "CoOp": (70.0, 40.0)}
    for job in demo_jobs(tmp_path, epochs=2):
        os.makedirs(job.output_dir)
        base, new = accuracy[job.trainer]
        text = f"Finish training\n=> result\n* accuracy: {base}%\n" if job.trains else f"=> result\n* accuracy: {new}%\n"
        with open(os.path.join(job.output_dir, "log.txt"), "w") as f:
            f.write(text)
    lines = []
    code, report = demo.run_demo(str(tmp_path), epochs=2, echo=lines.append)
    assert code == 0
    assert lines[0] == demo.BANNER and lines[-1] == demo.BANNER and "RANDOM" in demo.BANNER
    assert any("4 runs (4 already finished)" in line for line in lines)
    assert report["summary"]["MuDPT"]["average"]["hm"] == 2 * 80 * 60 / 140
    assert any("| MuDPT | 1 | 80.00 | 60.00 | 68.57 |" in line for line in lines)
    assert os.path.getsize(report["files"]["base2new_bars"]) > 1024
    first = demo_jobs(tmp_path, epochs=2)[0]
    assert layout.is_done(first.output_dir, first.trains)  # skipped, not rerun: the fake log is still there
    assert "stdout.log" not in os.listdir(first.output_dir)
