"""PromptSRC: Self-regulating Prompts (Khattak et al., ICCV 2023).

IVLP's prompts (independent deep text and visual prompts, 4 + 4 tokens, depth 9 + 9: 46,080 trainable values at
ViT-B/16; 15,360 at depth 3 + 3), trained with cross-entropy plus three terms that keep the prompted model close
to the frozen CLIP:
  L1 between the prompted class features and a 60-template ensemble of frozen text features (x TEXT_LOSS_WEIGHT),
  L1 between the prompted and the frozen image features (x IMAGE_LOSS_WEIGHT),
  KL(frozen logits || prompted logits), summed and divided by B x C.
At the end of every epoch the prompts are added into a Gaussian-weighted average over epochs (GPA); after the last
epoch the average replaces the prompts, so the final checkpoint, the final test and --eval-only use it. The running
average is saved in every checkpoint: a resumed run ends with the same prompts as an uninterrupted one.
Evaluation is IVLP's forward (no frozen branch).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import option_errors
from mmpt.frozen_clip import FrozenCLIP
from mmpt.prompt_trainer import LEARNER_NAME, PromptTrainer
from mmpt.templates import PROMPTSRC_TEMPLATES

from trainers.ivlp import IVLPCLIP, IVLPConfig


@dataclass
class PromptSRCConfig(IVLPConfig):
    """PromptSRC's fields and defaults (= configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml)."""

    N_CTX_TEXT: int = 4
    N_CTX_VISION: int = 4
    CTX_INIT: str = "a photo of a"  # used when it has >= N_CTX_TEXT tokens, else N(0, 0.02) behind "X .. X"
    PROMPT_DEPTH_TEXT: int = 9  # J_t: text layers 0..J_t-1 receive fresh prompts
    PROMPT_DEPTH_VISION: int = 9  # J_v
    TEXT_LOSS_WEIGHT: float = 25.0
    IMAGE_LOSS_WEIGHT: float = 10.0
    GPA_MEAN: float = 15.0  # Gaussian over the 1-based epoch number
    GPA_STD: float = 1.0

    def validate(self):
        super().validate()
        if not self.GPA_STD > 0:
            raise ConfigError(f"GPA_STD={self.GPA_STD!r}: expected a number > 0")


class PromptSRCCLIP(IVLPCLIP):
    """IVLP's model plus the frozen references of the self-regulating terms."""

    def __init__(self, clip_model, classnames, config):
        super().__init__(clip_model, classnames, config)
        self.frozen = FrozenCLIP(PROMPTSRC_TEMPLATES, classnames)  # the 60-template ensemble, on first use

    def frozen_class_features(self):
        """[C, E] the prompt-free text tower on every template, averaged unnormalised per class, then normalised;
        fp32 whatever the precision policy. Computed on first use (training only) and kept."""
        return self.frozen.class_features(self)


def self_consistency_terms(model, outputs):
    """PromptSRC's terms beyond the cross-entropy, unweighted (fp32). The KL runs from the frozen (teacher) to the
    prompted logits, temperature 1, summed over the batch and the classes and divided by B x C (the release)."""
    class_features, image_features = outputs.class_features.float(), outputs.image_features.float()
    frozen_class_features = model.frozen_class_features()
    frozen_image_features = outputs.extra["frozen_image_features"]
    frozen_logits = model.logits(frozen_image_features, frozen_class_features)
    logits = outputs.logits
    return {
        "loss_text": F.l1_loss(class_features, frozen_class_features),
        "loss_image": F.l1_loss(image_features, frozen_image_features),
        "loss_logits": F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(frozen_logits, dim=1),
                                reduction="sum", log_target=True) / logits.numel(),
    }


def gpa_weights(max_epoch, mean, std):
    """[w_1 .. w_N]: a Gaussian density N(mean, std > 0) at the 1-based epoch numbers, normalised to sum 1
    (float64)."""
    density = [math.exp(-(e - mean) ** 2 / (2 * std ** 2)) / (std * math.sqrt(2 * math.pi))
               for e in range(1, max_epoch + 1)]
    total = sum(density)
    if not total > 0:
        raise ConfigError(f"GPA_MEAN={mean!r}, GPA_STD={std!r}: every epoch 1..{max_epoch} gets weight 0")
    return [d / total for d in density]


class GaussianPromptAggregation:
    """sum_e w_e * theta_e over the epochs e done so far, for the tensors of `module` (the prompt learner only:
    the frozen CLIP is not averaged). Float64 accumulator; `state_dict()` goes into every checkpoint."""

    def __init__(self, module, max_epoch, mean, std, key):
        self.module, self.key = module, key  # key: the config node, named in errors
        self.settings = {"max_epoch": int(max_epoch), "mean": float(mean), "std": float(std)}
        self.weights = gpa_weights(max_epoch, mean, std)
        self.epochs = 0
        # tensors only: a module's extra state (the record of the classes trained on) is not averaged
        self.sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in module.state_dict().items()
                    if torch.is_tensor(v)}

    @torch.no_grad()
    def add_epoch(self, epoch):
        """Add the current tensors with the weight of `epoch` (1-based; epochs come in order)."""
        if epoch != self.epochs + 1:
            raise RuntimeError(f"GPA holds epochs 1..{self.epochs}; cannot add epoch {epoch}")
        state = self.module.state_dict()
        for key in self.sum:
            self.sum[key] += self.weights[epoch - 1] * state[key].double()
        self.epochs = epoch

    def load_into_module(self):
        current = self.module.state_dict()
        self.module.load_state_dict({**current, **{k: v.to(current[k].dtype) for k, v in self.sum.items()}})

    def state_dict(self):
        return {"epochs": self.epochs, "sum": {k: v.cpu() for k, v in self.sum.items()}, **self.settings}

    def load_state_dict(self, state, source):
        saved = {k: state[k] for k in self.settings}
        if saved != self.settings:
            raise ValueError(f"{source}: its Gaussian prompt aggregation ran with {saved}, this run asks for "
                             f"{self.settings} (OPTIM.MAX_EPOCH, {self.key}.GPA_MEAN / GPA_STD)")
        self.epochs = state["epochs"]
        self.sum = {k: v.to(self.sum[k].device, torch.float64) for k, v in state["sum"].items()}


@TRAINER_REGISTRY.register()
class PromptSRC(PromptTrainer):
    cfg_node = "PROMPTSRC"
    scripts_folder = "promptsrc"
    default_configs = {"b2n": "vit_b16_c2_ep20_batch4_4+4ctx", "fewshot": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
                       "xd": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"}
    # few-shot: the release's late, narrow GPA on the fine-grained / texture / satellite datasets (options the
    # experiment layout adds ahead of the user's)
    dataset_opts = {"fewshot": {dataset: {"GPA_MEAN": 45.0, "GPA_STD": 5.0}
                                for dataset in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")}}
    config_class = PromptSRCConfig
    summary = ('IVLP prompts regularised towards frozen CLIP (L1 on text / image features, KL on logits), '
               'Gaussian prompt aggregation over epochs')
    parameter_counts = {
        "vit_b16_c2_ep20_batch4_4+4ctx": 46_080,
        "vit_b16_c2_ep50_batch4_4+4ctx_few_shot": 46_080,
        "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets": 15_360,
    }
    model_class = PromptSRCCLIP
    loss_weights = {"loss_text": "TEXT_LOSS_WEIGHT", "loss_image": "IMAGE_LOSS_WEIGHT", "loss_logits": 1.0}

    @classmethod
    def training_outputs(cls, model, images, labels, class_features=None):
        """The prompted pass plus the frozen image pass, both under the step's autocast (the frozen class
        features are computed once, in fp32, by the loss term)."""
        outputs = super().training_outputs(model, images, labels, class_features)
        outputs.extra["frozen_image_features"] = model.frozen.image_features(model, images)
        return outputs

    @classmethod
    def loss_terms(cls, model, outputs):
        return self_consistency_terms(model, outputs)

    def build_model(self):
        super().build_model()
        config = self.config
        with option_errors(self.trainer_key, self.config_class):
            self.gpa = GaussianPromptAggregation(self.model.prompt_learner, self.max_epoch, config.GPA_MEAN,
                                                 config.GPA_STD, self.trainer_key)

    # ---------------------------------------------------------------- Gaussian prompt aggregation
    def after_epoch(self):
        """After the epoch's last step and LR update (as the release), before validation and the checkpoint."""
        self.gpa.add_epoch(self.epoch + 1)
        if self.epoch + 1 == self.max_epoch:
            self.gpa.load_into_module()
            print(f"Gaussian prompt aggregation: the prompts are now the weighted average over epochs "
                  f"1..{self.max_epoch} (mean {self.gpa.settings['mean']:g}, std {self.gpa.settings['std']:g})")
        super().after_epoch()

    def checkpoint_extra_state(self, name):
        return {"gpa": self.gpa.state_dict()} if name == LEARNER_NAME else None

    def restore_checkpoint_extra_state(self, name, extra_state):
        if name == LEARNER_NAME and extra_state is not None and "gpa" in extra_state:
            self.gpa.load_state_dict(extra_state["gpa"], f"the checkpoint in {self.cfg.RESUME or self.output_dir}")

    def before_train(self):
        super().before_train()  # resumes, if there is a checkpoint
        if self.gpa.epochs != self.start_epoch:
            raise ValueError(f"cannot resume PromptSRC from {self.cfg.RESUME or self.output_dir}: its checkpoint "
                             f"(epoch {self.start_epoch}) holds the prompt average of {self.gpa.epochs} epochs; "
                             f"use a new --output-dir")

