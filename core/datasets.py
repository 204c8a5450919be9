"""Where the shared real data lives, and which DBC goes with which car's logs."""

from __future__ import annotations

import os
from pathlib import Path

# The DBC that matches each car's logs best (share of frames matched, see ../shared/DATA.md).
CAR_DBC = {
    "gt350": "ford_lincoln_base_pt.dbc",
    "forte": "hyundai_kia_generic.dbc",
    "fiesta_st": "ford_lincoln_base_pt.dbc",
    "genesis": "slimmeddbc.dbc",
    "yaris09": "toyota_iQ_2009_can.dbc",
    "durango": "chrysler_pacifica_2017_hybrid_private_fusion.dbc",
}


def shared_data_dir() -> Path:
    """``$CARPULSE_SHARED_DATA`` or ``../shared/data`` beside the checkout."""
    env = os.environ.get("CARPULSE_SHARED_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[1]
    return here.parent / "shared" / "data"


def canlog_dir() -> Path:
    return shared_data_dir() / "canlogs"


def car_logs(root: Path | None = None) -> list[tuple[str, Path, Path]]:
    """``(car, log, dbc)`` for every log of every car that has a known DBC, sorted."""
    base = root or canlog_dir()
    out: list[tuple[str, Path, Path]] = []
    for car, dbc in sorted(CAR_DBC.items()):
        folder = base / car
        if not (folder / dbc).exists():
            continue
        out.extend((car, log, folder / dbc) for log in sorted(folder.glob("*.log")))
    return out
