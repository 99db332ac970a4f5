"""The reference implementations' encoders: what CoOp / MaPLe compute, used as the "levers off" baseline.

CoOp's `TextEncoder` and MaPLe's prompted towers run CLIP's own `ResidualAttentionBlock.forward`
(`nn.MultiheadAttention`, sequence-first, CLIP's 77x77 additive causal mask) on the full 77-token context, and
splice prompts in between blocks. These classes do exactly that, following the same call contract as
`mmpt.encoders.PromptedTextEncoder` / `PromptedImageEncoder` (docs/ARCHITECTURE.md):
`encoder(inputs, schedule)` with a `mmpt.encoders.TowerSchedule`: shallow prompts at index 0, deep prompts
before block l >= 1, `remove[l]` tokens dropped from the end of the prompt region first (None: all of them when
prompts are given). Adapters are not part of the reference codebases: a schedule with adapters is refused.

They are written independently of mmpt's encoders on purpose: tests/test_levers.py compares the two.
"""
import torch
from torch import nn

from mmpt.encoders import NO_PROMPTS


def _prompts_and_remove(schedule):
    if any(a is not None for a in schedule.adapters or ()):
        raise ValueError("the reference encoders have no adapters")
    return schedule.prompts, schedule.remove


def _prompt_tokens_seq_first(prompt, batch_size, dtype):
    """[n, d] (shared) or [N, n, d] (one per sequence) -> [n, N, d], the sequence-first layout of CLIP's blocks."""
    if prompt.dim() == 2:
        return prompt.to(dtype).unsqueeze(1).expand(-1, batch_size, -1)
    return prompt.to(dtype).permute(1, 0, 2)


def _layer_update(prompts, remove, layer, n_current):
    """(new prompt tokens or None, number of tokens to drop) before block `layer`, per the contract."""
    new = prompts[layer] if prompts is not None and layer < len(prompts) else None
    explicit = remove[layer] if remove is not None and layer < len(remove) else None
    if explicit is not None:
        return new, int(explicit)
    return new, (n_current if new is not None else 0)


def run_clip_block(block, x):
    """CLIP's own block forward (nn.MultiheadAttention, additive mask) on a sequence-first tensor.

    CLIP's block slices its 77x77 causal mask to the sequence length, which is exact for lengths <= 77.
    Longer text sequences (prompt tokens added beyond the context) get the same computation with a
    causal mask of the right size.
    """
    mask = block.attn_mask
    if mask is None or x.shape[0] <= mask.shape[-1]:
        return block(x)
    length = x.shape[0]
    causal = torch.full((length, length), float("-inf"), dtype=x.dtype, device=x.device).triu_(1)
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=causal)[0]
    return x + block.mlp(block.ln_2(x))


class ReferenceTextEncoder(nn.Module):
    """CoOp / MaPLe text tower: 77 tokens, CLIP's blocks; shallow prompts replace positions 1..n after SOS.

    `truncate=True` (not what the references do; it isolates the attention lever in the benchmarks) cuts the
    token ids after the last EOT: CLIP's blocks slice their causal mask to the length, so this stays exact.
    """

    def __init__(self, clip_model, truncate=False):
        super().__init__()
        self.truncate = truncate
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.blocks = clip_model.transformer.resblocks
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection

    def per_prompt_set(self, token_ids, schedule):
        """Every sequence under each of G prompt sets ([G, n, d] prompts) -> [G, N, E]: one pass per set, as the
        reference CoCoOp loops over its images."""
        n_sets = next(p.shape[0] for p in schedule.prompts if p is not None and p.dim() == 3)
        return torch.stack([self(token_ids, schedule.for_set(g)) for g in range(n_sets)])

    def forward(self, token_ids, schedule=NO_PROMPTS):
        # placeholders / shared_prompt_tokens: checks and hints of our encoder's call; the result is the same
        prompts, remove = _prompts_and_remove(schedule)
        dtype = self.text_projection.dtype
        if self.truncate:
            token_ids = token_ids[:, :int(token_ids.argmax(dim=-1).max()) + 1]
        n_seq, length = token_ids.shape
        x = self.token_embedding(token_ids).to(dtype).permute(1, 0, 2)  # [L, N, d]
        n_prompt = 0
        if prompts is not None and len(prompts) > 0 and prompts[0] is not None:
            shallow = _prompt_tokens_seq_first(prompts[0], n_seq, dtype)
            n_prompt = shallow.shape[0]
            x = torch.cat([x[:1], shallow, x[1 + n_prompt:]])
        n_shallow = n_prompt
        x = x + self.positional_embedding[:length].to(dtype).unsqueeze(1)
        for layer, block in enumerate(self.blocks):
            if layer >= 1:
                new, n_drop = _layer_update(prompts, remove, layer, n_prompt)
                kept = x[1:1 + n_prompt - n_drop]
                added = [] if new is None else [_prompt_tokens_seq_first(new, n_seq, dtype)]
                x = torch.cat([x[:1], kept, *added, x[1 + n_prompt:]])
                n_prompt = kept.shape[0] + (0 if new is None else added[0].shape[0])
            x = run_clip_block(block, x)
        x = self.ln_final(x.permute(1, 0, 2)).to(dtype)
        eot = token_ids.argmax(dim=-1) + (n_prompt - n_shallow)
        return x[torch.arange(n_seq, device=x.device), eot] @ self.text_projection


class ReferenceImageEncoder(nn.Module):
    """MaPLe / VPT vision tower: prompts appended after the patch tokens, CLIP's own blocks."""

    def __init__(self, clip_model):
        super().__init__()
        self.visual = clip_model.visual

    def forward(self, images, schedule=NO_PROMPTS):
        prompts, remove = _prompts_and_remove(schedule)
        visual = self.visual
        dtype = visual.conv1.weight.dtype
        x = visual.conv1(images.to(dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, grid**2, w]
        cls = visual.class_embedding.to(dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(dtype)
        batch = x.shape[0]
        x = x.permute(1, 0, 2)  # [L, B, w]
        n_prompt = 0
        if prompts is not None and len(prompts) > 0 and prompts[0] is not None:
            shallow = _prompt_tokens_seq_first(prompts[0], batch, dtype)
            n_prompt = shallow.shape[0]
            x = torch.cat([x, shallow])
        x = visual.ln_pre(x)
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer >= 1:
                new, n_drop = _layer_update(prompts, remove, layer, n_prompt)
                x = x[:x.shape[0] - n_drop]
                n_prompt -= n_drop
                if new is not None:
                    new = _prompt_tokens_seq_first(new, batch, dtype)
                    x = torch.cat([x, new])
                    n_prompt += new.shape[0]
            x = run_clip_block(block, x)
        x = visual.ln_post(x[0])
        return x @ visual.proj if visual.proj is not None else x
