"""PromptTrainer: everything the prompt-tuning trainers share (CoOp's trainer skeleton, written once).

A method's trainer sets `cfg_node` (the name of its TRAINER.<NAME> node) and implements
`build_prompted_clip(cfg, classnames, clip_model) -> PromptedCLIP`. This class loads CLIP, freezes everything
outside `prompt_learner`, builds the optimizer / scheduler on it, registers it as "prompt_learner" (checkpoints
hold only the learnable prompts, CoOp-compatible), trains with the PREC policy and evaluates with the class text
features computed once per evaluation.
"""

import torch
import torch.nn.functional as F

from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from mmpt.clip_backbone import check_backbone_name, load_clip
from mmpt.precision import Precision, check_precision

LEARNER_NAME = "prompt_learner"
# class-dependent tensors some upstream prompt learners (CoOp, CoCoOp, MaPLe) store; ours keep none
UPSTREAM_CLASS_BUFFERS = ("token_prefix", "token_suffix")


class PromptTrainer(TrainerX):
    cfg_node = None  # e.g. "COOP": the trainer's options live in cfg.TRAINER.COOP

    def build_prompted_clip(self, cfg, classnames, clip_model):
        raise NotImplementedError(f"{type(self).__name__} must implement build_prompted_clip()")

    # ---------------------------------------------------------------- config
    @property
    def trainer_key(self):
        return f"TRAINER.{self.cfg_node}"

    def trainer_cfg(self, cfg=None):
        return getattr((cfg or self.cfg).TRAINER, self.cfg_node)

    def check_cfg(self, cfg):
        if self.cfg_node is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute cfg_node (e.g. 'COOP')")
        if self.cfg_node not in cfg.TRAINER:
            raise KeyError(f"cfg.{self.trainer_key} is missing: call trainers.extend_cfg(cfg) before merging configs")
        node = self.trainer_cfg(cfg)
        check_precision(node.PREC, f"{self.trainer_key}.PREC")
        if not (isinstance(node.TEXT_CHUNK_SIZE, int) and node.TEXT_CHUNK_SIZE >= 0):
            raise ValueError(f"{self.trainer_key}.TEXT_CHUNK_SIZE={node.TEXT_CHUNK_SIZE!r}: expected an int >= 0 "
                             f"(0 = all classes in one pass)")
        check_backbone_name(cfg.MODEL.BACKBONE.NAME)

    # ---------------------------------------------------------------- model
    def build_model(self):
        cfg, node = self.cfg, self.trainer_cfg()
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__}'s prompted CLIP")
        model = self.build_prompted_clip(cfg, classnames, clip_model)
        model.set_text_options(truncate=node.TRUNCATE_TEXT, chunk_size=node.TEXT_CHUNK_SIZE,
                               checkpoint=node.TEXT_CHECKPOINT)
        n_trainable = freeze_all_but_prompt_learner(model)
        print(f"Trainable parameters: {n_trainable}")
        if hasattr(model.prompt_learner, "parameter_breakdown"):  # [(group name, count)], e.g. MuDPT, MPL
            print("  of which: " + ", ".join(f"{name} {count:,}" for name, count in model.prompt_learner.parameter_breakdown()))
        # CLIP stays in eval mode (BatchNorm of ResNet backbones); the engine toggles only prompt_learner
        self.model = model.eval().to(self.device)
        self.precision = Precision(node.PREC, self.device, key=f"{self.trainer_key}.PREC")
        self.scaler = self.precision.grad_scaler()
        self.optim = self.sched = None
        if n_trainable:
            self.optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(LEARNER_NAME, model.prompt_learner, self.optim, self.sched)
        self.eval_class_features = None
        # a text side with nothing to learn (VPT) gives the same class features at every step: computed once
        self.text_is_constant = model.text_is_constant
        self.constant_class_features = None

    # ---------------------------------------------------------------- training
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device, non_blocking=True), batch["label"].to(self.device, non_blocking=True)

    def forward_backward(self, batch):
        if self.optim is None:
            raise RuntimeError(f"{type(self).__name__} has no trainable parameters: run it with --eval-only")
        images, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            logits = self.model(images, class_features=self.training_class_features())
        loss = F.cross_entropy(logits.float(), labels)
        self.backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return {"loss": loss.item(), "acc": compute_accuracy(logits.float(), labels)[0].item()}

    def training_class_features(self):
        """None (the model computes them in its forward pass, once per step), or the class features of a model
        whose text has nothing to learn, computed on the first step only."""
        if not self.text_is_constant:
            return None
        if self.constant_class_features is None:
            with torch.no_grad(), self.precision.autocast():
                self.constant_class_features = self.model.class_features()
        return self.constant_class_features

    def backward_and_update(self, loss):
        """model_backward_and_update with the GradScaler (a no-op scaler unless PREC is fp16)."""
        self.optim.zero_grad()
        if not self.scaler.is_enabled():
            # under fp16 an overflowing step is the GradScaler's to skip (it lowers the scale); elsewhere a
            # non-finite loss is a bug and stops the run
            self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        self.sync_gradients()  # distributed: the global batch's gradient (scaled alike on every rank)
        self.scaler.step(self.optim)
        self.scaler.update()

    # ---------------------------------------------------------------- evaluation
    def uses_cached_class_features(self):
        return self.trainer_cfg().CACHE_TEXT_FEATURES and not self.model.text_depends_on_image

    @torch.no_grad()
    def test(self, split=None):
        """The engine's evaluation (same printed lines); the class text features are computed once here instead
        of once per test batch when CACHE_TEXT_FEATURES is on and the text does not depend on the image."""
        if self.uses_cached_class_features():
            self.set_model_mode("eval")
            with self.precision.autocast():
                self.eval_class_features = self.model.class_features()
        try:
            return super().test(split)
        finally:
            self.eval_class_features = None

    def model_inference(self, input):
        with self.precision.autocast():
            return self.model(input, class_features=self.eval_class_features).float()

    # ---------------------------------------------------------------- checkpoints
    def load_state_dict_into(self, name, state_dict, model_path):
        """Checkpoints hold prompt_learner only and load across class sets (base -> new); upstream checkpoints'
        class buffers (token_prefix / token_suffix) are dropped."""
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[-1] not in UPSTREAM_CLASS_BUFFERS}
        try:
            self._models[name].load_state_dict(state_dict)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            raise RuntimeError(f"{model_path} does not fit {type(self).__name__}'s {name} (other config?): "
                               f"{' '.join(line.strip() for line in first)}") from None


def freeze_all_but_prompt_learner(model):
    """requires_grad False for every parameter outside model.prompt_learner; returns the trainable count."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(LEARNER_NAME + "."))
    learner_params = {id(p) for p in model.prompt_learner.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    # a prompt_learner sharing a tensor with CLIP would make CLIP trainable: refuse
    assert all(id(p) in learner_params for p in trainable), "a trainable tensor lies outside prompt_learner"
    return sum(p.numel() for p in trainable)
