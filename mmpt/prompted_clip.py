"""The one place prompt mechanics live: CLIP's text and image towers with prompts spliced in, and the
`PromptedCLIP` base class every method model derives from.

The encoders run the blocks' own weights (ln_1, attn.in_proj / out_proj, ln_2, mlp) through
`F.scaled_dot_product_attention`, batch-first; clip/model.py is used as is, never forked.

Prompts are a list indexed by layer (`prompts[l]` goes in before block l; missing / None = nothing added):
- `prompts[0]` (shallow) -- text: replaces the token embeddings at positions 1..n (after SOS) before the
  positional embedding is added; vision: appended after the positional embedding, before ln_pre.
- `prompts[l]`, l >= 1: remove `remove[l]` tokens from the END of the prompt region, then append `prompts[l]`
  at the end of the region. `remove` None / `remove[l]` None = remove the whole region when `prompts[l]` is
  given (deep replacement), nothing otherwise. Tokens not removed are carried on (contextualised).
- Prompt region: text = positions [1, 1 + k); vision = the last k tokens.
- Each prompt is [n, d] (shared by every sequence / image) or [N, n, d] (one per sequence / image).
"""
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from dassl.utils import ConfigError


# ------------------------------------------------------------------------------------------------------------
# shared block mechanics

def run_block(block, x, causal=False):
    """One `clip.model.ResidualAttentionBlock` on batch-first x [N, L, d], attention through SDPA."""
    attn = block.attn
    n_seq, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n_seq, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    x = x + attn.out_proj(out.transpose(1, 2).reshape(n_seq, length, width))
    return x + block.mlp(block.ln_2(x))


def layer_ops(prompts, remove, layer):
    """(tokens to append [n, d] / [N, n, d] or None, tokens to remove: int or None = "all if appending")."""
    added = prompts[layer] if prompts is not None and layer < len(prompts) else None
    removed = remove[layer] if remove is not None and layer < len(remove) else None
    return added, removed


def splice_region(x, start, k, added, removed):
    """Remove `removed` tokens from the end of the prompt region x[:, start:start + k], append `added` there.
    Returns (new x, new region size)."""
    if removed is None:
        removed = k if added is not None else 0
    if not 0 <= removed <= k:
        raise ValueError(f"cannot remove {removed} prompt tokens: the prompt region holds {k}")
    if added is None:
        added = x.new_zeros(x.shape[0], 0, x.shape[-1])
    added = expand_prompt(added, x.shape[0], x.shape[-1]).to(x.dtype)
    x = torch.cat([x[:, : start + k - removed], added, x[:, start + k:]], dim=1)
    return x, k - removed + added.shape[1]


def expand_prompt(prompt, n_seq, width):
    """[n, d] -> [N, n, d]; [N, n, d] is checked."""
    if prompt.dim() == 2:
        prompt = prompt.unsqueeze(0).expand(n_seq, -1, -1)
    if prompt.dim() != 3 or prompt.shape[0] != n_seq or prompt.shape[2] != width:
        raise ValueError(f"prompt of shape {tuple(prompt.shape)}: expected [n, {width}] or [{n_seq}, n, {width}]")
    return prompt


def prompt_count(prompt):
    return 0 if prompt is None else prompt.shape[-2]


def check_schedule_length(prompts, remove, n_layers, tower):
    for name, schedule in (("prompts", prompts), ("remove", remove)):
        if schedule is not None and len(schedule) > n_layers:
            raise ValueError(f"{tower} {name}: {len(schedule)} layers given, the tower has {n_layers}")


def run_tower(blocks, x, prompts, remove, region_start, k, causal, use_checkpoint):
    """Blocks with the per-layer remove / append ops (layer 0's prompts are already in x).
    `region_start(x, k)` gives where the k-token prompt region begins. Returns (output, final region size)."""
    for layer, block in enumerate(blocks):
        if layer >= 1:
            added, removed = layer_ops(prompts, remove, layer)
            if added is not None or removed:
                x, k = splice_region(x, region_start(x, k), k, added, removed)
        if use_checkpoint and torch.is_grad_enabled():
            x = activation_checkpoint(run_block, block, x, causal, use_reentrant=False)
        else:
            x = run_block(block, x, causal)
    return x, k


def pick(value, default):
    return default if value is None else value


# ------------------------------------------------------------------------------------------------------------
# encoders

class PromptedTextEncoder(nn.Module):
    """CLIP's text tower with prompts. token_ids [N, 77] -> features [N, embed_dim] (not normalised).

    truncate: run on max EOT index + 1 tokens (exact under the causal mask); chunk_size: k sequences per
    pass (0 = all); checkpoint: activation checkpointing per block. Each can be overridden per call.
    """

    def __init__(self, clip_model, truncate=True, chunk_size=0, checkpoint=False):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.truncate, self.chunk_size, self.checkpoint = truncate, chunk_size, checkpoint

    def forward(self, token_ids, prompts=None, remove=None, truncate=None, chunk_size=None, checkpoint=None,
                placeholders=None):
        """`placeholders`: the sentences' placeholder count (mmpt.sentences); the shallow prompt must fill it."""
        if placeholders is not None and prompt_count(prompts[0] if prompts else None) != placeholders:
            raise ValueError(f"the shallow text prompt has {prompt_count(prompts[0] if prompts else None)} tokens, "
                             f"the class sentences {placeholders} placeholder words")
        truncate, chunk_size = pick(truncate, self.truncate), pick(chunk_size, self.chunk_size)
        use_checkpoint = pick(checkpoint, self.checkpoint)
        check_schedule_length(prompts, remove, len(self.transformer.resblocks), "text")
        n_seq = token_ids.shape[0]
        if not chunk_size or chunk_size >= n_seq:
            return self.encode(token_ids, prompts, remove, truncate, use_checkpoint)
        chunks = []
        for begin in range(0, n_seq, chunk_size):
            rows = slice(begin, begin + chunk_size)
            chunk_prompts = None if prompts is None else [
                p[rows] if p is not None and p.dim() == 3 else p for p in prompts]
            chunks.append(self.encode(token_ids[rows], chunk_prompts, remove, truncate, use_checkpoint))
        return torch.cat(chunks)

    def encode(self, token_ids, prompts, remove, truncate, use_checkpoint):
        eot = token_ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        if truncate:
            token_ids = token_ids[:, : int(eot.max()) + 1]
        x = self.token_embedding(token_ids)
        shallow = prompts[0] if prompts else None
        n_shallow = prompt_count(shallow)
        if n_shallow:
            if n_shallow >= int(eot.min()):
                raise ValueError(f"{n_shallow} shallow text prompts do not fit before the EOT token at position "
                                 f"{int(eot.min())}: the prompt sentence needs >= {n_shallow} placeholder words")
            shallow = expand_prompt(shallow, x.shape[0], x.shape[-1]).to(x.dtype)
            x = torch.cat([x[:, :1], shallow, x[:, 1 + n_shallow:]], dim=1)
        x = x + self.positional_embedding[: x.shape[1]].to(x.dtype)
        x, k = run_tower(self.transformer.resblocks, x, prompts, remove, lambda x, k: 1, n_shallow,
                         causal=True, use_checkpoint=use_checkpoint)
        # LayerNorm is per token: normalising only the EOT rows equals CLIP's ln_final on all, then picking
        eot_features = x[torch.arange(x.shape[0], device=x.device), eot + (k - n_shallow)]
        return self.ln_final(eot_features) @ self.text_projection.to(eot_features.dtype)


class PromptedImageEncoder(nn.Module):
    """CLIP's image tower with prompts. images [B, 3, H, W] -> features [B, embed_dim] (not normalised).
    ResNet backbones run clip's own `visual` and accept no prompts."""

    def __init__(self, clip_model, checkpoint=False):
        super().__init__()
        self.visual = clip_model.visual
        self.is_vit = hasattr(self.visual, "class_embedding")
        self.checkpoint = checkpoint

    def forward(self, images, prompts=None, remove=None, checkpoint=None):
        visual = self.visual
        if not self.is_vit:
            if any(p is not None for p in (prompts or [])):
                raise ValueError("visual prompts need a ViT backbone; this CLIP has a ResNet image tower")
            return visual(images.to(visual.conv1.weight.dtype))
        check_schedule_length(prompts, remove, len(visual.transformer.resblocks), "vision")
        # the residual stream stays fp32 under autocast, as the text tower's does (autocast still runs the blocks'
        # matmuls in bf16 / fp16); an fp16 CLIP (weights kept in half) stays fp16
        x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, grid**2, d]
        x = x.to(visual.conv1.weight.dtype)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        shallow = prompts[0] if prompts else None
        if shallow is not None:
            x = torch.cat([x, expand_prompt(shallow, x.shape[0], x.shape[-1]).to(x.dtype)], dim=1)
        x = visual.ln_pre(x)
        x, _ = run_tower(visual.transformer.resblocks, x, prompts, remove, lambda x, k: x.shape[1] - k,
                         prompt_count(shallow), causal=False, use_checkpoint=pick(checkpoint, self.checkpoint))
        return visual.ln_post(x[:, 0]) @ visual.proj.to(x.dtype)


# ------------------------------------------------------------------------------------------------------------
# method models

@dataclass
class Prompts:
    """Everything a method puts into CLIP for one forward pass (the method contract; docs/ARCHITECTURE.md).

    text / vision: per-layer prompts of each tower, text_remove / vision_remove: per-layer removals (see the
    module docstring; None = nothing). text_per_image: for text prompts computed from the image (CoCoOp), a
    function of the normalised image features [B, E] returning per-layer text prompts whose entries are
    [B, n, d] (one prompt per image); `text` then holds the unconditioned prompts (used where no image is given).
    """

    text: Optional[list] = None
    text_remove: Optional[list] = None
    vision: Optional[list] = None
    vision_remove: Optional[list] = None
    text_per_image: Optional[Callable] = None

    @property
    def depends_on_image(self):
        return self.text_per_image is not None

    @property
    def text_is_constant(self):
        """True when the class text features depend on no learnable tensor (no text prompts, e.g. VPT)."""
        return not self.depends_on_image and not any(p is not None for p in (self.text or []))


class PromptedCLIP(nn.Module):
    """Base of every method model, and its one forward path.

    A method model calls `super().__init__(clip_model, sentences)` (a `mmpt.sentences.ClassSentences`: one
    sentence per class and its placeholder count), sets `self.prompt_learner` (an nn.Module holding EVERY
    trainable tensor) and overrides `compute_prompts() -> Prompts`, nothing else. The CLIP weights are shared
    with `clip_model`, not copied, and frozen here.
    """

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

    def set_text_options(self, truncate=None, chunk_size=None, checkpoint=None):
        """Defaults of the text tower's levers (None = keep)."""
        encoder = self.text_encoder
        encoder.truncate = pick(truncate, encoder.truncate)
        encoder.chunk_size = pick(chunk_size, encoder.chunk_size)
        encoder.checkpoint = pick(checkpoint, encoder.checkpoint)

    def class_features(self, prompts=None, text=None):
        """[C, E] L2-normalised class text features of `prompts` (default: compute_prompts()); `text` replaces
        the per-layer text prompts (one image's prompts on the per-image path)."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        text = prompts.text if text is None else text
        passes = self.sentences.passes(text)
        encode = lambda p: self.text_encoder(p.token_ids, p.prompts, prompts.text_remove, placeholders=p.placeholders)
        if len(passes) == 1 and passes[0].rows is None:
            return F.normalize(encode(passes[0]), dim=-1)
        rows = [None] * len(self.sentences.texts)
        for text_pass in passes:
            for i, feature in zip(text_pass.rows, encode(text_pass)):
                rows[i] = feature
        return F.normalize(torch.stack(rows), dim=-1)

    def per_image_class_features(self, image_features, prompts):
        """[B, E] normalised image features -> [B, C, E] class features, one text pass per image."""
        per_image = prompts.text_per_image(image_features)
        return torch.stack([self.class_features(prompts, text=[None if p is None else p[b] for p in per_image])
                            for b in range(image_features.shape[0])])

    def image_features(self, images, prompts=None):
        """[B, E] L2-normalised image features."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        return F.normalize(self.image_encoder(images, prompts.vision, prompts.vision_remove), dim=-1)

    def forward(self, images, prompts=None, class_features=None):
        """[B, C] logits = logit_scale.exp() * cosine(image, class). `prompts` / `class_features` reuse values
        computed once (an evaluation); class_features are ignored when the text depends on the image."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        image_features = self.image_features(images, prompts)
        if prompts.depends_on_image:
            class_features = self.per_image_class_features(image_features, prompts)
        elif class_features is None:
            class_features = self.class_features(prompts)
        return self.logits(image_features, class_features)

    def logits(self, image_features, class_features):
        """logit_scale.exp() * image_features @ class_features.T ([C, E], or [B, C, E] per image), in fp32 even
        under autocast: bf16 would round logits of ~30 to steps of 0.25, enough to flip close classes."""
        with torch.autocast(image_features.device.type, enabled=False):
            scale = self.logit_scale.exp().float()
            if class_features.dim() == 3:
                return scale * torch.einsum("be,bce->bc", image_features.float(), class_features.float())
            return scale * image_features.float() @ class_features.float().t()


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
        raise ConfigError(f"{key}={depth!r}: expected an int in 1..{n_layers} (the backbone's number of layers)")


def text_width(clip_model):
    return clip_model.ln_final.weight.shape[0]


def vision_width(clip_model):
    """Width of the ViT's tokens (prompts are unsupported on ResNet backbones)."""
    conv1 = getattr(clip_model.visual, "conv1", None)
    if conv1 is None or not hasattr(clip_model.visual, "class_embedding"):
        raise ConfigError("MODEL.BACKBONE.NAME: visual prompts need a ViT backbone (this one is a ResNet)")
    return conv1.out_channels


def layer_counts(clip_model):
    """(text layers, vision layers)."""
    return len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
