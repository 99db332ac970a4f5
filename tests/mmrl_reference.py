"""MMRL restated from its specification (the official code's formulas), independently of trainers/mmrl.py and of
the project's encoders: clip's own modules (ResidualAttentionBlock's ln_1 / nn.MultiheadAttention / ln_2 / mlp,
sequence-first), the official token layout (representation tokens right after CLS / SOT, the text tower on all
77 tokens with an (77 + K) causal mask from the first representation layer on), plain-tensor parameters.

    params = {"R": [K, d_r], "v_weight": [[d_v, d_r]] * L_r, "v_bias": [[d_v]] * L_r,
              "t_weight": [[d_t, d_r]] * L_r, "t_bias": [[d_t]] * L_r, "proj_rep": [d_v, E]}
    rep_layers: the 1-based blocks that receive representation tokens (the official REP_LAYERS)
"""
import clip
import torch


def block_forward(block, x, mask=None):
    """clip's ResidualAttentionBlock on sequence-first x [L, N, d] with an explicit additive mask."""
    y = block.ln_1(x)
    x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
    return x + block.mlp(block.ln_2(x))


def causal_mask(length):
    return torch.full((length, length), float("-inf")).triu_(1)


def rep_tokens(params):
    """Per representation layer: (vision tokens [K, d_v], text tokens [K, d_t]) = R W^T + b."""
    R = params["R"]
    return [(R @ wv.t() + bv, R @ wt.t() + bt)
            for wv, bv, wt, bt in zip(params["v_weight"], params["v_bias"], params["t_weight"], params["t_bias"])]


def insert_after_first(x, tokens, replace):
    """x [L, N, d]: put tokens [K, d] at positions 1..K, replacing the K there when `replace`."""
    tokens = tokens.unsqueeze(1).expand(-1, x.shape[1], -1)
    rest = x[1 + tokens.shape[0]:] if replace else x[1:]
    return torch.cat([x[:1], tokens, rest], dim=0)


def image_towers(clip_model, images, params, rep_layers):
    """(f_c [B, E], f_r [B, E]) unnormalised: CLS through `proj`, mean of ln_post(rep tokens) through proj_rep."""
    visual = clip_model.visual
    tokens = rep_tokens(params)
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding).permute(1, 0, 2)
    K = params["R"].shape[0]
    for number, block in enumerate(visual.transformer.resblocks, start=1):
        if number in rep_layers:
            index = rep_layers.index(number)
            x = insert_after_first(x, tokens[index][0], replace=index > 0)
        x = block_forward(block, x)
    x = x.permute(1, 0, 2)
    f_c = visual.ln_post(x[:, 0]) @ visual.proj
    f_r = visual.ln_post(x[:, 1:1 + K]).mean(dim=1) @ params["proj_rep"]
    return f_c, f_r


def text_tower(clip_model, token_ids, params, rep_layers):
    """[C, E] unnormalised: the template sentences with the text representation tokens after SOT."""
    tokens = rep_tokens(params)
    K = params["R"].shape[0]
    x = (clip_model.token_embedding(token_ids) + clip_model.positional_embedding).permute(1, 0, 2)
    for number, block in enumerate(clip_model.transformer.resblocks, start=1):
        if number in rep_layers:
            index = rep_layers.index(number)
            x = insert_after_first(x, tokens[index][1], replace=index > 0)
        x = block_forward(block, x, causal_mask(x.shape[0]))
    x = clip_model.ln_final(x.permute(1, 0, 2))
    eot = token_ids.argmax(dim=-1)
    return x[torch.arange(x.shape[0]), eot + K] @ clip_model.text_projection


def template_token_ids(template, classnames):
    return clip.tokenize([template.format(name.replace("_", " ")) for name in classnames])


def forward(clip_model, images, token_ids, params, rep_layers, alpha=0.7, scale=100.0):
    """{"class", "rep", "fusion"} logits and the features the loss needs (official CustomCLIP.forward)."""
    f_c, f_r = image_towers(clip_model, images, params, rep_layers)
    t = text_tower(clip_model, token_ids, params, rep_layers)
    f_c, f_r, t = (v / v.norm(dim=-1, keepdim=True) for v in (f_c, f_r, t))
    s_c, s_r = scale * f_c @ t.t(), scale * f_r @ t.t()
    return {"class": s_c, "rep": s_r, "fusion": alpha * s_c + (1 - alpha) * s_r, "f_c": f_c, "t": t}


@torch.no_grad()
def frozen_references(clip_model, images, token_ids):
    """(z_i, z_t): CLIP's own encode_image of the batch and encode_text of the template sentences."""
    return clip_model.encode_image(images), clip_model.encode_text(token_ids)


def cosine(a, b, eps=1e-8):
    """F.cosine_similarity(a, b, dim=1) written out: <a, b> / max(|a| |b|, eps)."""
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)


def cross_entropy(logits, labels):
    return -(logits[torch.arange(len(labels)), labels] - logits.logsumexp(dim=1)).mean()


def loss_terms(out, labels, z_i, z_t, alpha=0.7, reg_weight=1.0):
    """The official MMRL_Loss, term by term (their sum is the training loss)."""
    return {"ce_class": alpha * cross_entropy(out["class"], labels),
            "ce_rep": (1 - alpha) * cross_entropy(out["rep"], labels),
            "image_reg": reg_weight * (1 - cosine(out["f_c"], z_i).mean()),
            "text_reg": reg_weight * (1 - cosine(out["t"], z_t).mean())}
