"""IVLP: independent vision-language prompting (the MaPLe / PromptSRC baseline).

Deep prompts in both towers, with no coupling between them: text prompts for the first J_t text layers
(the shallow ones replace the placeholder words after SOS; CTX_INIT initialises them as in MaPLe), visual
prompts for the first J_v vision layers (appended after the patches, replaced at each deep layer).
"""
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, random_prompts, vision_width
from mmpt.sentences import check_positive, maple_context


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
    config_key = "TRAINER.IVLP"  # names the node in error messages (PromptSRC's model reuses this class)

    def __init__(self, clip_model, classnames, node):
        key = self.config_key
        n_text_layers, n_vision_layers = layer_counts(clip_model)
        check_depth(f"{key}.PROMPT_DEPTH_TEXT", node.PROMPT_DEPTH_TEXT, n_text_layers)
        check_depth(f"{key}.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION, n_vision_layers)
        check_positive(f"{key}.N_CTX_VISION", node.N_CTX_VISION)
        context, sentences = maple_context(clip_model, classnames, node.N_CTX_TEXT, node.CTX_INIT, f"{key}.N_CTX_TEXT")
        super().__init__(clip_model, sentences)
        self.prompt_learner = IVLPPromptLearner(context, node.PROMPT_DEPTH_TEXT, node.N_CTX_VISION,
                                                node.PROMPT_DEPTH_VISION, vision_width(clip_model))

    def compute_prompts(self):
        return Prompts(text=self.prompt_learner.text_prompts(),
                       vision=list(self.prompt_learner.visual_ctx.unbind(0)))


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    cfg_node = "IVLP"
    scripts_folder = "ivlp"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_c2_ep5_batch4_2+2ctx")
    model_class = IVLPCLIP

    @staticmethod
    def add_config(node):
        """Defaults = configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml."""
        node.N_CTX_TEXT = 2
        node.N_CTX_VISION = 2
        node.CTX_INIT = "a photo of a"  # initialises the shallow text prompts ("" = N(0, 0.02))
        node.PROMPT_DEPTH_TEXT = 9  # J_t: text layers 0..J_t-1 receive fresh prompts
        node.PROMPT_DEPTH_VISION = 9  # J_v
