"""adapters/ and case_studies/ install as sciencevae.adapters / .case_studies,
both for the editable install and in a built wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_the_top_level_folders():
    import sciencevae.adapters
    import sciencevae.case_studies

    assert Path(sciencevae.adapters.__file__).resolve().parent == ROOT / "adapters"
    assert Path(sciencevae.case_studies.__file__).resolve().parent == ROOT / "case_studies"


@pytest.mark.slow
def test_built_wheel_holds_the_namespaced_packages(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("sciencevae", "adapters", "case_studies", "data_manifests"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("sciencevae-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "sciencevae/adapters/__init__.py" in names
    assert "sciencevae/case_studies/__init__.py" in names
    assert "sciencevae/model.py" in names
    assert "sciencevae/data_manifests/ersstv5_sst_2010_2020.json" in names
    assert not any(n.startswith(("adapters/", "case_studies/", "data_manifests/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sciencevae = sciencevae.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
