"""Checkpoint helpers (Dassl's dassl.utils.torchtools), with atomic writes and weights_only loading.

A checkpoint holds only state dicts and plain values: `state_dict`, `epoch` (1-based), `optimizer`,
`scheduler`, `val_result` and optionally `rng_state` and `extra_state` (a trainer's own resumable state, see
TrainerBase.checkpoint_extra_state), so it loads with torch.load(weights_only=True).
"""
import errno
import os
import os.path as osp
import pickle
import re
import tempfile
import time
import warnings
from collections import OrderedDict

import torch

from dassl.errors import RunError
from .tools import mkdir_if_missing

POINTER_FILE = "checkpoint"


TEMP_SUFFIX = ".tmp"
# atomic_write's temp files: "." + target name + "." + mkstemp's 8 random characters + ".tmp"
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")
STALE_TEMP_AGE_S = 3600  # in a folder that other runs may be writing into, only temp files older than this are dead


def current_umask():
    """The process umask (read without changing it where /proc allows; os.umask has no getter)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_temp_files(folder, min_age_s=0, name=None, recursive=True):
    """Delete the temp files that killed atomic writes left in `folder` (only those of target `name` if given;
    only those older than `min_age_s`: a live writer's file is young). Returns the removed paths."""
    removed = []
    now = time.time()
    walk = os.walk(folder) if recursive else [(folder, [], os.listdir(folder) if osp.isdir(folder) else [])]
    for dirpath, _, filenames in walk:
        for fname in filenames:
            if not _TEMP_FILE.match(fname) or (name is not None and not fname.startswith("." + name + ".")):
                continue
            path = osp.join(dirpath, fname)
            try:
                if min_age_s and now - os.stat(path).st_mtime < min_age_s:
                    continue
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:  # another process removed or renamed it meanwhile
                pass
    return removed


def atomic_write(fpath, write_fn):
    """Write through `write_fn(file_object)` into a temp file in the same folder, then os.replace it.

    A crash mid-way leaves the previous file (if any) untouched and removes the partial temp file; a kill
    leaves the temp file, which the next write of the same file (after STALE_TEMP_AGE_S) or train.py's start
    (in its locked output folder) removes. The file gets the mode of a plain open() (0666 minus the umask), not
    mkstemp's 0600: split files and caches in a shared data folder must stay readable for the group.
    """
    dirname = osp.dirname(osp.abspath(fpath))
    mkdir_if_missing(dirname)
    remove_temp_files(dirname, min_age_s=STALE_TEMP_AGE_S, name=osp.basename(fpath), recursive=False)
    fd, tmp_path = tempfile.mkstemp(prefix="." + osp.basename(fpath) + ".", suffix=TEMP_SUFFIX, dir=dirname)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, fpath)
    except BaseException as error:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        if _is_disk_full(error):  # torch.save reports it as an "enforce fail" RuntimeError around the OSError
            raise RunError(f"no space left on device writing {fpath}: free space on that filesystem (or move the "
                           f"output elsewhere), then run the same command again; "
                           f"{'the previous file is kept' if osp.exists(fpath) else 'nothing else was changed'}") \
                from None
        raise


def _is_disk_full(error):
    """Whether `error` or an exception it was raised from is ENOSPC (disk full) or EDQUOT (quota exceeded)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        error = error.__cause__ or error.__context__
    return False


def atomic_torch_save(obj, fpath):
    """torch.save into `fpath` atomically (temp file + os.replace)."""
    atomic_write(fpath, lambda f: torch.save(obj, f))


def _strip_module_prefix(state_dict):
    """Drop the 'module.' prefix that nn.DataParallel adds to every key."""
    new_state_dict = OrderedDict()
    for k, v in state_dict.items():
        new_state_dict[k[7:] if k.startswith("module.") else k] = v
    return new_state_dict


def save_checkpoint(state, save_dir, is_best=False, remove_module_from_keys=True, model_name=""):
    """Save `state` as save_dir/model.pth.tar-<epoch> (or `model_name`) and point save_dir/checkpoint at it.

    Both writes are atomic, and the pointer is written after the checkpoint, so the pointer never names a
    partial file. Saving as "model-best.pth.tar" leaves the pointer alone (unlike upstream). With is_best, the state is also written to save_dir/model-best.pth.tar.
    """
    mkdir_if_missing(save_dir)
    if remove_module_from_keys:
        state["state_dict"] = _strip_module_prefix(state["state_dict"])
    epoch = state["epoch"]
    if not model_name:
        model_name = "model.pth.tar-" + str(epoch)
    fpath = osp.join(save_dir, model_name)
    atomic_torch_save(state, fpath)
    print(f"Checkpoint saved to {fpath}")
    # the pointer names the last resumable file; model-best never becomes the resume point
    if model_name == "model-best.pth.tar":
        return fpath
    pointer = osp.join(save_dir, POINTER_FILE)
    atomic_write(pointer, lambda f: f.write((osp.basename(fpath) + "\n").encode()))
    if is_best:
        best_fpath = osp.join(save_dir, "model-best.pth.tar")
        atomic_torch_save(state, best_fpath)
        print(f'Best checkpoint saved to "{best_fpath}"')
    return fpath


def load_checkpoint(fpath):
    """Load a checkpoint onto the CPU with torch.load(weights_only=True).

    Checkpoints written by upstream Dassl may hold pickled objects; those fall back to a full unpickle
    with a warning (only do that for files you trust).
    """
    if fpath is None:
        raise ValueError("Checkpoint path is None")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'Checkpoint file not found: "{fpath}"')
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" not in str(error).lower():
            raise unreadable_file_error(fpath, error, "checkpoint") from None
        warnings.warn(f"{fpath} holds pickled objects (an upstream Dassl checkpoint?); loading it with "
                      f"weights_only=False")
        try:
            return torch.load(fpath, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001  (a corrupt pickle raises many types)
            raise unreadable_file_error(fpath, error, "checkpoint") from None
    except Exception as error:  # noqa: BLE001  truncated zip (RuntimeError), empty (EOFError), garbage (KeyError)
        raise unreadable_file_error(fpath, error, "checkpoint") from None


def unreadable_file_error(fpath, error, what, hint="delete it (or its run folder) and run again"):
    """RunError for a torch file that does not load: truncated by a kill or a partial copy, or not a torch file."""
    detail = " ".join(str(error).split())[:160]
    size = osp.getsize(fpath) if osp.exists(fpath) else 0
    return RunError(f"{fpath} is not a readable {what} ({size:,} bytes; truncated or not a torch file? "
                    f"{type(error).__name__}: {detail}); {hint}")


def resume_from_checkpoint(fdir, model, optimizer=None, scheduler=None):
    """Restore model / optimizer / scheduler from the file named in fdir/checkpoint; return the start epoch.

    The returned start epoch is the number of epochs already completed (the `epoch` stored, 1-based).
    """
    with open(osp.join(fdir, POINTER_FILE), "r") as f:
        fname = f.readline().strip()
    return restore_checkpoint(osp.join(fdir, fname), model, optimizer, scheduler)["epoch"]


def restore_checkpoint(fpath, model, optimizer=None, scheduler=None):
    """Load the checkpoint `fpath` into model / optimizer / scheduler; return the checkpoint dict."""
    print(f'Loading checkpoint from "{fpath}"')
    checkpoint = load_checkpoint(fpath)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # another trainer's or config's checkpoint: other keys or shapes
        detail = " ".join(str(error).split())
        raise RunError(f"{fpath} does not fit this run's model (written by another trainer or config?): "
                       f"{detail[:300]}; use another output folder, or delete {osp.dirname(osp.dirname(fpath))} "
                       f"to train from scratch") from None
    print("Loaded model weights")
    if optimizer is not None and checkpoint.get("optimizer") is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        print("Loaded optimizer")
    if scheduler is not None and checkpoint.get("scheduler") is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
        print("Loaded scheduler")
    print(f"Previous epoch: {checkpoint['epoch']}")
    return checkpoint


def load_pretrained_weights(model, weight_path):
    """Load the matching keys (same name and shape) of a checkpoint or state dict into `model`."""
    checkpoint = load_checkpoint(weight_path)
    state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state_dict = _strip_module_prefix(state_dict)
    model_dict = model.state_dict()
    matched, discarded = OrderedDict(), []
    for k, v in state_dict.items():
        if k in model_dict and model_dict[k].size() == v.size():
            matched[k] = v
        else:
            discarded.append(k)
    model_dict.update(matched)
    model.load_state_dict(model_dict)
    if not matched:
        warnings.warn(f'No layer of "{weight_path}" matches the model (check the key names)')
    else:
        print(f'Loaded pretrained weights from "{weight_path}"')
        if discarded:
            print(f"Layers discarded (unmatched name or size): {discarded}")


def count_num_param(model=None, params=None):
    """Number of parameters of a model (or of an iterable of tensors)."""
    if model is not None:
        return sum(p.numel() for p in model.parameters())
    if params is not None:
        return sum(p.numel() for p in params)
    raise ValueError("count_num_param: give model or params")


def open_all_layers(model):
    """Make every parameter of `model` trainable and put it in train mode."""
    model.train()
    for p in model.parameters():
        p.requires_grad = True


def open_specified_layers(model, open_layers):
    """Train only the named child modules of `model`; freeze (and eval) the others."""
    if isinstance(model, torch.nn.DataParallel):
        model = model.module
    open_layers = [open_layers] if isinstance(open_layers, str) else list(open_layers)
    children = dict(model.named_children())
    for layer in open_layers:
        if layer not in children:
            raise KeyError(f"'{layer}' is not a child module of the model; children: {list(children)}")
    for name, module in children.items():
        module.train(name in open_layers)
        for p in module.parameters():
            p.requires_grad = name in open_layers
