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

def run_block(block, x, causal=False, adapter=None):
    """One `clip.model.ResidualAttentionBlock` on batch-first x [N, L, d], attention through SDPA; `adapter`
    (None or f(ln_1(x)) -> [N, L, d]) adds a residual branch computed from the block input to its output."""
    normed = block.ln_1(x)
    q, k, v = attention_inputs(block, normed)
    return add_adapter(finish_block(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=causal)), adapter,
                       normed)


def add_adapter(out, adapter, normed):
    """out + adapter(normed): a block-level residual adapter (MMA), token-wise, from ln_1 of the block input."""
    return out if adapter is None else out + adapter(normed).to(out.dtype)


def attention_inputs(block, normed):
    """The block's queries, keys and values of ln_1(x) [N, L, d], each [N, heads, L, d / heads]."""
    attn = block.attn
    n_seq, length, width = normed.shape
    heads = attn.num_heads
    q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(t.reshape(n_seq, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))


def finish_block(block, x, attention):
    """The rest of the block after attention [N, heads, L, d / heads]: out_proj, residual, MLP."""
    n_seq, heads, length, head_width = attention.shape
    x = x + block.attn.out_proj(attention.transpose(1, 2).reshape(n_seq, length, heads * head_width))
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


def run_tower(blocks, x, prompts, remove, region_start, k, causal, use_checkpoint, adapters=None):
    """Blocks with the per-layer remove / append ops (layer 0's prompts are already in x) and adapters.
    `region_start(x, k)` gives where the k-token prompt region begins. Returns (output, final region size)."""
    for layer, block in enumerate(blocks):
        if layer >= 1:
            added, removed = layer_ops(prompts, remove, layer)
            if added is not None or removed:
                x, k = splice_region(x, region_start(x, k), k, added, removed)
        adapter = layer_adapter(adapters, layer)
        if use_checkpoint and torch.is_grad_enabled():
            x = activation_checkpoint(run_block, block, x, causal, adapter, use_reentrant=False)
        else:
            x = run_block(block, x, causal, adapter)
    return x, k


def layer_adapter(adapters, layer):
    return adapters[layer] if adapters is not None and layer < len(adapters) else None


def pick(value, default):
    return default if value is None else value


# ------------------------------------------------------------------------------------------------------------
# shared-prefix text encoding
#
# Under CLIP's causal mask a token sees only the tokens before it. The tokens before the first position where
# the class sentences differ (SOS, the learnable context, fixed words such as "a photo of a") are therefore the
# same in every sequence at every layer: they run once (batch 1; one row per prompt set in grouped mode), and
# only each sequence's suffix (class name, ".", EOT) runs per class, its queries attending to the prefix's keys
# and values and to its own earlier tokens. Each suffix runs to its own EOT: the suffixes are packed without
# padding for the per-token work (LayerNorms, projections, MLP), padded only inside the attention.

def shared_prefix_length(token_ids, prompts, remove, per_row_prompts=True, shared_prompt_tokens=0):
    """Number p of leading positions that are the same in every row at every layer, or 0 when the shared path
    does not apply (a deep prompt that differs between rows, or deep prompt ops reaching past the prefix).

    Rows agree at a position when their token ids agree there, except inside the shallow prompt (positions
    1..n): a shared prompt ([n, d]; in grouped mode also one per set, [G, n, d]) agrees everywhere, a prompt with
    one row per sequence ([N, n, d], `per_row_prompts`) only on its first `shared_prompt_tokens` tokens. p is at
    most the smallest EOT position, so every row keeps its EOT in its suffix.
    """
    n_rows = token_ids.shape[0]
    differs = (token_ids != token_ids[:1]).any(dim=0)
    shallow = prompts[0] if prompts else None
    n_shallow = prompt_count(shallow)
    if n_shallow:
        differs[1: 1 + n_shallow] = False
        if per_row_prompts and shallow.dim() == 3 and n_rows > 1:
            differs[1 + shared_prompt_tokens: 1 + n_shallow] = True
    first_difference = int(differs.nonzero()[0]) if bool(differs.any()) else differs.shape[0]
    length = min(first_difference, int(token_ids.argmax(dim=-1).min()))
    for layer in range(1, max(len(prompts or ()), len(remove or ()))):
        added, removed = layer_ops(prompts, remove, layer)
        if added is None and not removed:
            continue
        if per_row_prompts and added is not None and added.dim() == 3 and n_rows > 1:
            return 0  # a deep prompt per sequence: the prompt region differs between rows from this layer on
        if 1 + n_shallow > length:
            return 0  # the prompt region reaches into the per-row part: deep ops there would move the suffixes
    return length


class PackedSuffixes:
    """Where each row's suffix (positions p .. its end) lies among the packed suffix tokens [T, d] and in the
    padded layout [N * S, d] (S = longest suffix) the attention runs on."""

    def __init__(self, ends, prefix_length, eot):
        device = ends.device
        lengths = ends - prefix_length
        self.n_rows, self.span = lengths.shape[0], int(lengths.max())
        self.valid = torch.arange(self.span, device=device) < lengths[:, None]  # [N, S]
        self.packed_slots = self.valid.flatten().nonzero().squeeze(1)  # [T]: padded slot of each packed token
        offsets = torch.cumsum(lengths, 0) - lengths
        self.eot = offsets + (eot - prefix_length)  # [N]: packed index of each row's EOT

    def pack(self, rows):
        """rows [N, S, d] (positions p..p + S of every row) -> [T, d]."""
        return rows[self.valid]

    def pad(self, packed):
        """[G, T, c] -> [G, N * S, c] (zeros in the padding slots)."""
        padded = packed.new_zeros(packed.shape[0], self.n_rows * self.span, packed.shape[-1])
        return padded.index_copy(1, self.packed_slots, packed)

    def unpad(self, padded):
        """[G, N * S, c] -> [G, T, c]."""
        return padded.index_select(1, self.packed_slots)


def attend_after_prefix(q, k, v, k_prefix, v_prefix):
    """Causal attention of suffix tokens: q, k, v [G, H, N, S, hd] (N suffixes of S tokens, right-padded),
    k_prefix, v_prefix [G, H, p, hd] (the prefix, shared by the N suffixes of its set). Each query attends to the
    whole prefix and to its own suffix's tokens up to itself. Returns [G, H, N, S, hd]."""
    n_sets, heads, n_rows, span, head_width = q.shape
    prefix_length = k_prefix.shape[2]
    q = q * head_width ** -0.5
    # the N suffixes share the prefix: fold them into the query axis instead of expanding the prefix N times
    to_prefix = (q.reshape(n_sets, heads, n_rows * span, head_width) @ k_prefix.transpose(-1, -2))
    to_prefix = to_prefix.view(n_sets, heads, n_rows, span, prefix_length)
    future = torch.ones(span, span, dtype=torch.bool, device=q.device).triu_(1)
    to_own = (q @ k.transpose(-1, -2)).masked_fill(future, float("-inf"))
    weights = torch.softmax(torch.cat([to_prefix, to_own], dim=-1), dim=-1)
    from_prefix = weights[..., :prefix_length].reshape(n_sets, heads, n_rows * span, prefix_length) @ v_prefix
    return from_prefix.view(n_sets, heads, n_rows, span, head_width) + weights[..., prefix_length:] @ v


def run_block_with_prefix(block, prefix, suffixes, layout, adapter=None):
    """One block on the shared prefix [G, p, d] and the packed suffixes [G, T, d] (layout: PackedSuffixes);
    a token-wise adapter applies to both (the prefix stays shared)."""
    prefix_normed = block.ln_1(prefix)
    q_prefix, k_prefix, v_prefix = attention_inputs(block, prefix_normed)
    new_prefix = add_adapter(finish_block(block, prefix, F.scaled_dot_product_attention(
        q_prefix, k_prefix, v_prefix, is_causal=True)), adapter, prefix_normed)
    attn = block.attn
    n_sets, _, width = suffixes.shape
    heads = attn.num_heads
    normed = block.ln_1(suffixes)
    qkv = layout.pad(F.linear(normed, attn.in_proj_weight, attn.in_proj_bias))
    q, k, v = qkv.view(n_sets, layout.n_rows, layout.span, 3, heads, width // heads).permute(3, 0, 4, 1, 2, 5)
    out = attend_after_prefix(q, k, v, k_prefix, v_prefix).permute(0, 2, 3, 1, 4)
    suffixes = suffixes + attn.out_proj(layout.unpad(out.reshape(n_sets, -1, width)))
    return new_prefix, add_adapter(suffixes + block.mlp(block.ln_2(suffixes)), adapter, normed)


def check_shared_prompt_tokens(prompts, count):
    """`shared_prompt_tokens` must lie in 0..n and those tokens must really be the same in every row."""
    shallow = prompts[0] if prompts else None
    if not count:
        return
    if shallow is None or shallow.dim() != 3 or not 0 <= count <= shallow.shape[1]:
        raise ValueError(f"shared_prompt_tokens={count}: needs a per-sequence shallow prompt [N, n, d] with "
                         f"n >= {count}, got {None if shallow is None else tuple(shallow.shape)}")
    head = shallow[:, :count]
    if not torch.equal(head, head[:1].expand_as(head)):
        raise ValueError(f"shared_prompt_tokens={count}: the first {count} shallow prompt tokens differ between rows")


def check_placeholders(prompts, placeholders):
    """The shallow prompt ([n, d], [N, n, d] or [G, n, d]) must fill the sentences' `placeholders` (None: no check)."""
    n_shallow = prompt_count(prompts[0] if prompts else None)
    if placeholders is not None and n_shallow != placeholders:
        raise ValueError(f"the shallow text prompt has {n_shallow} tokens, the class sentences {placeholders} "
                         f"placeholder words")


# ------------------------------------------------------------------------------------------------------------
# encoders

class PromptedTextEncoder(nn.Module):
    """CLIP's text tower with prompts. token_ids [N, 77] -> features [N, embed_dim] (not normalised).

    Levers, all exact; each has a default here and can be overridden per call:
    share_prefix: the tokens every sequence shares (up to the first differing position) run once, each
    sequence's suffix runs to its own EOT (see "shared-prefix text encoding" above); falls back to the plain
    pass where it does not apply. truncate: the plain pass runs on max EOT index + 1 tokens instead of 77.
    chunk_size: k sequences per pass (0 = all). checkpoint: activation checkpointing per block.

    `per_prompt_set` encodes every sequence under each of G prompt sets (CoCoOp: one set per image) -> [G, N, E].
    """

    def __init__(self, clip_model, truncate=True, chunk_size=0, checkpoint=False, share_prefix=True):
        super().__init__()
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.truncate, self.chunk_size, self.checkpoint = truncate, chunk_size, checkpoint
        self.share_prefix = share_prefix

    def options(self, truncate, chunk_size, checkpoint, share_prefix):
        return (pick(truncate, self.truncate), pick(chunk_size, self.chunk_size), pick(checkpoint, self.checkpoint),
                pick(share_prefix, self.share_prefix))

    def forward(self, token_ids, prompts=None, remove=None, truncate=None, chunk_size=None, checkpoint=None,
                share_prefix=None, shared_prompt_tokens=0, placeholders=None, adapters=None):
        """`placeholders`: the sentences' placeholder count (mmpt.sentences); the shallow prompt must fill it.
        shared_prompt_tokens: the first j tokens of a per-sequence shallow prompt [N, n, d] are one tensor
        shared by all sequences (e.g. CoOp's unified context before a class name in the middle); they may then
        join the shared prefix (gradients summed over the sequences, as for a shared [n, d] prompt)."""
        check_placeholders(prompts, placeholders)
        truncate, chunk_size, use_checkpoint, share_prefix = self.options(truncate, chunk_size, checkpoint,
                                                                          share_prefix)
        check_schedule_length(prompts, remove, len(self.transformer.resblocks), "text")
        check_shared_prompt_tokens(prompts, shared_prompt_tokens)
        n_seq = token_ids.shape[0]
        chunks = []
        for begin in range(0, n_seq, chunk_size or n_seq):
            rows = slice(begin, begin + (chunk_size or n_seq))
            chunk_prompts = None if prompts is None else [
                p[rows] if p is not None and p.dim() == 3 else p for p in prompts]
            chunk_ids = token_ids[rows]
            prefix_length = share_prefix and shared_prefix_length(chunk_ids, chunk_prompts, remove,
                                                                  shared_prompt_tokens=shared_prompt_tokens)
            if prefix_length:
                chunks.append(self.encode_shared(chunk_ids, chunk_prompts, remove, prefix_length, truncate,
                                                 use_checkpoint, n_sets=1, adapters=adapters)[0])
            else:
                chunks.append(self.encode(chunk_ids, chunk_prompts, remove, truncate, use_checkpoint, adapters))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def per_prompt_set(self, token_ids, prompts, remove=None, truncate=None, chunk_size=None, checkpoint=None,
                       share_prefix=None, placeholders=None):
        """Every sequence of token_ids [N, 77] under each of G prompt sets -> features [G, N, E].

        Each prompt is [G, n, d] (one per set) or [n, d] (the same in every set). With the shared prefix, each
        set's prefix runs once and its N suffixes attend to it (chunk_size counts sequences: about
        chunk_size / G classes per pass); without, one plain pass per set."""
        check_placeholders(prompts, placeholders)
        truncate, chunk_size, use_checkpoint, share_prefix = self.options(truncate, chunk_size, checkpoint,
                                                                          share_prefix)
        check_schedule_length(prompts, remove, len(self.transformer.resblocks), "text")
        per_set = [p for p in prompts or () if p is not None and p.dim() == 3]
        if not per_set:
            raise ValueError("per_prompt_set needs at least one prompt of shape [G, n, d] (one per prompt set)")
        n_sets = per_set[0].shape[0]
        prefix_length = share_prefix and shared_prefix_length(token_ids, prompts, remove, per_row_prompts=False)
        if not prefix_length:
            return torch.stack([
                self(token_ids, [p[g] if p is not None and p.dim() == 3 else p for p in prompts], remove, truncate,
                     chunk_size, use_checkpoint, share_prefix) for g in range(n_sets)])
        n_seq = token_ids.shape[0]
        step = max(1, chunk_size // n_sets) if chunk_size else n_seq
        return torch.cat([self.encode_shared(token_ids[begin: begin + step], prompts, remove, prefix_length, truncate,
                                             use_checkpoint, n_sets) for begin in range(0, n_seq, step)], dim=1)

    def embed(self, token_ids, shallow):
        """Token embeddings with the shallow prompt ([n, d] or [N, n, d]) at positions 1..n, plus positions."""
        x = self.token_embedding(token_ids)
        n_shallow = prompt_count(shallow)
        if n_shallow:
            shallow = expand_prompt(shallow, x.shape[0], x.shape[-1]).to(x.dtype)
            x = torch.cat([x[:, :1], shallow, x[:, 1 + n_shallow:]], dim=1)
        return x + self.positional_embedding[: x.shape[1]].to(x.dtype)

    def check_shallow_fits(self, shallow, eot):
        n_shallow = prompt_count(shallow)
        if n_shallow and n_shallow >= int(eot.min()):
            raise ValueError(f"{n_shallow} shallow text prompts do not fit before the EOT token at position "
                             f"{int(eot.min())}: the prompt sentence needs >= {n_shallow} placeholder words")

    def project(self, eot_features):
        # LayerNorm is per token: normalising only the EOT rows equals CLIP's ln_final on all, then picking
        return self.ln_final(eot_features) @ self.text_projection.to(eot_features.dtype)

    def encode(self, token_ids, prompts, remove, truncate, use_checkpoint, adapters=None):
        """The plain pass: every sequence on all its tokens (up to max EOT + 1 when truncating)."""
        eot = token_ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        if truncate:
            token_ids = token_ids[:, : int(eot.max()) + 1]
        shallow = prompts[0] if prompts else None
        self.check_shallow_fits(shallow, eot)
        n_shallow = prompt_count(shallow)
        x = self.embed(token_ids, shallow)
        x, k = run_tower(self.transformer.resblocks, x, prompts, remove, lambda x, k: 1, n_shallow,
                         causal=True, use_checkpoint=use_checkpoint, adapters=adapters)
        return self.project(x[torch.arange(x.shape[0], device=x.device), eot + (k - n_shallow)])

    def encode_shared(self, token_ids, prompts, remove, prefix_length, truncate, use_checkpoint, n_sets,
                      adapters=None):
        """The shared-prefix pass -> [G, N, E]. The prefix (length `prefix_length`, from shared_prefix_length)
        runs as G rows (G = n_sets prompt sets; 1 unless grouped); the N suffixes packed, G times."""
        eot = token_ids.argmax(dim=-1)
        shallow = prompts[0] if prompts else None
        self.check_shallow_fits(shallow, eot)
        ends = eot + 1 if truncate else torch.full_like(eot, token_ids.shape[1])
        token_ids = token_ids[:, : int(ends.max())]
        per_row_shallow = n_sets == 1 and shallow is not None and shallow.dim() == 3
        rows = self.embed(token_ids, shallow if per_row_shallow else None)  # [N, L, d]
        if per_row_shallow:
            prefix = rows[:1, :prefix_length]
        else:
            prefix = self.embed(token_ids[:1, :prefix_length].expand(n_sets, -1), shallow)  # [G, p, d]
        layout = PackedSuffixes(ends, prefix_length, eot)
        suffixes = layout.pack(rows[:, prefix_length:]).unsqueeze(0).expand(n_sets, -1, -1)  # [G, T, d]
        k = prompt_count(shallow)
        for layer, block in enumerate(self.transformer.resblocks):
            if layer >= 1:
                added, removed = layer_ops(prompts, remove, layer)
                if added is not None or removed:  # the prompt region [1, 1 + k) lies inside the prefix
                    prefix, k = splice_region(prefix, 1, k, added, removed)
            adapter = layer_adapter(adapters, layer)
            if use_checkpoint and torch.is_grad_enabled():
                prefix, suffixes = activation_checkpoint(run_block_with_prefix, block, prefix, suffixes, layout,
                                                         adapter, use_reentrant=False)
            else:
                prefix, suffixes = run_block_with_prefix(block, prefix, suffixes, layout, adapter)
        return self.project(suffixes[:, layout.eot])


class PromptedImageEncoder(nn.Module):
    """CLIP's image tower with prompts. images [B, 3, H, W] -> features [B, embed_dim] (not normalised).
    ResNet backbones run clip's own `visual` and accept no prompts."""

    def __init__(self, clip_model, checkpoint=False):
        super().__init__()
        self.visual = clip_model.visual
        self.is_vit = hasattr(self.visual, "class_embedding")
        self.checkpoint = checkpoint

    def forward(self, images, prompts=None, remove=None, checkpoint=None, adapters=None):
        visual = self.visual
        if not self.is_vit:
            if any(p is not None for p in (prompts or [])) or any(a is not None for a in (adapters or [])):
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
                         prompt_count(shallow), causal=False, use_checkpoint=pick(checkpoint, self.checkpoint),
                         adapters=adapters)
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
    text_adapters: Optional[list] = None
    vision_adapters: Optional[list] = None

    @property
    def depends_on_image(self):
        return self.text_per_image is not None

    @property
    def text_is_constant(self):
        """True when the class text features depend on no learnable tensor (no text prompts, e.g. VPT)."""
        return not self.depends_on_image and not any(p is not None for p in (self.text or [])) and \
            not any(a is not None for a in (self.text_adapters or []))


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

    def set_text_options(self, truncate=None, chunk_size=None, checkpoint=None, share_prefix=None):
        """Defaults of the text tower's levers (None = keep)."""
        encoder = self.text_encoder
        encoder.truncate = pick(truncate, encoder.truncate)
        encoder.chunk_size = pick(chunk_size, encoder.chunk_size)
        encoder.checkpoint = pick(checkpoint, encoder.checkpoint)
        encoder.share_prefix = pick(share_prefix, encoder.share_prefix)

    def class_features(self, prompts=None, text=None):
        """[C, E] L2-normalised class text features of `prompts` (default: compute_prompts()); `text` replaces
        the per-layer text prompts (one image's prompts on the per-image path)."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        text = prompts.text if text is None else text
        passes = self.sentences.passes(text)
        encode = lambda p: self.text_encoder(p.token_ids, p.prompts, prompts.text_remove, placeholders=p.placeholders,
                                             shared_prompt_tokens=p.shared_prompt_tokens,
                                             adapters=prompts.text_adapters)
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
        passes = self.sentences.passes(per_image)
        if len(passes) == 1 and passes[0].rows is None and any(p is not None for p in per_image):
            # one sentence form for all classes: the images' prompts are G = B prompt sets of one text pass
            # (with the shared prefix, each image's prefix runs once for all its classes)
            text_pass = passes[0]
            return F.normalize(self.text_encoder.per_prompt_set(text_pass.token_ids, text_pass.prompts,
                                                                prompts.text_remove,
                                                                placeholders=text_pass.placeholders), dim=-1)
        return torch.stack([self.class_features(prompts, text=[None if p is None else p[b] for p in per_image])
                            for b in range(image_features.shape[0])])

    def image_features(self, images, prompts=None):
        """[B, E] L2-normalised image features."""
        prompts = prompts if prompts is not None else self.compute_prompts()
        return F.normalize(self.image_encoder(images, prompts.vision, prompts.vision_remove,
                                              adapters=prompts.vision_adapters), dim=-1)

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
