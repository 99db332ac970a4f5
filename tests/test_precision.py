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
