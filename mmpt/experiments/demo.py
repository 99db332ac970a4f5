"""The first command to run: `python -m mmpt.demo` (no weights, no data, CPU, about a minute).

It generates a small image dataset (mmpt.data.fixtures, Caltech101's real layout), runs MuDPT and CoOp through
the base-to-new protocol (train on the base half, test on the new half) with the sweep runner -- the same
train.py commands and output folders as scripts/<trainer>/base2new_*.sh -- on a RANDOM tiny CLIP
(`random-tiny-ViT`), then prints the results tables (python -m mmpt.results). The backbone is random: the
numbers test the pipeline, not the method.

    python -m mmpt.demo [--output DIR] [--epochs N]
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
import time

from mmpt.experiments import results, sweep

DEMO_DATASET = ("Caltech101", "caltech101")  # (registry name for the fixture, dataset config name)
DEMO_TRAINERS = ["MuDPT", "CoOp"]
BANNER = ("NOTE: this demo uses a RANDOM tiny CLIP (random-tiny-ViT, 32 px) on a generated dataset: "
          "its accuracies test the pipeline, not the method.")


def tiny_opts(epochs):
    """Config overrides that make every trainer run in seconds on a CPU."""
    return ["MODEL.BACKBONE.NAME", "random-tiny-ViT", "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", str(epochs),
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "32",
            "TRAIN.PRINT_FREQ", "1", "VERBOSE", "False", "TRAINER.MUDPT.PROMPT_DEPTH", "2",
            "TRAINER.MUDPT.INJECTION_WIDTH", "64", "TRAINER.MUDPT.INJECTION_HEADS", "2"]


def make_demo_data(data_root, num_classes=10, images_per_class=20):
    from mmpt.data.fixtures import make_dataset

    marker = osp.join(data_root, ".mmpt-demo-data")
    if not osp.exists(marker):
        os.makedirs(data_root, exist_ok=True)
        make_dataset(DEMO_DATASET[0], data_root, num_classes=num_classes, images_per_class=images_per_class)
        open(marker, "w").close()
    return data_root


def run_demo(output=None, epochs=5, echo=print):
    """Generate the data, run the grid, print the tables; returns (exit code, the results dict)."""
    start = time.time()
    output = osp.abspath(output or tempfile.mkdtemp(prefix="mmpt-demo-"))
    echo(BANNER)
    data_root = make_demo_data(osp.join(output, "data"))
    echo(f"Generated a {DEMO_DATASET[0]}-layout dataset in {data_root}")
    output_root = osp.join(output, "output")
    jobs = sweep.expand_grid(DEMO_TRAINERS, ["base2new"], [DEMO_DATASET[1]], seeds=[1], data_root=data_root,
                             output_root=output_root, opts=tiny_opts(epochs))
    manifest = sweep.Manifest(output_root, command=f"python -m mmpt.demo --output {output} --epochs {epochs}")
    skipped, pending = sweep.prepare(jobs, manifest)
    echo(f"Base-to-new with {' and '.join(DEMO_TRAINERS)}: {len(jobs)} runs ({skipped} already finished), "
         f"each one train.py command (see {manifest.path})")
    sweep.LocalRunner(manifest, [None], echo=echo, progress=True).run(jobs)
    failed = sweep.summarize(manifest, jobs, echo)
    report = results.write_report(output_root, echo=echo)
    echo(f"Done in {time.time() - start:.0f} s; everything is in {output}")
    echo(BANNER)
    return (1 if failed else 0), report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mmpt.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=None, help="folder for the data and outputs (default: a new temp folder)")
    p.add_argument("--epochs", type=int, default=5, help="training epochs per run (default 5)")
    args = p.parse_args(argv)
    code, _ = run_demo(args.output, args.epochs)
    return code


if __name__ == "__main__":
    sys.exit(main())
