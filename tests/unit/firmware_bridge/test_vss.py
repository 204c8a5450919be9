"""DBC -> VSS mappings: shipped files load and match their DBCs, errors name file/line/field, transforms."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from core.datasets import CAR_DBC, car_logs
from core.errors import ConfigError
from core.wire import Samples
from firmware_bridge.dbc import CantoolsDecoder, load_dbc
from firmware_bridge.frames import read_candump
from firmware_bridge.vss import (
    CATALOG_PATH,
    UNIT_CONVERSIONS,
    default_catalog,
    load_mapping,
    read_catalog,
    regenerate_catalog,
    shipped_mappings,
)
from tests.conftest import require_data

MAPPINGS = shipped_mappings()
CARS = [p.stem for p in MAPPINGS]


def test_a_mapping_ships_for_every_car_with_identifiable_signals() -> None:
    # durango's matching DBC only names radar tracks (REL_SPEED, LAT_DIST...): nothing to map
    assert set(CARS) == set(CAR_DBC) - {"durango"}


@pytest.mark.parametrize("path", MAPPINGS, ids=CARS)
def test_shipped_mapping_loads_and_its_signals_exist_in_the_dbc(path: Path) -> None:
    mapping = load_mapping(path)
    assert len(mapping.signals) >= 5
    assert mapping.dbc == CAR_DBC[path.stem]
    dbc = require_data(f"canlogs/{path.stem}/{mapping.dbc}")
    db = load_dbc(dbc, strict=False)
    assert mapping.missing_in(db) == []
    # and every mapped message really is on that car's bus
    seen: set[int] = set()
    for _car, log, _ in (x for x in car_logs() if x[0] == path.stem):
        frames, _ = read_candump(log)
        seen |= set(np.unique(frames.can_id).tolist())
    absent = {s.message for s in mapping.signals} - {
        m.name for m in db.messages if m.frame_id in seen
    }
    assert not absent


@pytest.mark.parametrize("path", MAPPINGS, ids=CARS)
def test_mapping_decodes_real_frames_into_vss_paths(path: Path) -> None:
    mapping = load_mapping(path)
    db = load_dbc(require_data(f"canlogs/{path.stem}/{mapping.dbc}"), strict=False)
    log = next(x[1] for x in car_logs() if x[0] == path.stem)
    frames, _ = read_candump(log)
    samples, _ = CantoolsDecoder(db, mapping=mapping.paths()).decode(frames.slice(0, 4000))
    out, stats = mapping.transform(samples)
    vss = {s.vss for s in mapping.signals}
    names = {out.names[i] for i in np.unique(out.sig).tolist()}
    assert names & vss, "no mapped signal decoded from the first 4000 frames"
    assert stats.samples == len(samples)
    for s in mapping.signals:
        if s.value_map and s.vss in out.names:
            idx = out.names.index(s.vss)
            got = set(out.value[out.sig == idx].tolist())
            assert got <= {v for _, v in s.value_map}


def test_catalog_matches_the_shared_vss_release() -> None:
    vss_csv = require_data("vss/vss.csv")
    full = read_catalog(vss_csv)
    ours = default_catalog()
    assert len(ours) >= 40
    for path, node in ours.items():
        assert full[path] == node, path


def test_catalog_regeneration_is_stable(tmp_path: Path) -> None:
    vss_csv = require_data("vss/vss.csv")
    out = tmp_path / "cat.csv"
    out.write_text(CATALOG_PATH.read_text())
    regenerate_catalog(vss_csv, out)
    assert out.read_text() == CATALOG_PATH.read_text()


def test_every_mapped_path_is_in_the_catalog_with_its_datatype() -> None:
    cat = default_catalog()
    with open(CATALOG_PATH, encoding="utf-8") as fh:
        rows = list(csv.reader(line for line in fh if not line.startswith("#")))
    assert rows[0] == ["path", "type", "datatype", "unit"]
    for path in MAPPINGS:
        for s in load_mapping(path).signals:
            assert cat[s.vss].datatype


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "car.yaml"
    p.write_text(text)
    return p


def test_unknown_vss_path_names_file_line_and_field(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "vehicle: x\nsignals:\n  - signal: A.B\n    vss: Vehicle.Speed\n"
        "  - signal: A.C\n    vss: Vehicle.Sped\n",
    )
    with pytest.raises(ConfigError) as err:
        load_mapping(p)
    msg = str(err.value)
    assert f"{p}:6:10: signals[1].vss: unknown VSS path 'Vehicle.Sped'" in msg


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("  - signal: AB\n    vss: Vehicle.Speed\n", ":3:13: signals[0].signal"),
        ("  - signal: A.B\n    vss: Vehicle.Speed\n    scale: fast\n", ":5:12: signals[0].scale"),
        ("  - signal: A.B\n    vss: Vehicle.Speed\n    sclae: 2\n", ":5:5: signals[0].sclae"),
        (
            "  - signal: A.B\n    vss: Vehicle.Speed\n    unit: {from: furlong, to: km/h}\n",
            ":5:11: signals[0].unit",
        ),
        (
            "  - signal: A.B\n    vss: Vehicle.Speed\n    unit: {from: km, to: m}\n",
            "signals[0].unit.to: Vehicle.Speed is in km/h",
        ),
        (
            "  - signal: A.B\n    vss: Vehicle.Body.Hood.IsOpen\n    map: {0: 0, 1: 1}\n",
            ":5:14: signals[0].map.0: Vehicle.Body.Hood.IsOpen is boolean",
        ),
        (
            "  - signal: A.B\n    vss: Vehicle.Speed\n  - signal: A.C\n    vss: Vehicle.Speed\n",
            ":5:5: signals[1].vss: Vehicle.Speed is already mapped on line 3",
        ),
        (
            "  - signal: A.B\n    vss: Vehicle.LowVoltageSystemState\n",
            "signals[0].vss: Vehicle.LowVoltageSystemState is a string",
        ),
        ("  - just a string\n", ":3:5: signals[0]: expected a mapping"),
    ],
)
def test_bad_entries_are_reported_with_position(tmp_path: Path, body: str, where: str) -> None:
    p = _write(tmp_path, "vehicle: x\nsignals:\n" + body)
    with pytest.raises(ConfigError, match=r"error\(s\) in mapping") as err:
        load_mapping(p)
    assert where in str(err.value)


def test_not_yaml_and_not_a_mapping_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(_write(tmp_path, "signals: [\n"))
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_mapping(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_mapping(tmp_path / "missing.yaml")


def test_transform_applies_linear_unit_and_enum_maps_vectorised(tmp_path: Path) -> None:
    p = _write(
        tmp_path,
        "signals:\n"
        "  - {signal: M.Spd, vss: Vehicle.Speed, unit: {from: m/s, to: km/h}}\n"
        "  - {signal: M.Odo, vss: Vehicle.TraveledDistance, scale: 0.5, offset: 10, "
        "unit: {from: km, to: m}}\n"
        "  - {signal: M.Door, vss: Vehicle.Body.Hood.IsOpen, map: {0: false, 1: true}}\n"
        "  - {signal: M.Rpm, vss: Vehicle.Powertrain.CombustionEngine.Speed}\n",
    )
    mapping = load_mapping(p)
    assert mapping.paths()[("M", "Spd")] == "Vehicle.Speed"
    samples = Samples.from_records(
        [
            ("Vehicle.Speed", 1, 10.0),
            ("Vehicle.Body.Hood.IsOpen", 2, 1.0),
            ("Vehicle.TraveledDistance", 3, 4.0),
            ("Vehicle.Body.Hood.IsOpen", 4, 3.0),  # not in the map: dropped
            ("Vehicle.Powertrain.CombustionEngine.Speed", 5, 800.0),
            ("Vehicle.Private.Dbc.M.Other", 6, 7.0),
            ("Vehicle.Body.Hood.IsOpen", 7, 0.0),
        ]
    )
    out, stats = mapping.transform(samples)
    assert out.records() == [
        ("Vehicle.Speed", 1, pytest.approx(36.0)),
        ("Vehicle.Body.Hood.IsOpen", 2, 1.0),
        ("Vehicle.TraveledDistance", 3, pytest.approx((4.0 * 0.5 + 10) * 1000)),
        ("Vehicle.Powertrain.CombustionEngine.Speed", 5, 800.0),
        ("Vehicle.Private.Dbc.M.Other", 6, 7.0),
        ("Vehicle.Body.Hood.IsOpen", 7, 0.0),
    ]
    assert (stats.samples, stats.transformed, stats.unmapped_values) == (7, 5, 1)


def test_unit_conversions_are_consistent() -> None:
    for (a, b), (scale, offset) in UNIT_CONVERSIONS.items():
        back = UNIT_CONVERSIONS.get((b, a))
        if back is not None:
            x = 12.5
            assert back[0] * (x * scale + offset) + back[1] == pytest.approx(x)
    f, o = UNIT_CONVERSIONS[("degF", "Celsius")]
    assert 212 * f + o == pytest.approx(100.0)
