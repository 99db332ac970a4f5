"""Block mechanics shared by both prompted towers: one CLIP residual block batch-first through SDPA, the per-layer
prompt splicing, and a tower's loop over its blocks (docs/ARCHITECTURE.md, "The encoders").

Neither family's code is forked: a block runs its own weights (ln_1, attn.in_proj / out_proj, ln_2, mlp; open_clip's
optional ls_1 / ls_2 layer scales, and its custom block's ln_q / ln_k, head_scale, ln_inner and ln_attn, each
applied where open_clip's forward applies it; an OpenAI block has none of them, see mmpt.towers). A block may carry a residual adapter (MMA): `adapter(ln_1(x_in))` is added to the block's output; it is
token-wise, so every encoder path (shared prefix, truncation, chunks) stays exact with it.
"""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from mmpt.towers import optional


def run_block(block, x, causal=False, adapter=None):
    """One `clip.model.ResidualAttentionBlock` on batch-first x [N, L, d], attention through SDPA; `adapter`
    (None or f(ln_1(x)) -> [N, L, d]) is added to the block's output."""
    normed = block.ln_1(x)
    q, k, v = attention_inputs(block, normed)
    out = finish_block(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    return add_adapter(out, adapter, normed)


def add_adapter(out, adapter, normed):
    return out if adapter is None else out + adapter(normed).to(out.dtype)


def attention_inputs(block, normed):
    """The block's queries, keys and values of ln_1(x) [N, L, d], each [N, heads, L, d / heads]."""
    attn = block.attn
    n_seq, length, width = normed.shape
    heads = attn.num_heads
    q, k, v = F.linear(normed, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(n_seq, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    return norm_queries_keys(block, q, k) + (v,)


def norm_queries_keys(block, q, k):
    """open_clip's QK norm (per head, over the head width); (q, k) as they are for other blocks."""
    return optional(getattr(block.attn, "ln_q", None), q), optional(getattr(block.attn, "ln_k", None), k)


def scale_heads(block, attention):
    """attention [N, heads, ...] times open_clip's per-head scale, where the block has one."""
    head_scale = getattr(block.attn, "head_scale", None)
    return attention if head_scale is None else attention * head_scale.reshape(-1, *[1] * (attention.dim() - 2))


def finish_block(block, x, attention):
    """The rest of the block after attention [N, heads, L, d / heads]: out_proj, residual, MLP."""
    n_seq, heads, length, head_width = attention.shape
    merged = scale_heads(block, attention).transpose(1, 2).reshape(n_seq, length, heads * head_width)
    return finish_residual(block, x, merged)


def finish_residual(block, x, merged):
    """x + the attention branch (merged heads [.., d] -> out_proj, with open_clip's optional norms and layer
    scale) + the MLP branch."""
    attn = block.attn
    branch = attn.out_proj(optional(getattr(attn, "ln_inner", None), merged))
    x = x + optional(getattr(block, "ls_1", None), optional(getattr(block, "ln_attn", None), branch))
    return x + optional(getattr(block, "ls_2", None), block.mlp(block.ln_2(x)))


def at_layer(schedule_list, layer):
    """schedule_list[layer], None where the list is None or shorter."""
    return schedule_list[layer] if schedule_list is not None and layer < len(schedule_list) else None


def layer_ops(prompts, remove, layer):
    """(tokens to append [n, d] / [N, n, d] or None, tokens to remove: int or None = "all if appending")."""
    return at_layer(prompts, layer), at_layer(remove, layer)


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


def check_schedule_length(schedule, n_layers, tower):
    for name in ("prompts", "remove", "adapters"):
        entries = getattr(schedule, name)
        if entries is not None and len(entries) > n_layers:
            raise ValueError(f"{tower} {name}: {len(entries)} layers given, the tower has {n_layers}")


def run_tower(blocks, x, schedule, region_start, k, causal, use_checkpoint, first_layer=0, end_layer=None):
    """Blocks first_layer..end_layer-1 (default: all) with the schedule's per-layer remove / append ops (layer 0's
    prompts are already in x) and adapters; x enters block first_layer. `region_start(x, k)` gives where the
    k-token prompt region begins. Returns (output, region size)."""
    for layer, block in enumerate(blocks):
        if layer < first_layer or (end_layer is not None and layer >= end_layer):
            continue
        if layer >= 1:
            added, removed = layer_ops(schedule.prompts, schedule.remove, layer)
            if added is not None or removed:
                x, k = splice_region(x, region_start(x, k), k, added, removed)
        adapter = at_layer(schedule.adapters, layer)
        if use_checkpoint and torch.is_grad_enabled():
            x = activation_checkpoint(run_block, block, x, causal, adapter, use_reentrant=False)
        else:
            x = run_block(block, x, causal, adapter)
    return x, k
