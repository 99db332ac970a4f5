"""MuDPT's InjectionModel on its own: shapes, per-depth independence, equations, parameter formulas."""
import pytest
import torch
import torch.nn.functional as F
from dassl.utils import ConfigError

from trainers.mudpt_injection import InjectionModel

D_T, D_V, J, N = 32, 48, 3, 2  # small widths with d_t != d_v, so a swapped projection cannot pass


def _prompts(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(J, N, D_T, generator=g), torch.randn(J, N, D_V, generator=g)


def _model(form, **kw):
    torch.manual_seed(0)
    kw.setdefault("width", 16)
    kw.setdefault("heads", 2)
    return InjectionModel(form, D_T, D_V, **kw).eval()


def _n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("form", ["joint", "separate", "linear"])
def test_shapes_and_depth_is_a_batch_axis(form):
    model = _model(form, own_shallow_t2v=(form == "linear"))
    text, vision = _prompts()
    t2v, v2t = model(text, vision)
    assert t2v.shape == (J, N, D_V) and v2t.shape == (J, N, D_T)
    # Perturb depth 1 of both modalities: only depth 1 of the outputs may move.
    text2, vision2 = text.clone(), vision.clone()
    text2[1] += torch.randn(N, D_T)  # random, not constant: a LayerNorm would cancel a constant shift
    vision2[1] += torch.randn(N, D_V)
    t2v2, v2t2 = model(text2, vision2)
    for depth in (0, 2):
        torch.testing.assert_close(t2v2[depth], t2v[depth], rtol=0, atol=0)
        torch.testing.assert_close(v2t2[depth], v2t[depth], rtol=0, atol=0)
    assert not torch.allclose(t2v2[1], t2v[1]) and not torch.allclose(v2t2[1], v2t[1])


@pytest.mark.parametrize("form, crosses", [("joint", True), ("separate", False), ("linear", False)])
def test_cross_modality_mixing_only_in_joint_form(form, crosses):
    """In "joint", T'_l reads V_l too (attention over both modalities); the other forms map one modality each."""
    model = _model(form)
    text, vision = _prompts()
    t2v, v2t = model(text, vision)
    t2v_b, _ = model(text, vision + torch.randn(J, N, D_V))
    _, v2t_b = model(text + torch.randn(J, N, D_T), vision)
    assert (not torch.allclose(t2v_b, t2v)) == crosses
    assert (not torch.allclose(v2t_b, v2t)) == crosses


def test_joint_matches_written_out_equations():
    model = _model("joint")
    text, vision = _prompts()
    t2v, v2t = model(text, vision)
    blk = model.block
    x = torch.cat([F.linear(text, model.lift_text.weight, model.lift_text.bias),
                   F.linear(vision, model.lift_vision.weight, model.lift_vision.bias)], dim=1)  # [J, 2n, W]
    width, heads = x.shape[-1], 2

    def mha(h):
        q, k, v = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias).chunk(3, dim=-1)
        split = lambda t: t.reshape(J, 2 * N, heads, width // heads).transpose(1, 2)
        att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / (width // heads) ** 0.5, dim=-1)
        out = (att @ split(v)).transpose(1, 2).reshape(J, 2 * N, width)
        return F.linear(out, blk.attn.out_proj.weight, blk.attn.out_proj.bias)

    ln = lambda h, m: F.layer_norm(h, (width,), m.weight, m.bias, m.eps)
    y = x + mha(ln(x, blk.ln_1))
    hidden = F.linear(ln(y, blk.ln_2), blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)
    z = y + F.linear(hidden * torch.sigmoid(1.702 * hidden), blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)
    torch.testing.assert_close(t2v, F.linear(z[:, :N], model.text_to_vision.weight, model.text_to_vision.bias))
    torch.testing.assert_close(v2t, F.linear(z[:, N:], model.vision_to_text.weight, model.vision_to_text.bias))


def test_linear_uses_its_own_shallow_t2v_only_when_asked():
    text, vision = _prompts()
    for own in (False, True):
        model = _model("linear", own_shallow_t2v=own)
        t2v, v2t = model(text, vision)
        shallow = model.shallow_text_to_vision if own else model.text_to_vision
        torch.testing.assert_close(t2v[0], F.linear(text[0], shallow.weight, shallow.bias))
        torch.testing.assert_close(t2v[1:], F.linear(text[1:], model.text_to_vision.weight,
                                                     model.text_to_vision.bias))
        torch.testing.assert_close(v2t, F.linear(vision, model.vision_to_text.weight, model.vision_to_text.bias))
        assert (model.shallow_text_to_vision is not None) == own


def _block(d):  # CLIP residual block / pre-LN transformer block: attention 4d^2+4d, MLP 8d^2+5d, two LNs 4d
    return 12 * d * d + 13 * d


def _linear(d_in, d_out):
    return (d_in + 1) * d_out


def test_parameter_formulas_at_vit_b16_widths():
    d_t, d_v, w = 512, 768, 512
    joint = InjectionModel("joint", d_t, d_v, width=w, heads=8)
    assert _n_params(joint) == _linear(d_t, w) + _linear(d_v, w) + _block(w) + _linear(w, d_v) + _linear(w, d_t)
    separate = InjectionModel("separate", d_t, d_v)
    per_direction = lambda s, t: 2 * s + _block(s) + 2 * s + _linear(s, t)
    assert _n_params(separate) == per_direction(d_t, d_v) + per_direction(d_v, d_t) == 11_033_088
    assert separate.text_to_vision.block.attn.num_heads == 8 and separate.vision_to_text.block.attn.num_heads == 12
    linear = InjectionModel("linear", d_t, d_v, own_shallow_t2v=True)
    assert _n_params(linear) == 2 * _linear(d_t, d_v) + _linear(d_v, d_t) == 1_181_696


def test_bad_arguments_give_one_line_errors():
    with pytest.raises(ConfigError, match="INJECTION='attention'"):
        InjectionModel("attention", D_T, D_V)
    with pytest.raises(ConfigError, match="INJECTION_WIDTH=30 .* INJECTION_HEADS=8"):
        InjectionModel("joint", D_T, D_V, width=30, heads=8)
    with pytest.raises(ValueError, match="own_shallow_t2v"):
        InjectionModel("joint", D_T, D_V, own_shallow_t2v=True)
    with pytest.raises(ValueError, match="equal J and n"):
        _model("linear")(torch.zeros(J, N, D_T), torch.zeros(J, N + 1, D_V))
