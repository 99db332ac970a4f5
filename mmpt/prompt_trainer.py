"""PromptTrainer: everything the prompt-tuning trainers share (CoOp's trainer skeleton and the training step,
written once), and the place a method is declared (docs/ARCHITECTURE.md).

A method is a typed config, a model and one registered subclass whose class attributes declare it:

    @dataclass
    class CoOpConfig(PromptOptions):       # cfg.TRAINER.COOP is generated from it (mmpt.config)
        N_CTX: int = 16

    @TRAINER_REGISTRY.register()
    class CoOp(PromptTrainer):
        cfg_node = "COOP"                  # its options live in cfg.TRAINER.COOP
        config_class = CoOpConfig
        model_class = CoOpCLIP             # model_class(clip_model, classnames, config) -> a PromptedCLIP
        scripts_folder = "coop"            # scripts/coop/*.sh (None: no scripts)
        default_configs = {"b2n": ..., "fewshot": ..., "xd": ...}   # config name, or f(dataset, shots) -> name

A method with extra losses declares them: `loss_terms(model, outputs) -> {name: scalar}` and their weights
(`loss_weights = {name: config field or number}`); the library's step sums cross-entropy and the weighted terms,
logs each term, and owns backward, gradient scaling, the non-finite check and the LR schedule.

This class loads CLIP, builds `model_class`, freezes everything outside `prompt_learner`, builds the optimizer
/ scheduler on it, registers it as "prompt_learner" (checkpoints hold only the learnable prompts,
CoOp-compatible), trains with the PREC policy and evaluates with the prompts (and, where the text does not
depend on the image, the class text features) computed once per evaluation.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from dassl.engine import TrainerX
from dassl.metrics import compute_accuracy
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import ConfigError, RunError
from mmpt.clip_backbone import backbone_identity, check_backbone_name, load_clip
from mmpt.config import PromptOptions, config_from_node, config_node, make_config, option_errors
from mmpt.precision import Precision
from mmpt.prompted_clip import ClassesTrainedOn, Outputs, Prompts

LEARNER_NAME = "prompt_learner"
TRAINED_ON = "classes_trained_on"  # in prompt_learner of a model with a logit rule (see `on_trained_classes`)
# class-dependent tensors some upstream prompt learners (CoOp, CoCoOp, MaPLe) store; ours keep none
UPSTREAM_CLASS_BUFFERS = ("token_prefix", "token_suffix")
PROTOCOLS = ("b2n", "fewshot", "xd")  # base-to-new, few-shot, cross-dataset and domain generalisation
CROSS_ENTROPY = "loss_ce"


@dataclass
class TrainingOutputs:
    """One training forward pass, as the library's step hands it to a method's `loss_terms`.

    logits [B, C]: the logits of the cross-entropy and of the logged accuracy; class_features [C, E] ([B, C, E]
    when the text depends on the image) and image_features [B, E]: the L2-normalised prompted features the
    logits came from (the step's precision: call .float() for a term in fp32); extra: named values a method's
    `training_outputs` adds (a second logit set, a head's logits, a frozen pass run under the step's autocast).
    """

    images: torch.Tensor
    labels: torch.Tensor
    prompts: Prompts
    logits: torch.Tensor
    class_features: Optional[torch.Tensor]
    image_features: torch.Tensor
    extra: dict = field(default_factory=dict)
    # the pass's `mmpt.prompted_clip.Outputs` (every named logit set, the raw features a head reads)
    forward: Optional[Outputs] = None


class PromptTrainer(TrainerX):
    # ---------------------------------------------------------------- the declaration
    cfg_node = None  # e.g. "COOP": the options live in cfg.TRAINER.<cfg_node>
    config_class = PromptOptions  # the method's typed config (a dataclass extending PromptOptions)
    model_class = None  # model_class(clip_model, classnames, config) -> PromptedCLIP
    scripts_folder = None  # e.g. "coop"
    default_configs = {}  # protocol -> config name (or a function (dataset, shots) -> config name)
    config_folder = None  # where the configs live; None: configs/trainers/<trainer name> of the repository
    trains = True  # False: evaluation only (zero-shot CLIP)
    # README's and docs/METHODS.md's method tables (python -m mmpt.experiments.method_table --write):
    summary = ""  # one line: what the method learns
    # {config name: trainable parameters at ViT-B/16} the published / official figures of its configs (also the
    # "expected" column of benchmarks/param_counts.py)
    parameter_counts = {}
    # the class text features depend on no learnable tensor (VPT, zero-shot CLIP): computed once for training
    text_is_constant = False
    # {protocol: {dataset: {FIELD: value}}}: options the experiment layout puts ahead of the user's for that
    # protocol and dataset (the user's own options come later and win), e.g. PromptSRC's few-shot GPA
    dataset_opts = {}
    # the training loss: cross_entropy_weight * CE(outputs.logits) + sum of weight * term over `loss_terms`;
    # a weight is a number or the name of a config field holding it; cross_entropy_weight 0: no CE term
    cross_entropy_weight = 1.0
    loss_weights = {}  # {term name: weight}, one entry per term `loss_terms` returns
    # {variant name: config overrides} the bit-for-bit records (tests/records.py) build on their 3-layer backbone
    record_variants = {}
    # {child of prompt_learner: LR multiplier (a number or a config field name)}: each such child trains in its
    # own parameter group at OPTIM.LR x multiplier, every other prompt tensor at OPTIM.LR (DePT's head at x 6.5);
    # a child the model does not build is skipped. {}: one group
    lr_multipliers = {}
    # the protocol: True = trains on the unlabeled training images of every class it is tested on (PromptKD):
    # base-to-new trains once on all classes (evaluated on base and new), cross-dataset trains on each target
    transductive = False
    # the results tables' track: "" = the inductive methods; a name (PromptKD: "distillation") = tables of their
    # own, never averaged or ranked with the inductive rows
    track = ""
    # a method trained from another method's run (PromptKD's teacher): the config field naming that run's folder;
    # the experiment layout runs `teacher_run(node)` first and fills the field
    teacher_field = None

    @classmethod
    def training_outputs(cls, model, images, labels, class_features=None):
        """The training forward pass (run under the step's autocast): the model's one forward path
        (`PromptedCLIP.outputs`) with the model's prompts. `class_features`: reuse these (a constant text side).
        A method extends it to add entries of `extra`."""
        prompts = model.compute_prompts()
        out = model.outputs(images, prompts, None if prompts.depends_on_image else class_features)
        return TrainingOutputs(images, labels, prompts, out.logits["itm"], out.class_features, out.image_features,
                               forward=out)

    @classmethod
    def teacher_run(cls, node):
        """(trainer, config name, seed) of the run `teacher_field` names, from the method's config node."""
        raise NotImplementedError(f"{cls.__name__} declares teacher_field but no teacher_run")

    @classmethod
    def track_note(cls, recorded):
        """What the tables of the method's results `track` say about a run (from its recorded config, {dotted key:
        value}); "" = nothing."""
        return ""

    @classmethod
    def loss_terms(cls, model, outputs):
        """{term name: scalar tensor} beyond the cross-entropy (run outside autocast); weighted by loss_weights."""
        return {}

    @classmethod
    def parameter_breakdown(cls, model):
        """[(group name, count)] of the trainable tensors, printed after the total (None: the total only)."""
        return None

    @classmethod
    def config_node(cls, **overrides):
        """A fresh cfg.TRAINER.<cfg_node> generated from config_class, with `overrides` set (not validated)."""
        node = config_node(cls.config_class)
        for key, value in overrides.items():
            if key not in node:
                raise ConfigError(f"{cls.config_key()}.{key}: no such option of {cls.__name__} "
                                  f"(options: {', '.join(sorted(node))})")
            node[key] = value
        return node

    @classmethod
    def config_key(cls):
        return f"TRAINER.{cls.cfg_node}"

    @classmethod
    def make_config(cls, **fields):
        """The typed config with `fields` set (validated; errors name TRAINER.<cfg_node>.<FIELD>)."""
        return make_config(cls.config_class, cls.config_key(), cls.__name__, **fields)

    @classmethod
    def config_from_node(cls, node):
        """The typed config of cfg.TRAINER.<cfg_node> (validated)."""
        return config_from_node(cls.config_class, node, cls.config_key())

    @classmethod
    def build_method_model(cls, clip_model, classnames, config):
        """model_class on `clip_model` with the config's text options; everything outside prompt_learner frozen.
        A ConfigError about one of the config's fields names its full key."""
        with option_errors(cls.config_key(), cls.config_class):
            model = cls.model_class(clip_model, classnames, config)
        model.set_text_options(truncate=config.TRUNCATE_TEXT, chunk_size=config.TEXT_CHUNK_SIZE,
                               checkpoint=config.TEXT_CHECKPOINT, share_prefix=config.TEXT_SHARED_PREFIX)
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

    @classmethod
    def dataset_options(cls, protocol, dataset):
        """[KEY, VALUE, ...] of dataset_opts for this protocol and dataset (full keys, values as on a command line)."""
        fields = cls.dataset_opts.get(protocol, {}).get(dataset, {})
        return [item for name, value in fields.items() for item in (f"{cls.config_key()}.{name}", str(value))]

    # ---------------------------------------------------------------- config
    @property
    def trainer_key(self):
        return self.config_key()

    def trainer_cfg(self, cfg=None):
        return getattr((cfg or self.cfg).TRAINER, self.cfg_node)

    def backbone_name(self):
        """The backbone every checkpoint records (the engine checks it on loading): name, and file for open_clip."""
        return backbone_identity(self.cfg.MODEL.BACKBONE.NAME, self.cfg.MODEL.BACKBONE.PATH)

    def check_cfg(self, cfg):
        if self.cfg_node is None or self.model_class is None:
            raise TypeError(f"{type(self).__name__} must declare the class attributes cfg_node and model_class")
        if self.cfg_node not in cfg.TRAINER:
            raise KeyError(f"cfg.{self.trainer_key} is missing: call trainers.extend_cfg(cfg) before merging configs")
        self.config_from_node(self.trainer_cfg(cfg))
        check_backbone_name(cfg.MODEL.BACKBONE.NAME)

    # ---------------------------------------------------------------- model
    def model_config(self, cfg):
        """The typed config the model is built from (a method whose model needs the dataset fills it in here)."""
        return self.config_from_node(self.trainer_cfg(cfg))

    def build_model(self):
        cfg = self.cfg
        classnames = self.dm.dataset.classnames
        self.config = self.model_config(cfg)
        print(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg)
        print(f"Building {type(self).__name__}'s prompted CLIP")
        model = self.build_method_model(clip_model, classnames, self.config)
        if model.describe():
            print(model.describe())
        n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"Trainable parameters: {n_trainable}")
        breakdown = self.parameter_breakdown(model)
        if breakdown:
            print("  of which: " + ", ".join(f"{name} {count:,}" for name, count in breakdown))
        # CLIP stays in eval mode (BatchNorm of ResNet backbones); the engine toggles only prompt_learner
        if model.logit_rule is not None:  # the classes trained on, saved with the prompts
            model.prompt_learner.add_module(TRAINED_ON, ClassesTrainedOn(cfg.DATASET.NAME, classnames))
        self.model = model.eval().to(self.device)
        self.precision = Precision(self.config.PREC, self.device, key=f"{self.trainer_key}.PREC")
        self.scaler = self.precision.grad_scaler()
        self.optim = self.sched = None
        if n_trainable:
            self.optim = build_optimizer(model.prompt_learner, cfg.OPTIM,
                                         self.parameter_groups(model.prompt_learner, self.config, cfg.OPTIM.LR))
            self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model(LEARNER_NAME, model.prompt_learner, self.optim, self.sched)
        self.eval_prompts = self.eval_class_features = None
        self.constant_class_features = None

    # ---------------------------------------------------------------- training
    def parse_batch_train(self, batch):
        return batch["img"].to(self.device, non_blocking=True), batch["label"].to(self.device, non_blocking=True)

    def forward_backward(self, batch):
        """The training step of every method: the forward pass under the PREC policy, the loss of the declared
        terms, backward with gradient scaling, the optimizer step and, after the epoch's last batch, the LR
        schedule."""
        if self.optim is None:
            raise RuntimeError(f"{type(self).__name__} has no trainable parameters: run it with --eval-only")
        images, labels = self.parse_batch_train(batch)
        with self.precision.autocast():
            outputs = self.training_outputs(self.model, images, labels, self.training_class_features())
        loss, summary = self.training_loss(self.model, self.config, outputs)
        if not self.scaler.is_enabled():
            # under fp16 an overflowing step is the GradScaler's to skip (it lowers the scale); elsewhere a
            # non-finite loss stops the run before the step, so no checkpoint or result holds that state
            self.check_finite(loss, summary)
        self.backward_and_update(loss)
        if self.batch_idx + 1 == self.num_batches:
            self.update_lr()
        return summary

    @classmethod
    def training_loss(cls, model, config, outputs):
        """(loss, {"loss": ..., each term unweighted..., "acc": ...}) from one forward pass's outputs:
        cross_entropy_weight * CE + sum of loss_weights[name] * term. "loss_ce" and the terms are logged only
        where there are terms (a plain method's epoch line stays "loss ... acc ...")."""
        terms = {}
        ce_weight = cls.loss_weight(config, cls.cross_entropy_weight, f"the weight of {CROSS_ENTROPY}")
        if ce_weight:
            terms[CROSS_ENTROPY] = F.cross_entropy(outputs.logits.float(), outputs.labels)
        extra = cls.loss_terms(model, outputs)
        undeclared = sorted(set(extra) - set(cls.loss_weights))
        if undeclared or CROSS_ENTROPY in extra:
            raise TypeError(f"{cls.__name__}.loss_terms returned {undeclared or [CROSS_ENTROPY]}: declare each "
                            f"term's weight in loss_weights (and name none of them {CROSS_ENTROPY!r})")
        terms.update(extra)
        weights = {CROSS_ENTROPY: ce_weight,
                   **{name: cls.loss_weight(config, cls.loss_weights[name], f"the weight of {name}") for name in extra}}
        loss = None
        for name, value in terms.items():
            part = value if weights[name] == 1 else weights[name] * value
            loss = part if loss is None else loss + part
        if loss is None:
            raise TypeError(f"{cls.__name__}: cross_entropy_weight is 0 and loss_terms returned nothing to train on")
        summary = {"loss": loss.item()}
        if extra:
            summary.update((name, value.item()) for name, value in terms.items())
        summary["acc"] = compute_accuracy(outputs.logits.float(), outputs.labels)[0].item()
        return loss, summary

    @classmethod
    def parameter_groups(cls, learner, config, lr):
        """The optimizer's parameter groups declared by `lr_multipliers` (None: one group at `lr`): first every
        prompt tensor outside the named children at `lr`, then one group per named child the learner holds."""
        if not cls.lr_multipliers:
            return None
        children = dict(learner.named_children())
        multiplied = [name for name in cls.lr_multipliers if name in children]
        groups = [{"params": [p for name, p in learner.named_parameters() if name.split(".")[0] not in multiplied]}]
        for name in multiplied:
            multiplier = cls.loss_weight(config, cls.lr_multipliers[name], f"the LR multiplier of {name}")
            groups.append({"params": list(children[name].parameters()), "lr": lr * multiplier})
        return [group for group in groups if group["params"]]

    def check_finite(self, loss, summary):
        """RunError (one line naming the epoch, the batch and the non-finite loss terms) when the loss is NaN / inf."""
        if bool(torch.isfinite(loss).all()):
            return
        terms = {name: value for name, value in summary.items() if name != "acc"}
        bad = [f"{name}={value}" for name, value in terms.items() if not math.isfinite(value)]
        raise RunError(f"non-finite loss at epoch {self.epoch + 1}, batch {self.batch_idx + 1}: {', '.join(bad)}; "
                       f"training stopped before this step (no checkpoint or result was written from it); lower "
                       f"OPTIM.LR (now {self.cfg.OPTIM.LR}) and train into a new --output-dir")

    @staticmethod
    def loss_weight(config, weight, term):
        """A declared weight: a number, or the name of the config field holding it."""
        if isinstance(weight, str):
            weight = getattr(config, weight)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"{term} is {weight!r}: expected a number or a config field name")
        return weight

    def training_class_features(self):
        """None (the model computes them in its forward pass, once per step), or the class features of a model
        whose text has nothing to learn (declared text_is_constant), computed on the first step only."""
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
        if self.config.CACHE_TEXT_FEATURES:
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
