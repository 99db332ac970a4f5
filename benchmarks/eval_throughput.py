"""Evaluation throughput (images/s): class text features cached once per evaluation vs recomputed per test batch.

    python benchmarks/eval_throughput.py                      # MuDPT, 100 classes, test batch 4, CPU-friendly
    python benchmarks/eval_throughput.py --classes 100 1000 --batch 4 32 --device cuda

Three ways to evaluate, timed interleaved per test batch (median over repeats, after warm-up):
- cached:         class features computed once (`model.class_features()`), then `model(images, class_features)`
                  per batch -- what PromptTrainer does (lever 2), with the other levers on;
- per batch:      `model(images)`, which recomputes the class features for every test batch, other levers on
                  (isolates lever 2);
- reference:      per batch on the 77-token nn.MultiheadAttention towers (benchmarks/reference.py) -- what the
                  reference codebases' `model_inference` does.
Images/s are for an evaluation of --eval-images images: cached = N / (text once + batches x cached batch time),
per batch = N / (batches x per-batch time), from the times measured in this run. "class features once" is also
timed with the shared prefix off (TEXT_SHARED_PREFIX False).

CoCoOp (text features depend on the image: nothing to cache) is timed per test batch with the shared prefix on
(one prefix per image, every class's suffix) and off (one plain text pass per image).
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks import harness  # noqa: E402
from mmpt.towers import vision_tower_of  # noqa: E402
from benchmarks.models import (Levers, LeverSwitch, build_clip, build_method, config_path,  # noqa: E402
                               load_cfg, trainable_methods, precision_context, resolved_precision)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser)
    parser.add_argument("--batch", nargs="+", type=int, default=[4], help="test batch size(s)")
    parser.add_argument("--eval-images", type=int, default=1000, help="size of the evaluation the images/s refer to")
    parser.add_argument("--precision", default="default", choices=["default", "fp32", "bf16", "fp16"],
                        help="autocast of our configurations (default: bf16 on CUDA, fp32 on CPU)")
    return parser.parse_args(argv)


class EvalBench:
    def __init__(self, model, clip_model, device, precision="default"):
        self.model = model.eval()
        self.switch = LeverSwitch(model, clip_model)
        self.device = device
        self.on = Levers(precision=precision)

    def run(self, levers, fn):
        self.switch.install(levers, self.device)
        with torch.no_grad(), precision_context(levers, self.device):
            return fn()

    def class_features(self):
        return self.run(self.on, self.model.class_features)

    def class_features_unshared(self):
        return self.run(self.on.but(share_prefix=False), self.model.class_features)

    def per_image_evaluators(self, images):
        """Text depends on the image (CoCoOp): every test batch runs the text tower, shared prefix on vs off."""
        return {
            "per batch, shared prefix on": lambda: self.run(self.on, lambda: self.model(images)),
            "per batch, shared prefix off": lambda: self.run(self.on.but(share_prefix=False), lambda: self.model(images)),
        }

    def evaluators(self, images, cached_features):
        return {
            "cached": lambda: self.run(self.on, lambda: self.model(images, class_features=cached_features)),
            "per batch": lambda: self.run(self.on, lambda: self.model(images)),
            "reference (per batch, 77 tokens, MHA)": lambda: self.run(Levers.reference(), lambda: self.model(images)),
        }


def measure(bench, n_classes, batch_size, resolution, args):
    images = torch.randn(batch_size, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(args.device)
    bench.class_features()  # warm-up
    cached_features = bench.class_features()
    steps = {"class features once": bench.class_features, "class features once, shared prefix off":
             bench.class_features_unshared, **bench.evaluators(images, cached_features)}
    times = harness.time_interleaved(steps, args.repeats, args.warmup, args.device)
    return {clock: {name: harness.median(t[clock]) for name, t in times.items()} for clock in ("wall", "cpu")}


def throughputs(times, batch_size, n_images):
    """images/s of an evaluation of n_images: cached pays the class features once, the others every batch."""
    n_batches = math.ceil(n_images / batch_size)
    result = {"cached": n_images / (times["class features once"] + n_batches * times["cached"])}
    for name in times:
        if not name.startswith("class features once") and name != "cached":
            result[name] = n_images / (n_batches * times[name])
    return result


def report(trainer_name, n_classes, batch_size, times, n_images):
    wall = throughputs(times["wall"], batch_size, n_images)
    cpu = throughputs(times["cpu"], batch_size, n_images)
    rows = [[name, f"{times['wall'][name]:.3f}", f"{times['cpu'][name]:.3f}", f"{wall[name]:.2f}",
             f"{wall['cached'] / wall[name]:.2f}x", f"{cpu['cached'] / cpu[name]:.2f}x"] for name in wall]
    print(f"\n{trainer_name}, {n_classes} classes, test batch {batch_size}, evaluation of {n_images} images "
          f"(class features once: {times['wall']['class features once']:.3f} s wall)")
    print(harness.format_table(["evaluation", "wall s per batch", "CPU s per batch", "images/s (wall)",
                                "cached speed-up (wall)", "(CPU)"], rows))
    # how the ratio moves with the test batch: the per-batch text cost is fixed, the image cost grows with B
    image_time = times["cpu"]["cached"]
    text_time = times["cpu"]["per batch"] - image_time
    extrapolated = ", ".join(f"B={b}: {1 + text_time / (image_time * b / batch_size):.1f}x" for b in (1, 4, 32, 100))
    reference = "reference (per batch, 77 tokens, MHA)"
    print(f"=> {trainer_name} {n_classes} classes, batch {batch_size}: cached vs per batch "
          f"{wall['cached'] / wall['per batch']:.2f}x wall / {cpu['cached'] / cpu['per batch']:.2f}x CPU; "
          f"cached vs reference {wall['cached'] / wall[reference]:.2f}x wall / {cpu['cached'] / cpu[reference]:.2f}x CPU")
    print(f"   cached vs per batch by test batch size, extrapolated from the CPU times (image time linear in B): "
          f"{extrapolated}")
    unshared = "class features once, shared prefix off"
    print(f"=> {trainer_name} {n_classes} classes: class features once with the shared prefix on vs off: "
          f"{times['wall'][unshared] / times['wall']['class features once']:.2f}x wall / "
          f"{times['cpu'][unshared] / times['cpu']['class features once']:.2f}x CPU faster")


def eval_records(args, trainer_name, n_classes, batch_size, times):
    """One JSON record per timed evaluation row (see --json); images/s for an evaluation of --eval-images."""
    n_batches = math.ceil(args.eval_images / batch_size)
    precision = resolved_precision(Levers(precision=args.precision), args.device)
    records = []
    for name, wall in times["wall"].items():
        if name == "cached":
            images_per_s = args.eval_images / (times["wall"]["class features once"] + n_batches * wall)
        elif name.startswith("class features once"):
            images_per_s = None
        else:
            images_per_s = args.eval_images / (n_batches * wall)
        records.append({"benchmark": "eval", "device": harness.device_name(args.device), "trainer": trainer_name,
                        "classes": n_classes, "batch": batch_size, "configuration": name, "precision": precision,
                        "wall_s": wall, "cpu_s": times["cpu"][name], "images_per_s": images_per_s})
    return records


def measure_per_image(bench, batch_size, resolution, args):
    images = torch.randn(batch_size, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)).to(args.device)
    times = harness.time_interleaved(bench.per_image_evaluators(images), args.repeats, args.warmup, args.device)
    return {clock: {name: harness.median(t[clock]) for name, t in times.items()} for clock in ("wall", "cpu")}


def report_per_image(trainer_name, n_classes, batch_size, times, n_images):
    n_batches = math.ceil(n_images / batch_size)
    rows = [[name, f"{times['wall'][name]:.3f}", f"{times['cpu'][name]:.3f}",
             f"{n_images / (n_batches * times['wall'][name]):.2f}"] for name in times["wall"]]
    print(f"\n{trainer_name}, {n_classes} classes, test batch {batch_size} (text features per image)")
    print(harness.format_table(["evaluation", "wall s per batch", "CPU s per batch", "images/s (wall)"], rows))
    on, off = "per batch, shared prefix on", "per batch, shared prefix off"
    print(f"=> {trainer_name} {n_classes} classes, batch {batch_size}: evaluation with the shared prefix on vs off: "
          f"{times['wall'][off] / times['wall'][on]:.2f}x wall / {times['cpu'][off] / times['cpu'][on]:.2f}x CPU faster")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {harness.machine_line(args.device)}")
    print(f"backbone {args.backbone}, {args.repeats} repeats after {args.warmup} warm-up, device {args.device}")
    clip_model = build_clip(args.backbone).to(args.device)
    for trainer_name in (trainable_methods() if args.trainers == ["all"] else args.trainers):
        cfg = load_cfg(trainer_name, config_path(trainer_name, args.config), args.backbone, args.opts)
        for n_classes in args.classes:
            model = build_method(trainer_name, cfg, harness.imagenet_classnames(n_classes), clip_model).to(args.device)
            bench = EvalBench(model, clip_model, args.device, args.precision)
            if model.compute_prompts().depends_on_image:  # CoCoOp: nothing to cache; shared prefix on vs off
                for batch_size in args.batch:
                    times = measure_per_image(bench, batch_size, vision_tower_of(clip_model).image_size, args)
                    report_per_image(trainer_name, n_classes, batch_size, times, args.eval_images)
                    harness.append_records(args.json, eval_records(args, trainer_name, n_classes, batch_size, times))
                continue
            for batch_size in args.batch:
                times = measure(bench, n_classes, batch_size, vision_tower_of(clip_model).image_size, args)
                report(trainer_name, n_classes, batch_size, times, args.eval_images)
                harness.append_records(args.json, eval_records(args, trainer_name, n_classes, batch_size, times))


if __name__ == "__main__":
    main()
