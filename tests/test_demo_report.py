"""sciencevae demo (offline, both case studies) and the self-contained report.html."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

import sciencevae
from sciencevae.cli import main


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self._in_heading = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        self._in_heading = tag in ("h1", "h2")

    def handle_data(self, data):
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
            self._in_heading = False


def check_report(folder: Path) -> Collector:
    page = Collector()
    page.feed((folder / "report.html").read_text(encoding="utf-8"))
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    for src in page.images:  # every embedded figure is a real PNG
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.links and all((folder / link).is_file() for link in page.links)
    assert not re.search(r"https?://", (folder / "report.html").read_text()), "the report must not load anything"
    return page


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--quiet"]) == 0
    return out


def test_demo_runs_offline_and_writes_two_reports(demo, capsys):
    out = demo
    cells, climate = check_report(out / "cells"), check_report(out / "climate")
    assert "Known PBMC markers among the top genes" in cells.headings
    assert "Known truth and what was found" in climate.headings
    assert "Knobs and their roles" in climate.headings
    assert "cells.h5ad" in cells.links and "components.nc" in climate.links
    assert not (out / "INCOMPLETE").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it when it can)")
def test_report_opens_in_a_headless_browser_and_shows_the_figures(demo, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    report = (demo / "climate" / "report.html").resolve().as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", report], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Knobs and their roles" in dom.stdout
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,3000", f"--screenshot={shot}", report],
                   capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)
    figures = pixels[1500:, :, :3]  # below the tables: the embedded figures
    assert pixels.shape[:2] == (3000, 1200) and figures.std() > 0.1  # not blank


@pytest.mark.parametrize("fmt", ["zarr", "parquet", "csv"])
def test_export_keeps_coordinates_names_and_provenance(demo, tmp_path, fmt):
    import json

    import pandas as pd
    import xarray as xr

    for kind in ("climate", "cells"):
        out = tmp_path / kind
        assert main(["export", str(demo / kind), "--format", fmt, "--out", str(out)]) == 0
        if fmt == "zarr":
            ds = xr.open_zarr(out / "export.zarr")
            provenance = json.loads(ds.attrs["provenance"])
            if kind == "climate":
                assert ds["z"].dims == ("time", "latent") and "map_sst" in ds
                xr.testing.assert_equal(ds["time"], xr.open_dataset(demo / "climate" / "latents.nc")["time"])
            else:
                assert ds["activity"].dims == ("cell", "programme") and ds["loading"].dims == ("gene", "programme")
                assert "LYZ" in ds["gene"].values
        else:
            provenance = json.loads((out / "provenance.json").read_text())
            name = "activity" if kind == "cells" else "z_z_std"
            table = pd.read_parquet(out / f"{name}.parquet") if fmt == "parquet" else pd.read_csv(
                out / f"{name}.csv", index_col=[0] if kind == "cells" else [0, 1])
            assert len(table) > 0
        assert provenance["sciencevae_version"] == sciencevae.__version__
        assert provenance["settings"]["n_latent"] == (8 if kind == "climate" else 10)
    assert main(["export", str(tmp_path), "--format", fmt]) == 2  # not a run folder


def test_export_a_fit_run_as_csv(tmp_path):
    import numpy as np
    import pandas as pd

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"]) == 0
    assert main(["export", str(tmp_path / "run"), "--format", "csv"]) == 0
    table = pd.read_csv(tmp_path / "run" / "export" / "z.csv", index_col=0)
    assert table.shape == (30, 10)
    provenance = (tmp_path / "run" / "export" / "provenance.json").read_text()
    assert '"input_sha256"' in provenance and '"n_latent": 10' in provenance
