"""CoCoOp: Conditional Context Optimization (Zhou et al., CVPR 2022).

CoOp's unified context plus a Meta-Net that maps each (normalised) image feature to a bias added to every
context token: image i's text prompts are ctx + meta_net(f_i), so the class text features are per image
(`text_depends_on_image`). Meta-Net: Linear(E, E // 16) -> ReLU -> Linear(E // 16, d_t), E = CLIP's joint
embedding width (512 -> 32 -> 512 at ViT-B/16).
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN
from mmpt.config import add_prompt_trainer_options
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP

from trainers.baseline_utils import coop_context, prompt_texts, text_width


def extend_cfg(cfg):
    """Add cfg.TRAINER.COCOOP (CoCoOp's defaults)."""
    node = CN()
    node.N_CTX = 16  # ignored when CTX_INIT is given (the configs use 4 = "a photo of a")
    node.CTX_INIT = ""
    add_prompt_trainer_options(node)
    cfg.TRAINER.COCOOP = node


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
        """[B, E] normalised image features -> [B, n, d_t] per-image context."""
        return self.ctx + self.meta_net(image_features).unsqueeze(1)


class CoCoOpCLIP(PromptedCLIP):
    text_depends_on_image = True

    def __init__(self, clip_model, classnames, node):
        context, prefix = coop_context(clip_model, node.N_CTX, node.CTX_INIT, "TRAINER.COCOOP.N_CTX")
        super().__init__(clip_model, prompt_texts(classnames, prefix))
        self.prompt_learner = CoCoOpPromptLearner(context, clip_model.text_projection.shape[1],
                                                  text_width(clip_model))

    def text_prompts(self):
        """The unconditioned context (ctx alone; used only where no image is given)."""
        return [self.prompt_learner.ctx], None

    def per_image_class_features(self, image_features):
        """[B, E] normalised image features -> [B, C, E] normalised class features, one set per image."""
        contexts = self.prompt_learner.conditioned_context(image_features)  # one prompt set per image
        return F.normalize(self.text_encoder.per_prompt_set(self.class_token_ids, [contexts]), dim=-1)

    def forward(self, images, class_features=None):
        """[B, C] logits; `class_features` is ignored (CoCoOp's text features are recomputed per image)."""
        image_features = self.image_features(images)
        text_features = self.per_image_class_features(image_features)
        with torch.autocast(images.device.type, enabled=False):  # fp32 logits, as PromptedCLIP.logits
            logits = torch.einsum("be,bce->bc", image_features.float(), text_features.float())
            return self.logit_scale.exp().float() * logits


@TRAINER_REGISTRY.register()
class CoCoOp(PromptTrainer):
    cfg_node = "COCOOP"

    def build_prompted_clip(self, cfg, classnames, clip_model):
        return CoCoOpCLIP(clip_model, classnames, cfg.TRAINER.COCOOP)
