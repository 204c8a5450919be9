"""The contracts in core: importable on a Pi without numba or the cloud side, and one error tree."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import core.errors

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("core", "firmware_bridge", "edge", "models", "stream", "crm", "dashboards", "carpulse")


def test_the_contracts_import_without_numba_faust_or_sqlalchemy() -> None:
    code = (
        "import sys, core.frames, core.kernel_flags, core.dtc, core.backoff, core.errors,"
        " core.crm_events, core.commands\n"
        "heavy = ('numba', 'llvmlite', 'faust', 'aiokafka', 'sqlalchemy', 'mode')\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "", f"core contracts pull in {out.stdout}"


def test_every_carpulse_error_is_defined_and_drawn_in_core_errors() -> None:
    ours = {
        name
        for name, obj in vars(core.errors).items()
        if isinstance(obj, type) and issubclass(obj, core.errors.CarpulseError)
    }
    doc = core.errors.__doc__ or ""
    undrawn = sorted(
        n for n in ours if not re.search(rf"(^|\+-- ){n}\b", doc, re.M) and n != "CarpulseError"
    )
    assert undrawn == [], "missing from the tree in core/errors.py's docstring"
    elsewhere = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "core" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_bytes())):
                if isinstance(node, ast.ClassDef):
                    bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")
                             for b in node.bases}  # fmt: skip
                    if bases & ours:
                        elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert elsewhere == [], "define these in core/errors.py and draw them in its tree"
