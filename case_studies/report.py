"""A self-contained ``report.html`` per run: settings, tables, figures embedded
as base64 PNG, and links to the output files. No template engine, no network.

>>> import tempfile, pandas as pd
>>> folder = Path(tempfile.mkdtemp())
>>> path = write_report(folder, "demo", {"beta": 1.0}, {"table": pd.DataFrame({"a": [1]})})
>>> "<h1>demo</h1>" in path.read_text()
True
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from sciencevae import __version__
from sciencevae.cli import INCOMPLETE
from sciencevae.io import atomic_write_text

__all__ = ["write_report", "REPORT_NAME"]

REPORT_NAME = "report.html"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


#: Columns holding p- or q-values: shown to 3 significant digits however small (never as 0).
P_VALUE_COLUMNS = ("p", "q", "rank_p", "rank_q", "p_value", "q_value")


def _table(frame: pd.DataFrame) -> str:
    """HTML of ``frame``: numbers by :func:`_number`, p- and q-values to 3 significant digits (1e-22 stays 1e-22),
    a missing value (NaN: not applicable) as "–".

    >>> "1e-22" in _table(pd.DataFrame({"q": [1e-22], "r2": [1e-16]}))
    True
    """
    formatters = {c: (lambda v: f"{v:.3g}") for c in frame.columns if c in P_VALUE_COLUMNS}
    return frame.to_html(index=False, float_format=_number, formatters=formatters, border=0, escape=True,
                         na_rep="–")


def _number(value: float) -> str:
    """4 significant digits; rounding noise (|v| < 1e-9, e.g. an R² of 8.9e-16) shows as 0.

    >>> _number(8.881784197001252e-16), _number(0.123456), _number(float("nan"))
    ('0', '0.1235', 'nan')
    """
    return "0" if abs(value) < 1e-9 else f"{value:.4g}"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.stem.replace("_", " "))
    return f'<h3>{name}</h3>\n<img alt="{name}" src="data:image/png;base64,{data}">'


def _inputs_table(folder: Path) -> pd.DataFrame | None:
    """The run's input files and their sha256, from ``run.json`` (None when the run has none)."""
    path = folder / "run.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text(encoding="utf-8"))
    files = list(run.get("inputs", [])) + ([run["gene_sets"]] if "gene_sets" in run else [])
    if not files:
        return None
    table = pd.DataFrame(files, columns=["path", "sha256"])
    return table.fillna({"sha256": "(a folder: no checksum)"})


def write_report(folder: str | Path, title: str, settings: dict, tables: dict[str, pd.DataFrame],
                 notes: list[str] | None = None) -> Path:
    """Write ``folder/report.html`` from the run's settings, tables, ``figures/*.png`` and files; a table
    without rows shows as "None." under its title.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> "<p>None.</p>" in write_report(folder, "t", {}, {"empty": pd.DataFrame({"a": []})}).read_text()
    True
    """
    folder = Path(folder)
    figures = sorted((folder / "figures").glob("*.png")) if (folder / "figures").is_dir() else []
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name not in (REPORT_NAME, INCOMPLETE) and not p.name.startswith("."))
    settings_frame = pd.DataFrame({"setting": list(settings),
                                   "value": ["–" if v is None else str(v) for v in settings.values()]})
    parts = [
        f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>sciencevae {html.escape(__version__)}</p>",
        *[f"<p>{html.escape(note)}</p>" for note in notes or []],
    ]
    inputs = _inputs_table(folder)
    parts += ["<h2>Input</h2>", _table(inputs) if inputs is not None else
              "<p>data given in memory (no input file recorded in run.json)</p>"]
    parts += ["<h2>Settings</h2>", _table(settings_frame)]
    for name, frame in tables.items():
        parts += [f"<h2>{html.escape(name)}</h2>", _table(frame) if len(frame) else "<p>None.</p>"]
    if figures:
        parts += ["<h2>Figures</h2>", *[_figure(p) for p in figures]]
    links = "\n".join(f'<li><a href="{html.escape(f)}">{html.escape(f)}</a></li>' for f in files)
    parts += ["<h2>Output files</h2>", f"<ul>\n{links}\n</ul>", "</body></html>"]
    path = folder / REPORT_NAME
    atomic_write_text("\n".join(parts), path)
    return path
