"""Every DBC in the shared data either loads, or fails with ConfigError naming the file and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from firmware_bridge.dbc import load_dbc
from tests.conftest import require_data

# cantools 45 rejects these even with strict=False (11-bit ids wider than 11 bits, bad syntax,
# VAL_ for unknown signals); every other DBC here loads, at least with strict=False.
CANTOOLS_CANNOT_LOAD = {
    "chrysler_cusw.dbc",
    "fca_giorgio.dbc",
    "gm_global_a_lowspeed.dbc",
    "mazda_2017.dbc",
    "psa_aee2010_r3.dbc",
    "rivian_primary_actuator.dbc",
    "tesla_can.dbc",
    "toyota_2017_ref_pt.dbc",
    "toyota_radar_dsu_tssp.dbc",
    "vw_mqbevo.dbc",
}


@pytest.mark.slow
def test_each_shared_dbc_loads_or_names_file_and_reason() -> None:
    root = require_data("dbc")
    logs = require_data("canlogs")
    paths = sorted(root.glob("*.dbc")) + sorted(logs.glob("*/*.dbc"))
    assert len(paths) > 60
    strict_failures: list[str] = []
    never: set[str] = set()
    for p in paths:
        try:
            load_dbc(p)
            continue
        except ConfigError as err:
            msg = str(err)
        strict_failures.append(p.name)
        assert str(p) in msg and "cannot be loaded: " in msg
        reason = msg.split("cannot be loaded: ", 1)[1]
        assert len(reason) > 20  # cantools' own reason, not just our wrapper
        try:
            db = load_dbc(p, strict=False)
        except ConfigError as err:
            assert "even with strict=False" in msg
            assert str(p) in str(err)
            never.add(p.name)
        else:
            assert "strict=False / --no-strict loads" in msg
            assert db.messages
    assert never == CANTOOLS_CANNOT_LOAD
    assert len(strict_failures) > len(never)


def test_missing_and_garbage_dbc_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dbc(tmp_path / "none.dbc")
    bad = tmp_path / "bad.dbc"
    bad.write_text('VERSION ""\nBO_ 12 X: 8 Y\n SG_ S : 0|80@1+ (1,0) [0|1] "" Y\n')
    with pytest.raises(ConfigError, match=f"{bad}.*cannot be loaded"):
        load_dbc(bad)
