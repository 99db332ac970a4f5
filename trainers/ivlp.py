"""IVLP: independent vision-language prompting (the MaPLe / PromptSRC baseline).

Deep prompts in both towers, with no coupling between them: text prompts for the first J_t text layers
(the shallow ones replace the placeholder words after SOS; CTX_INIT initialises them as in MaPLe), visual
prompts for the first J_v vision layers (appended after the patches, replaced at each deep layer).
"""
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, random_prompts, vision_width
from mmpt.sentences import check_positive, maple_context


@dataclass
class IVLPConfig(PromptOptions):
    """Defaults = configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml."""

    N_CTX_TEXT: int = 2
    N_CTX_VISION: int = 2
    CTX_INIT: str = "a photo of a"  # initialises the shallow text prompts ("" = N(0, 0.02))
    PROMPT_DEPTH_TEXT: int = 9  # J_t: text layers 0..J_t-1 receive fresh prompts
    PROMPT_DEPTH_VISION: int = 9  # J_v

    def validate(self):
        super().validate()
        check_positive("N_CTX_VISION", self.N_CTX_VISION)


class IVLPPromptLearner(nn.Module):
    """ctx [n_t, d_t] (shallow text), text_deep [J_t - 1, n_t, d_t] (None when J_t = 1), visual_ctx [J_v, n_v, d_v]."""

    def __init__(self, text_context, text_depth, n_vision, vision_depth, d_vision):
        super().__init__()
        self.ctx = nn.Parameter(text_context.clone())
        self.text_deep = random_prompts(text_depth - 1, *text_context.shape)
        self.visual_ctx = random_prompts(vision_depth, n_vision, d_vision)

    def text_prompts(self):
        deep = [] if self.text_deep is None else list(self.text_deep.unbind(0))
        return [self.ctx, *deep]


class IVLPCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        n_text_layers, n_vision_layers = layer_counts(clip_model)
        check_depth("PROMPT_DEPTH_TEXT", config.PROMPT_DEPTH_TEXT, n_text_layers)
        check_depth("PROMPT_DEPTH_VISION", config.PROMPT_DEPTH_VISION, n_vision_layers)
        context, sentences = maple_context(clip_model, classnames, config.N_CTX_TEXT, config.CTX_INIT, "N_CTX_TEXT")
        super().__init__(clip_model, sentences)
        self.prompt_learner = IVLPPromptLearner(context, config.PROMPT_DEPTH_TEXT, config.N_CTX_VISION,
                                                config.PROMPT_DEPTH_VISION, vision_width(clip_model))

    def compute_prompts(self):
        return Prompts(text=self.prompt_learner.text_prompts(),
                       vision=list(self.prompt_learner.visual_ctx.unbind(0)))


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    cfg_node = "IVLP"
    scripts_folder = "ivlp"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_c2_ep5_batch4_2+2ctx")
    config_class = IVLPConfig
    summary = "independent deep text and visual prompts"
    parameter_counts = {"vit_b16_c2_ep5_batch4_2+2ctx": 23_040}
    model_class = IVLPCLIP
