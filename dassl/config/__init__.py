from .defaults import _C as cfg_default
from dassl.utils.registry import ConfigError

from .node import CfgNode, ConfigKeyError


def get_cfg_default():
    """A fresh copy of the default config (every key of docs/ENGINE.md)."""
    return cfg_default.clone()


def clean_cfg(cfg, trainer):
    """Remove the TRAINER.<X> nodes of other trainers (upstream helper; kept for API compatibility)."""
    keys = list(cfg.TRAINER.keys())
    for key in keys:
        if key == "NAME" or key == trainer.upper():
            continue
        cfg.TRAINER.pop(key, None)
