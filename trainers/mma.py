"""MMA: Multi-Modal Adapter for Vision-Language Models (Yang, Zhang, Wang, Xie; CVPR 2024).

No prompt tokens. In blocks START..END (1-based levels, 5..12 shipped) of both towers a bottleneck adapter
branch reads the block input through the block's own frozen ln_1 and is added to the block output:

    x_out = block(x) + s * U^m( ReLU( S_l( ReLU( D^m(ln_1(x)) ) ) ) ),   m = text | vision,

D^m / U^m per tower and level, S_l = Linear(r, r) per level SHARED by the two towers, s = ADAPTER_SCALE (0.001).
The text tower reads the fixed sentence "a photo of a {class}."; the loss is plain cross-entropy.

Gradient scaling (the official code's gradient-scale layers; GRAD_SCALE, on by default): every adapter parameter
receives 1/s times its true gradient (1000x), the residual stream its true one. With SGD this equals training
at lr / s with weight decay wd * s; without it the shipped lr trains 1000x slower (docs/MMA.md).
"""
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, layer_counts, text_width, vision_width
from mmpt.sentences import template_sentences

# class-dependent buffers the official checkpoints hold (ours keep none)
RELEASE_CLASS_BUFFERS = ("token_embedding", "tokenized_prompts")


@dataclass
class MMAConfig(PromptOptions):
    """The shipped configs' values (official node TRAINER.MMADAPTER; its train.py defaults differ)."""

    TEXT_CTX_INIT: str = "a photo of a"  # the sentence is "<TEXT_CTX_INIT> <class>."
    ADAPTER_START: int = 5  # first adapted level (1-based block index)
    ADAPTER_END: int = 12  # last adapted level
    ADAPTER_DIM: int = 32  # bottleneck width r
    ADAPTER_SCALE: float = 0.001  # s: the branch is scaled by s
    GRAD_SCALE: bool = True  # official gradient-scale layers: adapter gradients x 1/s (False: true gradients)

    def validate(self):
        super().validate()
        if self.ADAPTER_SCALE <= 0:
            raise ConfigError(f"ADAPTER_SCALE={self.ADAPTER_SCALE!r}: expected a number > 0")
        if self.ADAPTER_DIM < 1:
            raise ConfigError(f"ADAPTER_DIM={self.ADAPTER_DIM!r}: expected an int >= 1")


class GradientScale(torch.autograd.Function):
    """Identity forward; the gradient times `factor` backward."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def adapter_list(width, n_layers, start, end, dim):
    """ModuleList of n_layers + 1 entries indexed by 1-based level; None outside [start, end]. A tower's entry is
    Sequential(down = Sequential(Linear(width, dim), ReLU), up = Linear(dim, width)); the shared one (width ==
    dim) is Sequential(Linear(dim, dim), ReLU). Kaiming-normal (fan_out, relu) weights, zero biases (official)."""
    entries = [None] * (n_layers + 1)
    for level in range(start, end + 1):
        if width == dim:
            entries[level] = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        else:
            entries[level] = nn.Sequential(OrderedDict([
                ("down", nn.Sequential(nn.Linear(width, dim), nn.ReLU())), ("up", nn.Linear(dim, width))]))
    adapters = nn.ModuleList(entries)
    for module in adapters.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return adapters


class MMAAdapterLearner(nn.Module):
    """text_adapter / visual_adapter / shared_adapter under the official names (official checkpoints load);
    built in the official order (text, visual, shared), so a seed gives the official initial values."""

    def __init__(self, d_text, d_vision, n_text, n_vision, start, end, dim, scale, grad_scale):
        super().__init__()
        self.text_adapter = adapter_list(d_text, n_text, start, end, dim)
        self.visual_adapter = adapter_list(d_vision, n_vision, start, end, dim)
        self.shared_adapter = adapter_list(dim, n_vision, start, end, dim)
        self.scale, self.grad_scale = scale, grad_scale

    def branch(self, tower_adapter, shared):
        """f(ln_1(x)) -> s * up(shared(down(.))), with the gradient-scale layers around it when on."""
        scale, grad_scale = self.scale, self.grad_scale

        def apply(normed):
            if grad_scale:  # on ln_1(x), equivalent to the official layer on x (ln_1's Jacobian is linear)
                normed = GradientScale.apply(normed, scale)
            out = tower_adapter.up(shared(tower_adapter.down(normed))) * scale
            return GradientScale.apply(out, 1.0 / scale) if grad_scale else out
        return apply

    def tower_branches(self, tower_adapters):
        """Per 0-based block: the branch of level block + 1, or None."""
        return [None if adapter is None else self.branch(adapter, self.shared_adapter[level])
                for level, adapter in enumerate(tower_adapters)][1:]

    def parameter_breakdown(self):
        count = lambda module: sum(p.numel() for p in module.parameters())
        return [("text adapters", count(self.text_adapter)), ("visual adapters", count(self.visual_adapter)),
                ("shared adapters", count(self.shared_adapter))]


class MMACLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        n_text, n_vision = layer_counts(clip_model)
        d_text, d_vision = text_width(clip_model), vision_width(clip_model)
        check_levels(config, min(n_text, n_vision))
        dim = config.ADAPTER_DIM
        if dim in (d_text, d_vision):  # the shared adapter is told apart from a tower's by its width
            raise ConfigError(f"ADAPTER_DIM={dim!r}: expected an int >= 1 other than the tower widths "
                              f"{d_text} / {d_vision}")
        template = f"{config.TEXT_CTX_INIT} {{}}." if config.TEXT_CTX_INIT else "{}."
        super().__init__(clip_model, template_sentences(template, classnames, "TEXT_CTX_INIT"))
        self.prompt_learner = MMAAdapterLearner(d_text, d_vision, n_text, n_vision, config.ADAPTER_START,
                                                config.ADAPTER_END, dim, float(config.ADAPTER_SCALE),
                                                config.GRAD_SCALE)

    def describe(self):
        learner = self.prompt_learner
        levels = [level for level, adapter in enumerate(learner.text_adapter) if adapter is not None]
        return (f"MMA adapters at levels {levels[0]}..{levels[-1]}, scale {learner.scale}, gradient scaling "
                f"{'on' if learner.grad_scale else 'off'}")

    def compute_prompts(self):
        learner = self.prompt_learner
        return Prompts(text_adapters=learner.tower_branches(learner.text_adapter),
                       vision_adapters=learner.tower_branches(learner.visual_adapter))


def check_levels(config, n_layers):
    """1 <= ADAPTER_START <= ADAPTER_END <= the smaller tower's depth (levels are 1-based block indices)."""
    start, end = config.ADAPTER_START, config.ADAPTER_END
    if not 1 <= start <= n_layers:
        raise ConfigError(f"ADAPTER_START={start!r}: expected an int in 1..{n_layers} (a 1-based block "
                          f"index; the backbone has {n_layers} layers per tower)")
    if not start <= end <= n_layers:
        raise ConfigError(f"ADAPTER_END={end!r}: expected an int in ADAPTER_START..{n_layers} = "
                          f"{start}..{n_layers}")


def mma_b2n_config(dataset, shots):
    """The official base-to-new scripts: batch 128 for ImageNet, 16 elsewhere (both 5 epochs)."""
    return "vit_b16_ep5_imnet" if dataset == "imagenet" else "vit_b16_ep5"


@TRAINER_REGISTRY.register()
class MMA(PromptTrainer):
    cfg_node = "MMA"
    scripts_folder = "mma"
    # few-shot: not an official protocol; base-to-new's configs (a project choice)
    default_configs = {"b2n": mma_b2n_config, "fewshot": mma_b2n_config, "xd": "vit_b16_ep5_imnet"}
    config_class = MMAConfig
    model_class = MMACLIP
    summary = "residual adapters on blocks 5..12 of both towers (per-tower down / up, a projection shared " \
              "across the towers, gradient scaling)"
    parameter_counts = {"vit_b16_ep5": 674_560, "vit_b16_ep5_imnet": 674_560}
    record_variants = {"MMA": dict(ADAPTER_START=2, ADAPTER_END=3, ADAPTER_DIM=8)}

    @classmethod
    def parameter_breakdown(cls, model):
        return model.prompt_learner.parameter_breakdown()

    def load_state_dict_into(self, name, state_dict, model_path):
        """Official checkpoints load too: their class buffers are dropped."""
        state_dict = {key: value for key, value in state_dict.items() if key not in RELEASE_CLASS_BUFFERS}
        super().load_state_dict_into(name, state_dict, model_path)
