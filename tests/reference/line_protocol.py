"""Plain Python line protocol of one batch: what ``stream.lines.batch_lines`` must equal exactly.

The rows kept, their order and each value's text follow the same rules (NaN/inf and timestamps
out of policy left out, stable sort by time, ``repr`` of each float); the lines are built with
string operations only, one row at a time.
"""

from __future__ import annotations

import numpy as np

from core.wire import TelemetryBatch
from stream.lines import LineStats, SkewPolicy, escape_key, escape_tag, keep_mask


def batch_lines_ref(
    batch: TelemetryBatch,
    measurement: str,
    policy: SkewPolicy = SkewPolicy(),
    now_us: int | None = None,
    tags: str = "",
) -> list[str]:
    s = batch.samples
    keep = keep_mask(batch, LineStats(), policy, now_us)
    rows = sorted(np.flatnonzero(keep).tolist(), key=lambda i: int(s.ts_us[i]))  # stable
    head = f"{escape_key(measurement)},device={escape_tag(batch.device_id)}{tags} "
    lines: list[str] = []
    fields: list[str] = []
    for k, i in enumerate(rows):
        ts = int(s.ts_us[i])
        fields.append(f"{escape_key(s.names[int(s.sig[i])])}={float(s.value[i])!r}")
        if k + 1 == len(rows) or int(s.ts_us[rows[k + 1]]) != ts:
            lines.append(f"{head}{','.join(fields)} {ts}")
            fields = []
    return lines
