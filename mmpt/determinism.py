"""Deterministic mode (`train.py --deterministic` or the config key `DETERMINISTIC True`).

A seeded run is repeatable on one machine up to the kernels that are not deterministic: cuDNN's autotuner
(cudnn.benchmark) picks algorithms by timing, and some CUDA kernels (atomic adds in backward passes, cuBLAS'
split-K reductions) sum in a varying order. Deterministic mode turns these off:

- torch.use_deterministic_algorithms(True): an op without a deterministic implementation stops the run with
  PyTorch's error naming it (rather than silently giving another result);
- torch.backends.cudnn.deterministic = True, torch.backends.cudnn.benchmark = False;
- CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS needs it for repeatable reductions; an existing value is kept).

Cost (benchmarks/deterministic.py; figures in docs/EXPERIMENTS.md): on the CPU none beyond noise, with identical
results. On CUDA it was not measured in this repository; expect slower convolutions (no autotuning) and backward
passes, and a few MB of cuBLAS workspace. It does not make runs agree across machines, GPUs or torch versions. The result record's
env.deterministic says whether it was on; the key is part of a run's identity (a run folder of one mode is
not resumed in the other).

The previous settings come back when the run ends (in-process callers run several runs).
"""
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def set_backend_flags(cfg):
    """Set the backends' flags for the run of `cfg` (deterministic mode, or cuDNN autotuning on CUDA as before);
    returns a function that restores the previous ones."""
    cudnn = torch.backends.cudnn
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                cudnn.benchmark, cudnn.deterministic, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    if cfg.DETERMINISTIC:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(True)
        cudnn.deterministic, cudnn.benchmark = True, False
        print("Deterministic mode: torch.use_deterministic_algorithms(True), cudnn.deterministic, no cudnn "
              f"autotuning, CUBLAS_WORKSPACE_CONFIG={os.environ['CUBLAS_WORKSPACE_CONFIG']}")
    elif torch.cuda.is_available() and cfg.USE_CUDA:
        cudnn.benchmark = True

    def restore():
        enabled, warn_only, benchmark, deterministic, workspace = previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        cudnn.benchmark, cudnn.deterministic = benchmark, deterministic
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace

    return restore
