"""The exceptions that mean "the user gave something wrong": train.py prints them as one line
(`train.py: error: ...`, exit status non-zero) without a traceback; every other exception is a bug and keeps its
traceback (MMPT_TRACEBACK=1 shows it for these too). This module imports nothing, so any layer may raise them.
"""


class ConfigError(ValueError):
    """A user mistake (a config value, a name, a path): train.py prints it as one line, without a traceback.
    Internal invariants raise other exceptions and keep their tracebacks."""


class MissingFileError(FileNotFoundError, ConfigError):
    """A file the user named or provided (a model directory, an image, a dataset folder) is not there."""


class RunError(ConfigError):
    """A run cannot go on because of what it was given (its folder, its files, its images); the message names
    the file, folder or config key at fault and what to do about it."""
