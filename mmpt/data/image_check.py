"""Decode images in parallel and list those that cannot be read (`python -m mmpt.data_prep --check`).

    from mmpt.data.image_check import find_unreadable
    bad = find_unreadable(paths, workers=8)          # -> [(path, reason), ...] in the order of `paths`

Each image is decoded in full with the engine's own reader (`dassl.utils.read_image`), so an image passes
here exactly when training can read it (a truncated JPEG fails; a header check alone would not catch it).
"""
import multiprocessing
import os
import os.path as osp
import sys

from dassl.utils import read_image

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


def find_unreadable(paths, workers=None, desc="decoding", progress=True):
    """[(path, reason)] of the images in `paths` that cannot be decoded, in the order of `paths`.

    `workers` processes decode (None: one per CPU; 0 or 1: this process), with a tqdm progress bar on stdout.
    """
    from tqdm import tqdm

    paths = list(paths)
    if workers is None:
        workers = os.cpu_count() or 1
    workers = max(1, min(workers, len(paths)))
    bad = []
    pool = multiprocessing.Pool(workers) if workers > 1 else None
    try:
        if pool is None:
            results = map(_path_and_error, paths)
        else:  # chunks big enough to keep inter-process traffic small, small enough for a smooth bar
            results = pool.imap(_path_and_error, paths, chunksize=max(1, min(256, len(paths) // (workers * 8))))
        with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stdout, disable=not progress) as bar:
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
