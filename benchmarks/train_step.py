"""Training-step time and peak memory per trainer, each lever on vs off, and all levers on vs all off.

    python benchmarks/train_step.py                                   # MuDPT, 100 classes, batch 4, CPU-friendly
    python benchmarks/train_step.py --trainers MuDPT MaPLe CoOp --classes 10 100 1000 --repeats 5 --device cuda
    python benchmarks/train_step.py --trainers all --classes 100 --only "shared prefix off" --limit --no-memory

A step = zero_grad, forward (both towers), cross-entropy, backward (through the frozen towers to the prompts),
SGD step, on random images and real ImageNet class names, with the method model built by `mmpt.create_model`
on a random backbone (the architecture, not the weights, sets the cost). Configurations
run interleaved inside each repeat; the time is the median over repeats after warm-up. "all off" is the
reference implementations' computation: 77-token text tower and CLIP's own nn.MultiheadAttention blocks
(benchmarks/reference.py), fp32 on CPU / fp16 on CUDA. Peak memory: see benchmarks/harness.py.

--method-loss times the method's own training step (its declared training_outputs and loss terms, as
PromptTrainer runs them: MMRL's read-out CE and cosine terms, KgCoOp / TCP's knowledge-guided term) instead of
the cross-entropy of the "itm" logits. "frozen blocks every step (official)" (methods whose first text input is
deep: MMRL, MMA) is the official code's shape: the whole text tower every step, and (MMRL) the frozen image pass
on all its blocks instead of from the prompted pass's states before its first input.

--limit --frozen-image adds a third tower to the limit, CLIP's image tower forward without prompts on all its blocks
(MMRL's loss needs the frozen image features of the batch).

--limit adds the physical limit of a step: the image tower's forward (+ backward where visual prompts learn) on
the batch, plus the text tower's forward + backward on the class prompts with the prefix shared, each timed
alone (prompts as leaf tensors, nothing else); the step is reported as a multiple of their sum.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks import harness  # noqa: E402
from mmpt.towers import vision_tower_of  # noqa: E402
from mmpt.encoders import TowerSchedule  # noqa: E402
from mmpt.frozen_blocks import first_input_layer  # noqa: E402
from benchmarks.models import (Levers, LeverSwitch, build_clip, build_method, config_path,  # noqa: E402
                               load_cfg, trainable_methods, precision_context, resolved_precision, trainable_parameters,
                               trainer_class)


def lever_configs(device, chunk_size, cpu_bf16):
    """{name: Levers}: all on, each lever off alone, all off; the memory lever (chunk + checkpoint) on."""
    on = Levers()
    configs = {
        "all on": on,
        "shared prefix off": on.but(share_prefix=False),
        "text truncation off (77 tokens)": on.but(truncate=False, share_prefix=False),
        "SDPA off (nn.MultiheadAttention)": on.but(sdpa=False, share_prefix=False),
    }
    if torch.device(device).type == "cuda":
        configs["precision off (fp32)"] = on.but(precision="fp32")
        configs["precision fp16 + GradScaler"] = on.but(precision="fp16")
    elif cpu_bf16:
        configs["bf16 autocast on CPU"] = on.but(precision="bf16")
    configs[FULL_TEXT_PASS] = on.but(cache_frozen_blocks=False)
    configs[f"text chunks of {chunk_size} + checkpointing"] = on.but(chunk_size=chunk_size, checkpoint=True)
    configs["all off (reference)"] = Levers.reference()
    return configs


FULL_TEXT_PASS = "frozen blocks every step (official)"


class StepBench:
    """One method model (trainer x classes) and a training step under any lever configuration."""

    def __init__(self, trainer_name, n_classes, clip_model, args):
        device, batch_size = args.device, args.batch
        cfg = load_cfg(trainer_name, config_path(trainer_name, args.config), args.backbone, args.opts)
        self.model = build_method(trainer_name, cfg, harness.imagenet_classnames(n_classes), clip_model).to(device)
        self.switch = LeverSwitch(self.model, clip_model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=1e-3, momentum=0.9)
        resolution = vision_tower_of(clip_model).image_size
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch_size, 3, resolution, resolution, generator=generator).to(device)
        self.labels = torch.randint(0, n_classes, (batch_size,), generator=generator).to(device)
        self.device = device
        self.scaler = torch.amp.GradScaler(torch.device(device).type)
        self.n_trainable = trainable_parameters(self.model)
        # PromptTrainer computes the class features of a text side with nothing to learn (VPT) once: so here
        self.constant_features = {}
        self.trainer = trainer_class(trainer_name)
        self.text_is_constant = self.trainer.text_is_constant  # declared by the method
        self.method_loss = args.method_loss
        self.config = self.trainer.make_config(**dict(cfg.TRAINER[self.trainer.cfg_node])) if args.method_loss else None
        with torch.no_grad():
            schedule = self.model.compute_prompts().text_schedule()
        self.first_text_input = first_input_layer(schedule, len(self.model.text_encoder.transformer.resblocks))

    def class_features(self, levers):
        if not self.text_is_constant:
            return None
        if levers not in self.constant_features:
            with torch.no_grad():
                self.constant_features[levers] = self.model.class_features()
        return self.constant_features[levers]

    def step(self, levers):
        self.switch.install(levers, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with precision_context(levers, self.device):
            if self.method_loss:
                outputs = self.trainer.training_outputs(self.model, self.images, self.labels,
                                                        self.class_features(levers))
            else:
                logits = self.model(self.images, class_features=self.class_features(levers))
        if self.method_loss:
            loss = self.trainer.training_loss(self.model, self.config, outputs)[0]
        else:
            loss = F.cross_entropy(logits.float(), self.labels)
        if resolved_precision(levers, self.device) == "fp16" and levers.precision != "reference":
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def fixed_prompts(self):
        """(text (prompts, remove), visual (prompts, remove)) of the current parameters, computed once, outside
        any timing (CoCoOp: the per-image contexts of the batch)."""
        model = self.model
        with torch.no_grad():
            prompts = model.compute_prompts()
            text = prompts.text
            if prompts.depends_on_image:
                text = prompts.text_per_image(model.image_features(self.images, prompts))
        self.text_per_image = prompts.depends_on_image
        # adapters (MMA) are functions of the parameters: the towers alone backpropagate into those
        self._fixed_prompts = ((text, prompts.text_remove, prompts.text_adapters),
                               (prompts.vision, prompts.vision_remove, prompts.vision_adapters))

    def tower_prompts(self):
        """The fixed prompts as fresh leaf tensors that require grad (what a tower alone backpropagates into)."""
        def leaves(prompts):
            return None if prompts is None else [
                None if p is None else p.detach().requires_grad_(True) for p in prompts]
        (text, text_remove, text_adapters), (visual, visual_remove, visual_adapters) = self._fixed_prompts
        return (leaves(text), text_remove, text_adapters), (leaves(visual), visual_remove, visual_adapters)

    def image_tower_alone(self):
        """The image tower on the batch: forward, and backward into the visual prompts if there are any."""
        self.switch.install(Levers(), self.device)  # the configuration timed before may have switched levers off
        _, (prompts, remove, adapters) = self.tower_prompts()
        learns = any(p is not None for p in (prompts or []) + (adapters or []))
        with torch.set_grad_enabled(learns), precision_context(Levers(), self.device):
            features = self.model.image_encoder(self.images, TowerSchedule(prompts, remove, adapters))
        if learns:
            features.float().sum().backward()

    def text_tower_alone(self):
        """The text tower on every class prompt with the prefix shared: forward + backward into the text prompts
        (nothing when the text side learns nothing: PromptTrainer computes it once)."""
        if self.text_is_constant:
            return
        self.switch.install(Levers(), self.device)  # the configuration timed before may have switched levers off
        (prompts, remove, adapters), _ = self.tower_prompts()
        encoder = self.model.text_encoder
        with precision_context(Levers(), self.device):
            # the class sentences' text passes (one, or one per class-name length: CoOp middle / front)
            features = [
                encoder.per_prompt_set(p.token_ids, TowerSchedule(p.prompts, remove, adapters,
                                                                  placeholders=p.placeholders))
                if self.text_per_image else
                encoder(p.token_ids, TowerSchedule(p.prompts, remove, adapters, placeholders=p.placeholders,
                                                   shared_prompt_tokens=p.shared_prompt_tokens))
                for p in self.model.sentences.passes(prompts)]
        sum(f.float().sum() for f in features).backward()

    def frozen_image_tower_alone(self):
        """CLIP's image tower without prompts on the batch, forward only, all its blocks (MMRL's frozen features)."""
        self.switch.install(Levers(cache_frozen_blocks=False), self.device)
        with torch.no_grad(), precision_context(Levers(), self.device):
            self.model.image_encoder(self.images)

    def limit_steps(self, frozen_image=False):
        self.switch.install(Levers(), self.device)
        self.fixed_prompts()
        steps = {IMAGE_ALONE: self.image_tower_alone, TEXT_ALONE: self.text_tower_alone}
        return {**steps, FROZEN_IMAGE_ALONE: self.frozen_image_tower_alone} if frozen_image else steps

    def text_lengths(self):
        """"<truncated> / 77" tokens: the text tower's sequence length with and without lever 1."""
        ids = self.model.token_ids
        return f"{int(ids.argmax(dim=-1).max()) + 1} / {ids.shape[1]}"

    def applicable(self, configs):
        """The configurations that change something for this method (the frozen-block cache only where its first
        text input is deep)."""
        n_layers = len(self.model.text_encoder.transformer.resblocks)
        deep = 0 < self.first_text_input < n_layers and not self.text_is_constant
        return {name: levers for name, levers in configs.items() if deep or name != FULL_TEXT_PASS}

    def steps(self, configs):
        return {name: (lambda levers=levers: self.step(levers)) for name, levers in configs.items()}


IMAGE_ALONE = "limit: image tower alone"
TEXT_ALONE = "limit: text tower alone (prefix shared)"
FROZEN_IMAGE_ALONE = "limit: frozen image tower alone (forward)"
LIMIT = "physical limit (sum of the towers)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=25, help="classes per text-tower chunk (memory lever)")
    parser.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on CPU")
    parser.add_argument("--only", nargs="+", default=None, help="run only these configurations (names as printed)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--limit", action="store_true", help="also time the physical limit (each tower alone)")
    parser.add_argument("--frozen-image", action="store_true",
                        help="with --limit: the frozen image tower's forward is a third tower of the step (MMRL)")
    parser.add_argument("--method-loss", action="store_true",
                        help="time the method's own training step (its declared outputs and loss terms)")
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
    configs = bench.applicable(selected_configs(args))
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
    child_args += ["--method-loss"] if args.method_loss else []
    child_args += (["--only", *args.only] if args.only else []) + (["--opts", *args.opts] if args.opts else [])
    return harness.run_json_child("train_step.py", child_args)


def step_records(args, trainer_name, n_classes, configs, times, memory):
    """One JSON record per timed configuration (see --json)."""
    records = []
    for name, t in times.items():
        levers = configs.get(name)
        records.append({
            "benchmark": "train_step", "device": harness.device_name(args.device), "trainer": trainer_name,
            "classes": n_classes, "batch": args.batch, "configuration": name,
            "precision": resolved_precision(levers, args.device) if levers else resolved_precision(Levers(), args.device),
            "wall_s": harness.median(t["wall"]), "cpu_s": harness.median(t["cpu"]), "peak_bytes": memory.get(name)})
    return records


def report(trainer_name, n_classes, bench, times, memory):
    """Table of median wall / CPU time and peak memory per configuration, relative to "all on"."""
    wall = {name: harness.median(t["wall"]) for name, t in times.items()}
    cpu = {name: harness.median(t["cpu"]) for name, t in times.items()}
    limit_parts = [name for name in (IMAGE_ALONE, TEXT_ALONE, FROZEN_IMAGE_ALONE) if name in times]
    if limit_parts:
        for clock in (wall, cpu):
            clock[LIMIT] = sum(clock[name] for name in limit_parts)
    rows = []
    for name in wall:
        row = [name, f"{wall[name]:.2f}", f"{wall[name] / wall['all on']:.2f}x", f"{cpu[name]:.2f}",
               f"{cpu[name] / cpu['all on']:.2f}x"]
        if memory:
            row += ([harness.mib(memory[name]), f"{memory[name] / max(memory['all on'], 1):.2f}x"] if name in memory
                    else ["", ""])
        rows.append(row)
    headers = ["configuration", "step wall s", "wall / all on", "step CPU s", "CPU / all on"]
    headers += ["peak memory", "memory / all on"] if memory else []
    print(f"\n{trainer_name}, {n_classes} classes, text length {bench.text_lengths()} "
          f"({bench.n_trainable:,} trainable parameters)")
    print(harness.format_table(headers, rows))
    if FULL_TEXT_PASS in times:
        print(f"=> {trainer_name} {n_classes} classes: the frozen text blocks 1..{bench.first_text_input} once per "
              f"class list (and frozen image blocks shared): the official code's shape (full passes every step) takes "
              f"{wall[FULL_TEXT_PASS] / wall['all on']:.2f}x the wall time, {cpu[FULL_TEXT_PASS] / cpu['all on']:.2f}x "
              f"the CPU time")
    if "shared prefix off" in times:
        print(f"=> {trainer_name} {n_classes} classes: shared prefix on is {wall['shared prefix off'] / wall['all on']:.2f}x "
              f"faster than off (wall), {cpu['shared prefix off'] / cpu['all on']:.2f}x (CPU time)")
    if limit_parts:
        print(f"=> {trainer_name} {n_classes} classes: step = {wall['all on'] / wall[LIMIT]:.2f}x the physical limit "
              f"(wall), {cpu['all on'] / cpu[LIMIT]:.2f}x (CPU time); limit = image tower alone "
              f"{cpu[IMAGE_ALONE]:.2f} + text tower alone {cpu[TEXT_ALONE]:.2f}"
              + (f" + frozen image tower alone {cpu[FROZEN_IMAGE_ALONE]:.2f}" if FROZEN_IMAGE_ALONE in cpu else "")
              + " CPU s")
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
    for trainer_name in (trainable_methods() if args.trainers == ["all"] else args.trainers):
        for n_classes in args.classes:
            bench = StepBench(trainer_name, n_classes, clip_model, args)
            bench_configs = bench.applicable(configs)
            steps = {**bench.steps(bench_configs),
                     **(bench.limit_steps(args.frozen_image) if args.limit else {})}
            print(f"\n{trainer_name}, {n_classes} classes: timing {len(steps)} configurations")
            times = harness.time_interleaved(steps, args.repeats, args.warmup, args.device)
            memory = measure_memory(args, trainer_name, n_classes, bench, bench_configs)
            report(trainer_name, n_classes, bench, times, memory)
            harness.append_records(args.json, step_records(args, trainer_name, n_classes, bench_configs, times, memory))
            del bench


if __name__ == "__main__":
    main()
