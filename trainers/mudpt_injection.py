"""MuDPT's Injection Model: turns the learnable prompts of one depth into cross-modal prompts.

Kept apart from trainers/mudpt.py so it can be read, tested and reused (benchmarks) on its own: it depends on
torch and CLIP's residual block only, not on the trainer machinery.
"""
import torch
from torch import nn
from clip.model import LayerNorm, ResidualAttentionBlock

from dassl.utils import ConfigError
from mmpt.blocks import run_block  # CLIP's residual block, batch-first, through SDPA

INJECTION_FORMS = ("joint", "separate", "linear")


class _SeparateDirection(nn.Module):
    """One direction of the "separate" form: LN -> CLIP residual block -> LN -> Linear(source -> target)."""

    def __init__(self, d_source, d_target):
        super().__init__()
        self.ln_in = LayerNorm(d_source)
        # CLIP's own convention: 64-dimensional heads (at least one head for the tiny test backbones).
        self.block = ResidualAttentionBlock(d_source, max(1, d_source // 64))
        self.ln_out = LayerNorm(d_source)
        self.proj = nn.Linear(d_source, d_target)

    def forward(self, prompts):  # [J, n, d_source] -> [J, n, d_target]
        return self.proj(self.ln_out(run_block(self.block, self.ln_in(prompts))))


class InjectionModel(nn.Module):
    """Cross-modal prompt generator of MuDPT, shared by all depths and independent of the input image.

    Input: text prompts T [J, n, d_t] and visual prompts V [J, n, d_v] of all depths l = 0..J-1.
    Output: (T', V') with T' [J, n, d_v] (text -> vision) and V' [J, n, d_t] (vision -> text). The caller fuses
    by element-wise addition: text layer l receives T_l + V'_l, vision layer l receives V_l + T'_l.
    Depth is the batch axis everywhere: depth l's outputs depend on (T_l, V_l) only.

    form="joint" (paper's text: one modality-agnostic block with cross-modality attention), width W, h heads:
        X_l = [T_l A_t + a_t ; V_l A_v + a_v]                        (2n x W; A_t: d_t x W, A_v: d_v x W)
        Y_l = X_l + MHA(LN_1(X_l));  Z_l = Y_l + MLP(LN_2(Y_l))      (pre-LN block, MLP W -> 4W -> W, QuickGELU)
        T'_l = Z_l[:n] B_v + b_v   (W -> d_v),   V'_l = Z_l[n:] B_t + b_t   (W -> d_t)
        parameters: (d_t + 1) W + (d_v + 1) W + (12 W^2 + 13 W) + (W + 1) d_v + (W + 1) d_t
    form="separate" (the paper's Fig. 4 as the official code's last variant writes it), per direction s -> t:
        F_st(P) = Linear_st(LN_out(Block_s(LN_in(P))))                (Block_s: CLIP residual block of width d_s,
        T'_l = F_tv(T_l),  V'_l = F_vt(V_l)                            d_s / 64 heads, MLP 4x; attention over the n
        parameters per direction: 12 d_s^2 + 17 d_s + (d_s + 1) d_t    tokens of one depth)
    form="linear" (the official repository's runnable MuDPT trainer):
        T'_l = T_l W_tv + c_tv for l >= 1 (one Linear shared by the deep depths),
        T'_0 = T_0 W_tv0 + c_tv0 when `own_shallow_t2v` (else the shared Linear), V'_l = V_l W_vt + c_vt.
        parameters: (d_t + 1) d_v [+ (d_t + 1) d_v] + (d_v + 1) d_t
    """

    def __init__(self, form, d_text, d_vision, width=512, heads=8, own_shallow_t2v=False):
        super().__init__()
        if form not in INJECTION_FORMS:
            raise ConfigError(f"INJECTION={form!r}: expected one of {INJECTION_FORMS}")
        if own_shallow_t2v and form != "linear":
            raise ValueError(f"own_shallow_t2v applies to the 'linear' injection only, not {form!r}")
        self.form = form
        self.d_text, self.d_vision = d_text, d_vision
        if form == "joint":
            if width <= 0 or heads <= 0 or width % heads:
                raise ConfigError(f"INJECTION_WIDTH={width} must be a positive multiple of "
                                 f"INJECTION_HEADS={heads}")
            self.lift_text = nn.Linear(d_text, width)
            self.lift_vision = nn.Linear(d_vision, width)
            self.block = ResidualAttentionBlock(width, heads)
            self.text_to_vision = nn.Linear(width, d_vision)
            self.vision_to_text = nn.Linear(width, d_text)
        elif form == "separate":
            self.text_to_vision = _SeparateDirection(d_text, d_vision)
            self.vision_to_text = _SeparateDirection(d_vision, d_text)
        else:
            self.text_to_vision = nn.Linear(d_text, d_vision)
            self.shallow_text_to_vision = nn.Linear(d_text, d_vision) if own_shallow_t2v else None
            self.vision_to_text = nn.Linear(d_vision, d_text)

    def forward(self, text_prompts, visual_prompts):
        """text_prompts [J, n, d_t], visual_prompts [J, n, d_v] -> (T' [J, n, d_v], V' [J, n, d_t])."""
        if text_prompts.dim() != 3 or text_prompts.shape[:2] != visual_prompts.shape[:2]:
            raise ValueError(f"InjectionModel needs T [J, n, d_t] and V [J, n, d_v] of equal J and n, got "
                             f"{tuple(text_prompts.shape)} and {tuple(visual_prompts.shape)}")
        if self.form == "joint":
            n = text_prompts.shape[1]
            tokens = torch.cat([self.lift_text(text_prompts), self.lift_vision(visual_prompts)], dim=1)
            tokens = run_block(self.block, tokens)  # self-attention over the 2n tokens of each depth
            return self.text_to_vision(tokens[:, :n]), self.vision_to_text(tokens[:, n:])
        text_to_vision = self.text_to_vision(text_prompts)
        if self.form == "linear" and self.shallow_text_to_vision is not None:
            text_to_vision = torch.cat([self.shallow_text_to_vision(text_prompts[:1]), text_to_vision[1:]])
        return text_to_vision, self.vision_to_text(visual_prompts)
