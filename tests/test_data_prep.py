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
    assert requests[-2][1] == "bytes=1000-"
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
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"http://127.0.0.1:{port}/oxford_pets/images.tar.gz" in err
    assert str(tmp_path / "oxford_pets" / "images.tar.gz") in err


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
