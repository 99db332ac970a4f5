"""MPL: Modular Prompt Learning (Huang, Pedapati, Chen, Gao; ICASSP 2025), as the official release computes it.

Text tower: MaPLe's mechanics on the template "X a photo of a <class>." (the n = N_CTX X's are learnable,
the CTX_INIT words stay fixed); deep text prompts T_l replace positions 1..n at layers l = 1..J-1.
Vision tower: shallow prompts proj(ctx); at layer l = 1..J-1 the LAST N_RM_OP prompt tokens of the previous
layer's output are removed (O_rm), the others are carried on (O_cr) and N_ADD_OP x n new tokens are appended
(O_add), the k-th being F_{k,l}(T_l) with an independent Linear(text width -> vision width) per slot and layer.

The add / remove / carry mechanics live in the shared encoders (`mmpt.encoders`): this module only says
which prompts exist at each layer and how many tokens to remove there. MaPLe is the special case
N_ADD_OP = 1, N_RM_OP = N_CTX.

Beyond the release (off by default): TEXT_N_ADD_OP / TEXT_N_RM_OP put the same schedule on the text tower, and
every count can be a list with one entry per deep layer l = 1..J-1.
"""
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import (PromptedCLIP, Prompts, check_depth, layer_counts, normal_prompts, text_width,
                                vision_width)
from mmpt.sentences import init_text_context, placeholder_words, prefix_sentences, readable


RELEASE_N_ADD_OP = 2
RELEASE_N_RM_OP = 1


@dataclass
class MPLConfig(PromptOptions):
    """Defaults = the release's base-to-new config."""

    N_CTX: int = 1  # learnable context tokens (the X's)
    CTX_INIT: str = "a photo of a"  # fixed words after the X's ("" = template "X <class>.", ctx ~ N(0, 0.02))
    PROMPT_DEPTH: int = 9  # J: layers 0..J-1 receive prompts
    # int, or a list with one entry per deep layer l = 1..J-1. None (the default) means the release's 2 / 1;
    # None is used as the default so that a config file may give either an int or a list (yacs checks types).
    N_ADD_OP: Optional[Union[int, List[int]]] = None
    N_RM_OP: Optional[Union[int, List[int]]] = None
    # Text-side add / remove / carry schedule (ours; None = off: the text tower's deep prompts replace).
    TEXT_N_ADD_OP: Optional[Union[int, List[int]]] = None
    TEXT_N_RM_OP: Optional[Union[int, List[int]]] = None  # with the text schedule on: None = 0

    def validate(self):
        super().validate()
        MPLSchedule.from_cfg(self)


def per_layer(value, key, n_deep, default):
    """An int (the same at every deep layer) or a list of `n_deep` ints -> list of `n_deep` non-negative ints."""
    if value is None:
        value = default
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n_deep
    if len(values) != n_deep or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(f"{key} = {value!r}: expected a non-negative int or a list of {n_deep} "
                         f"non-negative ints (one per deep layer 1..PROMPT_DEPTH-1)")
    return values


def prompt_counts(n_ctx, n_add, n_rm, add_key, rm_key):
    """Number of prompt tokens after each prompted layer 0..J-1; validates the schedule.

    counts[0] = n (shallow); counts[l] = counts[l-1] - n_rm[l] + n_add[l] * n. Layers >= J carry counts[-1].
    """
    counts = [n_ctx]
    for layer, (add, rm) in enumerate(zip(n_add, n_rm), start=1):
        if rm > add * n_ctx:
            raise ConfigError(f"{rm_key} must be <= {add_key} * N_CTX: layer {layer} has "
                             f"{rm_key} = {rm}, {add_key} = {add}, N_CTX = {n_ctx}")
        if rm > counts[-1]:
            raise ConfigError(f"{rm_key} = {rm} at layer {layer} removes more than the "
                             f"{counts[-1]} prompt tokens there")
        counts.append(counts[-1] - rm + add * n_ctx)
    return counts


class MPLSchedule:
    """The per-layer add / remove counts of both towers, resolved from cfg.TRAINER.MPL and validated."""

    def __init__(self, n_ctx, depth, n_add=None, n_rm=None, text_n_add=None, text_n_rm=None):
        if not (isinstance(n_ctx, int) and n_ctx >= 1):
            raise ConfigError(f"N_CTX = {n_ctx!r}: expected an int >= 1")
        if not (isinstance(depth, int) and depth >= 1):
            raise ConfigError(f"PROMPT_DEPTH = {depth!r}: expected an int >= 1")
        self.n_ctx, self.depth = n_ctx, depth
        n_deep = depth - 1
        self.n_add = per_layer(n_add, "N_ADD_OP", n_deep, RELEASE_N_ADD_OP)
        self.n_rm = per_layer(n_rm, "N_RM_OP", n_deep, RELEASE_N_RM_OP)
        self.visual_counts = prompt_counts(n_ctx, self.n_add, self.n_rm, "N_ADD_OP", "N_RM_OP")
        self.text_schedule = text_n_add is not None
        if self.text_schedule:
            self.text_n_add = per_layer(text_n_add, "TEXT_N_ADD_OP", n_deep, None)
            self.text_n_rm = per_layer(text_n_rm, "TEXT_N_RM_OP", n_deep, 0)
            if min(self.text_n_add, default=1) < 1:
                # the vision slots of layer l read the first n tokens of T_l, so every deep layer needs one
                raise ConfigError(f"TEXT_N_ADD_OP = {text_n_add!r}: must be >= 1 at every deep layer")
            self.text_counts = prompt_counts(n_ctx, self.text_n_add, self.text_n_rm, "TEXT_N_ADD_OP", "TEXT_N_RM_OP")
        else:  # MaPLe's text tower: T_l (n tokens) replaces the n prompt tokens at each deep layer
            self.text_n_add, self.text_n_rm = [1] * n_deep, [n_ctx] * n_deep
            self.text_counts = [n_ctx] * depth

    @classmethod
    def from_cfg(cls, config):
        return cls(config.N_CTX, config.PROMPT_DEPTH, config.N_ADD_OP, config.N_RM_OP, config.TEXT_N_ADD_OP,
                   config.TEXT_N_RM_OP)


class MPLPromptLearner(nn.Module):
    """Every trainable tensor of MPL. Names follow MaPLe's release (ctx, proj, compound_prompts_text.<l-1>,
    compound_prompt_projections.<l-1>), the deep projections nested one level deeper per add slot k.

    ctx [n, d_t]: shallow text context; compound_prompts_text[l-1] [text_n_add[l] * n, d_t]: T_l;
    proj: shallow Linear(d_t, d_v); compound_prompt_projections[l-1][k]: F_{k,l}, Linear(d_t, d_v).
    """

    def __init__(self, ctx_vectors, schedule, text_width, vision_width):
        super().__init__()
        n = schedule.n_ctx
        self.n_ctx = n
        self.ctx = nn.Parameter(ctx_vectors.clone())
        self.proj = nn.Linear(text_width, vision_width)
        self.compound_prompts_text = nn.ParameterList(
            [normal_prompts(add * n, text_width) for add in schedule.text_n_add])
        self.compound_prompt_projections = nn.ModuleList(
            [nn.ModuleList([nn.Linear(text_width, vision_width) for _ in range(add)]) for add in schedule.n_add])

    def text_prompts(self):
        """[ctx, T_1, ..., T_{J-1}]."""
        return [self.ctx, *self.compound_prompts_text]

    def visual_prompts(self):
        """[proj(ctx), cat_k F_{k,1}(T_1), ..., cat_k F_{k,J-1}(T_{J-1})] (a layer with no slot: [0, d_v])."""
        deep = []
        for text_prompt, slots in zip(self.compound_prompts_text, self.compound_prompt_projections):
            coupled = text_prompt[: self.n_ctx]
            if len(slots):
                deep.append(torch.cat([slot(coupled) for slot in slots]))
            else:
                deep.append(coupled.new_zeros(0, self.proj.out_features))
        return [self.proj(self.ctx), *deep]

    def parameter_breakdown(self):
        """(name, count) per group of trainable tensors."""
        def count(params):
            return sum(p.numel() for p in params)
        n_proj = sum(len(slots) for slots in self.compound_prompt_projections)
        return [
            ("shallow text context", self.ctx.numel()),
            (f"deep text prompts (layers 1..{len(self.compound_prompts_text)})", count(self.compound_prompts_text.parameters())),
            ("shallow projection", count(self.proj.parameters())),
            (f"deep projections ({n_proj} = add slots x layers)", count(self.compound_prompt_projections.parameters())),
        ]


def prompt_prefix(n_ctx, ctx_init):
    """The release's sentence prefix "X ... X <CTX_INIT words>": the n X's are the learnable tokens."""
    return " ".join([placeholder_words(n_ctx)] + ([readable(ctx_init)] if ctx_init else []))


def initial_context(clip_model, n_ctx, ctx_init):
    """As the release: the embedding of "X" per token when CTX_INIT is given, else N(0, 0.02)."""
    return init_text_context(clip_model, n_ctx, prompt_prefix(n_ctx, ctx_init) if ctx_init else "")


class MPLCLIP(PromptedCLIP):
    """CLIP with MPL's prompts: says which prompts exist at each layer and how many tokens each layer removes."""

    def __init__(self, clip_model, classnames, config):
        schedule = MPLSchedule.from_cfg(config)
        d_vision = vision_width(clip_model)  # ViT only: a one-line error for a ResNet tower
        check_depth("PROMPT_DEPTH", schedule.depth, min(layer_counts(clip_model)))
        super().__init__(clip_model, prefix_sentences(classnames, prompt_prefix(schedule.n_ctx, config.CTX_INIT),
                                                      schedule.n_ctx))
        self.schedule = schedule
        self.prompt_learner = MPLPromptLearner(
            initial_context(clip_model, schedule.n_ctx, config.CTX_INIT), schedule, text_width(clip_model), d_vision)

    def compute_prompts(self):
        text_remove = [None, *self.schedule.text_n_rm] if self.schedule.text_schedule else None
        return Prompts(text=self.prompt_learner.text_prompts(), text_remove=text_remove,
                       vision=self.prompt_learner.visual_prompts(), vision_remove=[None, *self.schedule.n_rm])

    def describe(self):
        schedule = self.schedule
        lines = ["MPL visual prompt tokens after each layer: " + " ".join(map(str, schedule.visual_counts))
                 + f" (carried through the remaining layers); add {schedule.n_add}, remove {schedule.n_rm}"]
        if schedule.text_schedule:
            lines.append("MPL text prompt tokens after each layer: " + " ".join(map(str, schedule.text_counts)))
        return "\n".join(lines)


@TRAINER_REGISTRY.register()
class MPL(PromptTrainer):
    cfg_node = "MPL"
    scripts_folder = "mpl"
    default_configs = {"b2n": "vit_b4_c1_add2_rm1", "fewshot": "vit_b4_c1_add2_rm1",
                       "xd": "vit_b4_c1_add2_rm1_cross_datasets"}
    config_class = MPLConfig
    summary = "MaPLe-style prompts with add / remove / carry per layer"
    parameter_counts = {"vit_b4_c1_add2_rm1": 6_702_336}
    model_class = MPLCLIP

    @classmethod
    def parameter_breakdown(cls, model):
        return model.prompt_learner.parameter_breakdown()
