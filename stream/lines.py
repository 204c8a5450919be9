"""Telemetry batches -> InfluxDB line protocol (pure functions, no I/O).

Schema: measurement ``telemetry`` (configurable), tag ``device``, one field per VSS path, the
source timestamp in microseconds. Samples that share a timestamp (the signals of one CAN frame)
share a line. Floats are written with ``repr`` so they round-trip exactly. NaN and infinities
cannot be stored in InfluxDB: they are counted and left out.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from core.wire import TelemetryBatch


def escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_key(value: str) -> str:
    return escape_tag(value)


@dataclass
class LineStats:
    samples: int = 0
    lines: int = 0
    non_finite: int = 0


def batch_lines(
    batch: TelemetryBatch, measurement: str, stats: LineStats | None = None
) -> list[str]:
    """Line-protocol lines for one batch (timestamps in microseconds)."""
    s = batch.samples
    st = stats if stats is not None else LineStats()
    st.samples += len(s)
    if not len(s):
        return []
    finite = np.isfinite(s.value)
    if not finite.all():
        st.non_finite += int((~finite).sum())
    idx = np.flatnonzero(finite)
    order = idx[np.argsort(s.ts_us[idx], kind="stable")]
    ts = s.ts_us[order]
    prefixes = [escape_key(n) + "=" for n in s.names]
    fields = [
        prefixes[i] + repr(v)
        for i, v in zip(s.sig[order].tolist(), s.value[order].tolist(), strict=True)
    ]
    cuts = (np.flatnonzero(np.diff(ts)) + 1).tolist()
    bounds = [0, *cuts, len(order)]
    head = f"{escape_key(measurement)},device={escape_tag(batch.device_id)} "
    ts_l = ts.tolist()
    lines = [head + ",".join(fields[a:b]) + f" {ts_l[a]}" for a, b in itertools.pairwise(bounds)]
    st.lines += len(lines)
    return lines
