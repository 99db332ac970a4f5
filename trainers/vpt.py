"""VPT-deep (Jia et al., ECCV 2022) on CLIP, vision only (the MaPLe / PromptSRC baseline).

n learnable visual tokens are appended after the patch tokens of layer 0 and replaced before each of the
first J layers (N_CTX_VISION = n, PROMPT_DEPTH_VISION = J). The text tower reads the fixed sentence
"a photo of a <class name>." (no text prompts; its features depend on nothing learnable).
"""
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, random_prompts, vision_width
from mmpt.sentences import check_positive, template_sentences
from mmpt.templates import DEFAULT_TEMPLATE


@dataclass
class VPTConfig(PromptOptions):
    N_CTX_VISION: int = 4  # visual prompt tokens per layer
    PROMPT_DEPTH_VISION: int = 12  # J: layers 0..J-1 receive fresh visual prompts

    def validate(self):
        super().validate()
        check_positive("N_CTX_VISION", self.N_CTX_VISION)


class VPTPromptLearner(nn.Module):
    """visual_ctx [J, n, d_v], N(0, 0.02)."""

    def __init__(self, n_ctx, depth, width):
        super().__init__()
        self.visual_ctx = random_prompts(depth, n_ctx, width)


class VPTCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        check_depth("PROMPT_DEPTH_VISION", config.PROMPT_DEPTH_VISION, layer_counts(clip_model)[1])
        super().__init__(clip_model, template_sentences(DEFAULT_TEMPLATE, classnames))
        self.prompt_learner = VPTPromptLearner(config.N_CTX_VISION, config.PROMPT_DEPTH_VISION,
                                               vision_width(clip_model))

    def compute_prompts(self):
        return Prompts(vision=list(self.prompt_learner.visual_ctx.unbind(0)))


@TRAINER_REGISTRY.register()
class VPT(PromptTrainer):
    cfg_node = "VPT"
    scripts_folder = "vpt"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_c2_ep5_batch4_4")
    config_class = VPTConfig
    summary = "deep visual prompts"
    parameter_counts = {"vit_b16_c2_ep5_batch4_4": 36_864}
    model_class = VPTCLIP
    text_is_constant = True  # the fixed sentence "a photo of a <class>.": nothing learnable on the text side
