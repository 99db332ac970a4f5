"""Trainable parameters per trainer and config file (configs/trainers/*/*.yaml) at ViT-B/16.

    python benchmarks/param_counts.py                       # every trainer and config, 100 classes
    python benchmarks/param_counts.py --trainers MuDPT MPL --classes 1000

Each model is built by `mmpt.create_model` on a random ViT-B/16 (parameter counts depend
on the architecture only) and counted as PromptTrainer trains it: every parameter of `prompt_learner`.
Config files are counted at ViT-B/16 whatever backbone they name (the count only depends on the text width and,
for visual prompts, the vision width). The "expected" column gives the published / official figures where
they exist; "ok" says whether the count matches.
"""
import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import harness  # noqa: E402
from benchmarks.models import build_clip, build_method, declared_methods, load_cfg, trainable_parameters  # noqa: E402

# Official / published counts come from the declarations (`parameter_counts`: {config name: count at ViT-B/16}).
# counts that follow from the architecture alone (CoOp: n x 512; CoCoOp's n = 4 + Meta-Net 512-32-512, as in
# MaPLe's parameter table)
def _n_ctx(node):
    """CoOp / CoCoOp: CTX_INIT's words set the context length when given, else N_CTX."""
    from mmpt.sentences import readable, word_count

    return word_count(readable(node.CTX_INIT)) if node.CTX_INIT else node.N_CTX


# each a function of (node, text width d, joint width E): at ViT-B/16 (d = E = 512) CoCoOp's is 35,360 for n = 4
ANALYTIC = {"CoOp": lambda node, d, e: _n_ctx(node) * d,
            "CoCoOp": lambda node, d, e: _n_ctx(node) * d + (e * (e // 16) + e // 16) + (e // 16 * d + d),
            "KgCoOp": lambda node, d, e: _n_ctx(node) * d,  # CoOp's context; the release's unused modules left out
            "TCP": lambda node, d, e: _tcp_count(_n_ctx(node), d, e, node.HIDDEN_RATIO)}  # 331,904 as released
VIT_B16_WIDTHS = (512, 768)  # (text, vision): the backbone the published counts refer to


def _tcp_count(n, d_t, embed, ratio):
    """context n x d_t + the TKE: Linear(E, E / ratio) and Linear(E / ratio, n x d_t), with biases."""
    hidden = embed // ratio
    return n * d_t + (embed * hidden + hidden) + (hidden * n * d_t + n * d_t)


def expected_count(trainer_name, config_name, cfg, clip_model, n_classes):
    """The published count (at ViT-B/16 widths only) or the analytic one at this backbone's widths (or None)."""
    from mmpt.towers import backbone_of

    backbone = backbone_of(clip_model)
    method = declared_methods()[trainer_name]
    widths = (backbone.text.width, backbone.vision.width if backbone.vision.is_vit else None)
    if config_name in method.parameter_counts and widths == VIT_B16_WIDTHS:
        if hasattr(method, "head_parameter_count"):  # DePT: a head row per class; declared at parameter_count_classes
            node = cfg.TRAINER[method.cfg_node]
            if not (node.CWT and node.USE_HEAD != "never"):
                return None
            return (method.parameter_counts[config_name] - method.head_parameter_count(method.parameter_count_classes)
                    + method.head_parameter_count(n_classes))
        return method.parameter_counts[config_name]
    node = cfg.TRAINER[method.cfg_node]
    if trainer_name in ANALYTIC and not getattr(node, "CSC", False):
        return ANALYTIC[trainer_name](node, backbone.text.width, backbone.embed_dim)
    return None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainers", nargs="+", default=None, help="default: every declared method")
    parser.add_argument("--classes", type=int, default=100, help="number of classes (matters for class-specific contexts)")
    parser.add_argument("--backbone", default="random-ViT-B/16")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    methods = declared_methods()
    trainer_names = args.trainers or sorted(methods)
    clip_model = build_clip(args.backbone)
    classnames = harness.imagenet_classnames(args.classes)
    rows, mismatches = [], 0
    for trainer_name in trainer_names:
        if trainer_name not in methods:
            rows.append([trainer_name, "-", "-", "-", f"not a declared method (declared: {', '.join(methods)})"])
            continue
        config_folder = os.path.dirname(methods[trainer_name].config_file("x", harness.REPO_ROOT))
        for path in sorted(glob.glob(os.path.join(config_folder, "*.yaml"))):
            config_name = os.path.splitext(os.path.basename(path))[0]
            cfg = load_cfg(trainer_name, path, args.backbone)
            count = trainable_parameters(build_method(trainer_name, cfg, classnames, clip_model))
            expected = expected_count(trainer_name, config_name, cfg, clip_model, args.classes)
            verdict = "" if expected is None else ("ok" if expected == count else "MISMATCH")
            mismatches += verdict == "MISMATCH"
            rows.append([trainer_name, config_name, f"{count:,}", "" if expected is None else f"{expected:,}", verdict])
    print(f"Trainable parameters at {args.backbone.replace('random-', '')}, {args.classes} classes")
    print(harness.format_table(["trainer", "config", "trainable", "expected", "check"], rows))
    if mismatches:
        print(f"=> {mismatches} count(s) differ from the published figure")


if __name__ == "__main__":
    main()
