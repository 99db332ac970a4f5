"""CoOp: Context Optimization (Zhou et al., IJCV 2022).

The text tower reads "[SOS] ctx_1 .. ctx_n <class name> . [EOT]": n learnable context vectors (shallow only)
replace the placeholder words after SOS. The context is unified (one [n, d_t] for every class) or
class-specific (CSC: [C, n, d_t]); CTX_INIT "a photo of a" initialises it from those words' embeddings (then
n = their token count). The class name goes at the end (default), in the middle of the context or in front
(a sentence form of mmpt.sentences). Nothing on the image side is learned.
"""
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts
from mmpt.sentences import CLASS_POSITIONS, ClassNameInContext, check_positive, coop_context


@dataclass
class CoOpConfig(PromptOptions):
    N_CTX: int = 16  # number of context tokens (ignored when CTX_INIT is given)
    CSC: bool = False  # class-specific context
    CTX_INIT: str = ""  # e.g. "a photo of a"; "" = N(0, 0.02)
    CLASS_TOKEN_POSITION: str = "end"  # "end" | "middle" | "front"

    def validate(self):
        super().validate()
        if self.CLASS_TOKEN_POSITION not in CLASS_POSITIONS:
            raise ConfigError(f"CLASS_TOKEN_POSITION={self.CLASS_TOKEN_POSITION!r}: expected one of {CLASS_POSITIONS}")
        if not self.CTX_INIT:
            check_positive("N_CTX", self.N_CTX)


class CoOpPromptLearner(nn.Module):
    """ctx: [n, d_t] (unified) or [C, n, d_t] (CSC; each class starts from the same initial context)."""

    def __init__(self, context, n_classes, csc):
        super().__init__()
        self.ctx = nn.Parameter(context.expand(n_classes, -1, -1).clone() if csc else context.clone())


class CoOpCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        context, sentences = coop_context(clip_model, classnames, config.N_CTX, config.CTX_INIT, "N_CTX")
        if config.CLASS_TOKEN_POSITION != "end":
            sentences = ClassNameInContext(clip_model, classnames, context.shape[0], config.CLASS_TOKEN_POSITION)
        super().__init__(clip_model, sentences)
        self.prompt_learner = CoOpPromptLearner(context, len(classnames), config.CSC)

    def compute_prompts(self):
        return Prompts(text=[self.prompt_learner.ctx])


def coop_fewshot_config(dataset, shots):
    """CoOp's schedule: 50 epochs for 1-2 shots (and always on ImageNet), 100 for 4-8, 200 for 16."""
    if dataset == "imagenet" or shots <= 2:
        return "vit_b16_ep50"
    return "vit_b16_ep100" if shots <= 8 else "vit_b16"


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    cfg_node = "COOP"
    scripts_folder = "coop"
    default_configs = {"b2n": "vit_b16_ep50_ctxv1", "fewshot": coop_fewshot_config, "xd": "vit_b16_ep50"}
    config_class = CoOpConfig
    summary = "shallow text context (unified or class-specific; class name at the end, middle or front)"
    parameter_counts = {"vit_b16_ep50": 8_192, "vit_b16_ep50_ctxv1": 2_048}
    model_class = CoOpCLIP
