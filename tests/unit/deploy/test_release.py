"""CHANGELOG: an Unreleased section on top, then the release ``carpulse --version`` prints."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_newest_release_is_the_package_version() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    version = cfg["metadata"]["version"]
    heads = re.findall(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert heads[0] == "Unreleased"
    release = re.fullmatch(r"(\d+\.\d+\.\d+) - (\d{4}-\d{2}-\d{2})", heads[1])
    assert release is not None, heads[1]
    assert release.group(1) == version
    printed = subprocess.run([sys.executable, "-m", "carpulse", "--version"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert printed.stdout.strip() == f"carpulse {version}"
