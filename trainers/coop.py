"""CoOp: Context Optimization (Zhou et al., IJCV 2022).

The text tower reads "[SOS] ctx_1 .. ctx_n <class name> . [EOT]": n learnable context vectors (shallow only)
replace the placeholder words after SOS. The context is unified (one [n, d_t] for every class) or
class-specific (CSC: [C, n, d_t]); CTX_INIT "a photo of a" initialises it from those words' embeddings (then
n = their token count). The class name goes at the end (default), in the middle of the context or in front.
Nothing on the image side is learned.
"""
import clip
import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN
from mmpt.config import add_prompt_trainer_options
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP

from trainers.baseline_utils import coop_context, prompt_texts

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


def extend_cfg(cfg):
    """Add cfg.TRAINER.COOP (CoOp's defaults)."""
    node = CN()
    node.N_CTX = 16  # number of context tokens (ignored when CTX_INIT is given)
    node.CSC = False  # class-specific context
    node.CTX_INIT = ""  # e.g. "a photo of a"; "" = N(0, 0.02)
    node.CLASS_TOKEN_POSITION = "end"  # "end" | "middle" | "front"
    add_prompt_trainer_options(node)
    cfg.TRAINER.COOP = node


class CoOpPromptLearner(nn.Module):
    """ctx: [n, d_t] (unified) or [C, n, d_t] (CSC; each class starts from the same initial context)."""

    def __init__(self, context, n_classes, csc):
        super().__init__()
        self.ctx = nn.Parameter(context.expand(n_classes, -1, -1).clone() if csc else context.clone())


class CoOpCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, node):
        if node.CLASS_TOKEN_POSITION not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"TRAINER.COOP.CLASS_TOKEN_POSITION={node.CLASS_TOKEN_POSITION!r}: "
                             f"expected one of {CLASS_TOKEN_POSITIONS}")
        context, prefix = coop_context(clip_model, node.N_CTX, node.CTX_INIT, "TRAINER.COOP.N_CTX")
        super().__init__(clip_model, prompt_texts(classnames, prefix))
        self.prompt_learner = CoOpPromptLearner(context, len(classnames), node.CSC)
        self.class_token_position = node.CLASS_TOKEN_POSITION
        if self.class_token_position != "end":
            self.name_groups = ClassNameGroups(clip_model, classnames, context.shape[0])

    def text_prompts(self):
        return [self.prompt_learner.ctx], None

    def class_features(self, text_prompts=None):
        if self.class_token_position == "end":
            return super().class_features(text_prompts)
        return self.name_groups.features(self.text_encoder, self.prompt_learner.ctx, self.class_token_position)


class ClassNameGroups(nn.Module):
    """Class names in front of / in the middle of the context: the whole span [class name + context] becomes
    the (per-class) shallow prompt of a sentence "X ... X." of the span's length, so the prompted encoder's
    rule "the prompt replaces the tokens after SOS" still holds. Classes are grouped by name length so that
    every group is one pass of the text tower."""

    def __init__(self, clip_model, classnames, n_ctx):
        super().__init__()
        self.n_ctx = n_ctx
        name_ids = [clip.tokenize(name.replace("_", " "))[0] for name in classnames]
        name_lengths = [int((ids != 0).sum()) - 2 for ids in name_ids]
        # (class indices, name length L); buffers names_L [C_g, L, d_t] (frozen word embeddings) and ids_L
        # (the sentence "X ... X." with n + L placeholders)
        self.groups = []
        for length in sorted(set(name_lengths)):
            indices = [i for i, n in enumerate(name_lengths) if n == length]
            with torch.no_grad():
                embeddings = clip_model.token_embedding(torch.stack([name_ids[i][1:1 + length] for i in indices]))
            self.register_buffer(f"names_{length}", embeddings.float(), persistent=False)
            self.register_buffer(f"ids_{length}", clip.tokenize(" ".join(["X"] * (n_ctx + length)) + ".")[0],
                                 persistent=False)
            self.groups.append((indices, length))

    def features(self, text_encoder, ctx, position):
        """[C, E] normalised class features."""
        out = [None] * sum(len(indices) for indices, _ in self.groups)
        for indices, length in self.groups:
            names = getattr(self, f"names_{length}")
            group_ctx = ctx[indices] if ctx.dim() == 3 else ctx.expand(len(indices), -1, -1)
            if position == "front":
                span = torch.cat([names, group_ctx], 1)
            else:  # middle: first half of the context, the name, second half
                half = self.n_ctx // 2
                span = torch.cat([group_ctx[:, :half], names, group_ctx[:, half:]], 1)
            ids = getattr(self, f"ids_{length}").expand(len(indices), -1)
            for i, feature in zip(indices, text_encoder(ids, prompts=[span])):
                out[i] = feature
        return F.normalize(torch.stack(out), dim=-1)


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    cfg_node = "COOP"

    def build_prompted_clip(self, cfg, classnames, clip_model):
        return CoOpCLIP(clip_model, classnames, cfg.TRAINER.COOP)
