"""The GPU paths on the device named by MMPT_TEST_DEVICE (benchmarks/cuda_check.sh sets it to cuda): bf16 / fp16
autocast with fp32 residual streams and logits, the SDPA kernels against CLIP's own blocks, the shared prefix
against the plain pass under autocast, and training end to end with PREC amp and fp16 (GradScaler).
Skipped when MMPT_TEST_DEVICE is unset; MMPT_TEST_DEVICE=cpu runs the same checks with CPU autocast."""
import clip
import pytest

import mmpt
import torch
import torch.nn.functional as F

from benchmarks.models import config_path
from benchmarks.reference import ReferenceImageEncoder, ReferenceTextEncoder
from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TextOptions, TowerSchedule
from tests.e2e import device_under_test, run_train, small_clip_model, trainer_node
from trainers import cocoop, maple, mpl

DEVICE = device_under_test()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="set MMPT_TEST_DEVICE (e.g. cuda) to run the device paths")

CLASSNAMES = ["dog", "great white shark", "great grey owl", "yellow lady's slipper", "cat"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model(layers=3).to(DEVICE)


def autocast(dtype):
    return torch.autocast(DEVICE.type, dtype=dtype)


def models(clip_model):
    torch.manual_seed(1)
    built = {
        "MaPLe": maple.MaPLeCLIP(clip_model, CLASSNAMES, trainer_node(maple, "MAPLE", PROMPT_DEPTH=3)),
        "CoCoOp": cocoop.CoCoOpCLIP(clip_model, CLASSNAMES, trainer_node(cocoop, "COCOOP", CTX_INIT="a photo of a")),
        "MPL text schedule": mpl.MPLCLIP(clip_model, CLASSNAMES, trainer_node(
            mpl, "MPL", N_CTX=2, PROMPT_DEPTH=3, TEXT_N_ADD_OP=[2, 2], TEXT_N_RM_OP=[1, 3])),
        # class prompts at a middle layer; representation tokens from block 2 (the frozen-block cache) and the
        # read-out head. (MMA under autocast: tests/test_mma.py, test_precision.py and the end-to-end run below)
        "TCP": mmpt.create_model("TCP", clip_model, CLASSNAMES, INJECT_LAYER=2, PREC="fp32"),
        "MMRL": mmpt.create_model("MMRL", clip_model, CLASSNAMES, N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=[2, 3],
                                  TEMPLATE="a photo of a {}.", PREC="fp32"),
    }
    for model in built.values():
        with torch.no_grad():
            for param in model.prompt_learner.parameters():
                param.add_(torch.randn_like(param) * 0.05)
    return {name: model.to(DEVICE).eval() for name, model in built.items()}


def images(n=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(DEVICE)


def logits_and_gradients(model, share_prefix, dtype=None):
    model.set_text_options(share_prefix=share_prefix)
    model.zero_grad(set_to_none=True)
    with autocast(dtype) if dtype else torch.autocast(DEVICE.type, enabled=False):
        logits = model(images())
    F.cross_entropy(logits.float(), torch.tensor([0, 3], device=DEVICE)).backward()
    # (MMRL's read-out projection gets no gradient from the "itm" logits)
    return logits.detach().float(), {n: p.grad.float() for n, p in model.prompt_learner.named_parameters()
                                     if p.grad is not None}


@pytest.mark.parametrize("precision", [None, "bf16", "fp16"])
def test_shared_prefix_equals_plain_pass(small_clip, precision):
    """fp32: equal within float tolerance. bf16 / fp16: both passes round, in a different order, so each is
    compared with fp32: the shared prefix may be no further from it than the plain pass (plus a little)."""
    dtype = DTYPES.get(precision)

    def relative_error(got, expected):
        return float((got - expected).norm() / expected.norm().clamp_min(1e-12))

    for name, model in models(small_clip).items():
        exact, exact_grads = logits_and_gradients(model, False)
        plain, plain_grads = logits_and_gradients(model, False, dtype)
        shared, shared_grads = logits_and_gradients(model, True, dtype)
        slack = 1e-5 if dtype is None else 0.01
        assert relative_error(shared, exact) <= 1.5 * relative_error(plain, exact) + slack, name
        for key, expected in exact_grads.items():
            assert torch.isfinite(shared_grads[key]).all(), (name, key)
            assert (relative_error(shared_grads[key], expected)
                    <= 1.5 * relative_error(plain_grads[key], expected) + 10 * slack), (name, key)


def test_sdpa_towers_equal_clip_blocks(small_clip):
    """fp32 on the device: our batch-first SDPA towers == CLIP's own nn.MultiheadAttention blocks (77 tokens)."""
    width = small_clip.ln_final.weight.shape[0]
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES]).to(DEVICE)
    generator = torch.Generator().manual_seed(2)
    text_prompts = [(torch.randn(2, width, generator=generator) * 0.1).to(DEVICE) for _ in range(3)]
    vision_prompts = [(torch.randn(2, 96, generator=generator) * 0.1).to(DEVICE) for _ in range(3)]
    with torch.no_grad():
        for share_prefix in (False, True):
            ours = PromptedTextEncoder(small_clip, TextOptions(share_prefix=share_prefix))(ids, TowerSchedule(text_prompts))
            torch.testing.assert_close(ours, ReferenceTextEncoder(small_clip)(ids, TowerSchedule(text_prompts)),
                                       rtol=1e-4, atol=1e-4)
        ours = PromptedImageEncoder(small_clip)(images(3), TowerSchedule(vision_prompts))
        torch.testing.assert_close(ours, ReferenceImageEncoder(small_clip)(images(3), TowerSchedule(vision_prompts)),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_keeps_residual_streams_and_logits_fp32(small_clip, precision):
    model = models(small_clip)["MaPLe"]
    stream_dtypes = []
    blocks = [*small_clip.transformer.resblocks, *small_clip.visual.transformer.resblocks]
    hooks = [b.ln_1.register_forward_pre_hook(lambda module, args: stream_dtypes.append(args[0].dtype))
             for b in blocks]
    try:
        with autocast(DTYPES[precision]):
            logits = model(images())
    finally:
        for hook in hooks:
            hook.remove()
    reference = model(images())
    assert logits.dtype == torch.float32 and set(stream_dtypes) == {torch.float32}
    assert torch.allclose(logits, reference, atol=0.05 * reference.abs().max().item() + 0.05)


@pytest.mark.parametrize("prec", ["amp", "fp16"])
@pytest.mark.parametrize("trainer, config", [("CoOp", "vit_b16_ep50.yaml"), ("MaPLe", "vit_b16_c2_ep5_batch4_2ctx.yaml"),
                                             ("MMA", "vit_b16_ep5.yaml"), ("TCP", "vit_b16_c4_ep50_batch32.yaml"),
                                             ("MMRL", "vit_b16.yaml")])
def test_training_end_to_end_on_the_device(tmp_path, trainer, config, prec):
    node = {"CoOp": "COOP", "MaPLe": "MAPLE", "MMA": "MMA", "TCP": "TCP", "MMRL": "MMRL"}[trainer]
    opts = ["USE_CUDA", str(DEVICE.type == "cuda"), f"TRAINER.{node}.PREC", prec]
    if trainer == "MaPLe":
        opts += ["TRAINER.MAPLE.PROMPT_DEPTH", "2"]  # the tiny backbone has 2 layers
    if trainer == "MMA":  # adapters on both blocks of the tiny backbone; gradient scaling under the GradScaler
        opts += ["TRAINER.MMA.ADAPTER_START", "1", "TRAINER.MMA.ADAPTER_END", "2"]
    if trainer == "TCP":  # class prompts before the second block
        opts += ["TRAINER.TCP.INJECT_LAYER", "1"]
    if trainer == "MMRL":  # representation tokens in block 2; its four loss terms
        opts += ["TRAINER.MMRL.REP_LAYERS", "[2]", "TRAINER.MMRL.REP_DIM", "16", "OPTIM.WARMUP_EPOCH", "0"]
    _, log, trained = run_train(tmp_path, trainer, config_path(trainer, config), opts=opts, return_trainer=True)
    assert trained.device.type == DEVICE.type
    assert "Finish training" in log and "* accuracy:" in log
    assert "loss nan" not in log.lower() and "loss inf" not in log.lower()
