"""Tee stdout into OUTPUT_DIR/log.txt (Dassl's setup_logger)."""
import os.path as osp
import sys
import time

from .tools import mkdir_if_missing


class Logger:
    """Writes everything printed to the console and to a file."""

    def __init__(self, fpath=None, stream=None):
        self.console = stream if stream is not None else sys.stdout
        self.file = None
        self.fpath = fpath
        if fpath is not None:
            mkdir_if_missing(osp.dirname(osp.abspath(fpath)))
            # line-buffered: a killed run keeps every line it printed
            self.file = open(fpath, "w", encoding="utf-8", buffering=1)

    def write(self, msg):
        self.console.write(msg)
        if self.file is not None and not self.file.closed:
            self.file.write(msg)

    def flush(self):
        self.console.flush()
        if self.file is not None and not self.file.closed:
            self.file.flush()

    def isatty(self):
        return False

    def close(self):
        if self.file is not None:
            self.file.close()

    def __getattr__(self, name):
        if name == "console":  # not set yet (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        # fall back to the console stream for attributes such as `encoding`
        return getattr(self.console, name)


def _undo_previous_tee():
    """Restore the real stdout if an earlier setup_logger (same process) replaced them."""
    stream = sys.stdout
    while isinstance(stream, Logger):
        stream.close()
        stream = stream.console
    sys.stdout = stream


def setup_logger(output=None):
    """Tee stdout into a log file.

    `output` is a directory (-> output/log.txt) or a file path ending in .txt/.log. If the file exists
    (a later run into the same directory), the new log goes to `log.txt-<timestamp>` instead.
    Calling it again in the same process replaces the previous tee (in-process runs, tests).
    Returns the path of the log file (None when `output` is None).
    """
    _undo_previous_tee()
    if output is None:
        return None
    if output.endswith(".txt") or output.endswith(".log"):
        fpath = output
    else:
        fpath = osp.join(output, "log.txt")
    if osp.exists(fpath):
        fpath += time.strftime("-%Y-%m-%d-%H-%M-%S")
        base, n = fpath, 1
        while osp.exists(fpath):  # two runs within one second
            fpath = f"{base}-{n}"
            n += 1
    # only stdout is teed, as upstream: tqdm's progress bars (stderr) stay out of the log
    sys.stdout = Logger(fpath)
    return fpath
