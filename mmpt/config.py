"""Typed method configs (the open_clip pattern) and the yacs node generated from them.

A method's options are one dataclass that extends `PromptOptions` (the options every prompt trainer shares):
fields with types and defaults, validated in one place (`validate`, run on construction). The config node
cfg.TRAINER.<NODE> is generated from it (`config_node`): the same key names, defaults and types, so yaml files
and command lines are checked by yacs's own type rules (an int default refuses a float, a list default a
string). Models are built from the typed value (`config_from_node`), never from the yacs node.

A method writes its errors with the field name only (`ConfigError(f"N_CTX={value!r}: expected an int >= 1")`,
or the helpers' key argument "N_CTX"); `option_errors(key, config_class)` prefixes the full path
("TRAINER.COOP.N_CTX=0: ...") on every ConfigError whose message starts with one of the config's field names.
"""
import contextlib
import dataclasses
import re
import typing
from dataclasses import dataclass

from yacs.config import CfgNode as CN

from dassl.utils import ConfigError
from mmpt.precision import DEFAULT_PRECISION, check_precision

# a field's generic type check: (accepted types, what the error says is expected)
_SIMPLE_TYPES = {
    bool: ((bool,), "True or False"),
    int: ((int,), "an int"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}
_LEADING_NAME = re.compile(r"^([A-Z][A-Z0-9_]*)(?![A-Za-z0-9_.])")


@dataclass
class PromptOptions:
    """Options every prompt trainer shares (each method's config extends this class)."""

    PREC: str = DEFAULT_PRECISION  # "amp" (bf16 autocast on CUDA, fp32 on CPU) | "fp32" | "bf16" | "fp16" (+ GradScaler)
    TRUNCATE_TEXT: bool = True  # text tower on max EOT + 1 tokens instead of 77 (exact under the causal mask)
    CACHE_TEXT_FEATURES: bool = True  # class text features once per evaluation (unless text depends on the image)
    TEXT_CHUNK_SIZE: int = 0  # 0 = all classes in one text pass; k = k classes at a time (memory)
    TEXT_CHECKPOINT: bool = False  # activation checkpointing in the text tower (memory for compute)
    # the tokens every class sentence shares (SOS, context, fixed words) run once; each class's suffix runs to
    # its own EOT, attending to them (exact under the causal mask); False = every sentence on all its tokens
    TEXT_SHARED_PREFIX: bool = True

    def __post_init__(self):
        check_field_types(self)
        self.validate()

    def validate(self):
        """The values' own checks (one-line ConfigErrors that start with the field name); a method's config
        extends it and calls super().validate()."""
        check_precision(self.PREC)
        if self.TEXT_CHUNK_SIZE < 0:
            raise ConfigError(f"TEXT_CHUNK_SIZE={self.TEXT_CHUNK_SIZE!r}: expected an int >= 0 "
                              f"(0 = all classes in one pass)")


def field_names(config_class):
    return [field.name for field in dataclasses.fields(config_class)]


def check_field_types(config):
    """Each field annotated bool / int / float / str holds a value of that type (bool is not an int here)."""
    hints = typing.get_type_hints(type(config))
    for name in field_names(type(config)):
        expected = _SIMPLE_TYPES.get(hints.get(name))
        value = getattr(config, name)
        if expected and (not isinstance(value, expected[0]) or (expected[0] != (bool,) and isinstance(value, bool))):
            raise ConfigError(f"{name}={value!r}: expected {expected[1]}")


def config_node(config_class):
    """A fresh yacs node with the config's fields and defaults: the method's own fields first, then the shared
    ones (the order config dumps have always shown)."""
    node = CN()
    shared = field_names(PromptOptions)
    for name in [n for n in field_names(config_class) if n not in shared] + shared:
        field = next(f for f in dataclasses.fields(config_class) if f.name == name)
        if field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = field.default
        if value is dataclasses.MISSING:
            raise TypeError(f"{config_class.__name__}.{name} needs a default (it becomes a config key)")
        node[name] = value
    return node


@contextlib.contextmanager
def option_errors(key, config_class):
    """Re-raise a ConfigError that names one of `config_class`'s fields first with the full key path:
    "N_CTX=0: ..." -> "TRAINER.COOP.N_CTX=0: ..."."""
    try:
        yield
    except ConfigError as error:
        message = str(error)
        match = _LEADING_NAME.match(message)
        if not match or match.group(1) not in field_names(config_class):
            raise
        raise type(error)(f"{key}.{message}") from None


def config_from_node(config_class, node, key):
    """The typed config of a yacs node (or any mapping) holding its fields; errors name `key`.<FIELD>."""
    names = field_names(config_class)
    unknown = sorted(set(node) - set(names))
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: no such option (options: {', '.join(sorted(names))})")
    with option_errors(key, config_class):
        return config_class(**{name: node[name] for name in names if name in node})


def make_config(config_class, key, owner, **fields):
    """config_class(**fields), an unknown field being one line that names it and lists the fields."""
    names = field_names(config_class)
    for name in fields:
        if name not in names:
            raise ConfigError(f"{key}.{name}: no such option of {owner} (options: {', '.join(sorted(names))})")
    with option_errors(key, config_class):
        return config_class(**fields)
