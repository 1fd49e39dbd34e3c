"""Data manifests: list, fetch from a file URL and a local HTTP server (resume,
right and wrong checksums, offline), verify."""

import hashlib
import http.server
import json
import threading
from functools import partial

import numpy as np
import pytest

from sciencevae import fetch
from sciencevae.cli import main

PAYLOAD = np.random.default_rng(0).bytes(3_000_000)


def write_manifest(folder, url, sha256, size=len(PAYLOAD), name="toy"):
    folder.mkdir(exist_ok=True)
    manifest = {"name": name, "title": "a toy file", "files": [{"filename": "toy.bin", "url": url,
                                                                "sha256": sha256, "size": size}]}
    (folder / f"{name}.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source" / "toy.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def test_every_installed_manifest_is_complete(capsys):
    known = fetch.manifests()
    assert "ersstv5_sst_2010_2020" in known
    for manifest in known.values():
        assert {"name", "title", "files", "licence", "citation", "variables", "dims"} <= set(manifest)
        assert all(f["url"].startswith("https://") for f in manifest["files"])
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in known) and "pinned" in listed


def test_fetch_from_a_file_url_checks_the_sha256(tmp_path, source):
    right = hashlib.sha256(PAYLOAD).hexdigest()
    good = write_manifest(tmp_path / "good", source.as_uri(), right)
    paths = fetch.fetch("toy", cache=tmp_path / "cache", progress=False, manifest_folder=good)
    assert paths[0].read_bytes() == PAYLOAD
    assert fetch.verify(paths[0], manifest_folder=good)["ok"]
    bad = write_manifest(tmp_path / "bad", source.as_uri(), "0" * 64)
    with pytest.raises(ValueError, match="does not match the manifest"):
        fetch.fetch("toy", cache=tmp_path / "cache2", progress=False, manifest_folder=bad)
    assert not list((tmp_path / "cache2" / "toy").iterdir())  # nothing wrong is left behind
    assert not fetch.verify(source, manifest_folder=bad)["ok"]


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves byte ranges (SimpleHTTPRequestHandler does not)."""

    requested_ranges: list = []

    def do_GET(self):  # noqa: N802
        header = self.headers.get("Range")
        self.requested_ranges.append(header)
        if not header:
            return super().do_GET()
        start = int(header.removeprefix("bytes=").rstrip("-"))
        body = PAYLOAD[start:]
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_interrupted_download_resumes_over_http(tmp_path, source):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(source.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/toy.bin"
        manifests = write_manifest(tmp_path / "m", url, hashlib.sha256(PAYLOAD).hexdigest())
        part = tmp_path / "cache" / "toy" / "toy.bin.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(PAYLOAD[:1_000_000])  # what an interrupted download left
        paths = fetch.fetch("toy", cache=tmp_path / "cache", progress=False, manifest_folder=manifests)
        assert paths[0].read_bytes() == PAYLOAD and not part.exists()
        assert RangeHandler.requested_ranges[-1] == "bytes=1000000-"
    finally:
        server.shutdown()


def test_offline_fails_at_once_with_the_url_and_where_to_put_the_file(tmp_path):
    manifests = write_manifest(tmp_path / "m", "http://127.0.0.1:9/toy.bin", "0" * 64)
    with pytest.raises(ValueError, match=r"could not download http://127.0.0.1:9/toy.bin .* place it at .*toy.bin"):
        fetch.fetch("toy", cache=tmp_path / "cache", progress=False, manifest_folder=manifests)


def test_unpinned_files_are_kept_with_a_warning(tmp_path, source):
    manifests = write_manifest(tmp_path / "m", source.as_uri(), None, size=None)
    with pytest.warns(UserWarning, match="not pinned"):
        fetch.fetch("toy", cache=tmp_path / "cache", progress=False, manifest_folder=manifests)


def test_cli_errors(tmp_path, capsys):
    assert main(["data", "fetch", "nothing_like_this"]) == 2
    assert "no dataset named 'nothing_like_this'" in capsys.readouterr().err
    (tmp_path / "x.bin").write_bytes(b"abc")
    assert main(["data", "verify", str(tmp_path / "x.bin")]) == 2
    assert "matches no pinned manifest file" in capsys.readouterr().err


def test_the_shared_ersstv5_file_verifies_against_its_manifest(capsys):
    from pathlib import Path

    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "climate"
    path = shared / "ersstv5_global_2deg_monthly_2010-2020.nc"
    if not path.exists():
        pytest.skip("needs ../shared/data (the ERSSTv5 file)")
    assert main(["data", "verify", str(path)]) == 0
    assert "ersstv5_sst_2010_2020 / sst.mnmean.nc" in capsys.readouterr().out
