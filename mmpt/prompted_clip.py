"""The prompt contract: `Prompts` (what a method puts into CLIP for one forward pass) and `PromptedCLIP` (the
base of every method model, and its one forward path); helpers the methods share at the end.
docs/ARCHITECTURE.md is the statement of it. The mechanics live in mmpt.encoders (the towers), mmpt.blocks
(block mechanics) and mmpt.shared_prefix (the text tower's shared-prefix pass).
"""
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dassl.utils import ConfigError
from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TowerSchedule, TextOptions  # noqa: F401
from mmpt.towers import text_tower_of, vision_tower_of


@dataclass
class Prompts:
    """Everything a method puts into CLIP for one forward pass (docs/ARCHITECTURE.md). None = nothing.

    text / vision: per-layer prompts of each tower, text_remove / vision_remove: per-layer removals (see
    mmpt.encoders). text_per_image: for text prompts computed from the image (CoCoOp), a function of the
    normalised image features [B, E] returning per-layer text prompts whose entries are [B, n, d]; `text` then
    holds the unconditioned prompts (used where no image is given).
    Extensions, each applied by the library in every encoder path:
    text_adapters / vision_adapters: per-layer f(block.ln_1(x_in)) -> delta added to block l's output (MMA).
    vision_readout: f(region tokens after the last vision block, before ln_post [B, k, d_v]) -> [B, E], an
    extra image feature giving the logit set "readout" (MMRL). image_head: f(raw image features [B, E]) ->
    [B, E'], the image features the "itm" logits use (PromptKD's projector). class_features: [C, E']
    normalised class features from outside the model (PromptKD's teacher); the text tower does not run.
    logit_heads: {name: f(raw image features [B, E]) -> [B, C]} extra named logit sets (DePT's head).
    """

    text: Optional[list] = None
    text_remove: Optional[list] = None
    vision: Optional[list] = None
    vision_remove: Optional[list] = None
    text_per_image: Optional[Callable] = None
    text_adapters: Optional[list] = None
    vision_adapters: Optional[list] = None
    vision_readout: Optional[Callable] = None
    image_head: Optional[Callable] = None
    class_features: Optional[torch.Tensor] = None
    logit_heads: Optional[Dict[str, Callable]] = None

    @property
    def depends_on_image(self):
        return self.text_per_image is not None

    @property
    def text_is_constant(self):
        """True when the class text features depend on no learnable tensor (no text prompts or adapters, e.g.
        VPT; or class features given from outside)."""
        if self.class_features is not None:
            return not self.depends_on_image
        return not self.depends_on_image and not any(
            p is not None for p in (self.text or []) + (self.text_adapters or []))

    def text_schedule(self, text=None, **fields):
        """The text tower's schedule with per-layer prompts `text` (default: self.text)."""
        return TowerSchedule(self.text if text is None else text, self.text_remove, self.text_adapters, **fields)

    def vision_schedule(self):
        return TowerSchedule(self.vision, self.vision_remove, self.vision_adapters)


@dataclass(frozen=True)
class LogitRule:
    """Which named logit sets an evaluation predicts with: a weighted sum, one on the classes the model was
    trained on (`trained`), another on any other class list (`unseen`). `same_dataset`: the trained classes
    also need the dataset trained on (MMRL: ImageNetV2 has ImageNet's classes but counts as unseen)."""

    trained: Dict[str, float] = field(default_factory=lambda: {"itm": 1.0})
    unseen: Dict[str, float] = field(default_factory=lambda: {"itm": 1.0})
    same_dataset: bool = False
    # "logits": the weighted sum of the logit sets; "probs": log of the weighted sum of their softmaxes (a
    # mixture of the sets' class probabilities, returned as logits whose softmax is that mixture)
    combine: str = "logits"

    def pick(self, logits, on_trained_classes):
        weights = self.trained if on_trained_classes else self.unseen
        missing = sorted(set(weights) - set(logits))
        if missing:
            raise ValueError(f"logit rule names {missing}; the model gives {sorted(logits)}")
        if self.combine == "probs" and len(weights) > 1:
            return torch.log(sum(weight * logits[name].float().softmax(dim=-1) for name, weight in weights.items()))
        (first, w0), *rest = weights.items()
        if not rest and w0 == 1.0:
            return logits[first]
        total = w0 * logits[first]
        for name, weight in rest:
            total = total + weight * logits[name]
        return total


class ClassesTrainedOn(nn.Module):
    """The dataset and class names a model was trained on, saved with the prompt learner (module extra state,
    no tensor), so that an --eval-only run knows whether it evaluates the trained classes."""

    def __init__(self, dataset="", classnames=()):
        super().__init__()
        self.dataset, self.classnames = dataset, list(classnames)

    def get_extra_state(self):
        return {"dataset": self.dataset, "classnames": self.classnames}

    def set_extra_state(self, state):  # classnames None: unknown (a checkpoint from another codebase)
        self.dataset, self.classnames = state["dataset"], state["classnames"]

    def matches(self, dataset, classnames, same_dataset):
        return list(classnames) == self.classnames and (not same_dataset or dataset == self.dataset)


@dataclass
class Outputs:
    """One forward pass: named logit sets [B, C] (fp32; "itm" always) and the features they come from."""

    logits: Dict[str, torch.Tensor]
    image_features: torch.Tensor  # [B, E'] normalised, after the image head
    raw_image_features: torch.Tensor  # [B, E] the image tower's output
    class_features: torch.Tensor  # [C, E'] (or [B, C, E'] per image) normalised
    # the same before normalisation, where the text tower ran in this pass (None: class features passed in)
    raw_class_features: Optional[torch.Tensor] = None


class PromptedCLIP(nn.Module):
    """Base of every method model, and its one forward path.

    A method model calls `super().__init__(clip_model, sentences)` (a `mmpt.sentences.ClassSentences`: one
    sentence per class and its placeholder count), sets `self.prompt_learner` (an nn.Module holding EVERY
    trainable tensor, heads included) and overrides `compute_prompts() -> Prompts`, nothing else; a model with
    several logit sets sets `self.logit_rule` (a LogitRule). The CLIP weights are shared with `clip_model`, not
    copied, and frozen here.
    """

    logit_rule = None  # None: evaluations predict with the "itm" logits
    fixed_logit_scale = None  # a number: every logit set's scale instead of CLIP's logit_scale.exp() (MMRL: 100)

    def __init__(self, clip_model, sentences):
        super().__init__()
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedImageEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        self.text_encoder.requires_grad_(False)
        self.image_encoder.requires_grad_(False)
        self.logit_scale.requires_grad_(False)
        self.sentences = sentences
        self.prompt_learner = nn.Module()  # nothing learnable unless a subclass says otherwise

    def compute_prompts(self):
        """The method's prompts for one forward pass (a `Prompts`); default: none."""
        return Prompts()

    def describe(self):
        """A line the trainer prints after building the model (None: nothing)."""
        return None

    @property
    def token_ids(self):
        """[C, 77] the tokenised class sentences."""
        return self.sentences.token_ids

    def set_text_options(self, **levers):
        """Set the text tower's levers (TextOptions fields; None = keep)."""
        self.text_encoder.options = replace_options(self.text_encoder.options, levers)

    def class_features(self, prompts=None, text=None, normalize=True):
        """[C, E] class text features of `prompts` (default: compute_prompts()), L2-normalised unless
        `normalize` is False; `text` replaces the per-layer text prompts (one image's on the per-image path)."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        if prompts.class_features is not None:
            return prompts.class_features
        passes = self.sentences.passes(prompts.text if text is None else text)
        encode = lambda p: self.text_encoder(p.token_ids, prompts.text_schedule(
            p.prompts, placeholders=p.placeholders, shared_prompt_tokens=p.shared_prompt_tokens))
        if len(passes) == 1 and passes[0].rows is None:
            features = encode(passes[0])
        else:
            rows = [None] * len(self.sentences.texts)
            for text_pass in passes:
                for i, feature in zip(text_pass.rows, encode(text_pass)):
                    rows[i] = feature
            features = torch.stack(rows)
        return F.normalize(features, dim=-1) if normalize else features

    def per_image_class_features(self, image_features, prompts, normalize=True):
        """[B, E] normalised image features -> [B, C, E] class features, one text pass per image."""
        per_image = prompts.text_per_image(image_features)
        passes = self.sentences.passes(per_image)
        if len(passes) == 1 and passes[0].rows is None and any(p is not None for p in per_image):
            # one sentence form for all classes: the images' prompts are G = B prompt sets of one text pass
            # (with the shared prefix, each image's prefix runs once for all its classes)
            text_pass = passes[0]
            features = self.text_encoder.per_prompt_set(text_pass.token_ids, prompts.text_schedule(
                text_pass.prompts, placeholders=text_pass.placeholders))
            return F.normalize(features, dim=-1) if normalize else features
        return torch.stack([self.class_features(prompts, text=[None if p is None else p[b] for p in per_image],
                                                normalize=normalize) for b in range(image_features.shape[0])])

    def image_features(self, images, prompts=None):
        """[B, E] L2-normalised image features (through the image head, if any)."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        raw = self.image_encoder(images, prompts.vision_schedule())
        return F.normalize(raw if prompts.image_head is None else prompts.image_head(raw), dim=-1)

    def forward(self, images, prompts=None, class_features=None):
        """[B, C] logits = logit_scale.exp() * cosine(image, class). `prompts` / `class_features` reuse values
        computed once (an evaluation); class_features are ignored when the text depends on the image."""
        return self.outputs(images, prompts, class_features).logits["itm"]

    def predict(self, images, on_trained_classes, prompts=None, class_features=None):
        """[B, C] the logits an evaluation predicts with: `logit_rule` over the named sets (default "itm")."""
        logits = self.outputs(images, prompts, class_features).logits
        return logits["itm"] if self.logit_rule is None else self.logit_rule.pick(logits, on_trained_classes)

    def outputs(self, images, prompts=None, class_features=None):
        """The forward pass with every named logit set (`Outputs`)."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        if prompts.vision_readout is None:
            raw, region = self.image_encoder(images, prompts.vision_schedule()), None
        else:
            raw, region = self.image_encoder.with_region(images, prompts.vision_schedule())
        image_features = F.normalize(raw if prompts.image_head is None else prompts.image_head(raw), dim=-1)
        raw_class_features = None  # the text tower's output, where it ran in this pass (heads on raw features)
        if prompts.depends_on_image:
            raw_class_features = self.per_image_class_features(image_features, prompts, normalize=False)
            class_features = F.normalize(raw_class_features, dim=-1)
        elif class_features is None and prompts.class_features is not None:
            class_features = prompts.class_features
        elif class_features is None:
            raw_class_features = self.class_features(prompts, normalize=False)
            class_features = F.normalize(raw_class_features, dim=-1)
        logits = {"itm": self.logits(image_features, class_features)}
        if region is not None:
            logits["readout"] = self.logits(F.normalize(prompts.vision_readout(region), dim=-1), class_features)
        for name, head in (prompts.logit_heads or {}).items():
            with torch.autocast(raw.device.type, enabled=False):
                logits[name] = head(raw.float()).float()
        return Outputs(logits, image_features, raw, class_features, raw_class_features)

    def logits(self, image_features, class_features):
        """logit_scale.exp() * image_features @ class_features.T ([C, E], or [B, C, E] per image), in fp32 even
        under autocast: bf16 would round logits of ~30 to steps of 0.25, enough to flip close classes."""
        with torch.autocast(image_features.device.type, enabled=False):
            scale = self.logit_scale.exp().float() if self.fixed_logit_scale is None else self.fixed_logit_scale
            if class_features.dim() == 3:
                return scale * torch.einsum("be,bce->bc", image_features.float(), class_features.float())
            return scale * image_features.float() @ class_features.float().t()


def replace_options(options, levers):
    return replace(options, **{name: value for name, value in levers.items() if value is not None})


# ------------------------------------------------------------------------------------------------------------
# helpers shared by the methods

def normal_prompts(*shape, std=0.02):
    """A Parameter of the given shape drawn from N(0, std) (the prompts' usual initialisation)."""
    return nn.Parameter(nn.init.normal_(torch.empty(*shape), std=std))


def random_prompts(count, n_tokens, width):
    """[count, n_tokens, width] deep prompts, N(0, 0.02) (a Parameter, or None when count is 0)."""
    return normal_prompts(count, n_tokens, width) if count and n_tokens else None


def check_depth(key, depth, n_layers):
    """A prompt depth must lie in 1..number of layers of that tower."""
    if not (isinstance(depth, int) and 1 <= depth <= n_layers):
        raise ConfigError(f"{key}={depth!r}: expected an int in 1..{n_layers} (the backbone's number of layers): "
                          f"set it to {n_layers} or less, or use a config made for this backbone (toy-ViT: the "
                          f"toy_demo configs, CFG=toy_demo for the scripts and --cfg toy_demo for the sweep)")


def text_width(clip_model):
    return text_tower_of(clip_model).width


def text_heads(clip_model):
    return text_tower_of(clip_model).heads


def embed_dim(clip_model):
    """Width of the joint embedding space (the text tower's projected features)."""
    return text_tower_of(clip_model).embed_dim


def vit_tower(clip_model):
    """The image tower of a method that prompts or reads it: a ViT, else one ConfigError line."""
    tower = vision_tower_of(clip_model)
    if not tower.is_vit:
        raise ConfigError("MODEL.BACKBONE.NAME: visual prompts need a ViT backbone; this backbone's image tower is "
                          "a ResNet (text-only methods such as CoOp run on it)")
    return tower


def vision_width(clip_model):
    """Width of the ViT's tokens (one-line error on a ResNet backbone)."""
    return vit_tower(clip_model).width


def text_layer_count(clip_model):
    return text_tower_of(clip_model).layers


def layer_counts(clip_model):
    """(text layers, vision layers); one-line error on a ResNet backbone (its image tower has no blocks)."""
    return text_layer_count(clip_model), vit_tower(clip_model).layers
