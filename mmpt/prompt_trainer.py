"""PromptTrainer: everything the prompt-tuning trainers share (CoOp's trainer skeleton, written once), and the
place a method is declared (docs/ARCHITECTURE.md).

A method is one registered subclass whose class attributes declare it:

    @TRAINER_REGISTRY.register()
    class CoOp(PromptTrainer):
        cfg_node = "COOP"                  # its options live in cfg.TRAINER.COOP
        scripts_folder = "coop"            # scripts/coop/*.sh (None: no scripts)
        default_configs = {"b2n": ..., "fewshot": ..., "xd": ...}   # config name, or f(dataset, shots) -> name
        model_class = CoOpCLIP             # model_class(clip_model, classnames, node) -> a PromptedCLIP

        @staticmethod
        def add_config(node):              # the method's own keys and defaults
            node.N_CTX = 16

This class loads CLIP, builds `model_class`, freezes everything outside `prompt_learner`, builds the optimizer
/ scheduler on it, registers it as "prompt_learner" (checkpoints hold only the learnable prompts,
CoOp-compatible), trains with the PREC policy and evaluates with the prompts (and, where the text does not
depend on the image, the class text features) computed once per evaluation.
"""
import os

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import ConfigError, RunError
from mmpt.clip_backbone import check_backbone_name, load_clip
from mmpt.config import add_prompt_trainer_options
from mmpt.precision import Precision, check_precision
from mmpt.prompted_clip import ClassesTrainedOn

LEARNER_NAME = "prompt_learner"
TRAINED_ON = "classes_trained_on"  # in prompt_learner of a model with a logit rule (see `on_trained_classes`)
# class-dependent tensors some upstream prompt learners (CoOp, CoCoOp, MaPLe) store; ours keep none
UPSTREAM_CLASS_BUFFERS = ("token_prefix", "token_suffix")
PROTOCOLS = ("b2n", "fewshot", "xd")  # base-to-new, few-shot, cross-dataset and domain generalisation


class PromptTrainer(TrainerX):
    # ---------------------------------------------------------------- the declaration
    cfg_node = None  # e.g. "COOP"
    scripts_folder = None  # e.g. "coop"
    default_configs = {}  # protocol -> config name (or a function (dataset, shots) -> config name)
    config_folder = None  # where the configs live; None: configs/trainers/<trainer name> of the repository
    model_class = None  # model_class(clip_model, classnames, node) -> PromptedCLIP
    trains = True  # False: evaluation only (zero-shot CLIP)

    @staticmethod
    def add_config(node):
        """Add the method's own keys and defaults to `node` (cfg.TRAINER.<cfg_node>)."""

    @classmethod
    def config_node(cls, **overrides):
        """A fresh cfg.TRAINER.<cfg_node>: the method's keys, the shared options, then `overrides`."""
        node = CN()
        cls.add_config(node)
        add_prompt_trainer_options(node)
        for key, value in overrides.items():
            if key not in node:
                raise ConfigError(f"TRAINER.{cls.cfg_node}.{key}: no such option of {cls.__name__} "
                                  f"(options: {', '.join(sorted(node))})")
            node[key] = value
        return node

    @classmethod
    def check_node(cls, node):
        """The shared options' values (one-line ConfigErrors)."""
        key = f"TRAINER.{cls.cfg_node}"
        check_precision(node.PREC, f"{key}.PREC")
        if not (isinstance(node.TEXT_CHUNK_SIZE, int) and node.TEXT_CHUNK_SIZE >= 0):
            raise ConfigError(f"{key}.TEXT_CHUNK_SIZE={node.TEXT_CHUNK_SIZE!r}: expected an int >= 0 "
                              f"(0 = all classes in one pass)")

    @classmethod
    def build_method_model(cls, clip_model, classnames, node):
        """model_class on `clip_model` with the node's text options; everything outside prompt_learner frozen."""
        cls.check_node(node)
        model = cls.model_class(clip_model, classnames, node)
        model.set_text_options(truncate=node.TRUNCATE_TEXT, chunk_size=node.TEXT_CHUNK_SIZE,
                               checkpoint=node.TEXT_CHECKPOINT, share_prefix=node.TEXT_SHARED_PREFIX)
        freeze_all_but_prompt_learner(model)
        return model

    @classmethod
    def config_file(cls, config_name, repo_root):
        folder = cls.config_folder or os.path.join(repo_root, "configs", "trainers", cls.__name__)
        return os.path.join(folder, f"{config_name}.yaml")

    @classmethod
    def default_config(cls, protocol, dataset, shots):
        """The config name for a protocol ("b2n" | "fewshot" | "xd"); a declared function may pick by data."""
        try:
            choice = cls.default_configs[protocol]
        except KeyError:
            raise ConfigError(f"{cls.__name__} declares no default config for protocol '{protocol}' "
                              f"(default_configs: {sorted(cls.default_configs)})") from None
        return choice(dataset, shots) if callable(choice) else choice

    # ---------------------------------------------------------------- config
    @property
    def trainer_key(self):
        return f"TRAINER.{self.cfg_node}"

    def trainer_cfg(self, cfg=None):
        return getattr((cfg or self.cfg).TRAINER, self.cfg_node)

    def check_cfg(self, cfg):
        if self.cfg_node is None or self.model_class is None:
            raise TypeError(f"{type(self).__name__} must declare the class attributes cfg_node and model_class")
        if self.cfg_node not in cfg.TRAINER:
            raise KeyError(f"cfg.{self.trainer_key} is missing: call trainers.extend_cfg(cfg) before merging configs")
        self.check_node(self.trainer_cfg(cfg))
        check_backbone_name(cfg.MODEL.BACKBONE.NAME)

    # ---------------------------------------------------------------- model
    def model_node(self, cfg):
        """The node model_class is built from (a method whose model needs the dataset fills it in here)."""
        return self.trainer_cfg(cfg)

    def build_model(self):
        cfg, node = self.cfg, self.trainer_cfg()
        classnames = self.dm.dataset.classnames
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__}'s prompted CLIP")
        model = self.build_method_model(clip_model, classnames, self.model_node(cfg))
        if model.describe():
            print(model.describe())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"Trainable parameters: {n_trainable}")
        if hasattr(model.prompt_learner, "parameter_breakdown"):  # [(group name, count)], e.g. MuDPT, MPL
            print("  of which: " + ", ".join(f"{name} {count:,}" for name, count in model.prompt_learner.parameter_breakdown()))
        # CLIP stays in eval mode (BatchNorm of ResNet backbones); the engine toggles only prompt_learner
        if model.logit_rule is not None:  # the classes trained on, saved with the prompts
            model.prompt_learner.add_module(TRAINED_ON, ClassesTrainedOn(cfg.DATASET.NAME, classnames))
        self.model = model.eval().to(self.device)
        self.precision = Precision(node.PREC, self.device, key=f"{self.trainer_key}.PREC")
        self.scaler = self.precision.grad_scaler()
        self.optim = self.sched = None
        if n_trainable:
            self.optim = build_optimizer(model.prompt_learner, cfg.OPTIM)
            self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(LEARNER_NAME, model.prompt_learner, self.optim, self.sched)
        self.eval_prompts = self.eval_class_features = None
        # a text side with nothing to learn (VPT) gives the same class features at every step: computed once
        with torch.no_grad():
            self.text_is_constant = model.compute_prompts().text_is_constant
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
    @torch.no_grad()
    def test(self, split=None):
        """The engine's evaluation (same printed lines). With CACHE_TEXT_FEATURES the prompts are computed once
        here, and the class text features too unless the text depends on the image, instead of once per batch."""
        if self.trainer_cfg().CACHE_TEXT_FEATURES:
            self.set_model_mode("eval")
            with self.precision.autocast():
                self.eval_prompts = self.model.compute_prompts()
                if not self.eval_prompts.depends_on_image:
                    self.eval_class_features = self.model.class_features(self.eval_prompts)
        try:
            return super().test(split)
        finally:
            self.eval_prompts = self.eval_class_features = None

    def model_inference(self, input):
        with self.precision.autocast():
            if self.model.logit_rule is None:
                return self.model(input, prompts=self.eval_prompts, class_features=self.eval_class_features).float()
            return self.model.predict(input, self.on_trained_classes(), prompts=self.eval_prompts,
                                      class_features=self.eval_class_features).float()

    # ---------------------------------------------------------------- named logit sets (issue 20, arch-encoders)
    def on_trained_classes(self):
        """Whether this evaluation's class list is the one the model was trained on (its LogitRule picks the
        logit sets by it): the dataset's class names (and, with `same_dataset`, DATASET.NAME) against the ones
        saved with the prompts. A checkpoint without them (from another codebase): DATASET.SUBSAMPLE_CLASSES
        is not "new"."""
        record = getattr(self.model.prompt_learner, TRAINED_ON)
        if record.classnames is None:
            return self.cfg.DATASET.SUBSAMPLE_CLASSES != "new"
        return record.matches(self.cfg.DATASET.NAME, self.dm.dataset.classnames, self.model.logit_rule.same_dataset)

    # ---------------------------------------------------------------- checkpoints
    def load_state_dict_into(self, name, state_dict, model_path):
        """Checkpoints hold prompt_learner only and load across class sets (base -> new); upstream checkpoints'
        class buffers (token_prefix / token_suffix) are dropped."""
        state_dict = {key: value for key, value in state_dict.items()
                      if key.split(".")[-1] not in UPSTREAM_CLASS_BUFFERS}
        if hasattr(self._models[name], TRAINED_ON):
            state_dict.setdefault(f"{TRAINED_ON}._extra_state", {"dataset": None, "classnames": None})
        try:
            self._models[name].load_state_dict(state_dict)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            raise RunError(f"{model_path} does not fit {type(self).__name__}'s {name} (other trainer or config?): "
                               f"{' '.join(line.strip() for line in first)}") from None


def freeze_all_but_prompt_learner(model):
    """requires_grad False for every parameter outside model.prompt_learner; returns the trainable count."""
    learner_params = {id(p) for p in model.prompt_learner.parameters()}
    outside = {name: p for child_name, child in model.named_children() if child_name != LEARNER_NAME
               for name, p in child.named_parameters(prefix=child_name)}
    outside.update((name, p) for name, p in model.named_parameters(recurse=False))
    shared = [name for name, p in outside.items() if id(p) in learner_params]
    if shared:  # training the prompt learner would train CLIP too
        raise RuntimeError(f"{type(model).__name__}: prompt_learner shares tensors with the frozen model "
                           f"({', '.join(shared[:3])}); a prompt learner must own its tensors")
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(LEARNER_NAME + "."))
    return sum(p.numel() for p in model.prompt_learner.parameters())
