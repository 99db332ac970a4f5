"""Name -> object registry (Dassl's API), with a helpful error for unknown names."""
import difflib

from dassl.errors import ConfigError, MissingFileError  # noqa: F401  (re-exported by dassl.utils)


class PlainKeyError(KeyError):
    """A KeyError whose str() is the plain one-line message (KeyError's own str() quotes it)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class UnknownNameError(ConfigError):
    """A name (trainer, dataset, ...) that is not registered; the message suggests the closest one."""


def closest_name(name, available, cutoff=0.0):
    """The name of `available` closest to `name`, ignoring case (`mudpt` -> `MuDPT`); None when nothing is close."""
    by_folded = {}
    for candidate in map(str, available):
        by_folded.setdefault(candidate.lower(), candidate)
    close = difflib.get_close_matches(str(name).lower(), list(by_folded), n=1, cutoff=cutoff)
    return by_folded[close[0]] if close else None


def closest_name_hint(name, available):
    close = closest_name(name, available)
    return f" Did you mean '{close}'?" if close else ""


def check_availability(requested, available):
    """Raise ValueError (one line) if `requested` is not in `available`, suggesting the closest name."""
    if requested in available:
        return
    hint = closest_name_hint(requested, available)
    raise UnknownNameError(f"Unknown name '{requested}'.{hint} Available: {sorted(map(str, available))}")


class Registry:
    """Maps names to classes/functions. Use as a decorator: `@REGISTRY.register()`."""

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise PlainKeyError(f"An object named '{name}' is already registered in the '{self._name}' registry "
                                f"(registered twice? use register(force=True) to replace it on purpose)")
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            hint = closest_name_hint(name, self._obj_map)
            raise PlainKeyError(f"No object named '{name}' in the '{self._name}' registry.{hint}")
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def __repr__(self):
        return f"Registry({self._name!r}, {sorted(self._obj_map)})"
