"""CoCoOp: Conditional Context Optimization (Zhou et al., CVPR 2022).

CoOp's unified context plus a Meta-Net that maps each (normalised) image feature to a bias added to every
context token: image i's text prompts are ctx + meta_net(f_i), so the class text features are per image
(`Prompts.text_per_image`). Meta-Net: Linear(E, E // 16) -> ReLU -> Linear(E // 16, d_t), E = CLIP's joint
embedding width (512 -> 32 -> 512 at ViT-B/16).
"""
from collections import OrderedDict
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, embed_dim, text_width
from mmpt.sentences import coop_context


@dataclass
class CoCoOpConfig(PromptOptions):
    N_CTX: int = 16  # ignored when CTX_INIT is given (the configs use 4 = "a photo of a")
    CTX_INIT: str = ""


class CoCoOpPromptLearner(nn.Module):
    """ctx [n, d_t] and the Meta-Net (CoCoOp's parameter names)."""

    def __init__(self, context, embed_dim, ctx_dim):
        super().__init__()
        self.ctx = nn.Parameter(context.clone())
        hidden = embed_dim // 16
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, ctx_dim)),
        ]))

    def conditioned_context(self, image_features):
        """[B, E] normalised image features -> [[B, n, d_t]]: the per-image shallow text prompt."""
        return [self.ctx + self.meta_net(image_features).unsqueeze(1)]


class CoCoOpCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        context, sentences = coop_context(clip_model, classnames, config.N_CTX, config.CTX_INIT, "N_CTX")
        super().__init__(clip_model, sentences)
        self.prompt_learner = CoCoOpPromptLearner(context, embed_dim(clip_model),
                                                  text_width(clip_model))

    def compute_prompts(self):
        """The unconditioned context (where no image is given) and the per-image context."""
        return Prompts(text=[self.prompt_learner.ctx], text_per_image=self.prompt_learner.conditioned_context)


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    cfg_node = "COCOOP"
    scripts_folder = "cocoop"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_c4_ep10_batch1_ctxv1")
    config_class = CoCoOpConfig
    summary = "text context + Meta-Net (image-conditioned)"
    parameter_counts = {"vit_b16_c4_ep10_batch1_ctxv1": 35_360}
    model_class = CoCoOpCLIP
