"""The backbone adapter: what a CLIP backbone's towers provide the prompted encoders (docs/ARCHITECTURE.md,
"Backbones").

`backbone_of(model)` reads a CLIP model of either family -- OpenAI's `clip.model.CLIP` (clip-anytorch, the toy
CLIP too) or open_clip's `CLIP` / `CustomTextCLIP` -- into one typed `Backbone`: its text tower (`TextTower`:
token embedding, positional embedding, the transformer holding its blocks, final norm, projection, pooling rule,
causal or not) and its image tower (`VisionTower`: the visual module, ViT or ResNet, its pooling rule). Both
families' residual blocks hold the same weights under the same names (ln_1, attn.in_proj_* / out_proj, ln_2,
mlp); open_clip's add optional layer scales (ls_1, ls_2) and, in its custom block, norms inside the attention
(ln_q / ln_k, head_scale, ln_inner, ln_attn). mmpt.blocks runs each block on its own weights, whatever the
family; the widths every method sizes its prompts and couplings by come from here, never from constants.

A backbone this codebase cannot run exactly (open_clip's timm / Hugging Face towers, attentional pooling, CoCa's
class embedding, scaled-cosine attention, a padding mask) raises `UnsupportedBackbone` (a ValueError) in one
line; mmpt.clip_backbone turns it into a ConfigError naming MODEL.BACKBONE.NAME.
"""
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

TEXT_POOLINGS = ("eot", "last")  # the end-of-text token (CLIP's largest token id) / the context's last position
VISION_POOLINGS = ("cls", "mean")  # the class token / the mean of the patch tokens


class UnsupportedBackbone(ValueError):
    """A CLIP model whose towers the prompted encoders cannot run exactly."""


@dataclass(frozen=True)
class TextTower:
    """The text tower's parts. `transformer.resblocks` are the blocks; `projection` is a [d, E] Parameter, an
    nn.Linear or None (features stay d wide); `pooling` in TEXT_POOLINGS; `causal`: the blocks attend under
    CLIP's causal mask (False: every token sees every token)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    projection: Union[torch.Tensor, nn.Module, None]
    pooling: str = "eot"
    causal: bool = True

    @property
    def width(self):
        return self.token_embedding.weight.shape[1]

    @property
    def heads(self):
        return self.transformer.resblocks[0].attn.num_heads

    @property
    def layers(self):
        return len(self.transformer.resblocks)

    @property
    def context_length(self):
        return self.positional_embedding.shape[0]

    @property
    def embed_dim(self):
        return projected_width(self.projection, self.width)


@dataclass(frozen=True)
class VisionTower:
    """The image tower. `visual` is the module itself (a ResNet runs it as is). For a ViT: conv1 (the patch
    embedding), class_embedding, positional_embedding, ln_pre, transformer.resblocks, ln_post and proj
    ([d, E] Parameter or None) are read from it; `pooling` in VISION_POOLINGS; `norm_after_pool`: ln_post
    normalises the pooled token (open_clip's final_ln_after_pool) instead of every token before pooling (the two
    agree for the class token, not for the mean)."""

    visual: nn.Module
    is_vit: bool
    pooling: str = "cls"
    norm_after_pool: bool = False

    @property
    def width(self):
        """Width of the ViT's tokens."""
        if not self.is_vit:
            raise UnsupportedBackbone("visual prompts need a ViT image tower; this backbone has a ResNet")
        return self.visual.conv1.out_channels

    @property
    def layers(self):
        return len(self.visual.transformer.resblocks) if self.is_vit else 0

    @property
    def image_size(self):
        """The square input resolution in pixels."""
        size = getattr(self.visual, "input_resolution", None) or getattr(self.visual, "image_size")
        return size[0] if isinstance(size, (tuple, list)) else int(size)


@dataclass(frozen=True)
class Backbone:
    """One CLIP model, either family: `family` "openai" or "open_clip", its two towers and logit_scale."""

    family: str
    text: TextTower
    vision: VisionTower
    logit_scale: torch.Tensor

    @property
    def embed_dim(self):
        return self.text.embed_dim


def projected_width(projection, width):
    if projection is None:
        return width
    if isinstance(projection, nn.Linear):
        return projection.out_features
    return projection.shape[1]


def project(projection, features):
    """features [.., d] through a tower's projection (Parameter [d, E], nn.Linear or None)."""
    if projection is None:
        return features
    if isinstance(projection, nn.Linear):
        return projection(features)
    return features @ projection.to(features.dtype)


def is_open_clip(model):
    return type(model).__module__.split(".")[0] == "open_clip"


def backbone_of(model):
    """The `Backbone` of a CLIP model (either family; a Backbone is returned as is)."""
    if isinstance(model, Backbone):
        return model
    if is_open_clip(model):
        return open_clip_backbone(model)
    return Backbone("openai", TextTower(model.token_embedding, model.positional_embedding, model.transformer,
                                        model.ln_final, model.text_projection),
                    VisionTower(model.visual, is_vit=hasattr(model.visual, "class_embedding")), model.logit_scale)


def open_clip_backbone(model):
    text = getattr(model, "text", None)  # CustomTextCLIP keeps its text tower apart; CLIP holds its parts
    if text is not None and not hasattr(text, "token_embedding"):
        raise UnsupportedBackbone(f"the text tower {type(text).__name__} (a Hugging Face model) is not CLIP's "
                                  "transformer; prompts need a CLIP text transformer")
    parts = text if text is not None else model
    pool = text.pool_type if text is not None else model.text_pool_type
    if getattr(parts, "cls_emb", None) is not None:
        raise UnsupportedBackbone("a text tower with an appended class embedding (CoCa) is not supported")
    if getattr(parts, "use_pad_mask", False):
        raise UnsupportedBackbone("a text tower with a padding mask is not supported")
    if pool not in ("argmax", "last"):
        raise UnsupportedBackbone(f"text pool_type {pool!r} is not supported (only 'argmax' and 'last')")
    check_blocks(parts.transformer.resblocks, "text")
    text_tower = TextTower(parts.token_embedding, parts.positional_embedding, parts.transformer, parts.ln_final,
                           parts.text_projection, pooling="eot" if pool == "argmax" else "last",
                           causal=parts.attn_mask is not None)
    return Backbone("open_clip", text_tower, open_clip_vision(model.visual), model.logit_scale)


def open_clip_vision(visual):
    if not hasattr(visual, "class_embedding"):
        if not hasattr(visual, "attnpool"):  # open_clip's ModifiedResNet runs as is; a timm trunk does not fit
            raise UnsupportedBackbone(f"the image tower {type(visual).__name__} is neither CLIP's ViT nor its "
                                      "ResNet")
        return VisionTower(visual, is_vit=False)
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedBackbone("an image tower with attentional pooling is not supported")
    if visual.pool_type not in ("tok", "avg"):
        raise UnsupportedBackbone(f"image pool_type {visual.pool_type!r} is not supported (only 'tok' and 'avg')")
    check_blocks(visual.transformer.resblocks, "vision")
    return VisionTower(visual, is_vit=True, pooling="cls" if visual.pool_type == "tok" else "mean",
                       norm_after_pool=bool(visual.final_ln_after_pool))


def check_blocks(blocks, tower):
    for block in blocks:
        if getattr(block.attn, "logit_scale", None) is not None:
            raise UnsupportedBackbone(f"{tower} blocks with scaled cosine attention are not supported")
        if hasattr(block, "ln_1_kv"):
            raise UnsupportedBackbone(f"{tower} blocks with cross-attention are not supported")


def text_tower_of(source) -> TextTower:
    """A TextTower from a CLIP model (either family), a Backbone, a TextTower or an encoder (`text_tower()`)."""
    if isinstance(source, TextTower):
        return source
    if callable(getattr(source, "text_tower", None)):
        return source.text_tower()
    return backbone_of(source).text


def vision_tower_of(source) -> VisionTower:
    if isinstance(source, VisionTower):
        return source
    if callable(getattr(source, "vision_tower", None)):
        return source.vision_tower()
    return backbone_of(source).vision


def optional(module: Optional[nn.Module], x):
    """module(x), or x where the block has no such module (an OpenAI block has no layer scale)."""
    return x if module is None else module(x)
