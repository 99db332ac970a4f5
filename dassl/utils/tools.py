"""Small file / seed / environment helpers (Dassl's dassl.utils.tools)."""
import errno
import json
import os
import os.path as osp
import random
import sys
import warnings

import numpy as np
import torch
from PIL import Image


def mkdir_if_missing(dirname):
    if dirname and not osp.exists(dirname):
        try:
            os.makedirs(dirname)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise


def check_isfile(fpath):
    isfile = osp.isfile(fpath)
    if not isfile:
        warnings.warn(f'No file found at "{fpath}"')
    return isfile


def read_json(fpath):
    with open(fpath, "r") as f:
        return json.load(f)


def write_json(obj, fpath):
    mkdir_if_missing(osp.dirname(fpath))
    with open(fpath, "w") as f:
        json.dump(obj, f, indent=4, separators=(",", ": "))


def set_random_seed(seed):
    """Seed python's random, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def get_random_rng_state():
    """RNG states of python random, numpy and torch as plain values (lists / uint8 tensors).

    Plain values keep checkpoints loadable with torch.load(weights_only=True).
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_rng_state(state):
    """Inverse of get_random_rng_state."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # different number of GPUs: keep the current CUDA RNG
            pass


def collect_env_info():
    """A short description of the software environment (cheap: no subprocesses)."""
    import PIL
    import torchvision

    lines = [
        f"Python: {sys.version.split()[0]}",
        f"PyTorch: {torch.__version__}",
        f"Torchvision: {torchvision.__version__}",
        f"NumPy: {np.__version__}",
        f"Pillow: {PIL.__version__}",
        f"CUDA available: {torch.cuda.is_available()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"CUDA: {torch.version.cuda}; GPU: {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}")
    return "\n".join(lines)


def available_cpus():
    """The CPUs this process may run on (its affinity mask: a SLURM or taskset share), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


_capped_worker_counts = set()  # (requested, cpus) already reported by this process


def capped_worker_count(requested, key="DATALOADER.NUM_WORKERS"):
    """`requested` DataLoader workers, at most one per available CPU (more only compete for the same cores; the
    worker count changes no result). Says so in one line, once per process and value."""
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _capped_worker_counts:
        _capped_worker_counts.add((requested, cpus))
        print(f"Note: {key}={requested} but this process may use {cpus} CPU(s): using {cpus} worker(s)")
    return cpus


def listdir_nohidden(path, sort=False):
    """List non-hidden entries of a directory."""
    items = [f for f in os.listdir(path) if not f.startswith(".")]
    if sort:
        items.sort()
    return items


class ImageReadError(OSError):
    """An image file is missing or does not decode (raised in DataLoader workers too: one-argument constructor)."""


# PIL modes of more than 8 bits per sample that convert("RGB") clips at 255 (a 16-bit PNG reads pure white):
# {mode: the sample's number of bits}; these are scaled to 8 bits instead
_WIDE_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def to_rgb(img):
    """An RGB image of `img`; greyscale of 16 bits per sample scaled to 8 bits (value * 255 / 65535), not clipped."""
    bits = _WIDE_MODES.get(img.mode)
    if bits is None:
        return img.convert("RGB")
    samples = np.asarray(img).astype(np.float64)
    grey = np.clip(np.rint(samples * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # uint8 2-D: mode L


def read_image(path):
    """Read an image as RGB PIL.Image; a missing or corrupt file raises one line naming the file."""
    if not osp.exists(path):
        raise ImageReadError(f"Image file not found: {path}")
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except Exception as e:  # PIL raises several types for truncated / unknown files
        raise ImageReadError(f"Cannot read image {path}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None


def tolist_if_not(x):
    """Wrap a non-list in a list."""
    if not isinstance(x, list):
        x = [x]
    return x


def get_most_similar_str_to_a_from_b(a, b):
    """The string of `b` most similar to `a` (upstream helper)."""
    import difflib

    return max(b, key=lambda s: difflib.SequenceMatcher(None, a, s).ratio()) if b else None
