"""MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023).

Text prompts for the first J text layers (the shallow ctx replaces the placeholder words after SOS, from
CTX_INIT as in MaPLe's release: "a photo of a" with n = 2 learns "a photo" and keeps "of a"). The visual
prompts are not learned on their own: the visual prompt of layer l is F_l(text prompt of layer l), with an
independent Linear(d_t, d_v) F_l per layer, the shallow one (`proj`) included.
Trainable: n d_t + (J - 1) n d_t + J (d_t d_v + d_v) = 3,555,072 at ViT-B/16, n = 2, J = 9.
"""
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, normal_prompts, vision_width
from mmpt.sentences import maple_context


@dataclass
class MaPLeConfig(PromptOptions):
    """Defaults = configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml."""

    N_CTX: int = 2
    CTX_INIT: str = "a photo of a"
    PROMPT_DEPTH: int = 9  # J: layers 0..J-1 of both towers receive fresh prompts


class MaPLePromptLearner(nn.Module):
    """MaPLe's parameter names: ctx [n, d_t], compound_prompts_text [J - 1, n, d_t], proj (shallow F_0) and
    compound_prompt_projections (F_1..F_{J-1})."""

    def __init__(self, text_context, depth, d_vision):
        super().__init__()
        n_ctx, d_text = text_context.shape
        self.ctx = nn.Parameter(text_context.clone())
        self.compound_prompts_text = nn.ParameterList(normal_prompts(n_ctx, d_text) for _ in range(depth - 1))
        self.proj = nn.Linear(d_text, d_vision)
        self.compound_prompt_projections = nn.ModuleList(nn.Linear(d_text, d_vision) for _ in range(depth - 1))

    def text_prompts(self):
        return [self.ctx, *self.compound_prompts_text]

    def visual_prompts(self):
        projections = [self.proj, *self.compound_prompt_projections]
        return [project(prompt) for project, prompt in zip(projections, self.text_prompts())]


class MaPLeCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        check_depth("PROMPT_DEPTH", config.PROMPT_DEPTH, min(layer_counts(clip_model)))
        context, sentences = maple_context(clip_model, classnames, config.N_CTX, config.CTX_INIT, "N_CTX")
        super().__init__(clip_model, sentences)
        self.prompt_learner = MaPLePromptLearner(context, config.PROMPT_DEPTH, vision_width(clip_model))

    def compute_prompts(self):
        return Prompts(text=self.prompt_learner.text_prompts(), vision=self.prompt_learner.visual_prompts())


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    cfg_node = "MAPLE"
    scripts_folder = "maple"
    default_configs = {"b2n": "vit_b16_c2_ep5_batch4_2ctx", "fewshot": "vit_b16_c2_ep5_batch4_2ctx",
                       "xd": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"}
    config_class = MaPLeConfig
    summary = "deep text prompts + per-layer text->vision projections"
    parameter_counts = {"vit_b16_c2_ep5_batch4_2ctx": 3_555_072}
    model_class = MaPLeCLIP
