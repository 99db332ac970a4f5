"""Prompt-tuning methods, one module per method (CoOp layout).

Importing this package imports every module in it, which registers each method's trainer in dassl's
TRAINER_REGISTRY, and then the modules named in the environment variable MMPT_TRAINER_MODULES
(comma-separated importable names: methods kept outside the repository). `extend_cfg(cfg)` adds every
declared method's cfg.TRAINER.<NODE>. No list of methods is kept by hand anywhere.
"""
import importlib
import os
import pkgutil

from dassl.utils import ConfigError
from mmpt.methods import add_method_nodes

EXTRA_MODULES_ENV = "MMPT_TRAINER_MODULES"


def _import_methods():
    for module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")
    for name in filter(None, (part.strip() for part in os.environ.get(EXTRA_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is None or not name.startswith(error.name):
                raise  # the module exists but one of its own imports failed: keep the traceback
            raise ConfigError(f"{EXTRA_MODULES_ENV}: cannot import '{name}' (is its folder on PYTHONPATH?)") from None


_import_methods()


def extend_cfg(cfg):
    """Add every declared method's TRAINER.<NODE> (and nothing else) to `cfg`."""
    add_method_nodes(cfg)
