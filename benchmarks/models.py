"""Build the method models the way the trainers do, with a random backbone, and switch the levers on / off.

A method model is what `PromptTrainer.build_model` trains, built here by `mmpt.create_model` from the method's
config node after a config file (+ `--opts`). No dataset is needed: the benchmarks feed random images, and the
class names are real ImageNet names so that the text lengths (which set the cost of the truncated text tower)
are realistic.
"""
import contextlib
import copy
import glob
import os
from dataclasses import dataclass, replace

import torch

from benchmarks.harness import REPO_ROOT
from benchmarks.reference import ReferenceImageEncoder, ReferenceTextEncoder
from mmpt.encoders import TextOptions

# The config a method is benchmarked with unless --config says otherwise: its declared few-shot config at
# ImageNet, 16 shots (each method's main setting).
BENCHMARK_PROTOCOL = ("fewshot", "imagenet", 16)


def declared_methods():
    import trainers  # noqa: F401  (declares every method)
    from mmpt.methods import declared_methods as declared

    return declared()


def trainable_methods():
    """"--trainers all": every declared method that trains (zero-shot CLIP has no step to time)."""
    return [name for name, method in declared_methods().items() if method.trains]


def config_path(trainer_name, config=None):
    """The method's config file `config`; default: its declared main config, else its first vit_b16 one."""
    method = trainer_class(trainer_name)
    folder = os.path.dirname(method.config_file("x", REPO_ROOT))
    if config:
        path = config if os.path.isfile(config) else os.path.join(folder, config)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config {config!r} for trainer {trainer_name}: no such file ({path})")
        return path
    if method.default_configs:
        preferred = method.config_file(method.default_config(*BENCHMARK_PROTOCOL), REPO_ROOT)
        if os.path.isfile(preferred):
            return preferred
    candidates = sorted(glob.glob(os.path.join(folder, "vit_b16*.yaml"))) or sorted(glob.glob(os.path.join(folder, "*.yaml")))
    if not candidates:
        raise FileNotFoundError(f"trainer {trainer_name}: no config file under {folder}")
    return candidates[0]


def trainer_class(trainer_name):
    from mmpt.methods import get_method

    declared_methods()
    return get_method(trainer_name)


def load_cfg(trainer_name, config_file, backbone, opts=()):
    """dassl defaults + every trainer's node + the config file + `opts` (KEY VALUE ...); backbone = `backbone`."""
    import trainers
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.TRAINER.NAME = trainer_name
    cfg.MODEL.BACKBONE.NAME = backbone
    return cfg


def build_clip(backbone, seed=0):
    """A CLIP model of architecture `backbone` (e.g. "random-ViT-B/16") in fp32, eval mode, on CPU."""
    from mmpt.clip_backbone import load_clip_by_name

    return load_clip_by_name(backbone, seed=seed)


def build_method(trainer_name, cfg, classnames, clip_model):
    """`mmpt.create_model` with the method's config node of `cfg` (frozen backbone, prompt_learner trainable)."""
    from mmpt import create_model

    method = trainer_class(trainer_name)
    node = cfg.TRAINER[method.cfg_node]
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        if method.teacher_field and not node[method.teacher_field]:  # PromptKD without a teacher run at hand
            from mmpt.prompt_trainer import freeze_all_but_prompt_learner

            model = method.model_class(clip_model, classnames, method.make_config(**dict(node)),
                                       teacher=stand_in_teacher(node.TEACHER_BACKBONE, classnames))
            freeze_all_but_prompt_learner(model)
            return model
        return create_model(trainer_name, clip_model, classnames, **dict(node))


def stand_in_teacher(backbone, classnames):
    """A frozen zero-prompt-depth stand-in for a student's teacher: one-layer towers with `backbone`'s joint width,
    which is all a student's parameter count depends on (the projector's output). Never a teacher to train from."""
    from clip.model import CLIP

    from mmpt.clip_backbone import ARCHITECTURES, load_clip_by_name
    from mmpt.prompted_clip import PromptedCLIP
    from mmpt.sentences import template_sentences

    arch = backbone.replace("random-", "")
    embed = ARCHITECTURES[arch][0] if arch in ARCHITECTURES else load_clip_by_name(backbone).text_projection.shape[1]
    clip_model = CLIP(embed, 32, 1, 64, 16, 77, 49408, 64, 1, 1).float().eval()
    return PromptedCLIP(clip_model, template_sentences("a photo of a {}.", classnames)).requires_grad_(False)


def trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Levers:
    """One configuration of the levers. `reference()` is what CoOp / MaPLe compute."""

    truncate: bool = True  # lever 1: text tower on the shortest sufficient length (False: 77 tokens)
    share_prefix: bool = True  # the class sentences' common prefix once, each suffix to its own EOT (TEXT_SHARED_PREFIX)
    sdpa: bool = True  # lever 3: F.scaled_dot_product_attention (False: CLIP's own nn.MultiheadAttention blocks)
    chunk_size: int = 0  # lever 5: text tower on this many classes at a time (0: all at once)
    checkpoint: bool = False  # lever 5: activation checkpointing in the text tower
    precision: str = "default"  # lever 4: "default" (our PREC amp), "fp32", "bf16", or "fp16" (reference on CUDA)
    # the text tower's frozen leading blocks once per class list (MMRL, MMA), the image tower's shared by the
    # prompted and the frozen pass of a step (MMRL); False: the full passes every step, as the official code
    cache_frozen_blocks: bool = True

    @staticmethod
    def reference():
        return Levers(truncate=False, share_prefix=False, sdpa=False, precision="reference", cache_frozen_blocks=False)

    def but(self, **changes):
        return replace(self, **changes)


class LeverSwitch:
    """Holds a method model's own encoders and the reference ones, and installs a lever configuration.

    On CUDA the full reference ("all off") runs as CoOp / MaPLe do with PREC fp16: on a copy of CLIP whose
    weights are converted to fp16 (clip.model.convert_weights), no autocast, no GradScaler. The reference
    encoders are the official code's path on OpenAI's CLIP; on an open_clip backbone (which that code never
    ran) the baseline is our encoders with every text lever off.
    """

    def __init__(self, model, clip_model):
        from mmpt.towers import is_open_clip

        self.model = model
        self.clip_model = clip_model
        self.ours = (model.text_encoder, model.image_encoder)
        self.reference = self.ours if is_open_clip(clip_model) else (ReferenceTextEncoder(clip_model),
                                                                      ReferenceImageEncoder(clip_model))
        self._reference_fp16 = None

    def reference_fp16(self):
        if self.reference is self.ours:
            return self.ours
        if self._reference_fp16 is None:
            from clip.model import convert_weights

            half = copy.deepcopy(self.clip_model)
            convert_weights(half)
            self._reference_fp16 = (ReferenceTextEncoder(half), ReferenceImageEncoder(half))
        return self._reference_fp16

    def install(self, levers, device):
        if levers.sdpa:
            text, image = self.ours
        elif resolved_precision(levers, device) == "fp16" and levers.precision == "reference":
            text, image = self.reference_fp16()
        else:
            text, image = self.reference
        # assigning a registered submodule through nn.Module.__setattr__ keeps the trainable parameters unchanged
        self.model.text_encoder, self.model.image_encoder = text, image
        if levers.sdpa or self.reference is self.ours:
            image.share_leading_blocks = levers.cache_frozen_blocks
            text.options = TextOptions(truncate=levers.truncate, chunk_size=levers.chunk_size,
                                       checkpoint=levers.checkpoint, share_prefix=levers.share_prefix,
                                       cache_frozen_blocks=levers.cache_frozen_blocks)
            return self.model
        text.truncate = levers.truncate
        if levers.chunk_size or levers.checkpoint or levers.share_prefix:
            raise ValueError("the reference (nn.MultiheadAttention) text encoder runs unchunked, without checkpointing "
                             "or a shared prefix")
        return self.model


def resolved_precision(levers, device):
    """"fp32" | "bf16" | "fp16": our default is bf16 autocast on CUDA, fp32 on CPU; the reference runs CUDA in fp16."""
    cuda = torch.device(device).type == "cuda"
    if levers.precision == "default":
        return "bf16" if cuda else "fp32"
    if levers.precision == "reference":
        return "fp16" if cuda else "fp32"
    return levers.precision


def precision_context(levers, device):
    """Autocast for the precision lever (weights, prompts and optimizer state stay fp32).

    The CUDA reference runs on fp16 weights instead (see LeverSwitch), so it needs no autocast.
    """
    precision = resolved_precision(levers, device)
    if precision == "fp32" or levers.precision == "reference":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)
