"""Zero-shot CLIP: the hand-written template of the dataset (mmpt.templates), nothing learned.

Run with --eval-only: the class features are the normalised `encode_text` of "<template with class name>"
and the logits are CLIP's own (logit_scale.exp() * cosine similarity).
"""

from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN
from mmpt.config import add_prompt_trainer_options
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP
from mmpt.templates import class_prompts, template_for



def extend_cfg(cfg):
    """Add cfg.TRAINER.ZSCLIP (TEMPLATE "" = the dataset's template from mmpt.templates)."""
    node = CN()
    node.TEMPLATE = ""  # e.g. "a photo of a {}."; must contain one "{}"
    add_prompt_trainer_options(node)
    cfg.TRAINER.ZSCLIP = node


def resolve_template(template, dataset_name):
    if not template:
        return template_for(dataset_name)
    if template.count("{}") != 1:
        raise ValueError(f"TRAINER.ZSCLIP.TEMPLATE={template!r}: expected exactly one '{{}}' for the class name")
    return template


class ZeroshotCLIPModel(PromptedCLIP):
    def __init__(self, clip_model, classnames, template):
        super().__init__(clip_model, class_prompts(template, classnames))
        self.template = template  # prompt_learner stays the base class's empty module: nothing to learn


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(PromptTrainer):
    cfg_node = "ZSCLIP"

    def build_prompted_clip(self, cfg, classnames, clip_model):
        template = resolve_template(cfg.TRAINER.ZSCLIP.TEMPLATE, cfg.DATASET.NAME)
        print(f"ZeroshotCLIP template: {template!r}")
        return ZeroshotCLIPModel(clip_model, classnames, template)
