"""Check every image a run will read before it trains, so that a truncated file stops the run at once (one
line naming it) instead of after hours of training, when the test set is read.

Each image is decoded (JPEGs at reduced scale through PIL's draft mode, which still reads the whole file and so
detects a truncated one) by a few threads, with a progress bar. Good files are cached by path, size and
modification time in `<DATASET.ROOT>/.image_check-<DATASET.NAME>.json` (or in the run's output folder when the
data folder is not writable), so each image is checked once per dataset: later runs (other seeds, shots,
methods) check only the files they have not seen, or that changed. The cache is written atomically with the
umask's mode (group-readable in a shared data folder under umask 002 / 022).
"""
import json
import os
import os.path as osp
import sys
from concurrent.futures import ThreadPoolExecutor

from PIL import Image
from tqdm import tqdm

from dassl.errors import RunError
from dassl.utils import atomic_write

CACHE_VERSION = 1
BAD_LIST_FILE = "unreadable_images.txt"
DRAFT_SIZE = (64, 64)  # JPEG decoding scale for the check (at most 1/8 of the image: fast, still reads every byte)


def image_problem(path):
    """None when `path` decodes as an image, else a short reason."""
    try:
        with Image.open(path) as img:
            img.draft("RGB", DRAFT_SIZE)
            img.load()
    except Exception as error:  # noqa: BLE001  PIL raises OSError, SyntaxError, ValueError, ... for bad files
        text = str(error).splitlines()[0] if str(error) else ""
        return f"{type(error).__name__}: {text}"
    return None


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
            bad.append((path, f"{type(error).__name__}: {error.strerror}"))
            continue
        if known.get(key) == signature:
            good[key] = signature
        else:
            todo.append((path, key, signature))
    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL: threads run in parallel
            problems = pool.map(image_problem, [path for path, _, _ in todo])
            for (path, key, signature), problem in tqdm(zip(todo, problems), total=len(todo), file=sys.stderr,
                                                        desc="Checking images", unit="img"):
                if problem is None:
                    good[key] = signature
                else:
                    bad.append((path, problem))
        print(f"Checked {len(todo):,} images ({len(paths) - len(todo):,} more were checked by earlier runs)")
        _write_cache(cache_files, good)
    if bad:
        bad_list = osp.join(output_dir, BAD_LIST_FILE)
        atomic_write(bad_list, lambda f: f.write("".join(f"{p}\t{why}\n" for p, why in bad).encode("utf-8")))
        first, why = bad[0]
        more = f" (and {len(bad) - 1} more, listed in {bad_list})" if len(bad) > 1 else ""
        raise RunError(f"unreadable image {first} ({why}){more}: nothing was trained; replace the file(s) "
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
    """check_images for one run, cached in DATASET.ROOT (or, read-only data, in OUTPUT_DIR)."""
    caches = [cache_path(folder, cfg.DATASET.NAME) for folder in (cfg.DATASET.ROOT, cfg.OUTPUT_DIR) if folder]
    return check_images(run_image_paths(dataset, cfg, trains), caches, cfg.OUTPUT_DIR)
