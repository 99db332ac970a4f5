"""yacs CfgNode whose merge errors are one line naming the key and where it came from."""
import re

from yacs.config import CfgNode as _YacsCfgNode

from dassl.utils.registry import ConfigError, PlainKeyError, closest_name


class ConfigKeyError(PlainKeyError, ConfigError):
    """An unknown / ill-typed config key; str() is the one-line message (not KeyError's quoted repr)."""


_UNKNOWN_KEY = re.compile(r"^Non-existent (?:config )?key: (\S+)")


def dotted_keys(node, prefix=""):
    """Every leaf key of a config node, dotted (OPTIM.MAX_EPOCH, ...)."""
    keys = []
    for key, value in node.items():
        if isinstance(value, _YacsCfgNode):
            keys += dotted_keys(value, prefix + key + ".")
        else:
            keys.append(prefix + key)
    return keys


def _describe_yacs_error(err, node, where):
    """One line of a yacs error, `where` it came from. yacs words an unknown key differently for files
    ('Non-existent config key') and lists ('Non-existent key'): both become 'Non-existent config key: A.B
    (where); did you mean <the closest existing key>?'."""
    msg = " ".join((str(err.args[0]) if err.args else str(err)).split())
    unknown = _UNKNOWN_KEY.match(msg)
    if not unknown:
        return f"{msg} ({where})"
    key = unknown.group(1)
    close = closest_name(key, dotted_keys(node), cutoff=0.6)
    return f"Non-existent config key: {key} ({where})" + (f"; did you mean {close}?" if close else "")


class CfgNode(_YacsCfgNode):
    """Drop-in yacs CfgNode; merge_from_file / merge_from_list name the file or option in their errors.

    A plain yacs node assigned into it (CoOp's `cfg.TRAINER.COOP = CN()` with yacs' own CN) is converted to
    this class: yacs refuses to merge a config file's node into a node of another class ("Type mismatch").
    """

    def __setitem__(self, key, value):
        if isinstance(value, _YacsCfgNode) and not isinstance(value, CfgNode):
            value = CfgNode(value, new_allowed=value.is_new_allowed())
        super().__setitem__(key, value)

    def merge_from_file(self, cfg_filename):
        try:
            super().merge_from_file(cfg_filename)
        except FileNotFoundError:
            raise ConfigKeyError(f"Config file not found: {cfg_filename}") from None
        except (KeyError, ValueError, AssertionError, TypeError) as e:
            raise ConfigKeyError(_describe_yacs_error(e, self, f"in config file {cfg_filename}")) from None
        except Exception as e:  # yaml syntax errors and the like
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigKeyError(f"Cannot parse config file {cfg_filename}: {first}") from None

    def merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        if len(cfg_list) % 2 != 0:
            raise ConfigKeyError(f"Command-line options must be KEY VALUE pairs; got an odd number: {cfg_list}")
        # merge pair by pair so the error names the offending option
        for key, value in zip(cfg_list[0::2], cfg_list[1::2]):
            try:
                super().merge_from_list([key, value])
            except (KeyError, ValueError, AssertionError, TypeError) as e:
                raise ConfigKeyError(
                    _describe_yacs_error(e, self, f"in command-line option '{key} {value}'")) from None
