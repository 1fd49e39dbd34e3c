"""Real datasets by name: manifests, checksum-verified resumable downloads, verification.

A manifest (``data_manifests/*.json``, installed as ``sciencevae.data_manifests``)
names a dataset's file(s) with URL, sha256 and size, plus licence, citation and
the variables / dimensions to expect. ``fetch`` downloads into a cache
(``$SCIENCEVAE_DATA`` or ``~/.cache/sciencevae``) through a ``.part`` file that
an interrupted download resumes (HTTP Range), checks size and sha256, and only
then renames the file into place. Offline, it fails at once and says where to
put the file by hand. A manifest whose ``sha256`` is null is *unpinned*: the
download is kept and its checksum printed, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
import warnings
from importlib import resources
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["manifests", "fetch", "verify", "cache_dir", "file_sha256"]

BLOCK = 1 << 20


def cache_dir() -> Path:
    """``$SCIENCEVAE_DATA`` or ``~/.cache/sciencevae``."""
    return Path(os.environ.get("SCIENCEVAE_DATA", Path.home() / ".cache" / "sciencevae"))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def manifests(folder: str | Path | None = None) -> dict[str, dict]:
    """All manifests by name (the installed ones unless ``folder`` is given).

    >>> "ersstv5_sst_2010_2020" in manifests()
    True
    """
    root = Path(folder) if folder is not None else resources.files("sciencevae.data_manifests")
    out = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".json"):
            manifest = json.loads(entry.read_text(encoding="utf-8"))
            out[manifest["name"]] = manifest
    return out


def _download(url: str, part: Path, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (Range request when ``part`` has bytes)."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        resumed = start and getattr(response, "status", 200) == 206
        mode = "ab" if resumed else "wb"
        total = response.headers.get("Content-Length")
        with open(part, mode) as handle, tqdm(total=int(total) if total else None, initial=0, unit="B",
                                               unit_scale=True, disable=not progress, desc=part.stem) as bar:
            for block in iter(lambda: response.read(BLOCK), b""):
                handle.write(block)
                bar.update(len(block))


def fetch(name: str, cache: str | Path | None = None, progress: bool = True,
          manifest_folder: str | Path | None = None) -> list[Path]:
    """Download (or find in the cache) every file of dataset ``name``; returns their paths."""
    known = manifests(manifest_folder)
    if name not in known:
        raise ValueError(f"no dataset named {name!r}; `sciencevae data list` shows {sorted(known)}")
    folder = Path(cache) if cache is not None else cache_dir()
    folder = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for item in known[name]["files"]:
        target = folder / item["filename"]
        if not target.exists():
            part = target.with_name(target.name + ".part")
            try:
                _download(item["url"], part, progress)
            except (urllib.error.URLError, OSError) as err:
                raise ValueError(
                    f"could not download {item['url']} ({err}); offline, download it elsewhere and place it "
                    f"at {target} — `sciencevae data verify {target}` checks it"
                ) from None
            _check(part, item)
            os.replace(part, target)
        else:
            _check(target, item)
        paths.append(target)
    return paths


def _check(path: Path, item: dict) -> None:
    size, expected = path.stat().st_size, item.get("sha256")
    if item.get("size") is not None and size != item["size"]:
        kept = " (kept to resume: run fetch again)" if size < item["size"] and path.suffix == ".part" else ""
        if not kept:
            path.unlink()
        raise ValueError(f"{item['filename']}: {size} bytes, the manifest says {item['size']}{kept}")
    actual = file_sha256(path)
    if expected is None:
        warnings.warn(f"{item['filename']} is not pinned in its manifest; its sha256 is {actual}", UserWarning,
                      stacklevel=3)
        return
    if actual != expected:
        path.unlink()
        raise ValueError(f"{item['filename']}: sha256 {actual} does not match the manifest's {expected}; "
                         "the file was removed")


def verify(path: str | Path, manifest_folder: str | Path | None = None) -> dict:
    """Which manifest file ``path`` is (by sha256), or that it matches none."""
    actual = file_sha256(path)
    for name, manifest in manifests(manifest_folder).items():
        for item in manifest["files"]:
            if item.get("sha256") == actual:
                return {"path": str(path), "sha256": actual, "dataset": name, "file": item["filename"], "ok": True}
    return {"path": str(path), "sha256": actual, "dataset": None, "file": None, "ok": False}
