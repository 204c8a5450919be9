"""What a non-editable install ships: every file git tracks under the packages' folders.

``pip install carpulse`` (a wheel, not the editable install of the checkout) copies only the
packages setuptools finds and the data files ``setup.cfg``'s ``package_data`` names. Folders
without an ``__init__.py`` (the CRM's Alembic migrations, the VSS mappings) were left out once,
so ``carpulse crm migrate`` failed on such an install. ``build_py`` is the step that fills the
wheel: it runs here into a temporary folder and the test compares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("carpulse", "core", "crm", "dashboards", "edge", "firmware_bridge", "models", "stream")


def test_a_wheel_ships_every_tracked_file_of_the_packages(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout (git ls-files)")
    tracked = subprocess.run(
        ["git", "ls-files", "--", *PACKAGES], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(tracked) > 200, tracked[:5]
    build, egg = tmp_path / "lib", tmp_path / "egg"
    egg.mkdir()
    # a fresh egg-info: the checkout's own SOURCES.txt (from the editable install) lists every
    # file and would hide what a clean build (pip's isolated one) leaves out
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q",
         "egg_info", "--egg-base", str(egg), "build_py", "--build-lib", str(build)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    missing = [f for f in tracked if not (build / f).is_file()]
    assert missing == [], f"{len(missing)} tracked files a wheel leaves out: {missing[:20]}"
    assert (build / "crm/migrations/versions").is_dir()
