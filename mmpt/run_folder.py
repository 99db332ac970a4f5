"""A run folder's identity and safety: its recorded config, its lock, its name under extra options.

- `config.yaml`: train.py records the full config of a run in its OUTPUT_DIR at start. A later run into the
  same folder (a resume, a rerun of a finished run) must ask for the same config: when the folder already holds
  a checkpoint or a result, a difference stops the run with one line naming the differing keys. Keys that
  name places or console output (NON_IDENTITY_KEYS) may differ: the data or the weights moved, a resume
  reads another folder, a rerun prints more or less often.
- `.lock`: one live train.py per folder. It is a POSIX record lock (fcntl.lockf), which belongs to the process
  that took it: DataLoader workers forked from it do not hold it, and the kernel drops it when that process
  dies (SIGKILL included), so a killed run's folder can be reused at once.
- `interrupt_on_stop_signals()`: SIGTERM unwinds a run like Ctrl-C, so that it ends with one line saying how to
  resume (`RunInterrupted`).
- `run_tag(cfg, opts)`: the folder name of a config run with extra KEY VALUE options (scripts and the sweep
  build folders through mmpt.experiments.layout, which calls it): `<cfg>` alone for none, else
  `<cfg>__<KEY>=<value>,...` (last key component; a long list is cut and completed with a hash).

This module does not import torch (the shell layout planner imports it).
"""
import contextlib
import errno
import glob
import hashlib
import os
import os.path as osp
import re
import signal
import threading
import time

from dassl.errors import RunError  # dassl.errors imports nothing (no torch)

CONFIG_FILE = "config.yaml"
LOCK_FILE = ".lock"
# keys that may differ between runs of one folder: where things are, how much is printed (not what is computed)
# (the one list: run folder names, the config check of a rerun or resume, and the results tables read it); the
# DataLoader's worker count changes speed only (a run resumes bit-identically with or without workers)
NON_IDENTITY_KEYS = ("OUTPUT_DIR", "RESUME", "DATASET.ROOT", "MODEL.BACKBONE.PATH", "VERBOSE", "TRAIN.PRINT_FREQ",
                     "DATALOADER.NUM_WORKERS")
# last key components that say nothing alone (MODEL.BACKBONE.NAME=toy-ViT is not "NAME=toy-ViT" in a folder name)
GENERIC_KEY_NAMES = ("NAME", "PATH", "SIZE", "TYPE", "MODE", "BATCH_SIZE", "SAMPLER", "SPLIT")
MAX_TAG_SUFFIX = 80  # characters of the readable suffix before it is cut and completed with a hash
RESULT_LINE = "* accuracy:"


class OutputDirInUseError(RunError):
    """Another live process runs into the same OUTPUT_DIR."""


class RunInterrupted(RunError):
    """Ctrl-C or SIGTERM stopped a run: the line says where it can resume."""

    def __init__(self, output_dir, signum):
        self.signum = int(signum)
        name = getattr(signum, "name", str(signum))
        pointers = sorted(glob.glob(osp.join(glob.escape(output_dir), "*", "checkpoint")))
        if pointers:
            with open(pointers[0], encoding="utf-8") as f:
                resume = f"it resumes from {osp.join(osp.dirname(pointers[0]), f.readline().strip())}"
        else:
            resume = "no epoch was completed, so it starts over"
        super().__init__(f"stopped by {name}; run the same command again to continue in {output_dir} ({resume})")


# ----------------------------------------------------------------------------- folder checks and lock
def check_output_dir(output_dir):
    """Create OUTPUT_DIR or fail with one line: it is a file, or it (or a parent) is not writable."""
    if osp.exists(output_dir) and not osp.isdir(output_dir):
        raise RunError(f"output folder {output_dir} is a file, not a folder: pass another --output-dir")
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the output folder {output_dir}: {error.strerror} "
                       f"(at {error.filename or output_dir}); pass another --output-dir") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise RunError(f"output folder {output_dir} is not writable: pass another --output-dir or fix its "
                       f"permissions")


@contextlib.contextmanager
def locked_output_dir(output_dir, lock_name=LOCK_FILE, holder="train.py", option="--output-dir"):
    """Hold OUTPUT_DIR/.lock for the whole run (see the module docstring); a second live run stops at once.
    Filesystems without POSIX locks run unlocked. The sweep locks its output root the same way (`holder`: who
    holds such a lock, `option`: the flag that picks another folder)."""
    check_output_dir(output_dir)
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock_path = osp.join(output_dir, lock_name)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as error:
        raise RunError(f"cannot open the lock file {lock_path}: {error.strerror}; pass another --output-dir") \
            from None
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                pass  # no lock support here (some network filesystems): run unlocked
            else:
                raise OutputDirInUseError(f"{output_dir} is in use by another running {holder} (lock file "
                                          f"{lock_path}); wait for it or use another {option}") from None
        yield
    finally:
        os.close(fd)  # releases the lock (the process's only descriptor of the file)


def folder_in_use(output_dir, lock_name=LOCK_FILE):
    """Whether a live process holds output_dir's lock (a train.py running into it). The caller holds no lock of
    its own on that file (closing the probe's descriptor would release it)."""
    lock_path = osp.join(output_dir, lock_name)
    if not osp.isfile(lock_path):
        return False
    try:
        import fcntl
        fd = os.open(lock_path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        return error.errno in (errno.EACCES, errno.EAGAIN)
    finally:
        os.close(fd)  # also releases the probe's lock
    return False


# files a run that stops before its first checkpoint leaves (what train.py writes at start)
REFUSED_RUN_FILES = {CONFIG_FILE, LOCK_FILE, "log.txt"}


def remove_refused_run_folder(run_dir):
    """Remove the folder a run created and that holds nothing but its start files (a run refused in one line
    before its first checkpoint: a bad option found when the model was built, a NaN loss in epoch 1). Any other
    file (a checkpoint, the list of unreadable images) keeps the folder. Returns whether it was removed."""
    try:
        names = set(os.listdir(run_dir))
    except OSError:
        return False
    if not names <= REFUSED_RUN_FILES or holds_results(run_dir):
        return False
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(osp.join(run_dir, name))
    with contextlib.suppress(OSError):  # another process may have started writing into it meanwhile
        os.rmdir(run_dir)
    return not osp.exists(run_dir)


# ----------------------------------------------------------------------------- recorded config
def config_values(cfg_yaml_text):
    """{dotted key: value} of a dumped config (yacs' cfg.dump() text, or the text of config.yaml)."""
    import yaml

    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            else:
                flat[prefix + key] = value

    walk(yaml.safe_load(cfg_yaml_text) or {}, "")
    return flat


def recorded_config(run_dir):
    """The config recorded in run_dir/config.yaml as {dotted key: value}, or None when there is none."""
    path = osp.join(run_dir, CONFIG_FILE)
    if not osp.isfile(path):
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return config_values(text)
    except (yaml.YAMLError, AttributeError) as error:  # cut or edited by hand; AttributeError: not a mapping
        first = " ".join(str(error).split())[:100]
        raise RunError(f"{path} does not parse as a config ({type(error).__name__}: {first}); it records what this "
                       f"folder's run was: restore it, or delete the folder {run_dir} to start again") from None


def config_differences(recorded, requested):
    """[(key, recorded value, requested value)] over the keys that make a run's identity (sorted). Keys on one
    side only are not compared: a code update added or removed them, and a new key's default keeps the old
    behaviour."""
    keys = (set(recorded) & set(requested)) - set(NON_IDENTITY_KEYS)
    return [(key, recorded[key], requested[key]) for key in sorted(keys) if recorded[key] != requested[key]]


def describe_differences(differences, limit=4):
    shown = [f"{key} {old!r} -> {new!r}" for key, old, new in differences[:limit]]
    more = f" and {len(differences) - limit} more" if len(differences) > limit else ""
    return ", ".join(shown) + more


def holds_results(run_dir):
    """True when run_dir holds a checkpoint (a model folder's pointer or weights) or a log with a result."""
    if glob.glob(osp.join(glob.escape(run_dir), "*", "checkpoint")) or \
            glob.glob(osp.join(glob.escape(run_dir), "*", "model*.pth.tar*")):
        return True
    for log in glob.glob(osp.join(glob.escape(run_dir), "log.txt*")):
        with open(log, encoding="utf-8", errors="replace") as f:
            if any(line.startswith(RESULT_LINE) for line in f):
                return True
    return False


def check_config(run_dir, requested_yaml_text):
    """Stop (one RunError line) when run_dir holds a checkpoint or result of a config other than the requested
    one (both as dumped yaml text)."""
    recorded = recorded_config(run_dir)
    if recorded is None:
        if holds_results(run_dir):
            print(f"Note: {run_dir} holds results but no {CONFIG_FILE} (written before runs recorded their config):"
                  f" its config cannot be checked")
        return
    differences = config_differences(recorded, config_values(requested_yaml_text))
    if differences and holds_results(run_dir):
        raise RunError(f"{run_dir} holds a run of another config ({CONFIG_FILE} differs: "
                         f"{describe_differences(differences)}); use another --output-dir (scripts and the sweep "
                         f"name a folder after its extra options) or delete the folder to start again")


def record_config(run_dir, cfg_yaml_text):
    """Write run_dir/config.yaml (atomically)."""
    from dassl.utils import atomic_write

    atomic_write(osp.join(run_dir, CONFIG_FILE), lambda f: f.write(cfg_yaml_text.encode("utf-8")))


# ----------------------------------------------------------------------------- folder names of extra options
def option_pairs(opts):
    """{KEY: VALUE} of a flat KEY VALUE list (a later key wins, as in yacs' merge_from_list)."""
    opts = [str(o) for o in opts]
    if len(opts) % 2:
        raise ValueError(f"extra options must be KEY VALUE pairs; got an odd list: {' '.join(opts)}")
    return dict(zip(opts[0::2], opts[1::2]))


def short_key_names(keys):
    """{key: its name in a folder}: the last component (INJECTION, LR), with as many components before it as make
    it readable (BACKBONE.NAME, TRAIN_X.BATCH_SIZE) and distinct among `keys` (the full key otherwise)."""
    def tail(key, n):
        return ".".join(key.split(".")[-n:])

    names = {}
    for key in keys:
        n = 1
        while n < len(key.split(".")) and (tail(key, n).split(".")[0] in GENERIC_KEY_NAMES or
                                           sum(tail(other, n) == tail(key, n) for other in keys) > 1):
            n += 1
        names[key] = tail(key, n)
    return names


def run_tag(cfg_name, opts=()):
    """The folder name of config `cfg_name` run with the extra KEY VALUE `opts` (see the module docstring)."""
    pairs = {key: value for key, value in option_pairs(opts).items() if key not in NON_IDENTITY_KEYS}
    if not pairs:
        return cfg_name
    names = short_key_names(pairs)
    parts = []
    for key in sorted(pairs):
        name = names[key]
        value = re.sub(r"[^A-Za-z0-9._+-]+", "-", pairs[key]).strip("-") or "none"
        parts.append(f"{name}={value}")
    suffix = ",".join(parts)
    if len(suffix) > MAX_TAG_SUFFIX:
        digest = hashlib.sha1(repr(sorted(pairs.items())).encode()).hexdigest()[:8]
        suffix = suffix[:MAX_TAG_SUFFIX - 10].rstrip(",") + ".." + digest
    return f"{cfg_name}__{suffix}"


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM
_received_signal = None  # the stop signal received under interrupt_on_stop_signals, if any


def stop_signal_received():
    return _received_signal


@contextlib.contextmanager
def interrupt_on_stop_signals(signums=(signal.SIGTERM, signal.SIGINT)):
    """SIGTERM (and SIGINT) raise KeyboardInterrupt(signal name) in the main thread, as Ctrl-C does, so that a run
    unwinds and can say how to resume; the previous handlers are restored on exit."""
    global _received_signal, _deferred_since
    _received_signal = _deferred_since = None
    previous = {signum: signal.signal(signum, _on_stop_signal) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _received_signal = _deferred_since = None


def _on_stop_signal(signum, frame):
    global _received_signal, _deferred_since
    _received_signal = signal.Signals(signum)
    caller = frame
    while caller is not None and time.monotonic() - (_deferred_since or time.monotonic()) < MAX_SIGNAL_DEFERRAL_S:
        if _is_fragile(caller.f_code):  # deliver the signal again in a moment instead
            _deferred_since = _deferred_since or time.monotonic()
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        caller = caller.f_back
    _deferred_since = None
    raise KeyboardInterrupt(_received_signal.name)


_deferred_since = None  # when the current stop signal was first deferred
MAX_SIGNAL_DEFERRAL_S = 10  # a loader that never returns must not make a run unstoppable
_FRAGILE_DIRS = tuple(osp.join("", *parts, "") for parts in [("torch", "utils", "data"), ("multiprocessing",),
                                                             ("logging",)])


def _is_fragile(code):
    """Code that an exception must not interrupt: Python swallows it in __del__ and in fork callbacks (the run
    would go on), and DataLoader workers that are starting, sending a batch or stopping are left half-done
    (noise, or a deadlock). The run stops when it is back in its own code, at the latest at the next batch. A
    process pool's result wait (the image check) may be interrupted: the pool is stopped on the way out."""
    if code.co_name == "__del__":
        return True
    filename = code.co_filename
    return any(part in filename for part in _FRAGILE_DIRS) and not filename.endswith(osp.join("multiprocessing",
                                                                                              "pool.py"))
