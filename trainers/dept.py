"""DePT: Decoupled Prompt Tuning (Zhang, Wu, Gao, Shen, Song; CVPR 2024), a plug-in on any prompt method, written
once for CoOp, CoCoOp, KgCoOp, MaPLe and PromptSRC.

DePT adds a "CAT head" to a base method M, trained jointly with M's prompts: a channel-wise affine map (cwT,
phi(x) = gamma * x + beta, one per tower) on the raw, unnormalised features of M's forward pass, then one Linear
g over the classes trained on. With lambda = LAMBDA (0.7), s = M's logits, f = raw image features, t_c = raw class
text features (per image for CoCoOp):

    training   L = (1 - lambda) CE(s, y) + lambda CE(g([phi_T(t_y); phi_I(f)]), [y; y]) + M's own terms (unscaled)
    evaluation with the head: (1 - lambda) s + lambda g(phi_I(f)) (logits added, as the release); without: s

The head exists where the release builds it (USE_HEAD "auto": the base half of base-to-new, and ImageNet with all
classes: the cross-dataset source and its domain-generalisation targets); elsewhere M runs alone. The head trains
at HEAD_LR_MULT (6.5) x OPTIM.LR (`lr_multipliers`, a parameter group of its own). Its tensors live in the prompt
learner under the release's names (film_lp_text, film_lp_img, linear_probe_proj), so checkpoints hold the prompts
and the head only. `declare_dept(base, ...)` makes one declared trainer per base method; the trainer names are the
release's (ExtrasLinearProbeCoOp, -CoCoOp, -KgCoOp, -MaPLe); ExtrasLinearProbePromptSRC is ours (no release).
docs/DEPT.md.
"""
import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError, RunError
from mmpt.prompt_trainer import LEARNER_NAME, TRAINED_ON
from mmpt.prompted_clip import LogitRule

from trainers.cocoop import CoCoOp
from trainers.coop import CoOp
from trainers.kgcoop import KgCoOp
from trainers.maple import MaPLe
from trainers.promptsrc import PromptSRC

CAT = "cat"  # the name of the head's logit set
LINEAR = "linear_probe_proj"
HEAD_CHILDREN = ("film_lp_text", "film_lp_img", LINEAR)  # the release's names, children of prompt_learner
HEAD_RULES = ("auto", "always", "never")
FUSIONS = ("logits", "probs")
EMBED_DIM = 512  # ViT-B/16's joint embedding: the declared parameter counts
COUNT_CLASSES = 500  # the declared parameter counts: ImageNet's base half


def release_head_rule(dataset):
    """The release's rule (its CustomCLIP): a head iff the base classes, or all classes of a dataset whose name
    contains "ImageNet" (the cross-dataset source and its domain-generalisation targets)."""
    return dataset.SUBSAMPLE_CLASSES == "base" or (dataset.SUBSAMPLE_CLASSES == "all" and "ImageNet" in dataset.NAME)


class DePTOptions:
    """The DePT fields' checks, mixed into each trainer's config dataclass (the fields: `dept_fields`)."""

    def validate(self):
        super().validate()
        if not 0.0 <= self.LAMBDA <= 1.0:
            raise ConfigError(f"LAMBDA={self.LAMBDA!r}: expected a number in [0, 1]")
        if not self.HEAD_LR_MULT > 0:
            raise ConfigError(f"HEAD_LR_MULT={self.HEAD_LR_MULT!r}: expected a number > 0")
        for name, choices in (("FUSION", FUSIONS), ("USE_HEAD", HEAD_RULES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {choices}")

    @property
    def ITM_WEIGHT(self):
        """The weight of M's cross-entropy, 1 - LAMBDA (a derived value, not a key)."""
        return 1.0 - self.LAMBDA


def dept_fields():
    return [("LAMBDA", float, 0.7),  # lambda: the head's weight in the loss and the fusion [LINEAR_PROBE.WEIGHT]
            ("HEAD_LR_MULT", float, 6.5),  # head LR = OPTIM.LR x this [OPTIM.LR_EXP]
            ("TEST_TIME_FUSION", bool, True),  # False: the head's logits alone on the classes trained on
            ("CWT", bool, True),  # the two channel-wise affine maps [FILM.LINEAR_PROBE]
            ("FUSION", str, "logits"),  # "logits" (the code: a sum of logits) | "probs" (the paper's mixture)
            ("USE_HEAD", str, "auto")]  # auto = the release's rule (release_head_rule) | "always" | "never"


class ChannelAffine(nn.Module):
    """cwT (the release's FiLM): scale * x + bias per channel, from scale 1 and bias 0."""

    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.scale * x + self.bias


class DePTModel:
    """Mixed in before a base method's model: the head in its prompt learner, the head's logit set on raw image
    features (`Prompts.logit_heads`), and the logit rule. `forward` stays M's logits."""

    def __init__(self, clip_model, classnames, config):
        super().__init__(clip_model, classnames, config)  # M first: its initial prompts draw the same numbers
        embed_dim = clip_model.text_projection.shape[1]
        learner = self.prompt_learner
        self.cwt = config.CWT
        if config.CWT:
            learner.film_lp_text = ChannelAffine(embed_dim)
            learner.film_lp_img = ChannelAffine(embed_dim)
        self.has_head = config.USE_HEAD != "never"  # the trainer resolves "auto" from the dataset
        if self.has_head:
            learner.add_module(LINEAR, nn.Linear(embed_dim, len(classnames)))  # PyTorch's default init, as released
            lam = config.LAMBDA
            trained = {"itm": 1.0 - lam, CAT: lam} if config.TEST_TIME_FUSION else {CAT: 1.0}
            self.logit_rule = LogitRule(trained=trained, unseen={"itm": 1.0}, combine=config.FUSION)
        else:
            self.logit_rule = LogitRule()  # M's logits everywhere (and the classes trained on are recorded)

    def compute_prompts(self):
        prompts = super().compute_prompts()
        if not self.has_head:
            return prompts
        heads = {**(prompts.logit_heads or {}), CAT: functools.partial(self.cat_logits, tower="img")}
        return dataclasses.replace(prompts, logit_heads=heads)

    def cat_logits(self, features, tower):
        """[N, C] fp32: g(phi(features)) of raw features [N, E] of `tower` ("text" | "img")."""
        features = features.float()
        if self.cwt:
            features = getattr(self.prompt_learner, f"film_lp_{tower}")(features)
        return getattr(self.prompt_learner, LINEAR)(features)


def head_rows(trained, classnames, source):
    """The rows of a head trained on `trained` class names that score `classnames` (ImageNet-A / -R: 200 of
    ImageNet's 1000). Both lists are in the dataset's label order, so a name given to several classes (ImageNet's
    "missile", "sunglasses") is matched occurrence by occurrence when every occurrence is evaluated."""
    if trained is None:
        raise RunError(f"{source}: its head has other classes than this run's {len(classnames)} and no record of "
                       f"the classes it was trained on (set USE_HEAD never to evaluate the base method's logits)")
    positions = {}
    for row, name in enumerate(trained):
        positions.setdefault(name, []).append(row)
    missing = sorted({name for name in classnames if name not in positions})
    ambiguous = sorted({name for name in classnames if len(positions.get(name, ())) > classnames.count(name) > 0})
    if missing or ambiguous:
        raise RunError(f"{source}: its head was trained on other classes ({'missing: ' if missing else 'ambiguous: '}"
                       f"{', '.join(missing or ambiguous)[:200]}); set USE_HEAD never to evaluate the base "
                       f"method's logits alone")
    taken = {name: iter(rows) for name, rows in positions.items()}
    return torch.tensor([next(taken[name]) for name in classnames])


class DePTTrainer:
    """Mixed in before a base method's trainer: the CAT rows and loss on top of M's pass and terms, the head
    rule, the head's LR group and checkpoint handling."""

    lr_multipliers = dict.fromkeys(HEAD_CHILDREN, "HEAD_LR_MULT")
    parameter_count_classes = COUNT_CLASSES  # the head's classes in the declared parameter_counts
    cross_entropy_weight = "ITM_WEIGHT"  # (1 - lambda) CE(s, y)

    @classmethod
    def training_outputs(cls, model, images, labels, class_features=None):
        """M's pass (and its extras), plus the CAT logits of the 2B rows: the label classes' raw text features,
        then the raw image features (as the release concatenates them)."""
        outputs = super().training_outputs(model, images, labels, class_features)
        if model.has_head:
            raw_text = outputs.forward.raw_class_features
            if raw_text is None:
                raise RuntimeError(f"{cls.__name__}: the head needs the raw class features of the training pass")
            label_text = raw_text[torch.arange(len(labels), device=labels.device), labels] if raw_text.dim() == 3 \
                else raw_text[labels]
            with torch.autocast(images.device.type, enabled=False):
                outputs.extra[CAT] = torch.cat([model.cat_logits(label_text, "text"), outputs.forward.logits[CAT]])
        return outputs

    @classmethod
    def loss_terms(cls, model, outputs):
        """M's own terms and the CAT loss: one cross-entropy over the 2B rows (mean), targets [y; y]."""
        terms = super().loss_terms(model, outputs)
        terms["loss_cat"] = F.cross_entropy(outputs.extra[CAT], torch.cat([outputs.labels, outputs.labels]))
        return terms

    @classmethod
    def parameter_breakdown(cls, model):
        learner = model.prompt_learner
        count = lambda names: sum(p.numel() for name in names if hasattr(learner, name)
                                  for p in getattr(learner, name).parameters())
        head = count(HEAD_CHILDREN)
        return [("prompts", sum(p.numel() for p in learner.parameters()) - head),
                ("cwT", count(HEAD_CHILDREN[:2])), ("linear", count(HEAD_CHILDREN[2:]))]

    @classmethod
    def head_parameter_count(cls, n_classes, embed_dim=EMBED_DIM):
        """cwT 4E + the Linear (E + 1) C, with the defaults (CWT on, the head built)."""
        return 4 * embed_dim + (embed_dim + 1) * n_classes

    @classmethod
    def dataset_options(cls, protocol, dataset):
        """Few-shot trains on all classes, where the release's rule builds no head: the head is always built there
        (ours: the release has no all-class few-shot protocol)."""
        options = super().dataset_options(protocol, dataset)
        return options + [f"{cls.config_key()}.USE_HEAD", "always"] if protocol == "fewshot" else options

    def model_config(self, cfg):
        """M's config with USE_HEAD "auto" resolved by the release's rule on DATASET.*."""
        config = super().model_config(cfg)
        if config.USE_HEAD != "auto":
            return config
        return dataclasses.replace(config, USE_HEAD="always" if release_head_rule(cfg.DATASET) else "never")

    def before_train(self):
        if not self.model.has_head:
            raise ConfigError(f"{self.trainer_key}.USE_HEAD={self.config.USE_HEAD!r}: no head to train on "
                              f"DATASET.SUBSAMPLE_CLASSES {self.cfg.DATASET.SUBSAMPLE_CLASSES} of "
                              f"{self.cfg.DATASET.NAME} (the release trains on the base classes or on ImageNet); set "
                              f"{self.trainer_key}.USE_HEAD always to train the head on these classes")
        super().before_train()

    def on_trained_classes(self):
        """The fused logits wherever the head is built: loading matched its rows to this run's classes."""
        return self.model.has_head

    def load_state_dict_into(self, name, state_dict, model_path):
        """Without a head (new classes, cross-dataset targets) the checkpoint's Linear is left out; a head over
        other classes than the checkpoint's keeps the rows of this run's classes (ImageNet-A / -R)."""
        if name == LEARNER_NAME:
            linear_keys = [key for key in state_dict if key.split(".")[0] == LINEAR]
            if not self.model.has_head:
                state_dict = {key: value for key, value in state_dict.items() if key not in linear_keys}
            elif linear_keys:
                state_dict = self.head_for_these_classes(state_dict, linear_keys, model_path)
        super().load_state_dict_into(name, state_dict, model_path)

    def head_for_these_classes(self, state_dict, linear_keys, model_path):
        """The checkpoint's prompt learner state with the head's rows of this run's classes, in its order."""
        record_key = f"{TRAINED_ON}._extra_state"
        trained = (state_dict.get(record_key) or {}).get("classnames")
        classnames = list(self.dm.dataset.classnames)
        if trained == classnames or (trained is None and len(state_dict[f"{LINEAR}.bias"]) == len(classnames)):
            return state_dict
        rows = head_rows(trained, classnames, model_path)
        state_dict = {key: value[rows] if key in linear_keys else value for key, value in state_dict.items()}
        state_dict[record_key] = {**state_dict[record_key], "classnames": classnames}
        return state_dict


def declare_dept(base, name, cfg_node, scripts_folder, config_name, summary, base_count, record_variants,
                 base_defaults=None):
    """Declare and register the DePT trainer `name` on the trainer `base`: its config (the base's fields with the
    release's DePT values, then the DePT fields), its model (the base's with the head) and its trainer.
    `base_count`: the base prompts' trainable count in `config_name` at ViT-B/16."""
    base_config = base.config_class
    fields = [(field, type(getattr(base_config, field)), value) for field, value in (base_defaults or {}).items()]
    config_class = dataclasses.make_dataclass(f"{name}Config", fields + dept_fields(),
                                              bases=(DePTOptions, base_config))
    model_class = type(f"{base.model_class.__name__}DePT", (DePTModel, base.model_class), {})
    attributes = dict(
        cfg_node=cfg_node, config_class=config_class, model_class=model_class, scripts_folder=scripts_folder,
        default_configs=dict.fromkeys(("b2n", "fewshot", "xd"), config_name), config_folder=None,
        summary=summary, record_variants=record_variants,
        parameter_counts={config_name: base_count + DePTTrainer.head_parameter_count(COUNT_CLASSES)},
        loss_weights={**base.loss_weights, "loss_cat": "LAMBDA"}, __module__=__name__)
    trainer = type(name, (DePTTrainer, base), attributes)
    for cls in (config_class, model_class):
        cls.__module__ = __name__
    return TRAINER_REGISTRY.register()(trainer)


ExtrasLinearProbeCoOp = declare_dept(
    CoOp, "ExtrasLinearProbeCoOp", "COOP_DEPT", "coop_dept", "vit_b16_ep10_bs4_lr35",
    "DePT on CoOp: CoOp's context + channel-wise affine maps and a linear head over the training classes",
    8_192, {"ExtrasLinearProbeCoOp": dict(N_CTX=4)}, base_defaults=dict(N_CTX=16, CTX_INIT=""))
ExtrasLinearProbeCoCoOp = declare_dept(
    CoCoOp, "ExtrasLinearProbeCoCoOp", "COCOOP_DEPT", "cocoop_dept", "vit_b16_c4_ep10_batch1_ctxv1",
    "DePT on CoCoOp: CoCoOp's context and Meta-Net + the DePT head (text rows per image)",
    35_360, {"ExtrasLinearProbeCoCoOp": dict()}, base_defaults=dict(N_CTX=4, CTX_INIT="a photo of a"))
ExtrasLinearProbeKgCoOp = declare_dept(
    KgCoOp, "ExtrasLinearProbeKgCoOp", "KGCOOP_DEPT", "kgcoop_dept", "vit_b16_ep10_ctxv1_bs4_lr35",
    "DePT on KgCoOp: KgCoOp's context and knowledge-guided term (W 2) + the DePT head",
    2_048, {"ExtrasLinearProbeKgCoOp": dict(TEMPLATE="a photo of a {}, a type of pet.")},
    base_defaults=dict(W=2.0))
ExtrasLinearProbeMaPLe = declare_dept(
    MaPLe, "ExtrasLinearProbeMaPLe", "MAPLE_DEPT", "maple_dept", "vit_b16_c2_ep10_batch4_2ctx",
    "DePT on MaPLe: MaPLe's coupled deep prompts + the DePT head (image rows through the visual prompts)",
    3_555_072, {"ExtrasLinearProbeMaPLe": dict(PROMPT_DEPTH=3)})
ExtrasLinearProbePromptSRC = declare_dept(
    PromptSRC, "ExtrasLinearProbePromptSRC", "PROMPTSRC_DEPT", "promptsrc_dept", "vit_b16_c2_ep20_batch4_4+4ctx",
    "DePT on PromptSRC (ours, no release): PromptSRC's prompts, terms and GPA (head included) + the DePT head",
    46_080, {"ExtrasLinearProbePromptSRC": dict(PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=2)})
