"""The declared methods and `create_model`.

A method is a registered `PromptTrainer` subclass that declares itself in class attributes (docs/ARCHITECTURE.md).
Everything that lists methods reads them here: the config nodes (`add_method_nodes`), the experiment layout
(scripts folders, default configs), the benchmarks and the tests. mmpt never imports the method modules
itself: importing the `trainers` package (or any module defining a method) registers them.
"""
from dassl.engine import TRAINER_REGISTRY
from dassl.utils import UnknownNameError
from dassl.utils.registry import closest_name_hint
from mmpt.prompt_trainer import PromptTrainer


def declared_methods():
    """{trainer name: trainer class} of every registered method, in registration order."""
    methods = {}
    for name in TRAINER_REGISTRY.registered_names():
        cls = TRAINER_REGISTRY.get(name)
        if isinstance(cls, type) and issubclass(cls, PromptTrainer) and cls.cfg_node:
            methods[name] = cls
    return methods


def get_method(name):
    """The trainer class declaring method `name` (one-line error naming the declared ones otherwise)."""
    methods = declared_methods()
    if name not in methods:
        raise UnknownNameError(f"Unknown method '{name}'.{closest_name_hint(name, methods)} Declared: "
                               f"{sorted(methods) or 'none (import trainers, or the module declaring it)'}")
    return methods[name]


def add_method_nodes(cfg):
    """cfg.TRAINER.<cfg_node>, generated from the method's config class, for every declared method."""
    owners = {}
    for name, cls in declared_methods().items():
        if cls.cfg_node in owners:
            raise TypeError(f"{name} and {owners[cls.cfg_node]} both declare cfg_node = {cls.cfg_node!r}")
        owners[cls.cfg_node] = name
        cfg.TRAINER[cls.cfg_node] = cls.config_node()
    return cfg


def create_model(name, clip_model, classnames, **fields):
    """The model of method `name` on `clip_model` (frozen; only `prompt_learner` trainable), without a trainer,
    a dataset or yacs. `fields` are fields of the method's config class (e.g. N_CTX=4), shared options included
    (e.g. PREC="fp32", TRUNCATE_TEXT=False); an unknown one is a one-line ConfigError listing the fields."""
    method = get_method(name)
    return method.build_method_model(clip_model, list(classnames), method.make_config(**fields))
