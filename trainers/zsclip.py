"""Zero-shot CLIP: the hand-written template of the dataset (mmpt.templates), nothing learned.

Run with --eval-only: the class features are the normalised `encode_text` of "<template with class name>"
and the logits are CLIP's own (logit_scale.exp() * cosine similarity).
"""
import dataclasses
from dataclasses import dataclass

from dassl.engine import TRAINER_REGISTRY
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP
from mmpt.sentences import template_sentences
from mmpt.templates import DEFAULT_TEMPLATE, template_for


@dataclass
class ZeroshotCLIPConfig(PromptOptions):
    TEMPLATE: str = ""  # e.g. "a photo of a {}."; must contain one "{}"; "" = the dataset's template


class ZeroshotCLIPModel(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        self.template = config.TEMPLATE or DEFAULT_TEMPLATE
        super().__init__(clip_model, template_sentences(self.template, classnames, "TEMPLATE"))
        # prompt_learner stays the base class's empty module and compute_prompts gives no prompts

    def describe(self):
        return f"ZeroshotCLIP template: {self.template!r}"


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    cfg_node = "ZSCLIP"
    scripts_folder = "zsclip"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16")
    config_class = ZeroshotCLIPConfig
    summary = "nothing (hand-written templates)"
    parameter_counts = {"vit_b16": 0}
    model_class = ZeroshotCLIPModel
    trains = False
    text_is_constant = True

    def model_config(self, cfg):
        config = super().model_config(cfg)
        return dataclasses.replace(config, TEMPLATE=config.TEMPLATE or template_for(cfg.DATASET.NAME))
