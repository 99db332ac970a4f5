"""VPT-deep (Jia et al., ECCV 2022) on CLIP, vision only (the MaPLe / PromptSRC baseline).

n learnable visual tokens are appended after the patch tokens of layer 0 and replaced before each of the
first J layers (N_CTX_VISION = n, PROMPT_DEPTH_VISION = J). The text tower reads the fixed sentence
"a photo of a <class name>." (no text prompts; its features depend on nothing learnable).
"""
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN
from mmpt.config import add_prompt_trainer_options
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP
from mmpt.templates import DEFAULT_TEMPLATE, class_prompts

from trainers.baseline_utils import (check_depth, check_positive, layer_counts, random_prompts,
                                     vision_width)


def extend_cfg(cfg):
    """Add cfg.TRAINER.VPT."""
    node = CN()
    node.N_CTX_VISION = 4  # visual prompt tokens per layer
    node.PROMPT_DEPTH_VISION = 12  # J: layers 0..J-1 receive fresh visual prompts
    add_prompt_trainer_options(node)
    cfg.TRAINER.VPT = node


class VPTPromptLearner(nn.Module):
    """visual_ctx [J, n, d_v], N(0, 0.02)."""

    def __init__(self, n_ctx, depth, width):
        super().__init__()
        self.visual_ctx = random_prompts(depth, n_ctx, width)


class VPTCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, node):
        check_positive("TRAINER.VPT.N_CTX_VISION", node.N_CTX_VISION)
        check_depth("TRAINER.VPT.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION, layer_counts(clip_model)[1])
        super().__init__(clip_model, class_prompts(DEFAULT_TEMPLATE, classnames))
        self.prompt_learner = VPTPromptLearner(node.N_CTX_VISION, node.PROMPT_DEPTH_VISION,
                                               vision_width(clip_model))

    def visual_prompts(self):
        return list(self.prompt_learner.visual_ctx.unbind(0)), None


@TRAINER_REGISTRY.register()
class VPT(PromptTrainer):
    cfg_node = "VPT"

    def build_prompted_clip(self, cfg, classnames, clip_model):
        return VPTCLIP(clip_model, classnames, cfg.TRAINER.VPT)
