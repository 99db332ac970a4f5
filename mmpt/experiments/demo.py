"""The first command to run: `python -m mmpt.demo` (no downloads, CPU, a few minutes).

It generates the toy world (mmpt.data.toy_world: 36 colour-shape classes, 18 base and 18 new combinations),
then runs zero-shot CLIP and every prompt-tuning method through the base-to-new protocol (train on the base
classes with 16 shots, test on base and on new) with the sweep runner -- the same train.py commands and output
folders as scripts/<trainer>/base2new_*.sh -- on `toy-ViT`, the tiny CLIP pretrained on the toy world's base
combinations and shipped with the package (mmpt.toy_clip). It prints the results table (python -m mmpt.results)
and a text chart of it; the same chart is saved as a PNG.

Each trainer runs its `configs/trainers/<Trainer>/toy_demo.yaml`: the paper's prompt settings with a short
schedule, 32 px input and no data-loader workers (see docs/TOY_WORLD.md).

    python -m mmpt.demo [--output DIR] [--epochs N] [--trainers CoOp MaPLe ...]
"""
import argparse
import os.path as osp
import sys
import tempfile
import time

from mmpt.experiments import results, sweep

DEMO_DATASET = ("ToyWorld", "toy_world")  # (registry name, dataset config name)
DEMO_CONFIG = "toy_demo"  # configs/trainers/<Trainer>/toy_demo.yaml
# zero-shot first, then the methods in the order of their papers (as README's method list)
DEMO_TRAINERS = ["ZeroshotCLIP", "CoOp", "CoCoOp", "KgCoOp", "MaPLe", "PromptSRC", "TCP", "MMA", "MPL", "MuDPT"]
BANNER = ("Base-to-new on the toy world with toy-ViT, a tiny CLIP pretrained on all 36 colour-shape classes "
          "(as CLIP's corpus holds the benchmarks' new classes too); prompts are tuned on 16 shots of the 18 base "
          "classes, photographed in the benchmark's own per-class look.")
TABLE_NOTE = ("Reproduced from the real benchmarks: zero-shot transfer to the new classes is strong; CoOp gains on "
              "the base classes and loses on the new ones; KgCoOp, PromptSRC and TCP keep the new classes near "
              "zero-shot. Not reproduced: CoCoOp and the other multi-modal methods beat CoOp on the new classes by "
              "less than the spread between seeds, and every gap is smaller than on real data (docs/TOY_WORLD.md).")
CHART_WIDTH = 40


def demo_opts(epochs=None):
    """Overrides on top of the toy_demo configs (none but the epoch count, when asked for)."""
    return ["OPTIM.MAX_EPOCH", str(epochs)] if epochs else []


def demo_jobs(data_root, output_root, epochs=None, trainers=None):
    jobs = {}  # each run once: PromptKD's grid holds its PromptSRC teacher, which may be a demo run of its own
    for trainer in trainers or DEMO_TRAINERS:
        for job in sweep.expand_grid([trainer], ["base2new"], [DEMO_DATASET[1]], seeds=[1], cfg=DEMO_CONFIG,
                                     data_root=data_root, output_root=output_root, opts=demo_opts(epochs)):
            jobs.setdefault(job.id, job)
    return list(jobs.values())


def make_demo_data(data_root):
    from mmpt.data import toy_world

    return toy_world.make_dataset(DEMO_DATASET[0], data_root)


def text_chart(summary, width=CHART_WIDTH):
    """Base / new / HM of each method as bars of '#' (100% = `width` characters)."""
    lines = []
    for method, entry in summary.items():
        average = entry["average"]
        for key in ("base", "new", "hm"):
            value = average[key]
            lines.append(f"{method if key == 'base' else '':>12} {key:>4} {'#' * round(value / 100 * width):<{width}} "
                         f"{value:6.2f}")
    return lines


def demo_table(summary, trainers):
    """The base / new / HM table of the demo's trainers in the demo's order (zero-shot first, then by paper)."""
    lines = ["| method | base | new | HM |", "|---|---|---|---|"]
    for trainer in trainers:
        if trainer in summary:
            average = summary[trainer]["average"]
            lines.append(f"| {trainer} | {average['base']:.2f} | {average['new']:.2f} | {average['hm']:.2f} |")
    return lines


def run_demo(output=None, epochs=None, trainers=None, echo=print):
    """Generate the data, run the grid, print the tables; returns (exit code, the results dict)."""
    start = time.time()
    output = osp.abspath(output or tempfile.mkdtemp(prefix="mmpt-demo-"))
    echo(BANNER)
    data_root = osp.join(output, "data")
    echo(f"The toy world is in {make_demo_data(data_root)}")
    output_root = osp.join(output, "output")
    jobs = demo_jobs(data_root, output_root, epochs, trainers)
    command = f"python -m mmpt.demo --output {output}" + (f" --epochs {epochs}" if epochs else "")
    manifest = sweep.Manifest(output_root, command=command)
    skipped, pending = sweep.prepare(jobs, manifest)
    echo(f"Base-to-new with {', '.join(trainers or DEMO_TRAINERS)}: {len(jobs)} runs ({skipped} already "
         f"finished), each one train.py command (see {manifest.path})")
    sweep.LocalRunner(manifest, [None], echo=echo, progress=True).run(jobs)
    failed = sweep.summarize(manifest, jobs, echo)
    report = results.write_report(output_root, echo=echo)
    for line in text_chart(report["summary"]):
        echo(line)
    echo("")
    for line in demo_table(report["summary"], trainers or DEMO_TRAINERS) + ["", TABLE_NOTE]:
        echo(line)
    echo(f"Done in {time.time() - start:.0f} s; everything is in {output}")
    return (1 if failed else 0), report


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mmpt.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=None, help="folder for the data and outputs (default: a new temp folder)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (default: the toy_demo configs')")
    p.add_argument("--trainers", nargs="+", default=None, help=f"default: {' '.join(DEMO_TRAINERS)}")
    args = p.parse_args(argv)
    code, _ = run_demo(args.output, args.epochs, args.trainers)
    return code


if __name__ == "__main__":
    sys.exit(main())
