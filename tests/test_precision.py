"""The PREC policy: which autocast dtype, whether a GradScaler, CPU fallback and one-line errors."""
import pytest
import torch

from mmpt.precision import PRECISIONS, Precision
from dassl.utils import ConfigError


@pytest.mark.parametrize("prec", ["amp", "bf16", "fp16"])
def test_cpu_runs_fp32_with_a_notice(prec, capsys):
    policy = Precision(prec, "cpu")
    assert f"PREC='{prec}' on cpu: running in fp32" in capsys.readouterr().out
    assert policy.dtype is None and not policy.use_grad_scaler and not policy.grad_scaler().is_enabled()
    with policy.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_fp32_is_silent(capsys):
    assert Precision("fp32", "cpu").dtype is None and capsys.readouterr().out == ""


@pytest.mark.parametrize("prec, bf16_ok, dtype, scaler", [
    ("amp", True, torch.bfloat16, False), ("amp", False, torch.float16, True),
    ("bf16", True, torch.bfloat16, False), ("fp16", True, torch.float16, True), ("fp32", True, None, False),
])
def test_cuda_choices(monkeypatch, prec, bf16_ok, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    policy = Precision(prec, "cuda")
    assert policy.dtype == dtype and policy.use_grad_scaler == scaler


def test_unknown_precision_is_one_line():
    with pytest.raises(ConfigError) as err:
        Precision("half", "cpu", key="TRAINER.COOP.PREC")
    message = str(err.value)
    assert "\n" not in message and "TRAINER.COOP.PREC='half'" in message and all(p in message for p in PRECISIONS)


# ---------------------------------------------------------------- the methods' training step under the CUDA policy
# TCP (its class prompts at a middle layer, t0 in fp32), MMA (adapter branches, gradient scaling), MMRL (read-out
# head, frozen image features under the step's autocast); the other methods: tests/test_levers.py, test_device.py
POLICY_METHODS = {
    "TCP": dict(INJECT_LAYER=2, SENTENCE="{}, a type of pet.", TEMPLATE="a photo of a {}, a type of pet."),
    "MMA": dict(ADAPTER_START=2, ADAPTER_END=3, ADAPTER_DIM=8),
    "MMRL": dict(N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=[2, 3], TEMPLATE="a photo of a {}."),
}


@pytest.mark.parametrize("prec", ["amp", "fp16"])
@pytest.mark.parametrize("method", list(POLICY_METHODS))
def test_method_steps_under_the_cuda_policy_dtype(monkeypatch, method, prec):
    """The autocast dtype PREC resolves to on CUDA, run here with CPU autocast, through the method's declared step
    (training_outputs, every loss term): logits and loss fp32, every term finite and near its fp32 value, the
    gradients finite and near the fp32 ones, the parameters fp32."""
    import mmpt
    import trainers  # noqa: F401  (declares the methods)
    from mmpt.methods import get_method
    from tests.e2e import small_clip_model

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    dtype = Precision(prec, "cuda").dtype
    trainer = get_method(method)
    config = trainer.make_config(PREC="fp32", **POLICY_METHODS[method])
    torch.manual_seed(1)
    model = mmpt.create_model(method, small_clip_model(), ["dog", "sea lion", "cat", "tabby cat"], PREC="fp32",
                              **POLICY_METHODS[method])
    with torch.no_grad():
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    generator = torch.Generator().manual_seed(2)
    images, labels = torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 3, 1])

    def step(autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            outputs = trainer.training_outputs(model, images, labels)
        loss, summary = trainer.training_loss(model, config, outputs)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.prompt_learner.parameters() if p.grad is not None])
        return outputs.logits, loss, summary, grads

    exact_logits, exact_loss, exact_summary, exact_grads = step(False)
    logits, loss, summary, grads = step(True)
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert (logits - exact_logits).abs().max() < 0.05 * exact_logits.abs().max()
    for term, value in exact_summary.items():  # the loss and each term ("acc" may flip on close random logits)
        if term == "acc":
            continue
        assert summary[term] == pytest.approx(value, rel=0.05, abs=0.02), term
    assert torch.isfinite(grads).all() and grads.shape == exact_grads.shape
    assert (grads - exact_grads).norm() < 0.1 * exact_grads.norm()
    assert all(p.dtype == torch.float32 for p in model.prompt_learner.parameters())
