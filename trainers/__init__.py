"""Prompt-tuning trainers, one module per method (CoOp layout).

Importing this package registers every trainer in dassl's TRAINER_REGISTRY. Each module also defines
`extend_cfg(cfg)`, which adds its own `cfg.TRAINER.<NAME>` node; `extend_cfg` below calls them all.
"""
import importlib

TRAINER_MODULES = [
    # one line per trainer module, e.g. "coop"
    "zsclip",
    "coop",
    "cocoop",
    "vpt",
    "ivlp",
    "maple",
    "mudpt",
    "mpl",
    "promptsrc",
]

_modules = [importlib.import_module(f"{__name__}.{name}") for name in TRAINER_MODULES]


def extend_cfg(cfg):
    """Add every trainer's TRAINER.<NAME> node (and nothing else) to `cfg`."""
    for module in _modules:
        module.extend_cfg(cfg)
