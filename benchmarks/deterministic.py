"""What deterministic mode costs: whole training runs (train.py, in this process) with DETERMINISTIC off and on.

    python benchmarks/deterministic.py                         # CoOp on the toy world, CPU, 2 epochs, 3 repeats
    python benchmarks/deterministic.py --trainers CoOp MaPLe --epochs 3 --repeats 5 --device cuda

Each run is the toy_demo config of the trainer (configs/trainers/<Trainer>/toy_demo.yaml, toy-ViT, the toy
world generated once into a temp folder); off and on run interleaved within each repeat (a load spike from
another process hits both alike). The figure is the median over repeats of the run's training time as its result
record gives it (cost.train_time_s: trainer.train() less the final test), and on / off. The final test accuracy
of each run is printed too: with a fixed seed the off and on runs of one trainer agree on the CPU.
"""
import argparse
import os
import os.path as osp
import statistics
import sys
import tempfile

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

import train  # noqa: E402
from mmpt.data import toy_world  # noqa: E402
from mmpt.experiments import layout, record  # noqa: E402


def one_run(trainer, data_root, output_dir, epochs, deterministic, device):
    args = ["--root", data_root, "--seed", "1", "--trainer", trainer,
            "--dataset-config-file", layout.dataset_config_file("toy_world"),
            "--config-file", layout.method(trainer).config_file("toy_demo", layout.REPO_ROOT),
            "--output-dir", output_dir, "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base",
            "OPTIM.MAX_EPOCH", str(epochs), "VERBOSE", "False", "USE_CUDA", str(device == "cuda"),
            "DETERMINISTIC", str(deterministic)]
    train.main(train.get_parser().parse_args(args))
    return record.read_result(output_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainers", nargs="+", default=["CoOp"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="mmpt-deterministic-")
    data_root = osp.join(work, "data")
    toy_world.make_dataset("ToyWorld", data_root)
    rows = []
    for trainer in args.trainers:
        times = {False: [], True: []}
        accuracy = {}
        for repeat in range(args.repeats):
            for deterministic in (False, True):
                out = osp.join(work, f"{trainer}-{int(deterministic)}-{repeat}")
                result = one_run(trainer, data_root, out, args.epochs, deterministic, args.device)
                times[deterministic].append(result.cost["train_time_s"])
                accuracy[deterministic] = result.accuracy
                device = result.env["device"]
        off, on = statistics.median(times[False]), statistics.median(times[True])
        rows.append((trainer, off, on, accuracy[False], accuracy[True], device))
    print(f"torch {torch.__version__}, {args.epochs} epochs, median of {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs visible")
    print("| trainer | device | train time off (s) | on (s) | on / off | accuracy off | on |")
    print("|---|---|---|---|---|---|---|")
    for trainer, off, on, acc_off, acc_on, device in rows:
        print(f"| {trainer} | {device} | {off:.2f} | {on:.2f} | {on / off:.2f} | {acc_off:.2f} | {acc_on:.2f} |")


if __name__ == "__main__":
    main()
