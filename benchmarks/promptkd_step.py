"""PromptKD's training step: ours (the frozen teacher's text features once, its image pass under no_grad) against
the release's (the teacher's text features of all classes recomputed in every batch, also under no_grad).

    python benchmarks/promptkd_step.py                                   # ViT-L/14 and ViT-B/16 teachers, 100 classes
    python benchmarks/promptkd_step.py --teachers random-ViT-L/14 --classes 100 1000 --batch 8 --device cuda
    python benchmarks/promptkd_step.py --teachers random-tiny-ViT --student random-tiny-ViT --classes 10   # smoke

Random backbones (the architecture sets the cost): a PromptSRC teacher (4 + 4 tokens, depth 9 + 9, or the
backbone's layers if fewer) and a ViT-B/16 student (4 tokens x 9 layers + projector), PREC as the config's
("amp": bf16 autocast on CUDA, fp32 on CPU). Both variants run the same student forward, KL loss and backward;
"release" only drops the cached teacher text features before every step. Ratio = release / ours (median wall
time; the CPU-time ratio beside it is the fair one on a shared machine).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402
from benchmarks.models import build_clip, declared_methods  # noqa: E402


def build_pair(teacher_backbone, student_backbone, classnames, device, prec):
    import mmpt
    from mmpt.prompt_trainer import freeze_all_but_prompt_learner
    from mmpt.prompted_clip import layer_counts
    from trainers.promptkd import PromptKD, PromptKDCLIP

    declared_methods()
    teacher_clip = build_clip(teacher_backbone)
    depth = min(9, *layer_counts(teacher_clip))
    teacher = mmpt.create_model("PromptSRC", teacher_clip, classnames, N_CTX_TEXT=4, N_CTX_VISION=4,
                                PROMPT_DEPTH_TEXT=depth, PROMPT_DEPTH_VISION=depth, PREC=prec)
    student_clip = build_clip(student_backbone)
    config = PromptKD.make_config(PROMPT_DEPTH_VISION=min(9, layer_counts(student_clip)[1]), PREC=prec)
    student = PromptKDCLIP(student_clip, classnames, config, teacher=teacher)
    freeze_all_but_prompt_learner(student)
    return student.to(device), config


def step_fn(student, config, images, labels, precision, optimizer, per_batch_text):
    from trainers.promptkd import PromptKD

    def step():
        if per_batch_text:  # the release: the teacher's text tower on every class in every batch
            student.cached_teacher_features = None
        with precision.autocast():
            outputs = PromptKD.training_outputs(student, images, labels, None)
        loss, _ = PromptKD.training_loss(student, config, outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", nargs="+", default=["random-ViT-L/14", "random-ViT-B/16"])
    parser.add_argument("--student", default="random-ViT-B/16")
    parser.add_argument("--classes", nargs="+", type=int, default=[100])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prec", default="amp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmpt.precision import Precision

    print(harness.machine_line(args.device))
    rows = []
    for teacher_backbone in args.teachers:
        for n_classes in args.classes:
            classnames = harness.imagenet_classnames(n_classes)
            student, config = build_pair(teacher_backbone, args.student, classnames, args.device, args.prec)
            size = student.image_encoder.visual.input_resolution
            torch.manual_seed(0)
            images = torch.randn(args.batch, 3, size, size, device=args.device)
            labels = torch.zeros(args.batch, dtype=torch.long, device=args.device)
            precision = Precision(config.PREC, torch.device(args.device))
            optimizer = torch.optim.SGD(student.prompt_learner.parameters(), lr=1e-6)
            student.prompt_learner.train()
            steps = {name: step_fn(student, config, images, labels, precision, optimizer, per_batch)
                     for name, per_batch in (("ours", False), ("release", True))}
            print(f"teacher {teacher_backbone}, student {args.student}, {n_classes} classes, batch {args.batch}")
            times = harness.time_interleaved(steps, args.repeats, args.warmup, args.device)
            ours, release = (harness.median(times[n]["wall"]) for n in ("ours", "release"))
            ours_cpu, release_cpu = (harness.median(times[n]["cpu"]) for n in ("ours", "release"))
            rows.append([teacher_backbone.replace("random-", ""), n_classes, args.batch, f"{ours:.3f}",
                         f"{release:.3f}", f"{release / ours:.2f}x", f"{release_cpu / ours_cpu:.2f}x"])
            del student, optimizer
    print(harness.format_table(["teacher", "classes", "batch", "ours s/step", "release s/step",
                                "release / ours", "same, CPU time"], rows))


if __name__ == "__main__":
    main()
