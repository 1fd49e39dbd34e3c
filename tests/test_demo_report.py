"""sciencevae demo (offline, both case studies) and the self-contained report.html."""

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pytest

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
