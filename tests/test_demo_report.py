"""sciencevae demo (offline, both case studies) and the self-contained report.html."""

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

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


def test_demo_runs_offline_and_writes_two_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fast", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "known markers" in printed and "known truth" in printed
    cells, climate = check_report(out / "cells"), check_report(out / "climate")
    assert "Known PBMC markers among the top genes" in cells.headings
    assert "Known truth and what was found" in climate.headings
    assert "Knobs and their roles" in climate.headings
    assert "cells.h5ad" in cells.links and "components.nc" in climate.links
    assert not (out / "INCOMPLETE").exists()
