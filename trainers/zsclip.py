"""Zero-shot CLIP: the hand-written template of the dataset (mmpt.templates), nothing learned.

Run with --eval-only: the class features are the normalised `encode_text` of "<template with class name>"
and the logits are CLIP's own (logit_scale.exp() * cosine similarity).
"""
from dassl.engine import TRAINER_REGISTRY
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP
from mmpt.sentences import template_sentences
from mmpt.templates import DEFAULT_TEMPLATE, template_for


class ZeroshotCLIPModel(PromptedCLIP):
    def __init__(self, clip_model, classnames, node):
        self.template = node.TEMPLATE or DEFAULT_TEMPLATE
        super().__init__(clip_model, template_sentences(self.template, classnames, "TRAINER.ZSCLIP.TEMPLATE"))
        # prompt_learner stays the base class's empty module and compute_prompts gives no prompts

    def describe(self):
        return f"ZeroshotCLIP template: {self.template!r}"


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    cfg_node = "ZSCLIP"
    scripts_folder = "zsclip"
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16")
    model_class = ZeroshotCLIPModel
    trains = False

    @staticmethod
    def add_config(node):
        node.TEMPLATE = ""  # e.g. "a photo of a {}."; must contain one "{}"; "" = the dataset's template

    def model_node(self, cfg):
        node = self.trainer_cfg(cfg).clone()
        node.defrost()
        node.TEMPLATE = node.TEMPLATE or template_for(cfg.DATASET.NAME)
        return node
