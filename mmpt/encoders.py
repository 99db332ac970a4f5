"""CLIP's text and image towers with prompts spliced in (docs/ARCHITECTURE.md, "The encoders").

Each encoder takes plain tensors and one `TowerSchedule`: what goes into the tower for this pass, per layer
(`schedule.prompts[l]` goes in before block l; missing / None = nothing added):
- `prompts[0]` (shallow) -- text: replaces the token embeddings at positions 1..n (after SOS) before the
  positional embedding is added; vision: appended after the positional embedding, before ln_pre.
- `prompts[l]`, l >= 1: remove `remove[l]` tokens from the END of the prompt region, then append `prompts[l]`
  at the end of the region. `remove` None / `remove[l]` None = remove the whole region when `prompts[l]` is
  given (deep replacement), nothing otherwise. Tokens not removed are carried on (contextualised).
- `adapters[l]`: None or f(block.ln_1(x_in)) -> delta, added to block l's output (token-wise).
- Prompt region: text = positions [1, 1 + k); vision = the last k tokens.
- Each prompt is [n, d] (shared by every sequence / image) or [N, n, d] (one per sequence / image).

The text tower's levers (`TextOptions`: truncation, chunks, checkpointing, the shared prefix, the frozen-block
cache) are set once on the encoder; all are exact.
"""
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mmpt.blocks import (at_layer, check_schedule_length, expand_prompt, layer_ops, prompt_count, run_tower,
                         splice_region)
from mmpt.frozen_blocks import FrozenBlockCache, LeadingImageStates, first_input_layer
from mmpt.shared_prefix import (PackedSuffixes, check_shared_prompt_tokens, run_block_with_prefix,
                                shared_prefix_length)
from mmpt.towers import TextTower, VisionTower, project, text_tower_of, vision_tower_of


@dataclass(frozen=True)
class TowerSchedule:
    """What one pass puts into a tower (see the module docstring). The text-only fields: `placeholders`, the
    sentences' placeholder count the shallow prompt must fill (None: no check); `shared_prompt_tokens`, the
    first j tokens of a per-sequence shallow prompt [N, n, d] are one tensor shared by all sequences (they may
    then join the shared prefix)."""

    prompts: Optional[Sequence] = None
    remove: Optional[Sequence] = None
    adapters: Optional[Sequence] = None
    placeholders: Optional[int] = None
    shared_prompt_tokens: int = 0

    def for_rows(self, rows):
        """The schedule of the sequences `rows` (a slice): per-sequence prompts [N, n, d] are sliced."""
        if self.prompts is None:
            return self
        return replace(self, prompts=[p[rows] if p is not None and p.dim() == 3 else p for p in self.prompts])

    def for_set(self, g):
        """Prompt set g of a grouped schedule (per-set prompts [G, n, d])."""
        return replace(self, prompts=[p[g] if p is not None and p.dim() == 3 else p for p in self.prompts])


NO_PROMPTS = TowerSchedule()


@dataclass(frozen=True)
class TextOptions:
    """The text tower's levers, all exact. share_prefix: the tokens every sequence shares (up to the first
    differing position) run once, each sequence's suffix runs to its own EOT (mmpt.shared_prefix); falls back to
    the plain pass where it does not apply. truncate: the plain pass runs on max EOT index + 1 tokens instead
    of 77. chunk_size: k sequences per pass (0 = all). checkpoint: activation checkpointing per block.
    cache_frozen_blocks: when the schedule's first input is at layer s > 0 (and before the last), the hidden states
    entering block s are computed once per class list and reused (mmpt.frozen_blocks)."""

    truncate: bool = True
    chunk_size: int = 0
    checkpoint: bool = False
    share_prefix: bool = True
    cache_frozen_blocks: bool = True


class PromptedTextEncoder(nn.Module):
    """CLIP's text tower with prompts. token_ids [N, 77] -> features [N, embed_dim] (not normalised).
    `per_prompt_set` encodes every sequence under each of G prompt sets (CoCoOp: one set per image) -> [G, N, E].
    `clip_model`: a CLIP model of either family, a mmpt.towers.TextTower, or another PromptedTextEncoder.
    The pooled token is the EOT token or the context's last position (the tower's `pooling`); a tower without
    the causal mask runs every sequence on its full context (truncation and the shared prefix are exact only
    under the causal mask, so they are off there whatever `options` says)."""

    def __init__(self, clip_model, options=TextOptions()):
        super().__init__()
        tower = text_tower_of(clip_model)
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.projection
        self.pooling, self.causal = tower.pooling, tower.causal
        self.options = options
        self.frozen_block_cache = FrozenBlockCache()  # never in the state dict

    @property
    def options(self):
        return self._options

    @options.setter
    def options(self, options):
        self._options = options if self.causal else replace(options, truncate=False, share_prefix=False)

    def text_tower(self):
        return TextTower(self.token_embedding, self.positional_embedding, self.transformer, self.ln_final,
                         self.text_projection, self.pooling, self.causal)

    # the levers, read-only here (set them with `options` / `with_options`)
    truncate = property(lambda self: self.options.truncate)
    chunk_size = property(lambda self: self.options.chunk_size)
    checkpoint = property(lambda self: self.options.checkpoint)
    share_prefix = property(lambda self: self.options.share_prefix)

    def with_options(self, **levers):
        """An encoder on the same CLIP weights with some levers changed."""
        return PromptedTextEncoder(self, replace(self.options, **levers))

    def check(self, schedule):
        check_placeholders(schedule)
        check_schedule_length(schedule, len(self.transformer.resblocks), "text")

    def forward(self, token_ids, schedule=NO_PROMPTS):
        self.check(schedule)
        check_shared_prompt_tokens(schedule.prompts, schedule.shared_prompt_tokens)
        options = self.options
        n_seq = token_ids.shape[0]
        step = options.chunk_size or n_seq
        first = self.cached_layers(token_ids, schedule)
        chunks = []
        for begin in range(0, n_seq, step):
            rows = slice(begin, begin + step)
            chunk, chunk_ids = schedule.for_rows(rows), token_ids[rows]
            prefix_length = options.share_prefix and shared_prefix_length(
                chunk_ids, chunk.prompts, chunk.remove, shared_prompt_tokens=chunk.shared_prompt_tokens)
            if prefix_length:
                chunks.append(self.encode_shared(chunk_ids, chunk, prefix_length, n_sets=1,
                                                 cached=(first, begin))[0])
            else:
                chunks.append(self.encode(chunk_ids, chunk, cached=(first, begin)))
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def cached_layers(self, token_ids, schedule):
        """s when the states entering block s come from the frozen-block cache (bound to these token ids), else 0."""
        blocks = self.transformer.resblocks
        first = first_input_layer(schedule, len(blocks)) if self.options.cache_frozen_blocks else 0
        if not 0 < first < len(blocks):
            return 0
        weights = [self.token_embedding.weight, self.positional_embedding,
                   *(p for block in list(blocks)[:first] for p in block.parameters())]
        return first if self.frozen_block_cache.bind(token_ids, weights) else 0

    def leading_states(self, cached, layout, compute):
        """compute() (the states entering block s, from blocks 0..s-1), through the cache when `cached` = (s, first
        row) has s > 0; the layout (path, shapes, truncation) is part of the key."""
        first, begin = cached or (0, 0)
        if not first:
            return compute(0)
        return self.frozen_block_cache.get((first, begin, self.options.truncate) + layout, lambda: compute(first))

    def per_prompt_set(self, token_ids, schedule):
        """Every sequence of token_ids [N, 77] under each of G prompt sets -> features [G, N, E].

        Each prompt is [G, n, d] (one per set) or [n, d] (the same in every set). With the shared prefix, each
        set's prefix runs once and its N suffixes attend to it (chunk_size counts sequences: about
        chunk_size / G classes per pass); without, one plain pass per set."""
        self.check(schedule)
        per_set = [p for p in schedule.prompts or () if p is not None and p.dim() == 3]
        if not per_set:
            raise ValueError("per_prompt_set needs at least one prompt of shape [G, n, d] (one per prompt set)")
        n_sets = per_set[0].shape[0]
        options = self.options
        prefix_length = options.share_prefix and shared_prefix_length(token_ids, schedule.prompts, schedule.remove,
                                                                       per_row_prompts=False)
        if not prefix_length:
            return torch.stack([self(token_ids, schedule.for_set(g)) for g in range(n_sets)])
        n_seq = token_ids.shape[0]
        step = max(1, options.chunk_size // n_sets) if options.chunk_size else n_seq
        first = self.cached_layers(token_ids, schedule)
        return torch.cat([self.encode_shared(token_ids[begin: begin + step], schedule, prefix_length, n_sets,
                                             cached=(first, begin))
                          for begin in range(0, n_seq, step)], dim=1)

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

    def project(self, pooled_features):
        # LayerNorm is per token: normalising only the pooled rows equals CLIP's ln_final on all, then picking
        return project(self.text_projection, self.ln_final(pooled_features))

    def pooled_positions(self, token_ids):
        """[N] the position each sequence's feature is read at (before any deep prompt op moves it)."""
        if self.pooling == "last":
            return torch.full_like(token_ids[:, 0], token_ids.shape[1] - 1)
        return token_ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary

    def encode(self, token_ids, schedule, cached=None):
        """The plain pass: every sequence on all its tokens (up to max pooled position + 1 when truncating).
        `cached` = (s, first row): the states entering block s come from the frozen-block cache (s = 0: none)."""
        eot, pooled = token_ids.argmax(dim=-1), self.pooled_positions(token_ids)
        if self.options.truncate:
            token_ids = token_ids[:, : int(pooled.max()) + 1]
        shallow = at_layer(schedule.prompts, 0)
        self.check_shallow_fits(shallow, eot)
        n_shallow = prompt_count(shallow)
        blocks, use_checkpoint, causal = self.transformer.resblocks, self.options.checkpoint, self.causal

        def leading(first):  # blocks 0..first-1 receive nothing from the schedule when first > 0
            x = self.embed(token_ids, shallow)
            return run_tower(blocks, x, schedule, lambda x, k: 1, n_shallow, causal=causal,
                             use_checkpoint=use_checkpoint, end_layer=first)[0] if first else x
        x = self.leading_states(cached, ("plain", tuple(token_ids.shape)), leading)
        x, k = run_tower(blocks, x, schedule, lambda x, k: 1, n_shallow, causal=causal, use_checkpoint=use_checkpoint,
                         first_layer=(cached or (0,))[0])
        return self.project(x[torch.arange(x.shape[0], device=x.device), pooled + (k - n_shallow)])

    def encode_shared(self, token_ids, schedule, prefix_length, n_sets, cached=None):
        """The shared-prefix pass -> [G, N, E]. The prefix (length `prefix_length`, from shared_prefix_length)
        runs as G rows (G = n_sets prompt sets; 1 unless grouped); the N suffixes packed, G times. `cached`: as
        `encode`'s."""
        prompts, remove = schedule.prompts, schedule.remove
        eot, pooled = token_ids.argmax(dim=-1), self.pooled_positions(token_ids)
        shallow = at_layer(prompts, 0)
        self.check_shallow_fits(shallow, eot)
        ends = pooled + 1 if self.options.truncate else torch.full_like(eot, token_ids.shape[1])
        token_ids = token_ids[:, : int(ends.max())]
        layout = PackedSuffixes(ends, prefix_length, pooled)
        blocks = list(self.transformer.resblocks)
        k = prompt_count(shallow)

        def run(prefix, suffixes, k, layers):
            for layer in layers:
                block = blocks[layer]
                if layer >= 1:
                    added, removed = layer_ops(prompts, remove, layer)
                    if added is not None or removed:  # the prompt region [1, 1 + k) lies inside the prefix
                        prefix, k = splice_region(prefix, 1, k, added, removed)
                adapter = at_layer(schedule.adapters, layer)
                if self.options.checkpoint and torch.is_grad_enabled():
                    prefix, suffixes = activation_checkpoint(run_block_with_prefix, block, prefix, suffixes, layout,
                                                             adapter, use_reentrant=False)
                else:
                    prefix, suffixes = run_block_with_prefix(block, prefix, suffixes, layout, adapter)
            return prefix, suffixes, k

        def leading(first):  # the embedded prefix and suffixes, through blocks 0..first-1
            per_row_shallow = n_sets == 1 and shallow is not None and shallow.dim() == 3
            rows = self.embed(token_ids, shallow if per_row_shallow else None)  # [N, L, d]
            if per_row_shallow:
                prefix = rows[:1, :prefix_length]
            else:
                prefix = self.embed(token_ids[:1, :prefix_length].expand(n_sets, -1), shallow)  # [G, p, d]
            suffixes = layout.pack(rows[:, prefix_length:]).unsqueeze(0).expand(n_sets, -1, -1)  # [G, T, d]
            return run(prefix, suffixes, k, range(first))[:2]
        first = (cached or (0,))[0]
        prefix, suffixes = self.leading_states(cached, ("shared", tuple(token_ids.shape), prefix_length, n_sets),
                                               leading)
        prefix, suffixes, k = run(prefix, suffixes, k, range(first, len(blocks)))
        return self.project(suffixes[:, layout.eot])


def check_placeholders(schedule):
    """The shallow prompt ([n, d], [N, n, d] or [G, n, d]) must fill the sentences' `placeholders` (None: no check)."""
    n_shallow = prompt_count(at_layer(schedule.prompts, 0))
    if schedule.placeholders is not None and n_shallow != schedule.placeholders:
        raise ValueError(f"the shallow text prompt has {n_shallow} tokens, the class sentences "
                         f"{schedule.placeholders} placeholder words")


class PromptedImageEncoder(nn.Module):
    """CLIP's image tower with prompts. images [B, 3, H, W] -> features [B, embed_dim] (not normalised).
    `with_region` also returns the prompt region's tokens after the last block, before ln_post ([B, k, d]).
    ResNet backbones run their own `visual` and accept no prompts. The feature is the class token's, or the mean
    of the patch tokens (the tower's `pooling`; prompt tokens never enter the mean). A pass whose first input is at
    block s > 0 keeps the states entering block s; a later pass on the same images that feeds nothing before s
    starts there (mmpt.frozen_blocks.LeadingImageStates: exact, the same operations on the same tensors)."""

    def __init__(self, clip_model, checkpoint=False, share_leading_blocks=True):
        super().__init__()
        tower = vision_tower_of(clip_model)
        self.visual = tower.visual
        self.is_vit, self.pooling, self.norm_after_pool = tower.is_vit, tower.pooling, tower.norm_after_pool
        self.checkpoint = checkpoint
        self.share_leading_blocks = share_leading_blocks
        self.leading_states = LeadingImageStates()  # never in the state dict

    def leading_weights(self, first):
        visual = self.visual
        return [visual.conv1.weight, visual.class_embedding, visual.positional_embedding, *visual.ln_pre.parameters(),
                *(p for block in list(visual.transformer.resblocks)[:first] for p in block.parameters())]

    def vision_tower(self):
        return VisionTower(self.visual, self.is_vit, self.pooling, self.norm_after_pool)

    def forward(self, images, schedule=NO_PROMPTS):
        return self.with_region(images, schedule)[0]

    def with_region(self, images, schedule=NO_PROMPTS):
        """(features [B, E], the prompt region after the last block [B, k, d] (k may be 0))."""
        visual = self.visual
        if not self.is_vit:
            if any(p is not None for p in (schedule.prompts or [])) or any(
                    a is not None for a in (schedule.adapters or [])):
                raise ValueError("visual prompts and adapters need a ViT backbone; this CLIP has a ResNet image tower")
            features = visual(images.to(visual.conv1.weight.dtype))
            return features, features.new_zeros(features.shape[0], 0, features.shape[-1])
        blocks = visual.transformer.resblocks
        check_schedule_length(schedule, len(blocks), "vision")
        first = first_input_layer(schedule, len(blocks))
        start = first if 0 < first < len(blocks) else 0  # blocks 0..start-1 receive nothing from the schedule
        region_start = lambda x, k: x.shape[1] - k  # noqa: E731
        kept = self.leading_states.take(images, first, self.leading_weights) if self.share_leading_blocks else None
        if kept is not None:  # blocks 0..s-1 ran on these images in an earlier pass; nothing is fed before s here
            (start, x), k = kept, 0
        else:
            # the residual stream stays fp32 under autocast, as the text tower's does (autocast still runs the
            # blocks' matmuls in bf16 / fp16); an fp16 CLIP (weights kept in half) stays fp16
            x = visual.conv1(images.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, grid**2, d]
            x = x.to(visual.conv1.weight.dtype)
            cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
            shallow = at_layer(schedule.prompts, 0)
            if shallow is not None:
                x = torch.cat([x, expand_prompt(shallow, x.shape[0], x.shape[-1]).to(x.dtype)], dim=1)
            x, k = visual.ln_pre(x), prompt_count(shallow)
            if start:
                x = run_tower(blocks, x, schedule, region_start, k, causal=False, use_checkpoint=self.checkpoint,
                              end_layer=start)[0]
                if self.share_leading_blocks:
                    self.leading_states.keep(images, start, x, self.leading_weights(start))
        x, k = run_tower(blocks, x, schedule, region_start, k, causal=False, use_checkpoint=self.checkpoint,
                         first_layer=start)
        return project(visual.proj, self.pool(x, k)), x[:, x.shape[1] - k:]

    def pool(self, x, k):
        """The normalised image token of the last block's output x [B, 1 + patches + k, d]."""
        ln_post = self.visual.ln_post
        if self.pooling == "cls":
            return ln_post(x[:, 0])
        patches = x[:, 1: x.shape[1] - k]
        return ln_post(patches.mean(dim=1)) if self.norm_after_pool else ln_post(patches).mean(dim=1)
