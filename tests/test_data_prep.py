"""`python -m mmpt.data_prep` against a local HTTP mirror (127.0.0.1) serving archives built from fixtures."""
import dataclasses
import http.server
import os
import os.path as osp
import shutil
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import datasets  # noqa: F401  (registers the loaders)
from dassl.config import get_cfg_default
from dassl.data.datasets import build_dataset
from mmpt.data import data_prep
from mmpt.data.data_prep import DATASET_FOLDERS, SOURCES
from mmpt.data.fixtures import make_dataset

DOWNLOADABLE = sorted(name for name, source in SOURCES.items() if source.resources)
TABLE = dict(SOURCES)  # the real table, before any test replaces its entries


def without_checksums(resource):
    return dataclasses.replace(resource, size=None, md5=None, sha256=None,
                               alternatives=tuple(without_checksums(alt) for alt in resource.alternatives))


@pytest.fixture(autouse=True)
def fixture_archives_have_no_published_checksums(monkeypatch):
    """The mirrors here serve archives built from fixtures, not the real files: drop the table's sizes and hashes
    (a test that checks them sets its own)."""
    for name, source in list(SOURCES.items()):
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(
            source, resources=tuple(without_checksums(r) for r in source.resources)))


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files from the mirror directory, honouring `Range: bytes=N-` (206) as a real host does."""

    requests = None  # a list shared with the test: (path, Range header or None)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        path = self.translate_path(self.path)
        if not osp.isfile(path):
            self.send_error(404)
            return
        data = Path(path).read_bytes()
        start = 0
        range_header = self.headers.get("Range")
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes="):].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def mirror(tmp_path):
    """(mirror directory, base URL, list of requests) of a server thread on 127.0.0.1."""
    directory = tmp_path / "mirror"
    directory.mkdir()
    requests = []
    handler = type("Handler", (RangeHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=str(directory), **k))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield directory, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def build(root, name):
    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.VERBOSE = False
    return build_dataset(cfg)


def pack(src_dir, resource, out_path):
    """An archive like the real one: `resource.provides` of the fixture under `resource.archive_prefix`."""
    members = [(osp.join(src_dir, p), osp.join(resource.archive_prefix, p)) for p in resource.provides]
    if out_path.endswith(".zip"):
        with zipfile.ZipFile(out_path, "w") as zf:
            for src, arcname in members:
                paths = [src] if osp.isfile(src) else [osp.join(d, f) for d, _, fs in os.walk(src) for f in fs]
                for path in paths:
                    zf.write(path, osp.join(arcname, osp.relpath(path, src)) if path != src else arcname)
    else:
        with tarfile.open(out_path, "w:gz" if out_path.endswith(("gz", "tgz")) else "w") as tf:
            for src, arcname in members:
                tf.add(src, arcname=arcname)


def make_mirror(name, mirror_dir, work_dir):
    """Fixture dataset -> the files of SOURCES[name] under mirror_dir/<folder>/; returns the source loader."""
    make_dataset(name, str(work_dir))
    reference = build(work_dir, name)  # also writes the split json the mirror serves
    src_dir = osp.join(str(work_dir), DATASET_FOLDERS[name])
    out_dir = mirror_dir / DATASET_FOLDERS[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    for resource in SOURCES[name].resources:
        if resource.archive_prefix is None:
            shutil.copy(osp.join(src_dir, resource.filename), out_dir / resource.filename)
        else:
            pack(src_dir, resource, str(out_dir / resource.filename))
    return reference


def relative(items, root):
    return [(osp.relpath(i.impath, root), i.label, i.classname) for i in items]


@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_prepare_then_load(tmp_path, mirror, name, capsys):
    mirror_dir, base_url, requests = mirror
    reference = make_mirror(name, mirror_dir, tmp_path / "src")
    root = tmp_path / "data"
    assert data_prep.main(["--root", str(root), "--datasets", name, "--base-url", base_url]) == 0
    assert len(requests) == len(SOURCES[name].resources)
    ds = build(root, name)
    assert ds.classnames == reference.classnames
    for part in ("train_x", "val", "test"):
        assert relative(getattr(ds, part) or [], root) == relative(getattr(reference, part) or [], tmp_path / "src")
    dataset_dir = root / DATASET_FOLDERS[name]
    assert not list(dataset_dir.glob("*.part")) and not list(dataset_dir.glob("*.tar*"))  # archives removed
    # a second run finds everything done and fetches nothing
    assert data_prep.main(["--root", str(root), "--datasets", name, "--base-url", base_url]) == 0
    assert len(requests) == len(SOURCES[name].resources)
    assert "done before" in capsys.readouterr().out


def test_resume_from_partial_download(tmp_path, mirror):
    mirror_dir, base_url, requests = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    archive = mirror_dir / "caltech-101" / "101_ObjectCategories.tar.gz"
    half = archive.stat().st_size // 2
    dataset_dir = tmp_path / "data" / "caltech-101"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "101_ObjectCategories.tar.gz.part").write_bytes(archive.read_bytes()[:half])
    assert data_prep.main(["--root", str(tmp_path / "data"), "--datasets", "caltech101", "--base-url", base_url]) == 0
    assert ("/caltech-101/101_ObjectCategories.tar.gz", f"bytes={half}-") in requests
    assert build(tmp_path / "data", "Caltech101").num_classes == 6


def test_interrupted_download_keeps_part_and_resumes(tmp_path, mirror, monkeypatch, capsys):
    mirror_dir, base_url, requests = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    archive = mirror_dir / "caltech-101" / "101_ObjectCategories.tar.gz"
    full = archive.read_bytes()
    archive.write_bytes(full[:1000])  # the server's file is cut short: the client sees less than the total
    original = RangeHandler.send_header

    def lying_length(self, key, value):  # announce the full size, deliver 1000 bytes
        original(self, key, str(len(full)) if key == "Content-Length" and value == "1000" else value)

    monkeypatch.setattr(RangeHandler, "send_header", lying_length)
    argv = ["--root", str(tmp_path / "data"), "--datasets", "caltech101", "--base-url", base_url]
    assert data_prep.main(argv) == 2
    part = tmp_path / "data" / "caltech-101" / "101_ObjectCategories.tar.gz.part"
    assert part.stat().st_size == 1000 and "resume" in capsys.readouterr().err
    monkeypatch.setattr(RangeHandler, "send_header", original)
    archive.write_bytes(full)
    assert data_prep.main(argv) == 0
    assert [r for p, r in requests if p.endswith(".tar.gz")][-1] == "bytes=1000-"
    assert build(tmp_path / "data", "Caltech101").num_classes == 6


def test_checksum_mismatch_deletes_the_file(tmp_path, mirror, monkeypatch, capsys):
    mirror_dir, base_url, _ = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    bad = dataclasses.replace(SOURCES["Caltech101"].resources[0], sha256="0" * 64)
    monkeypatch.setitem(SOURCES, "Caltech101", data_prep.Source((bad,) + SOURCES["Caltech101"].resources[1:]))
    assert data_prep.main(["--root", str(tmp_path / "data"), "--datasets", "caltech101", "--base-url", base_url]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "sha256" in err and "101_ObjectCategories.tar.gz" in err
    assert not list((tmp_path / "data" / "caltech-101").glob("101_ObjectCategories.tar.gz*"))


def test_offline_fails_at_once_naming_url_and_folder(tmp_path, capsys, monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(data_prep.BASE_URL_ENV, f"http://127.0.0.1:{port}")
    assert data_prep.main(["--root", str(tmp_path), "--datasets", "oxford_pets"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # every file of the dataset is tried and reported, one line each, naming the URL and where to put the file
    assert len(lines) == len(SOURCES["OxfordPets"].resources) and all(l.startswith("error: ") for l in lines)
    for line, resource in zip(lines, SOURCES["OxfordPets"].resources):
        assert f"http://127.0.0.1:{port}/oxford_pets/{resource.filename}" in line
        assert str(tmp_path / "oxford_pets" / resource.filename) in line


def test_manual_steps_and_unknown_names(tmp_path, capsys):
    assert data_prep.main(["--root", str(tmp_path), "--datasets", "imagenet", "ImageNetSketch"]) == 0
    out = capsys.readouterr().out
    assert "To fetch by hand" in out and "image-net.org" in out and "imagenet-sketch/images" in out
    assert data_prep.main(["--root", str(tmp_path), "--datasets", "caltech"]) == 2
    assert "unknown dataset 'caltech'" in capsys.readouterr().err


def test_source_table_matches_loaders():
    """Every dataset has a source entry, and what the archives provide is what the loaders read."""
    from dassl.data.datasets import DATASET_REGISTRY

    assert set(SOURCES) == set(DATASET_FOLDERS)
    for name in DOWNLOADABLE:
        loader = DATASET_REGISTRY.get(name)
        provided = {p for r in SOURCES[name].resources for p in r.provides}
        needed = {getattr(loader, "image_subdir", "")} | set(getattr(loader, "required", ()))
        assert {p.split("/")[0] for p in needed - {""}} <= {p.split("/")[0] for p in provided}, name
        for resource in SOURCES[name].resources:
            assert all(alt.provides == resource.provides for alt in resource.alternatives), name


@pytest.mark.parametrize("name,filename,wrapper", [("EuroSAT", "EuroSAT.zip", "EuroSAT_RGB"),
                                                   ("SUN397", "Partitions.zip", "Partitions")])
def test_repackaged_archives(tmp_path, mirror, name, filename, wrapper):
    """Re-packaged mirrors: EuroSAT_RGB/ (Zenodo) is renamed to 2750/; a single wrapping folder is stepped into."""
    mirror_dir, base_url, _ = mirror
    reference = make_mirror(name, mirror_dir, tmp_path / "src")
    resource = next(r for r in SOURCES[name].resources if r.filename == filename)
    src_dir = tmp_path / "src" / DATASET_FOLDERS[name]
    with zipfile.ZipFile(mirror_dir / DATASET_FOLDERS[name] / filename, "w") as zf:
        for provided in resource.provides:
            for path in [src_dir / provided] if (src_dir / provided).is_file() else (src_dir / provided).rglob("*"):
                # EuroSAT: EuroSAT_RGB/<class>/... instead of 2750/...; SUN397: Partitions/ClassName.txt ...
                inner = path.relative_to(src_dir / provided) if name == "EuroSAT" else path.name
                zf.write(path, f"{wrapper}/{inner}")
    assert data_prep.main(["--root", str(tmp_path / "data"), "--datasets", name, "--base-url", base_url]) == 0
    ds = build(tmp_path / "data", name)
    assert relative(ds.test, tmp_path / "data") == relative(reference.test, tmp_path / "src")


def test_error_page_instead_of_json_is_rejected(tmp_path, mirror, capsys):
    mirror_dir, base_url, _ = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    (mirror_dir / "caltech-101" / "split_zhou_Caltech101.json").write_text("<html>quota exceeded</html>")
    assert data_prep.main(["--root", str(tmp_path / "data"), "--datasets", "caltech101", "--base-url", base_url]) == 2
    assert "split_zhou_Caltech101.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "data" / "caltech-101" / "split_zhou_Caltech101.json").exists()


# ------------------------------------------------------------------------------ one pass, --check, alternatives
def test_every_failed_file_is_reported_in_one_pass(tmp_path, mirror, capsys):
    mirror_dir, base_url, requests = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    make_mirror("OxfordPets", mirror_dir, tmp_path / "src")
    held_back = [mirror_dir / "caltech-101" / "split_zhou_Caltech101.json", mirror_dir / "oxford_pets" / "annotations.tar.gz"]
    for path in held_back:
        path.rename(path.with_name(path.name + ".held"))
    root = tmp_path / "data"
    argv = ["--root", str(root), "--datasets", "caltech101", "oxford_pets", "--base-url", base_url]
    assert data_prep.main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all("HTTP 404" in l for l in lines)
    assert "/caltech-101/split_zhou_Caltech101.json" in lines[0] and "/oxford_pets/annotations.tar.gz" in lines[1]
    assert "Ready: none" in out and "Could not prepare 2 file(s)" in out
    # the files that could be fetched were laid out in the same pass; the next run fetches only the two others
    assert (root / "caltech-101" / "101_ObjectCategories").is_dir() and (root / "oxford_pets" / "images").is_dir()
    for path in held_back:
        path.with_name(path.name + ".held").rename(path)
    n_before = len(requests)
    assert data_prep.main(argv) == 0
    assert sorted(p for p, _ in requests[n_before:]) == ["/caltech-101/split_zhou_Caltech101.json",
                                                         "/oxford_pets/annotations.tar.gz"]
    assert build(root, "Caltech101").num_classes == build(root, "OxfordPets").num_classes == 6


def test_check_lists_every_unreadable_and_missing_image(tmp_path, capsys):
    from mmpt.data.image_check import find_unreadable, image_files

    make_dataset("Caltech101", str(tmp_path))
    ds = build(tmp_path, "Caltech101")  # writes the split json
    make_dataset("DescribableTextures", str(tmp_path))
    truncated, garbage, missing = ds.train_x[0].impath, ds.test[1].impath, ds.val[2].impath
    Path(truncated).write_bytes(Path(truncated).read_bytes()[:300])  # a cut-off JPEG: the header still parses
    Path(garbage).write_bytes(b"<html>not an image</html>")
    os.remove(missing)
    ignored = tmp_path / "caltech-101" / "101_ObjectCategories" / "BACKGROUND_Google"  # on disk: checked too
    unused = str(next(ignored.iterdir()))
    Path(unused).write_bytes(b"")
    argv = ["--root", str(tmp_path), "--datasets", "caltech101", "dtd", "--check", "--workers", "2"]
    assert data_prep.main(argv) == 1
    out = capsys.readouterr().out
    problems = out.split("problem(s):\n", 1)[1].splitlines()
    assert len(problems) == 4
    assert problems[0].strip() == f"{missing} is referenced by {ds.split_path} but missing"
    assert sorted(p.split(":")[0].split()[-1] for p in problems[1:]) == sorted([truncated, garbage, unused])
    assert "DescribableTextures" in out and "0 unreadable" in out  # the clean dataset is checked as well
    # in-process and pooled decoding agree, in the order of the paths
    paths = image_files(str(tmp_path / "caltech-101"))
    assert find_unreadable(paths, workers=1, progress=False) == find_unreadable(paths, workers=2, progress=False)
    assert [p for p, _ in find_unreadable(paths, workers=2, progress=False)] == sorted([truncated, garbage, unused])
    shutil.rmtree(tmp_path / "caltech-101")
    assert data_prep.main(["--root", str(tmp_path), "--datasets", "dtd", "--check"]) == 0


def caltechdata_zip(src_dir, out_path):
    """The CaltechDATA packaging: caltech-101.zip holding caltech-101/101_ObjectCategories.tar.gz."""
    inner = out_path.parent / "101_ObjectCategories.tar.gz"
    with tarfile.open(inner, "w:gz") as tf:
        tf.add(src_dir / "101_ObjectCategories", arcname="101_ObjectCategories")
    with zipfile.ZipFile(out_path, "w") as zf:
        zf.write(inner, "caltech-101/101_ObjectCategories.tar.gz")
        zf.writestr("caltech-101/Annotations.tar", b"")
    inner.unlink()


@pytest.mark.parametrize("original", ["404", "html page", "unreachable"])
def test_alternative_source_after_the_original_fails(tmp_path, mirror, monkeypatch, capsys, original):
    mirror_dir, base_url, requests = mirror
    reference = make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    hosts = mirror_dir / "hosts"
    hosts.mkdir()
    caltechdata_zip(tmp_path / "src" / "caltech-101", hosts / "caltech-101.zip")
    (hosts / "moved.tar.gz").write_text("<html>This page has moved</html>")
    (hosts / "split.json").write_bytes((mirror_dir / "caltech-101" / "split_zhou_Caltech101.json").read_bytes())
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/101_ObjectCategories.tar.gz"
    table, split_json = SOURCES["Caltech101"].resources
    alternative = dataclasses.replace(table.alternatives[0], url=f"{base_url}/hosts/caltech-101.zip",
                                      md5=data_prep.file_digest(str(hosts / "caltech-101.zip"), "md5"))
    first_url = {"404": f"{base_url}/hosts/gone.tar.gz", "html page": f"{base_url}/hosts/moved.tar.gz",
                 "unreachable": dead}[original]
    monkeypatch.setitem(SOURCES, "Caltech101", data_prep.Source((
        dataclasses.replace(table, url=first_url, alternatives=(alternative,)),
        dataclasses.replace(split_json, url=f"{base_url}/hosts/split.json"))))
    root = tmp_path / "data"
    assert data_prep.main(["--root", str(root), "--datasets", "caltech101"]) == 0
    out = capsys.readouterr().out
    assert f"trying {base_url}/hosts/caltech-101.zip" in out
    ds = build(root, "Caltech101")
    assert relative(ds.test, root) == relative(reference.test, tmp_path / "src")
    assert not list((root / "caltech-101").glob("*.zip")) and not list((root / "caltech-101").glob("*.part"))
    # an alternative that fails too: both failures, in one line
    shutil.rmtree(root)
    monkeypatch.setitem(SOURCES, "Caltech101", data_prep.Source((
        dataclasses.replace(table, url=first_url, alternatives=(dataclasses.replace(alternative, md5="0" * 32),)),)))
    assert data_prep.main(["--root", str(root), "--datasets", "caltech101"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and first_url in err and "caltech-101.zip: md5 differs" in err


def test_published_checksums_and_alternatives_in_the_table():
    """What the real table holds (values from torchvision's dataset classes for these exact files)."""
    table = TABLE
    caltech = table["Caltech101"].resources[0].alternatives[0]
    assert caltech.url == "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip"
    assert caltech.md5 == "3138e1922a9193bfa496528edbbc45d0"
    assert table["EuroSAT"].resources[0].alternatives[0].md5 == "c8fa014336c82ac7804f0398fcb19387"
    assert table["UCF101"].resources[-1].url == "gdrive:1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"
    assert table["StanfordCars"].if_failed


# ------------------------------------------------------------------------------ the Hugging Face Hub mirror
@pytest.fixture(autouse=True)
def hub_endpoint_closed(monkeypatch):
    """No test reaches huggingface.co: the Hub endpoint is a closed loopback port unless a test serves one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


class HubHandler(http.server.BaseHTTPRequestHandler):
    """The Hub's download API: `/{datasets/}<repo>/resolve/<revision>/<file>` answers (HEAD and GET) with a 302
    to the file's blob on another origin (the CDN: the `mirror` server), carrying the headers hf_hub_download
    reads: X-Repo-Commit, X-Linked-Etag (the sha256 of an LFS file), X-Linked-Size."""

    files = None  # {url path: (sha256 announced, size, CDN url)}
    requests = None

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.requests.append((self.command, self.path))
        entry = self.files.get(self.path.split("?")[0])
        if entry is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        sha256, size, cdn_url = entry
        self.send_response(302)
        self.send_header("Location", cdn_url)
        self.send_header("X-Repo-Commit", data_prep.HUB_MIRROR.revision)
        self.send_header("X-Linked-Etag", f'"{sha256}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("ETag", '"0123"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD


@pytest.fixture
def hub(tmp_path, mirror, monkeypatch):
    """serve(name, archive path, repo_type, announced sha256=None) puts an archive on a loopback Hub (HF_ENDPOINT
    points at it) whose blobs the `mirror` server hands out; returns the list of Hub requests."""
    mirror_dir, base_url, _ = mirror
    files, requests = {}, []
    handler = type("Hub", (HubHandler,), {"files": files, "requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")

    def serve(name, archive, repo_type, sha256=None):
        table = data_prep.HUB_MIRROR
        mirror_entry = dataclasses.replace(table, repo_type=repo_type)
        monkeypatch.setattr(data_prep, "HUB_MIRROR", mirror_entry)
        blob = mirror_dir / "cdn" / data_prep.file_digest(str(archive), "sha256")
        blob.parent.mkdir(exist_ok=True)
        shutil.copy(archive, blob)
        kind = "datasets/" if repo_type == "dataset" else ""
        path = f"/{kind}{table.repo_id}/resolve/{table.revision}/{table.files[name]}"
        files[path] = (sha256 or blob.name, blob.stat().st_size, f"{base_url}/cdn/{blob.name}")
        return requests

    yield serve
    server.shutdown()
    server.server_close()


def tree(folder):
    """{relative path: bytes} of every file under folder except data_prep's bookkeeping."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and ".data_prep" not in p.relative_to(folder).parts}


def hub_archive(src_dir, out_path):
    """A community copy: the whole dataset folder in one zip (under its folder name), with extras of its own
    (a few-shot cache and a README) that must not land in the prepared folder."""
    with zipfile.ZipFile(out_path, "w") as zf:
        for path in sorted(Path(src_dir).rglob("*")):
            if path.is_file():
                zf.write(path, f"{Path(src_dir).name}/{path.relative_to(src_dir)}")
        zf.writestr(f"{Path(src_dir).name}/split_fewshot/shot_16-seed_1.pkl", b"not ours")
        zf.writestr(f"{Path(src_dir).name}/README.txt", b"prompt learning datasets")


def original_hosts(base_url, folder, gone=False):
    """SOURCES entries of Caltech101 pointed at the loopback original host (404 when `gone`), no alternatives."""
    resources = tuple(dataclasses.replace(r, url=f"{base_url}/{'gone' if gone else folder}/{r.filename}",
                                          alternatives=()) for r in SOURCES["Caltech101"].resources)
    return data_prep.Source(resources)


@pytest.mark.parametrize("repo_type", ["model", "dataset"])
def test_hub_mirror_after_the_original_host_fails(tmp_path, mirror, hub, monkeypatch, capsys, repo_type):
    """The original host serves the files; then it is gone and the Hub copy (HF_ENDPOINT, the Hub's download
    API) serves the same dataset: the prepared folders are identical, split file byte for byte."""
    mirror_dir, base_url, _ = mirror
    reference = make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    monkeypatch.setitem(SOURCES, "Caltech101", original_hosts(base_url, "caltech-101"))
    from_original = tmp_path / "original"
    assert data_prep.main(["--root", str(from_original), "--datasets", "caltech101", "--source", "original"]) == 0
    hub_archive(tmp_path / "src" / "caltech-101", tmp_path / "caltech-101.zip")
    requests = hub("Caltech101", tmp_path / "caltech-101.zip", repo_type)
    monkeypatch.setitem(SOURCES, "Caltech101", original_hosts(base_url, "caltech-101", gone=True))
    from_hub = tmp_path / "hub"
    capsys.readouterr()
    assert data_prep.main(["--root", str(from_hub), "--datasets", "caltech101"]) == 0
    out = capsys.readouterr().out
    hub_url = data_prep.hub_url(data_prep.HUB_MIRROR, "caltech-101.zip")
    assert hub_url.startswith(os.environ["HF_ENDPOINT"]) and ("/datasets/" in hub_url) == (repo_type == "dataset")
    failed = [line for line in out.splitlines() if "original host failed" in line]
    assert len(failed) == 1 and "HTTP 404" in failed[0] and failed[0].endswith(f"trying {hub_url}")
    assert ("HEAD", hub_url[len(os.environ["HF_ENDPOINT"]):]) in requests  # fetched once for both resources
    assert sum(1 for method, _ in requests if method == "GET") <= 1
    hub_tree, original_tree = tree(from_hub / "caltech-101"), tree(from_original / "caltech-101")
    assert hub_tree.keys() == original_tree.keys() and hub_tree == original_tree
    assert "split_zhou_Caltech101.json" in hub_tree and not (from_hub / "caltech-101" / "split_fewshot").exists()
    ds = build(from_hub, "Caltech101")
    assert relative(ds.test, from_hub) == relative(reference.test, tmp_path / "src")
    # a second run finds everything done
    assert data_prep.main(["--root", str(from_hub), "--datasets", "caltech101"]) == 0
    assert "done before" in capsys.readouterr().out


def test_hub_checksum_offline_and_source_order(tmp_path, mirror, hub, monkeypatch, capsys):
    mirror_dir, base_url, _ = mirror
    make_mirror("Caltech101", mirror_dir, tmp_path / "src")
    hub_archive(tmp_path / "src" / "caltech-101", tmp_path / "caltech-101.zip")
    monkeypatch.setitem(SOURCES, "Caltech101", original_hosts(base_url, "caltech-101", gone=True))
    argv = ["--root", str(tmp_path / "data"), "--datasets", "caltech101"]
    # the Hub publishes a sha256 the file does not have: refused in one line per resource, nothing laid out
    requests = hub("Caltech101", tmp_path / "caltech-101.zip", "model", sha256="0" * 64)
    assert data_prep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("sha256 differs from the one published by the Hub" in line for line in err)
    assert not (tmp_path / "data" / "caltech-101" / "101_ObjectCategories").exists()
    # offline: only an earlier download would do; one line says so
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n_requests = len(requests)
    assert data_prep.main(argv) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and len(requests) == n_requests
    # --source hub first: the Hub serves everything, the original host is not asked
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub("Caltech101", tmp_path / "caltech-101.zip", "model")
    n_mirror = len(mirror[2])
    assert data_prep.main(argv + ["--source", "hub", "original"]) == 0
    assert not any(path.startswith("/gone/") for path, _ in mirror[2][n_mirror:])
    assert build(tmp_path / "data", "Caltech101").num_classes == 6
