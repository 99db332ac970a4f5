"""MMRL: Multi-Modal Representation Learning (Guo, Gu; CVPR 2025), as its official code computes it.

No text context: the class sentence is the dataset's hand-written template. One shared representation space R
[K, d_r] is mapped by one Linear per representation layer and tower ("aligners") into K tokens of the image and of
the text tower, inserted before block REP_LAYERS[0] and replacing the previous ones before each later block of
REP_LAYERS (none before). The image tower's K tokens after the last block are read out into a second image
feature: mean_k ln_post(token_k) @ proj_rep. Two logit sets share the text features, "itm" (class token) and
"readout" (representation tokens), both at the fixed scale 100:

    loss = ALPHA CE(itm) + (1 - ALPHA) CE(readout) + REG_WEIGHT (1 - cos(f_c, z_i)) + REG_WEIGHT (1 - cos(t, z_t))

with the frozen CLIP image features z_i of the batch and text features z_t of the template sentences. An
evaluation on the trained classes predicts with ALPHA itm + (1 - ALPHA) readout, on unseen classes / datasets
with itm only (docs/MMRL.md). Trainable at ViT-B/16, shipped config: 4,992,256.
"""
import copy
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.frozen_clip import FrozenCLIP
from mmpt.prompt_trainer import PromptTrainer, TrainingOutputs
from mmpt.prompted_clip import (LogitRule, PromptedCLIP, Prompts, layer_counts, normal_prompts, text_width,
                                vision_width)
from mmpt.sentences import template_sentences
from mmpt.templates import DEFAULT_TEMPLATE, template_for

FUSIONS = ("logits", "probs")
EVAL_LOGITS = ("auto", "fusion", "class", "rep")
PROJ_REP_INITS = ("random", "clip")
ALIGNER_INITS = ("shared", "independent")


def aligners(d_in, d_out, count, init):
    """`count` Linear(d_in, d_out). "shared": one drawn and deep-copied (the official code: all start identical)."""
    if init == "shared":
        first = nn.Linear(d_in, d_out)
        return nn.ModuleList(copy.deepcopy(first) for _ in range(count))
    return nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(count))


class MMRLRepresentationLearner(nn.Module):
    """Every trainable tensor of MMRL, under the official names (its `representation_learner.*` and
    `image_encoder.proj_rep`): R, the aligners of both towers, and the read-out projection."""

    def __init__(self, n_tokens, rep_dim, n_layers, d_text, d_vision, embed_dim, aligner_init="shared",
                 proj_rep_init="random", clip_proj=None):
        super().__init__()
        self.compound_rep_tokens = normal_prompts(n_tokens, rep_dim)
        self.compound_rep_tokens_r2vproj = aligners(rep_dim, d_vision, n_layers, aligner_init)
        self.compound_rep_tokens_r2tproj = aligners(rep_dim, d_text, n_layers, aligner_init)
        if proj_rep_init == "random":  # the official VisionTransformer's draw: width ** -0.5 * randn
            self.proj_rep = nn.Parameter(d_vision ** -0.5 * torch.randn(d_vision, embed_dim))
        else:  # its own copy of CLIP's `proj` (a prompt learner never shares a tensor with CLIP)
            self.proj_rep = nn.Parameter(clip_proj.detach().clone().float())

    def rep_tokens(self):
        """(text tokens, vision tokens): one [K, d] per representation layer."""
        R = self.compound_rep_tokens
        return ([align(R) for align in self.compound_rep_tokens_r2tproj],
                [align(R) for align in self.compound_rep_tokens_r2vproj])

    def parameter_breakdown(self):
        count = lambda module: sum(p.numel() for p in module.parameters())
        return [("R", self.compound_rep_tokens.numel()), ("vision aligners", count(self.compound_rep_tokens_r2vproj)),
                ("text aligners", count(self.compound_rep_tokens_r2tproj)), ("proj_rep", self.proj_rep.numel())]


def per_layer(tokens, layers, n_layers):
    """[None] * n_layers with tokens[k] at library layer layers[k] (= official 1-based block - 1)."""
    schedule = [None] * n_layers
    for layer, value in zip(layers, tokens):
        schedule[layer] = value
    return schedule


def official_state_dict(state_dict):
    """An official MMRL checkpoint's state dict (the whole CustomCLIP) -> our representation learner's keys."""
    ours = {}
    for key, value in state_dict.items():
        if key.startswith("representation_learner.") and not key.endswith("prompt_embeddings"):
            ours[key[len("representation_learner."):]] = value
        elif key == "image_encoder.proj_rep":
            ours["proj_rep"] = value
    return ours


# the official trainers/config.py table (its MMRL branch, applied whatever the task), by our dataset config names;
# it overrides the config file's REG_WEIGHT in base-to-new and few-shot alike
REG_WEIGHT_PER_DATASET = {"stanford_cars": 7.0, "fgvc_aircraft": 6.0, "sun397": 6.0, "dtd": 6.0, "food101": 5.0,
                          "oxford_flowers": 4.0, "ucf101": 3.0, "imagenet": 0.5, "caltech101": 0.5,
                          "oxford_pets": 0.2, "eurosat": 0.01}
REP_DIM_PER_DATASET = {"eurosat": 2048}


def per_dataset_opts():
    """{dataset: {FIELD: value}} of the official table (the experiment layout adds them ahead of the user's)."""
    return {dataset: {"REG_WEIGHT": weight, **({"REP_DIM": REP_DIM_PER_DATASET[dataset]}
                                               if dataset in REP_DIM_PER_DATASET else {})}
            for dataset, weight in REG_WEIGHT_PER_DATASET.items()}


def b2n_or_fewshot_config(name):
    """ImageNet trains with its own config in base-to-new and few-shot alike (the official scripts)."""
    return lambda dataset, shots: "vit_b16_imagenet" if dataset == "imagenet" else name


@dataclass
class MMRLConfig(PromptOptions):
    """MMRL's fields (defaults = the official vit_b16 config)."""

    N_REP_TOKENS: int = 5  # K
    REP_DIM: int = 512  # d_r, the representation space's width
    REP_LAYERS: list = field(default_factory=lambda: list(range(6, 13)))  # 1-based blocks, as the official code
    ALPHA: float = 0.7  # weight of the class-token logits / CE (1 - ALPHA: the read-out's)
    REG_WEIGHT: float = 1.0  # lambda of both cosine terms
    LOGIT_SCALE: float = 100.0  # fixed, as the official code; 0 = CLIP's logit_scale.exp()
    FUSION: str = "logits"  # official: ALPHA s_c + (1 - ALPHA) s_r; "probs": the same mixture of softmaxes
    EVAL_LOGITS: str = "auto"  # auto: fusion on the trained classes, class-token logits on unseen; or one set
    PROJ_REP_INIT: str = "random"  # official N(0, 1/d_v); "clip": a copy of CLIP's proj
    ALIGNER_INIT: str = "shared"  # official: one Linear per tower deep-copied; "independent": each drawn
    TEMPLATE: str = ""  # the class sentence; "" = the dataset's hand-written template

    def validate(self):
        super().validate()
        for name in ("N_REP_TOKENS", "REP_DIM"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an int >= 1")
        layers = self.REP_LAYERS
        if not (layers and all(isinstance(b, int) and not isinstance(b, bool) for b in layers)
                and list(layers) == sorted(set(layers)) and layers[0] >= 2):
            raise ConfigError(f"REP_LAYERS={layers!r}: expected increasing 1-based block numbers >= 2 "
                              f"(e.g. [6, 7, 8, 9, 10, 11, 12])")
        if not 0.0 <= self.ALPHA <= 1.0:
            raise ConfigError(f"ALPHA={self.ALPHA!r}: expected a number in [0, 1]")
        for name in ("REG_WEIGHT", "LOGIT_SCALE"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a number >= 0")
        for name, choices in (("FUSION", FUSIONS), ("EVAL_LOGITS", EVAL_LOGITS), ("PROJ_REP_INIT", PROJ_REP_INITS),
                              ("ALIGNER_INIT", ALIGNER_INITS)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {choices}")
        if self.TEMPLATE and self.TEMPLATE.count("{}") != 1:
            raise ConfigError(f"TEMPLATE={self.TEMPLATE!r}: expected a sentence with one '{{}}' for the class name")


def logit_rule(config):
    """The evaluation's logit sets: "itm" (class token) and "readout" (representation tokens)."""
    fusion = {"itm": config.ALPHA, "readout": 1.0 - config.ALPHA}
    forced = {"fusion": fusion, "class": {"itm": 1.0}, "rep": {"readout": 1.0}}.get(config.EVAL_LOGITS)
    if forced is not None:
        return LogitRule(trained=forced, unseen=forced, combine=config.FUSION)
    # the official test(): fusion iff the evaluated dataset and classes are the ones trained on
    return LogitRule(trained=fusion, unseen={"itm": 1.0}, same_dataset=True, combine=config.FUSION)


class MMRLCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, config):
        n_text, n_vision = layer_counts(clip_model)
        if config.REP_LAYERS[-1] > min(n_text, n_vision):
            raise ConfigError(f"REP_LAYERS={config.REP_LAYERS!r}: the backbone has {min(n_text, n_vision)} blocks")
        self.template = config.TEMPLATE or DEFAULT_TEMPLATE  # the trainer fills TEMPLATE in from the dataset
        super().__init__(clip_model, template_sentences(self.template, classnames, "TEMPLATE"))
        self.layers = [block - 1 for block in config.REP_LAYERS]  # library layer l = official block l + 1
        self.n_layers = (n_text, n_vision)
        self.prompt_learner = MMRLRepresentationLearner(
            config.N_REP_TOKENS, config.REP_DIM, len(self.layers), text_width(clip_model), vision_width(clip_model),
            clip_model.visual.proj.shape[1], config.ALIGNER_INIT, config.PROJ_REP_INIT, clip_model.visual.proj)
        self.frozen = FrozenCLIP([self.template], classnames, "TEMPLATE")  # z_t on first use; z_i per batch
        self.logit_rule = logit_rule(config)
        self.alpha = config.ALPHA
        self.fixed_logit_scale = config.LOGIT_SCALE or None

    def describe(self):
        return f"MMRL template: {self.template!r}; representation tokens in blocks {[l + 1 for l in self.layers]}"

    def compute_prompts(self):
        text, vision = self.prompt_learner.rep_tokens()
        return Prompts(text=per_layer(text, self.layers, self.n_layers[0]),
                       vision=per_layer(vision, self.layers, self.n_layers[1]), vision_readout=self.read_out)

    def read_out(self, region):
        """The representation feature f_r: ln_post per read-out token, their mean, @ proj_rep."""
        return self.image_encoder.visual.ln_post(region).mean(dim=1) @ self.prompt_learner.proj_rep.to(region.dtype)


def one_minus_cosine(features, reference):
    """1 - mean cos (F.cosine_similarity, eps 1e-8, as the official MMRL_Loss), in fp32."""
    return 1.0 - F.cosine_similarity(features.float(), reference, dim=1).mean()


@TRAINER_REGISTRY.register()
class MMRL(PromptTrainer):
    cfg_node = "MMRL"
    scripts_folder = "mmrl"
    default_configs = {"b2n": b2n_or_fewshot_config("vit_b16"), "fewshot": b2n_or_fewshot_config("vit_b16_few_shot"),
                       "xd": "vit_b16_cross_datasets"}
    dataset_opts = {"b2n": per_dataset_opts(), "fewshot": per_dataset_opts()}  # the official table
    config_class = MMRLConfig
    model_class = MMRLCLIP
    summary = "representation tokens from one shared space into blocks 6..12 of both towers, a read-out image head, " \
              "two logit sets (fused on the trained classes, class token on unseen ones)"
    # the official count at ViT-B/16 (benchmarks/param_counts.py): K d_r + L_r (d_r d_v + d_v) + L_r (d_r d_t + d_t)
    # + d_v E with K 5, d_r 512, L_r 7 (EuroSAT's REP_DIM 2048 from dataset_opts: 18,762,496)
    parameter_counts = dict.fromkeys(("vit_b16", "vit_b16_imagenet", "vit_b16_few_shot", "vit_b16_cross_datasets"),
                                     4_992_256)
    # the logits records (tests/records.py) on their 3-layer backbone: tokens from block 2 on; probability fusion
    record_variants = {"MMRL": dict(N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=[2, 3], TEMPLATE="a photo of a {}."),
                       "MMRL_probs": dict(N_REP_TOKENS=2, REP_DIM=8, REP_LAYERS=[3], FUSION="probs",
                                          ALIGNER_INIT="independent", PROJ_REP_INIT="clip")}
    # ALPHA CE(itm) + (1 - ALPHA) CE(readout) + REG_WEIGHT (image term + text term); loss_ce_rep is logged
    # as (1 - ALPHA) CE(readout) (a weight must be a number or a field)
    cross_entropy_weight = "ALPHA"
    loss_weights = {"loss_ce_rep": 1.0, "loss_image": "REG_WEIGHT", "loss_text": "REG_WEIGHT"}

    @classmethod
    def training_outputs(cls, model, images, labels, class_features=None):
        """Both logit sets of one forward pass, and the frozen CLIP image features of the batch (same autocast)."""
        prompts = model.compute_prompts()
        out = model.outputs(images, prompts)
        return TrainingOutputs(images, labels, prompts, out.logits["itm"], out.class_features, out.image_features,
                               extra={"readout": out.logits["readout"],
                                      "frozen_image": model.frozen.image_features(model, images)})

    @classmethod
    def loss_terms(cls, model, outputs):
        return {"loss_ce_rep": (1.0 - model.alpha) * F.cross_entropy(outputs.extra["readout"].float(),
                                                                           outputs.labels),
                "loss_image": one_minus_cosine(outputs.image_features, outputs.extra["frozen_image"]),
                "loss_text": one_minus_cosine(outputs.class_features, model.frozen.class_features(model))}

    @classmethod
    def parameter_breakdown(cls, model):
        return model.prompt_learner.parameter_breakdown()

    def model_config(self, cfg):
        """TEMPLATE filled in from DATASET.NAME when the config leaves it empty."""
        config = super().model_config(cfg)
        return config if config.TEMPLATE else replace(config, TEMPLATE=template_for(cfg.DATASET.NAME))

    def load_state_dict_into(self, name, state_dict, model_path):
        """Official checkpoints (the whole CustomCLIP) load through the name map."""
        if any(key.startswith("representation_learner.") for key in state_dict):
            state_dict = official_state_dict(state_dict)
        super().load_state_dict_into(name, state_dict, model_path)

