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
from typing import NamedTuple

import clip
import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy
from mmpt.prompt_trainer import LEARNER_NAME, PromptTrainer
from mmpt.templates import PROMPTSRC_TEMPLATES

from trainers.ivlp import IVLPCLIP


# the template ensemble runs several templates per text-tower pass, up to this many sentences (memory bound)
ENSEMBLE_SEQUENCES_PER_PASS = 2048


class SelfConsistencyOutputs(NamedTuple):
    """One training forward pass. Features are L2-normalised and fp32; the frozen ones carry no gradient."""

    logits: torch.Tensor  # [B, C] prompted
    class_features: torch.Tensor  # [C, E] prompted
    image_features: torch.Tensor  # [B, E] prompted
    frozen_logits: torch.Tensor  # [B, C]
    frozen_class_features: torch.Tensor  # [C, E] template ensemble
    frozen_image_features: torch.Tensor  # [B, E]


class PromptSRCCLIP(IVLPCLIP):
    config_key = "TRAINER.PROMPTSRC"

    def __init__(self, clip_model, classnames, node):
        super().__init__(clip_model, classnames, node)
        self.classnames = [name.replace("_", " ") for name in classnames]
        self._frozen_class_features = None  # a plain attribute: never saved, rebuilt for each class list

    @torch.no_grad()
    def frozen_class_features(self):
        """[C, E] the prompt-free text tower on every template, averaged unnormalised per class, then normalised;
        fp32 whatever the precision policy. Computed on first use (training only) and kept."""
        device = self.token_ids.device
        if self._frozen_class_features is None or self._frozen_class_features.device != device:
            n_classes = len(self.classnames)
            per_pass = max(1, ENSEMBLE_SEQUENCES_PER_PASS // n_classes)  # templates per text-tower pass
            features = []
            with torch.autocast(device.type, enabled=False):
                for begin in range(0, len(PROMPTSRC_TEMPLATES), per_pass):
                    sentences = [t.replace("{}", c) for t in PROMPTSRC_TEMPLATES[begin:begin + per_pass]
                                 for c in self.classnames]
                    ids = clip.tokenize(sentences, truncate=True).to(device)
                    features.append(self.text_encoder(ids).float().unflatten(0, (-1, n_classes)))  # [T, C, E]
            self._frozen_class_features = F.normalize(torch.cat(features).mean(0), dim=-1)
        return self._frozen_class_features

    @torch.no_grad()
    def frozen_image_features(self, images):
        """[B, E] the prompt-free image tower (CLIP's own frozen weights; no graph, so no backward)."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def self_consistency_outputs(self, images):
        """Everything the loss needs, from one prompted pass and one frozen image pass."""
        prompts = self.compute_prompts()
        class_features = self.class_features(prompts).float()
        image_features = self.image_features(images, prompts).float()
        frozen_class_features = self.frozen_class_features()
        frozen_image_features = self.frozen_image_features(images)
        return SelfConsistencyOutputs(self.logits(image_features, class_features), class_features, image_features,
                                      self.logits(frozen_image_features, frozen_class_features),
                                      frozen_class_features, frozen_image_features)


def self_consistency_losses(out, labels, text_weight, image_weight):
    """{term: scalar}; the training loss is their sum. The KL runs from the frozen (teacher) to the prompted
    logits, temperature 1, summed over the batch and the classes and divided by B x C (PromptSRC's release)."""
    return {
        "loss_ce": F.cross_entropy(out.logits, labels),
        "loss_text": text_weight * F.l1_loss(out.class_features, out.frozen_class_features),
        "loss_image": image_weight * F.l1_loss(out.image_features, out.frozen_image_features),
        "loss_logits": F.kl_div(F.log_softmax(out.logits, dim=1), F.log_softmax(out.frozen_logits, dim=1),
                                reduction="sum", log_target=True) / out.logits.numel(),
    }


def gpa_weights(max_epoch, mean, std, key="TRAINER.PROMPTSRC"):
    """[w_1 .. w_N]: a Gaussian density N(mean, std) at the 1-based epoch numbers, normalised to sum 1 (float64)."""
    if not std > 0:
        raise ValueError(f"{key}.GPA_STD={std!r}: expected a number > 0")
    density = [math.exp(-(e - mean) ** 2 / (2 * std ** 2)) / (std * math.sqrt(2 * math.pi))
               for e in range(1, max_epoch + 1)]
    total = sum(density)
    if not total > 0:
        raise ValueError(f"{key}.GPA_MEAN={mean!r}, GPA_STD={std!r}: every epoch 1..{max_epoch} gets weight 0")
    return [d / total for d in density]


class GaussianPromptAggregation:
    """sum_e w_e * theta_e over the epochs e done so far, for the tensors of `module` (the prompt learner only:
    the frozen CLIP is not averaged). Float64 accumulator; `state_dict()` goes into every checkpoint."""

    def __init__(self, module, max_epoch, mean, std):
        self.module = module
        self.settings = {"max_epoch": int(max_epoch), "mean": float(mean), "std": float(std)}
        self.weights = gpa_weights(max_epoch, mean, std)
        self.epochs = 0
        self.sum = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in module.state_dict().items()}

    @torch.no_grad()
    def add_epoch(self, epoch):
        """Add the current tensors with the weight of `epoch` (1-based; epochs come in order)."""
        if epoch != self.epochs + 1:
            raise RuntimeError(f"GPA holds epochs 1..{self.epochs}; cannot add epoch {epoch}")
        for key, value in self.module.state_dict().items():
            self.sum[key] += self.weights[epoch - 1] * value.double()
        self.epochs = epoch

    def load_into_module(self):
        current = self.module.state_dict()
        self.module.load_state_dict({k: v.to(current[k].dtype) for k, v in self.sum.items()})

    def state_dict(self):
        return {"epochs": self.epochs, "sum": {k: v.cpu() for k, v in self.sum.items()}, **self.settings}

    def load_state_dict(self, state, source):
        saved = {k: state[k] for k in self.settings}
        if saved != self.settings:
            raise ValueError(f"{source}: its Gaussian prompt aggregation ran with {saved}, this run asks for "
                             f"{self.settings} (OPTIM.MAX_EPOCH, TRAINER.PROMPTSRC.GPA_MEAN / GPA_STD)")
        self.epochs = state["epochs"]
        self.sum = {k: v.to(self.sum[k].device, torch.float64) for k, v in state["sum"].items()}


@TRAINER_REGISTRY.register()
class PromptSRC(PromptTrainer):
    cfg_node = "PROMPTSRC"
    scripts_folder = "promptsrc"
    default_configs = {"b2n": "vit_b16_c2_ep20_batch4_4+4ctx", "fewshot": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot",
                       "xd": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"}
    # few-shot: the release's late, narrow GPA on the fine-grained / texture / satellite datasets (KEY VALUE options
    # the experiment layout adds ahead of the user's)
    dataset_opts = {"fewshot": {dataset: ("TRAINER.PROMPTSRC.GPA_MEAN", "45.0", "TRAINER.PROMPTSRC.GPA_STD", "5.0")
                                for dataset in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")}}
    model_class = PromptSRCCLIP

    @staticmethod
    def add_config(node):
        """PromptSRC's keys and defaults (= configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml)."""
        node.N_CTX_TEXT = 4
        node.N_CTX_VISION = 4
        node.CTX_INIT = "a photo of a"  # used when it has >= N_CTX_TEXT tokens, else N(0, 0.02) behind "X .. X"
        node.PROMPT_DEPTH_TEXT = 9  # J_t: text layers 0..J_t-1 receive fresh prompts
        node.PROMPT_DEPTH_VISION = 9  # J_v
        node.TEXT_LOSS_WEIGHT = 25.0
        node.IMAGE_LOSS_WEIGHT = 10.0
        node.GPA_MEAN = 15.0  # Gaussian over the 1-based epoch number
        node.GPA_STD = 1.0
        return node

    def build_prompted_clip(self, cfg, classnames, clip_model):
        return PromptSRCCLIP(clip_model, classnames, cfg.TRAINER.PROMPTSRC)

    def build_model(self):
        super().build_model()
        node = self.trainer_cfg()
        self.gpa = GaussianPromptAggregation(self.model.prompt_learner, self.max_epoch, node.GPA_MEAN, node.GPA_STD)

    def forward_backward(self, batch):
        images, labels = self.parse_batch_train(batch)
        node = self.trainer_cfg()
        with self.precision.autocast():
            out = self.model.self_consistency_outputs(images)
        terms = self_consistency_losses(out, labels, node.TEXT_LOSS_WEIGHT, node.IMAGE_LOSS_WEIGHT)
        loss = sum(terms.values())
        self.backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        summary = {"loss": loss.item(), **{name: value.item() for name, value in terms.items()}}
        return {**summary, "acc": compute_accuracy(out.logits, labels)[0].item()}

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

