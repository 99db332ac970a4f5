"""KgCoOp: Knowledge-guided Context Optimization (Yao, Zhang, Xu; CVPR 2023).

CoOp's prompt (a shared shallow text context, "a photo of a" = 4 tokens, class name at the end; plain CLIP on
the image side) trained with one more loss term: each class's prompted text feature t_c is kept close, in
cosine, to the frozen CLIP feature t0_c of the dataset's hand-written prompt ("a photo of a {}, a type of pet."):

    L = CE(logits, y) + W * (1 - mean_c cos(t_c, t0_c)),   W = 8 in every published run.

The model is CoOp's; t_c are the class features of its one forward path, computed once per step and shared by
the logits and the term. t0 is the library's frozen-CLIP reference (mmpt.frozen_clip): computed once per class
set (on first use, so an evaluation never computes it), in fp32 with the frozen CLIP the model already holds,
never saved in checkpoints. Evaluation is CoOp's.
"""
import dataclasses
from dataclasses import dataclass

import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.frozen_clip import FrozenCLIP
from mmpt.prompt_trainer import PromptTrainer
from mmpt.templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE

from trainers.coop import CoOpCLIP, CoOpConfig

# KgCoOp's hand-written templates are CoOp's except for DTD (its release uses "a photo of a {}, a type of
# texture." where CoOp uses "{} texture.")
KGCOOP_TEMPLATES = {**CUSTOM_TEMPLATES, "DescribableTextures": "a photo of a {}, a type of texture."}
COSINE_EPS = 1e-7  # the release's nn.CosineSimilarity(dim=1, eps=1e-07)
# modules the release builds in its prompt learner but never uses; they are in its checkpoints, not in ours
RELEASE_UNUSED_MODULES = ("bias_vectors", "meta_net")


def dataset_template(dataset_name):
    """The dataset's KgCoOp template; "a photo of a {}." for a dataset outside the table."""
    if dataset_name in KGCOOP_TEMPLATES:
        return KGCOOP_TEMPLATES[dataset_name]
    # the release raises KeyError here; a dataset of our own gets the generic template and says so
    print(f"KgCoOp: no hand-written template for dataset {dataset_name!r}: using {DEFAULT_TEMPLATE!r} "
          f"(set TRAINER.KGCOOP.TEMPLATE to choose one)")
    return DEFAULT_TEMPLATE


@dataclass
class KgCoOpConfig(CoOpConfig):
    """CoOp's fields with the published defaults, plus W and TEMPLATE."""

    N_CTX: int = 4  # ignored when CTX_INIT is given
    CTX_INIT: str = "a photo of a"  # "" = N_CTX random tokens, N(0, 0.02)
    W: float = 8.0  # weight of the knowledge-guided term (8.0 in every published run)
    TEMPLATE: str = ""  # hand-written prompt with one "{}"; "" = the dataset's (KGCOOP_TEMPLATES)

    def validate(self):
        super().validate()
        if self.W < 0:
            raise ConfigError(f"W={self.W!r}: expected a number >= 0")
        if self.TEMPLATE and self.TEMPLATE.count("{}") != 1:
            raise ConfigError(f"TEMPLATE={self.TEMPLATE!r}: expected a sentence with one '{{}}' for the class name")


class KgCoOpCLIP(CoOpCLIP):
    """CoOp's model (prompts and forward path unchanged) plus the frozen hand-written class features."""

    def __init__(self, clip_model, classnames, config):
        super().__init__(clip_model, classnames, config)
        self.template = config.TEMPLATE or DEFAULT_TEMPLATE  # the trainer fills TEMPLATE in from the dataset
        self.hand_written = FrozenCLIP([self.template], classnames, "TEMPLATE")  # t0, on first use

    def describe(self):
        return f"KgCoOp hand-written template: {self.template!r}"

    def hand_written_class_features(self):
        """[C, E] fp32 L2-normalised frozen CLIP features of the hand-written prompts (computed once)."""
        return self.hand_written.class_features(self)

    def knowledge_guided_loss(self, class_features):
        """1 - mean over classes of cos(t_c, t0_c), in fp32; `class_features` [C, E] are the prompted ones."""
        similarity = F.cosine_similarity(class_features.float(), self.hand_written_class_features(), dim=-1,
                                         eps=COSINE_EPS)
        return 1.0 - similarity.mean()


@TRAINER_REGISTRY.register()
class KgCoOp(PromptTrainer):
    cfg_node = "KGCOOP"
    scripts_folder = "kgcoop"
    # the release trains every protocol with its one config (100 epochs, batch 128)
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_ep100_ctxv1")
    config_class = KgCoOpConfig
    summary = "CoOp's context kept close to the hand-written prompt's class features"
    parameter_counts = {"vit_b16_ep100_ctxv1": 2_048}
    model_class = KgCoOpCLIP
    loss_weights = {"loss_kg": "W"}  # L = CE + W * loss_kg

    @classmethod
    def loss_terms(cls, model, outputs):
        # the class features of the step's one forward pass: the logits and the term share them
        return {"loss_kg": model.knowledge_guided_loss(outputs.class_features)}

    def model_config(self, cfg):
        """TRAINER.KGCOOP with TEMPLATE filled in from DATASET.NAME when the config leaves it empty."""
        config = super().model_config(cfg)
        if config.TEMPLATE:
            return config
        return dataclasses.replace(config, TEMPLATE=dataset_template(cfg.DATASET.NAME))

    def load_state_dict_into(self, name, state_dict, model_path):
        """The release's checkpoints load too: its unused modules' tensors are dropped."""
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[0] not in RELEASE_UNUSED_MODULES}
        super().load_state_dict_into(name, state_dict, model_path)
