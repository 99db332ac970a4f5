"""Shared-prefix text encoding: the exact speed-up of the text tower for many class sentences.

Under CLIP's causal mask a token sees only the tokens before it. The tokens before the first position where
the class sentences differ (SOS, the learnable context, fixed words such as "a photo of a") are therefore the
same in every sequence at every layer: they run once (batch 1; one row per prompt set in grouped mode), and
only each sequence's suffix (class name, ".", EOT) runs per class, its queries attending to the prefix's keys
and values and to its own earlier tokens. Each suffix runs to its own EOT: the suffixes are packed without
padding for the per-token work (LayerNorms, projections, MLP, adapters), padded only inside the attention.
"""
import torch
import torch.nn.functional as F

from mmpt.blocks import (add_adapter, attention_inputs, finish_block, finish_residual, layer_ops, norm_queries_keys,
                         prompt_count, scale_heads)


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
    `adapter` (token-wise, see mmpt.blocks) is added to both outputs."""
    prefix_normed = block.ln_1(prefix)
    q_prefix, k_prefix, v_prefix = attention_inputs(block, prefix_normed)
    new_prefix = finish_block(block, prefix, F.scaled_dot_product_attention(q_prefix, k_prefix, v_prefix,
                                                                            is_causal=True))
    attn = block.attn
    n_sets, _, width = suffixes.shape
    heads = attn.num_heads
    normed = block.ln_1(suffixes)
    qkv = layout.pad(F.linear(normed, attn.in_proj_weight, attn.in_proj_bias))
    q, k, v = qkv.view(n_sets, layout.n_rows, layout.span, 3, heads, width // heads).permute(3, 0, 4, 1, 2, 5)
    q, k = norm_queries_keys(block, q, k)
    out = scale_heads(block, attend_after_prefix(q, k, v, k_prefix, v_prefix)).permute(0, 2, 3, 1, 4)
    new_suffixes = finish_residual(block, suffixes, layout.unpad(out.reshape(n_sets, -1, width)))
    return add_adapter(new_prefix, adapter, prefix_normed), add_adapter(new_suffixes, adapter, normed)


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
