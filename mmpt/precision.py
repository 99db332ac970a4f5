"""The precision policy of prompt training (the PREC option).

Weights, prompts and optimizer state always stay fp32; PREC only picks the autocast dtype of the forward pass:
  "amp"  bf16 autocast on CUDA (fp16 + GradScaler where the GPU has no bf16), fp32 on the CPU;
  "bf16" bf16 autocast;  "fp16" fp16 autocast with a GradScaler;  "fp32" no autocast.
On the CPU every choice runs in fp32 (CPU autocast is slow and not what a user asking for speed wants).
"""
import contextlib

import torch

from dassl.utils import ConfigError

PRECISIONS = ("amp", "fp32", "bf16", "fp16")
DEFAULT_PRECISION = "amp"


def check_precision(prec, key="PREC"):
    if prec not in PRECISIONS:
        raise ConfigError(f"{key}={prec!r} is not a precision; valid values: {', '.join(PRECISIONS)}")
    return prec


class Precision:
    """`Precision(prec, device)`: `autocast()` context for the forward pass, `use_grad_scaler`, `grad_scaler()`."""

    def __init__(self, prec, device, key="PREC"):
        self.prec = check_precision(prec, key)
        self.device = torch.device(device)
        self.dtype = self.resolve_dtype()

    def resolve_dtype(self):
        """Autocast dtype, or None for plain fp32."""
        if self.prec == "fp32":
            return None
        if self.device.type != "cuda":
            print(f"PREC={self.prec!r} on {self.device.type}: running in fp32 (mixed precision is for CUDA)")
            return None
        if self.prec == "fp16" or (self.prec == "amp" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16

    @property
    def use_grad_scaler(self):
        """Only fp16 needs loss scaling (bf16 has fp32's exponent range)."""
        return self.dtype == torch.float16

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self):
        """A GradScaler that is a no-op unless fp16 is in use."""
        return torch.amp.GradScaler(self.device.type, enabled=self.use_grad_scaler)

    def __repr__(self):
        return f"Precision(prec={self.prec!r}, device={self.device}, autocast={self.dtype})"
