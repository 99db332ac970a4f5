"""Training-step time and peak memory per trainer, each lever on vs off, and all levers on vs all off.

    python benchmarks/train_step.py                                   # MuDPT, 100 classes, batch 4, CPU-friendly
    python benchmarks/train_step.py --trainers MuDPT MaPLe CoOp --classes 10 100 1000 --repeats 5 --device cuda

A step = zero_grad, forward (both towers), cross-entropy, backward (through the frozen towers to the prompts),
SGD step, on random images and real ImageNet class names, with the method model built by `mmpt.create_model`
on a random backbone (the architecture, not the weights, sets the cost). Configurations
run interleaved inside each repeat; the time is the median over repeats after warm-up. "all off" is the
reference implementations' computation: 77-token text tower and CLIP's own nn.MultiheadAttention blocks
(benchmarks/reference.py), fp32 on CPU / fp16 on CUDA. Peak memory: see benchmarks/harness.py.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness  # noqa: E402
from benchmarks.models import (Levers, LeverSwitch, build_clip, build_method, config_path, load_cfg,  # noqa: E402
                               precision_context, resolved_precision, trainable_parameters)


def lever_configs(device, chunk_size, cpu_bf16):
    """{name: Levers}: all on, each lever off alone, all off; the memory lever (chunk + checkpoint) on."""
    on = Levers()
    configs = {
        "all on": on,
        "text truncation off (77 tokens)": on.but(truncate=False),
        "SDPA off (nn.MultiheadAttention)": on.but(sdpa=False),
    }
    if torch.device(device).type == "cuda":
        configs["precision off (fp32)"] = on.but(precision="fp32")
        configs["precision fp16 + GradScaler"] = on.but(precision="fp16")
    elif cpu_bf16:
        configs["bf16 autocast on CPU"] = on.but(precision="bf16")
    configs[f"text chunks of {chunk_size} + checkpointing"] = on.but(chunk_size=chunk_size, checkpoint=True)
    configs["all off (reference)"] = Levers.reference()
    return configs


class StepBench:
    """One method model (trainer x classes) and a training step under any lever configuration."""

    def __init__(self, trainer_name, n_classes, clip_model, args):
        device, batch_size = args.device, args.batch
        cfg = load_cfg(trainer_name, config_path(trainer_name, args.config), args.backbone, args.opts)
        self.model = build_method(trainer_name, cfg, harness.imagenet_classnames(n_classes), clip_model).to(device)
        self.switch = LeverSwitch(self.model, clip_model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=1e-3, momentum=0.9)
        resolution = clip_model.visual.input_resolution
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch_size, 3, resolution, resolution, generator=generator).to(device)
        self.labels = torch.randint(0, n_classes, (batch_size,), generator=generator).to(device)
        self.device = device
        self.scaler = torch.amp.GradScaler(torch.device(device).type)
        self.n_trainable = trainable_parameters(self.model)

    def step(self, levers):
        self.switch.install(levers, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(levers, self.device):
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        if resolved_precision(levers, self.device) == "fp16" and levers.precision != "reference":
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def text_lengths(self):
        """"<truncated> / 77" tokens: the text tower's sequence length with and without lever 1."""
        ids = self.model.token_ids
        return f"{int(ids.argmax(dim=-1).max()) + 1} / {ids.shape[1]}"

    def steps(self, configs):
        return {name: (lambda levers=levers: self.step(levers)) for name, levers in configs.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=25, help="classes per text-tower chunk (memory lever)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    parser.add_argument("--only", nargs="+", default=None, help="run only these configurations (names as printed)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the CPU memory child
    return parser.parse_args(argv)


def selected_configs(args):
    configs = lever_configs(args.device, args.chunk_size, args.cpu_bf16)
    if args.only:
        unknown = sorted(set(args.only) - set(configs))
        if unknown:
            raise SystemExit(f"--only {unknown}: unknown configuration; choose from {list(configs)}")
        configs = {name: configs[name] for name in configs if name in args.only or name == "all on"}
    return configs


def memory_only(args):
    """Child process: peak memory of one step per configuration, as JSON on the last line."""
    (trainer_name,), (n_classes,) = args.trainers, args.classes
    if args.threads:
        torch.set_num_threads(args.threads)
    clip_model = build_clip(args.backbone)
    bench = StepBench(trainer_name, n_classes, clip_model, args)
    configs = selected_configs(args)
    bench.step(Levers())  # optimizer state and one-time allocations happen before any measurement
    print(json.dumps({name: harness.peak_memory(lambda lv=levers: bench.step(lv), args.device)
                      for name, levers in configs.items()}))


def measure_memory(args, trainer_name, n_classes, bench, configs):
    if args.no_memory:
        return {}
    if torch.device(args.device).type == "cuda":
        return {name: harness.peak_memory(lambda lv=levers: bench.step(lv), args.device)
                for name, levers in configs.items()}
    child_args = ["--threads", str(args.threads), "--trainers", trainer_name, "--classes", str(n_classes), "--batch", str(args.batch),
                  "--backbone", args.backbone, "--device", "cpu", "--chunk-size", str(args.chunk_size), "--memory-only"]
    child_args += (["--config", args.config] if args.config else []) + (["--cpu-bf16"] if args.cpu_bf16 else [])
    child_args += (["--only", *args.only] if args.only else []) + (["--opts", *args.opts] if args.opts else [])
    return harness.run_json_child("train_step.py", child_args)


def report(trainer_name, n_classes, bench, times, memory):
    """Table of median wall / CPU time and peak memory per configuration, relative to "all on"."""
    wall = {name: harness.median(t["wall"]) for name, t in times.items()}
    cpu = {name: harness.median(t["cpu"]) for name, t in times.items()}
    rows = []
    for name in times:
        row = [name, f"{wall[name]:.2f}", f"{wall[name] / wall['all on']:.2f}x", f"{cpu[name]:.2f}",
               f"{cpu[name] / cpu['all on']:.2f}x"]
        if memory:
            row += [harness.mib(memory[name]), f"{memory[name] / max(memory['all on'], 1):.2f}x"]
        rows.append(row)
    headers = ["configuration", "step wall s", "wall / all on", "step CPU s", "CPU / all on"]
    headers += ["peak memory", "memory / all on"] if memory else []
    print(f"\n{trainer_name}, {n_classes} classes, text length {bench.text_lengths()} "
          f"({bench.n_trainable:,} trainable parameters)")
    print(harness.format_table(headers, rows))
    reference = "all off (reference)"
    if reference in times:
        line = (f"=> {trainer_name} {n_classes} classes: all levers on / all off = {wall['all on'] / wall[reference]:.2f} "
                f"wall time, {cpu['all on'] / cpu[reference]:.2f} CPU time ({wall[reference] / wall['all on']:.2f}x / "
                f"{cpu[reference] / cpu['all on']:.2f}x faster)")
        if memory:
            line += f", {memory['all on'] / max(memory[reference], 1):.2f} peak memory"
        print(line)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_only:
        return memory_only(args)
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {harness.machine_line(args.device)}")
    print(f"backbone {args.backbone}, batch {args.batch}, {args.repeats} repeats after {args.warmup} warm-up, "
          f"device {args.device}")
    print(f"peak memory: {harness.memory_method(args.device)}")
    clip_model = build_clip(args.backbone).to(args.device)
    configs = selected_configs(args)
    for trainer_name in args.trainers:
        for n_classes in args.classes:
            bench = StepBench(trainer_name, n_classes, clip_model, args)
            print(f"\n{trainer_name}, {n_classes} classes: timing {len(configs)} configurations")
            times = harness.time_interleaved(bench.steps(configs), args.repeats, args.warmup, args.device)
            memory = measure_memory(args, trainer_name, n_classes, bench, configs)
            report(trainer_name, n_classes, bench, times, memory)
            del bench


if __name__ == "__main__":
    main()
