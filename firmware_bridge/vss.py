"""DBC -> COVESA VSS mappings: YAML per vehicle model, checked against a pinned VSS catalog.

A mapping file (``firmware_bridge/mappings/<car>.yaml``)::

    vehicle: gt350                       # free text
    dbc: ford_lincoln_base_pt.dbc        # the DBC the signal names come from
    signals:
      - signal: EngVehicleSpThrottle2.Veh_V_ActlEng   # DBC message.signal
        vss: Vehicle.Speed                            # must be in the VSS catalog
      - signal: WheelSpeed.WhlFl_W_Meas
        vss: Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed
        scale: 0.3                                    # optional: y = x * scale + offset
        offset: 0
        unit: {from: m/s, to: km/h}                   # optional: a known unit conversion
      - signal: DOORS.DOOR_LEFT
        vss: Vehicle.Cabin.Door.Row1.DriverSide.IsOpen
        map: {0: false, 1: true}                      # optional: enum value map (others dropped)

Like KUKSA's dbc2vss, transforms act on the DBC's physical value (after the DBC's own scaling):
``map`` alone, or ``scale``/``offset`` then ``unit``. Errors name file, line and field.

The catalog (``vss_catalog.csv`` beside this module) holds only the VSS paths carpulse uses, with
type, datatype and unit, taken from the VSS release in ``../shared/data/vss`` (no PyPI package ships
the spec itself; ``vss-tools`` is only the exporter). Regenerate it with::

    python -m firmware_bridge.vss catalog [--vss-csv ../shared/data/vss/vss.csv] [--add PATH ...]
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.datasets import shared_data_dir
from core.errors import ConfigError
from core.wire import Samples

log = logging.getLogger(__name__)

CATALOG_PATH = Path(__file__).with_name("vss_catalog.csv")
MAPPINGS_DIR = Path(__file__).with_name("mappings")
CATALOG_FIELDS = ("path", "type", "datatype", "unit")
NUMERIC_TYPES = {
    "boolean",
    "float",
    "double",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
}
# y = x * scale + offset, from -> to
UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("m/s", "km/h"): (3.6, 0.0),
    ("km/h", "m/s"): (1 / 3.6, 0.0),
    ("mph", "km/h"): (1.609344, 0.0),
    ("km", "m"): (1000.0, 0.0),
    ("mi", "m"): (1609.344, 0.0),
    ("degF", "Celsius"): (5 / 9, -160 / 9),
    ("K", "Celsius"): (1.0, -273.15),
    ("rad", "degrees"): (180 / math.pi, 0.0),
    ("rad/s", "degrees/s"): (180 / math.pi, 0.0),
    ("g", "m/s^2"): (9.80665, 0.0),
    ("kPa", "hPa"): (10.0, 0.0),
    ("psi", "kPa"): (6.894757, 0.0),
    ("mmHg", "kPa"): (0.133322, 0.0),
    ("ratio", "percent"): (100.0, 0.0),
}
_SIGNAL_KEYS = {"signal", "vss", "scale", "offset", "unit", "map", "comment"}
_TOP_KEYS = {"vehicle", "dbc", "signals", "comment"}


@dataclass(frozen=True, slots=True)
class VssNode:
    path: str
    type: str  # sensor | actuator | attribute
    datatype: str
    unit: str


def read_catalog(path: Path | str = CATALOG_PATH) -> dict[str, VssNode]:
    """A VSS catalog CSV (ours, or vss-tools' ``vspec export csv``), keyed by path; ``#`` lines skipped."""
    p = Path(path)
    with open(p, encoding="utf-8", newline="") as fh:
        rows = csv.DictReader(line for line in fh if not line.startswith("#"))
        out: dict[str, VssNode] = {}
        for row in rows:
            name = row.get("path") or row.get("Signal")
            if not name or (row.get("type") or row.get("Type")) == "branch":
                continue
            out[name] = VssNode(
                name,
                row.get("type") or row.get("Type") or "",
                row.get("datatype") or row.get("DataType") or "",
                row.get("unit") or row.get("Unit") or "",
            )
    return out


@cache
def default_catalog() -> dict[str, VssNode]:
    return read_catalog(CATALOG_PATH)


@dataclass(frozen=True, slots=True)
class SignalMap:
    """One DBC signal and where it goes in VSS."""

    message: str
    signal: str
    vss: str
    scale: float = 1.0
    offset: float = 0.0
    value_map: tuple[tuple[float, float], ...] = ()
    line: int = 0

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0 and not self.value_map


@dataclass
class TransformStats:
    samples: int = 0
    transformed: int = 0
    unmapped_values: int = 0  # enum values the map does not list: dropped


@dataclass(frozen=True)
class VssMapping:
    """A loaded mapping file."""

    source: str
    vehicle: str
    dbc: str | None
    signals: tuple[SignalMap, ...]
    _by_vss: dict[str, SignalMap] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_vss.update({s.vss: s for s in self.signals})

    def paths(self) -> dict[tuple[str, str], str]:
        """``(message, signal) -> VSS path``, what ``CantoolsDecoder(db, mapping=...)`` takes."""
        return {(s.message, s.signal): s.vss for s in self.signals}

    def missing_in(self, db: Any) -> list[str]:
        """Problems (``file:line: ...``) for mapped signals the cantools ``db`` lacks."""
        problems: list[str] = []
        for s in self.signals:
            try:
                msg = db.get_message_by_name(s.message)
            except KeyError:
                problems.append(f"{self.source}:{s.line}: message {s.message!r} not in the DBC")
                continue
            if s.signal not in {sig.name for sig in msg.signals}:
                problems.append(
                    f"{self.source}:{s.line}: signal {s.signal!r} not in message {s.message!r}"
                )
        return problems

    def transform(self, samples: Samples) -> tuple[Samples, TransformStats]:
        """Apply each mapped signal's transform to samples named by VSS path (vectorised)."""
        stats = TransformStats(samples=len(samples))
        if not len(samples):
            return samples, stats
        names = samples.names
        scale = np.ones(len(names))
        offset = np.zeros(len(names))
        mapped: list[tuple[int, SignalMap]] = []
        touched = np.zeros(len(names), dtype=bool)
        for i, name in enumerate(names):
            s = self._by_vss.get(name)
            if s is None or s.identity:
                continue
            touched[i] = True
            if s.value_map:
                mapped.append((i, s))
            else:
                scale[i], offset[i] = s.scale, s.offset
        if not touched.any():
            return samples, stats
        sig = samples.sig
        value = samples.value * scale[sig] + offset[sig]
        for i, s in mapped:
            rows = np.flatnonzero(sig == i)
            keys = np.array([k for k, _ in s.value_map])
            targets = np.array([v for _, v in s.value_map])
            pos = np.clip(np.searchsorted(keys, value[rows]), 0, len(keys) - 1)
            hit = keys[pos] == value[rows]
            value[rows] = np.where(hit, targets[pos], np.nan)
            stats.unmapped_values += int((~hit).sum())
        stats.transformed = int(touched[sig].sum())
        keep = ~(touched[sig] & np.isnan(value)) if mapped else None
        out = Samples(names, sig, samples.ts_us, value)
        if keep is not None and not keep.all():
            out = Samples(names, sig[keep], samples.ts_us[keep], value[keep])
        return out, stats


class _Errors:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, node: yaml.Node, where: str, why: str) -> None:
        mark = node.start_mark
        self.items.append(f"{self.source}:{mark.line + 1}:{mark.column + 1}: {where}: {why}")

    def raise_if_any(self) -> None:
        if self.items:
            head = f"{len(self.items)} error(s) in mapping {self.source}:\n  "
            raise ConfigError(head + "\n  ".join(self.items[:20]))


def _scalar(node: yaml.Node) -> Any:
    return yaml.constructor.SafeConstructor().construct_object(node, deep=True)  # type: ignore[no-untyped-call]


def _mapping_items(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    return list(node.value) if isinstance(node, yaml.MappingNode) else []


def _number(node: yaml.Node, where: str, err: _Errors) -> float | None:
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        err.add(node, where, f"expected a finite number, got {getattr(node, 'value', '?')!r}")
        return None
    return float(value)


def load_mapping(path: Path | str, catalog: dict[str, VssNode] | None = None) -> VssMapping:
    """Load and validate a mapping file; every problem is reported with file:line:column and field."""
    p = Path(path)
    cat = default_catalog() if catalog is None else catalog
    source = str(p)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"mapping {p} cannot be read: {e}") from e
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"mapping {p} is not valid YAML: {e}") from e
    err = _Errors(source)
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{source}:1: a mapping file is a YAML mapping with a 'signals' list")
    top: dict[str, yaml.Node] = {}
    for k, v in _mapping_items(root):
        key = str(k.value)
        if key not in _TOP_KEYS:
            err.add(k, key, f"unknown key (expected one of {sorted(_TOP_KEYS)})")
        top[key] = v
    vehicle = str(top["vehicle"].value) if isinstance(top.get("vehicle"), yaml.ScalarNode) else ""
    dbc = top.get("dbc")
    dbc_name = str(dbc.value) if isinstance(dbc, yaml.ScalarNode) else None
    sigs = top.get("signals")
    if not isinstance(sigs, yaml.SequenceNode):
        err.add(sigs or root, "signals", "expected a list of {signal, vss, ...} entries")
        err.raise_if_any()
        return VssMapping(source, vehicle, dbc_name, ())
    out: list[SignalMap] = []
    seen_vss: dict[str, int] = {}
    seen_sig: dict[tuple[str, str], int] = {}
    for i, item in enumerate(sigs.value):
        s = _signal_entry(item, f"signals[{i}]", err, cat)
        if s is None:
            continue
        if s.vss in seen_vss:
            err.add(
                item, f"signals[{i}].vss", f"{s.vss} is already mapped on line {seen_vss[s.vss]}"
            )
            continue
        pair = (s.message, s.signal)
        if pair in seen_sig:
            err.add(item, f"signals[{i}].signal", f"already mapped on line {seen_sig[pair]}")
            continue
        seen_vss[s.vss] = seen_sig[pair] = s.line
        out.append(s)
    err.raise_if_any()
    return VssMapping(source, vehicle, dbc_name, tuple(out))


def _signal_entry(
    item: yaml.Node, where: str, err: _Errors, cat: dict[str, VssNode]
) -> SignalMap | None:
    if not isinstance(item, yaml.MappingNode):
        err.add(item, where, "expected a mapping with 'signal' and 'vss'")
        return None
    f: dict[str, yaml.Node] = {}
    for k, v in _mapping_items(item):
        key = str(k.value)
        if key not in _SIGNAL_KEYS:
            err.add(k, f"{where}.{key}", f"unknown field (expected one of {sorted(_SIGNAL_KEYS)})")
        f[key] = v
    n_before = len(err.items)
    sig_node, vss_node = f.get("signal"), f.get("vss")
    message = signal = vss = ""
    if not isinstance(sig_node, yaml.ScalarNode):
        err.add(sig_node or item, f"{where}.signal", "missing 'Message.Signal'")
    else:
        message, dot, signal = str(sig_node.value).partition(".")
        if not (message and dot and signal) or "." in signal:
            err.add(
                sig_node, f"{where}.signal", f"expected 'Message.Signal', got {sig_node.value!r}"
            )
    node: VssNode | None = None
    if not isinstance(vss_node, yaml.ScalarNode):
        err.add(vss_node or item, f"{where}.vss", "missing VSS path")
    else:
        vss = str(vss_node.value)
        node = cat.get(vss)
        if node is None:
            err.add(vss_node, f"{where}.vss", f"unknown VSS path {vss!r} (not in the VSS catalog)")
        elif node.datatype not in NUMERIC_TYPES:
            err.add(
                vss_node, f"{where}.vss", f"{vss} is a {node.datatype}: only numbers and booleans"
            )
    scale, offset = 1.0, 0.0
    for key in ("scale", "offset"):
        if key in f:
            num = _number(f[key], f"{where}.{key}", err)
            if num is not None:
                if key == "scale":
                    scale = num
                else:
                    offset = num
    if "unit" in f:
        conv = _unit(f["unit"], f"{where}.unit", err, node)
        if conv is not None:
            scale, offset = scale * conv[0], offset * conv[0] + conv[1]
    value_map: tuple[tuple[float, float], ...] = ()
    if "map" in f:
        if {"scale", "offset", "unit"} & f.keys():
            err.add(f["map"], f"{where}.map", "use either 'map' or scale/offset/unit, not both")
        value_map = _value_map(f["map"], f"{where}.map", err, node)
    if len(err.items) > n_before:
        return None
    return SignalMap(message, signal, vss, scale, offset, value_map, item.start_mark.line + 1)


def _unit(
    node: yaml.Node, where: str, err: _Errors, target: VssNode | None
) -> tuple[float, float] | None:
    items = {str(k.value): v for k, v in _mapping_items(node)}
    src, dst = items.get("from"), items.get("to")
    if not isinstance(src, yaml.ScalarNode) or not isinstance(dst, yaml.ScalarNode):
        err.add(node, where, "expected {from: UNIT, to: UNIT}")
        return None
    pair = (str(src.value), str(dst.value))
    conv = UNIT_CONVERSIONS.get(pair)
    if conv is None:
        known = ", ".join(f"{a}->{b}" for a, b in UNIT_CONVERSIONS)
        err.add(node, where, f"no conversion {pair[0]} -> {pair[1]} (known: {known})")
        return None
    if target is not None and target.unit and pair[1] != target.unit:
        err.add(dst, f"{where}.to", f"{target.path} is in {target.unit}, not {pair[1]}")
        return None
    return conv


def _value_map(
    node: yaml.Node, where: str, err: _Errors, target: VssNode | None
) -> tuple[tuple[float, float], ...]:
    if not isinstance(node, yaml.MappingNode) or not node.value:
        err.add(node, where, "expected a non-empty {raw value: VSS value} mapping")
        return ()
    out: dict[float, float] = {}
    for k, v in node.value:
        raw = _number(k, f"{where}.{k.value}", err)
        val = _scalar(v) if isinstance(v, yaml.ScalarNode) else None
        if target is not None and target.datatype == "boolean" and not isinstance(val, bool):
            err.add(v, f"{where}.{k.value}", f"{target.path} is boolean: map to true/false")
            continue
        if isinstance(val, bool):
            val = float(val)
        if not isinstance(val, int | float) or not math.isfinite(val):
            err.add(v, f"{where}.{k.value}", f"expected a number or boolean, got {v.value!r}")
            continue
        if raw is not None:
            if raw in out:
                err.add(k, f"{where}.{k.value}", "duplicate raw value")
            out[raw] = float(val)
    return tuple(sorted(out.items()))


def shipped_mappings(folder: Path = MAPPINGS_DIR) -> list[Path]:
    return sorted(folder.glob("*.yaml"))


def regenerate_catalog(
    vss_csv: Path, out: Path = CATALOG_PATH, extra: Iterable[str] = ()
) -> list[VssNode]:
    """Rewrite the pinned catalog: current paths + every shipped mapping's paths + ``extra``."""
    full = read_catalog(vss_csv)
    wanted = set(extra)
    if out.exists():
        wanted |= set(read_catalog(out))
    for m in shipped_mappings():
        # parse the YAML directly: a mapping may name a path the old catalog lacks
        data = yaml.safe_load(m.read_text(encoding="utf-8")) or {}
        wanted |= {str(s.get("vss")) for s in data.get("signals") or [] if isinstance(s, dict)}
    missing = sorted(w for w in wanted if w not in full)
    if missing:
        raise ConfigError(f"not in {vss_csv}: {', '.join(missing)}")
    rows = [full[w] for w in sorted(wanted)]
    with open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(
            "# VSS paths carpulse uses, from the COVESA VSS export in ../shared/data/vss (vss-tools 6.1.0).\n"
            "# Regenerate: python -m firmware_bridge.vss catalog --vss-csv ../shared/data/vss/vss.csv\n"
        )
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(CATALOG_FIELDS)
        w.writerows((r.path, r.type, r.datatype, r.unit) for r in rows)
    return rows


def _default_vss_csv() -> Path:
    return shared_data_dir() / "vss" / "vss.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware_bridge.vss")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("catalog", help="regenerate firmware_bridge/vss_catalog.csv")
    c.add_argument("--vss-csv", type=Path, default=_default_vss_csv())
    c.add_argument("--add", action="append", default=[], help="also include this VSS path")
    args = ap.parse_args(argv)
    rows = regenerate_catalog(args.vss_csv, CATALOG_PATH, args.add)
    print(f"wrote {len(rows)} paths to {CATALOG_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
