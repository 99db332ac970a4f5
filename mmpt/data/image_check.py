"""Decode images in parallel and list those that cannot be read (`python -m mmpt.data_prep --check`, and every
train.py run before it trains).

    from mmpt.data.image_check import find_unreadable
    bad = find_unreadable(paths, workers=8)          # -> [(path, reason), ...] in the order of `paths`

Each image is decoded in full with the engine's own reader (`dassl.utils.read_image`), so an image passes
here exactly when training can read it (a truncated JPEG fails; a header check alone would not catch it).

`check_run_images(cfg, dataset, trains)` checks every image a run will read before it trains, so that a
truncated file stops the run at once (one RunError line naming it) instead of after hours of training, when the
test set is read. Good files are cached by path, size and modification time in
`<DATASET.ROOT>/.image_check-<DATASET.NAME>.json` (in the run's output folder when the data folder is not
writable), so each image is checked once per dataset: later runs (other seeds, shots, methods) check only the
files they have not seen, or that changed. The cache is written atomically with the umask's mode.
"""
import json
import multiprocessing
import os
import os.path as osp
import signal
import sys

from dassl.errors import RunError
from dassl.utils import atomic_write, capped_worker_count, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_error(path):
    """None when `path` decodes as training reads it, else a one-line reason."""
    try:
        read_image(path)
    except IOError as e:
        return str(e)
    return None


def _path_and_error(path):
    return path, image_error(path)


def _quiet_worker():
    """Ctrl-C is the parent's to handle (it stops the pool, with SIGTERM): a worker prints no traceback of its own
    (it may have inherited train.py's handlers)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def find_unreadable(paths, workers=None, desc="decoding", progress=True, stream=None):
    """[(path, reason)] of the images in `paths` that cannot be decoded, in the order of `paths`.

    `workers` processes decode (None: one per CPU; 0 or 1: this process), with a tqdm progress bar on `stream`
    (default stdout).
    """
    from tqdm import tqdm

    paths = list(paths)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, len(paths)))
    bad = []
    pool = multiprocessing.Pool(workers, initializer=_quiet_worker) if workers > 1 else None
    try:
        if pool is None:
            results = map(_path_and_error, paths)
        else:  # chunks big enough to keep inter-process traffic small, small enough for a smooth bar
            results = pool.imap(_path_and_error, paths, chunksize=max(1, min(256, len(paths) // (workers * 8))))
        with tqdm(total=len(paths), desc=desc, unit="img", file=stream or sys.stdout, disable=not progress) as bar:
            for path, error in results:
                if error:
                    bad.append((path, error))
                bar.update(1)
    finally:
        if pool is not None:
            pool.terminate()  # every result is in (or we are leaving on an error): stop the workers now
            pool.join()
    return bad


def image_files(folder, skip_dirs=(".data_prep", "split_fewshot")):
    """Every image file (by extension, case-insensitive) under `folder`, sorted; hidden entries skipped."""
    found = []
    for directory, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        found.extend(osp.join(directory, f) for f in filenames
                     if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


# ----------------------------------------------------------------------------- before a run trains
CACHE_VERSION = 1
BAD_LIST_FILE = "unreadable_images.txt"


def cache_path(folder, dataset_name):
    return osp.join(folder, f".image_check-{dataset_name or 'dataset'}.json")


def _read_cache(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data["files"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):  # missing or damaged: check again
        return {}


def _signature(path):
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def check_images(paths, cache_files, output_dir, workers=None):
    """Decode every file of `paths` not already in a cache of `cache_files` (the first writable one gets the
    results); raise one RunError line naming the first bad file (all of them in output_dir/unreadable_images.txt).
    Returns the number of files checked now."""
    paths = list(dict.fromkeys(paths))
    known = {}
    for cache_file in cache_files:
        known.update(_read_cache(cache_file))
    todo, good, bad = [], {}, []
    for path in paths:
        key = osp.abspath(path)
        try:
            signature = _signature(path)
        except OSError as error:
            bad.append((path, f"{error.strerror}: {path}"))
            continue
        if known.get(key) == signature:
            good[key] = signature
        else:
            todo.append((path, key, signature))
    if todo:
        failed = dict(find_unreadable([path for path, _, _ in todo], workers=workers, desc="Checking images",
                                      stream=sys.stderr))
        for path, key, signature in todo:
            if path in failed:
                bad.append((path, failed[path]))
            else:
                good[key] = signature
        print(f"Checked {len(todo):,} images ({len(paths) - len(todo):,} more were checked by earlier runs)")
        _write_cache(cache_files, good)
    if bad:
        bad_list = osp.join(output_dir, BAD_LIST_FILE)
        atomic_write(bad_list, lambda f: f.write("".join(f"{p}\t{why}\n" for p, why in bad).encode("utf-8")))
        why = bad[0][1]
        more = f" (and {len(bad) - 1} more, listed in {bad_list})" if len(bad) > 1 else ""
        raise RunError(f"unreadable image: {why}{more}: nothing was trained; replace the file(s) "
                       f"(re-extract or re-download the dataset) and run again")
    return len(todo)


def _write_cache(cache_files, good):
    """Merge `good` into the first cache file that can be written (another run may have added entries)."""
    for cache_file in cache_files:
        try:
            files = _read_cache(cache_file)
            files.update(good)
            data = json.dumps({"version": CACHE_VERSION, "files": files}, separators=(",", ":"))
            atomic_write(cache_file, lambda f: f.write(data.encode("utf-8")))
            return cache_file
        except OSError:  # a read-only data folder: try the next place
            continue
    return None


def run_image_paths(dataset, cfg, trains):
    """The images a run reads: the (few-shot) training set and validation set when it trains, the test set
    unless TEST.NO_TEST."""
    items = []
    if trains:
        items += list(dataset.train_x) + list(dataset.val or [])
    if not cfg.TEST.NO_TEST or not trains:
        items += list(dataset.test or [])
    return [item.impath for item in items]


def check_run_images(cfg, dataset, trains):
    """check_images for one run (at most DATALOADER.NUM_WORKERS processes), cached in DATASET.ROOT (or, when that
    is read-only, in OUTPUT_DIR)."""
    caches = [cache_path(folder, cfg.DATASET.NAME) for folder in (cfg.DATASET.ROOT, cfg.OUTPUT_DIR) if folder]
    return check_images(run_image_paths(dataset, cfg, trains), caches, cfg.OUTPUT_DIR,
                        workers=max(1, capped_worker_count(cfg.DATALOADER.NUM_WORKERS)))
