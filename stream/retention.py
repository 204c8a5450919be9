"""Retention per measurement family: which family a line belongs to, where it is written, and
making InfluxDB's retention policies (1.x) or buckets (2.x) match ``[influx.retention]``.

Families (the map is ``FAMILY_OF``; every other measurement, i.e. ``[stream] measurement``, is
``telemetry``):

=============  =============================================  ==================  ===============
family         measurements                                   1.x policy          2.x bucket
=============  =============================================  ==================  ===============
``telemetry``  ``telemetry`` (samples and stored locations)   ``telemetry`` (DB   ``<bucket>``
                                                              default)
``trips``      ``trips``                                      ``trips``           ``<bucket>_trips``
``daily``      ``daily``                                      ``daily``           ``<bucket>_daily``
=============  =============================================  ==================  ===============

The ``telemetry`` policy is the database's default, so InfluxQL that names only the measurement
(Grafana, the yearly report, location deletes) keeps finding the samples; readers of trips and
daily summaries qualify them: ``SELECT ... FROM "carpulse"."trips"."trips"``. With
``[influx] retention_policy`` set (or ``[influx.retention] manage = false``) every family goes to
that one policy (or the default) and to ``[influx] bucket``, as before.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from core.config import RETENTION_FAMILIES, InfluxSettings
from core.errors import SinkError

FAMILY_OF: Final = {"trips": "trips", "daily": "daily"}
DEFAULT_FAMILY: Final = "telemetry"
_PREFIXES: Final = tuple(f"{m}{sep}" for m in FAMILY_OF for sep in (",", " "))


def family_of(line: str) -> str:
    """The family of one line of protocol (by its measurement)."""
    if line.startswith(_PREFIXES):  # our summary measurements need no escaping
        return FAMILY_OF.get(line.split(",", 1)[0].split(" ", 1)[0], DEFAULT_FAMILY)
    return DEFAULT_FAMILY


def by_family(lines: Sequence[str]) -> dict[str, list[str]]:
    """Lines grouped by family; the common case (telemetry only) costs one pass of C calls,
    and a batch with a few summaries two comprehensions plus a call per summary line."""
    if not any(map(str.startswith, lines, itertools.repeat(_PREFIXES))):
        return {DEFAULT_FAMILY: list(lines)}
    out: dict[str, list[str]] = {}
    rest = [line for line in lines if not line.startswith(_PREFIXES)]
    if rest:
        out[DEFAULT_FAMILY] = rest
    for line in (line for line in lines if line.startswith(_PREFIXES)):
        out.setdefault(family_of(line), []).append(line)
    return out


def managed(s: InfluxSettings) -> bool:
    """Whether writes go to per-family policies/buckets (and their retention is kept)."""
    return s.retention.manage and not s.retention_policy


def v1_policy(s: InfluxSettings, family: str) -> str:
    """The 1.x retention policy a family is written to ('' = the database's default)."""
    return family if managed(s) else s.retention_policy


def v2_bucket(s: InfluxSettings, family: str) -> str:
    """The 2.x bucket a family is written to."""
    if not managed(s) or family == DEFAULT_FAMILY:
        return s.bucket
    return f"{s.bucket}_{family}"


# -- InfluxDB 1.x: retention policies ------------------------------------------------------------

_GO_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(h|m|s|ms|µs|us|ns)")
_GO_UNITS: Final = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "µs": 1e-6,
    "us": 1e-6,
    "ns": 1e-9,
}


def parse_go_duration(text: str) -> int | None:
    """Seconds of a duration as InfluxDB 1.x prints it (``2160h0m0s``); ``None`` for ``0s``."""
    seconds = sum(float(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))
    return None if seconds == 0 else round(seconds)


def influxql_duration(seconds: int | None) -> str:
    return "INF" if seconds is None else f"{seconds // 3600}h"


def _ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


Query = Callable[[str, str], Awaitable[dict[str, Any]]]


async def v1_policies(query: Query, database: str) -> dict[str, dict[str, Any]]:
    """The database's retention policies: name -> {seconds, default, shard_group}."""
    doc = await query(f"SHOW RETENTION POLICIES ON {_ident(database)}", "GET")
    result = (doc.get("results") or [{}])[0]
    if "error" in result:
        raise SinkError(f"InfluxDB: SHOW RETENTION POLICIES: {result['error']}")
    out: dict[str, dict[str, Any]] = {}
    for series in result.get("series", []):
        cols = series["columns"]
        for row in series.get("values", []):
            rec = dict(zip(cols, row, strict=False))
            out[str(rec["name"])] = {
                "seconds": parse_go_duration(str(rec["duration"])),
                "default": bool(rec.get("default")),
                "shard_group": str(rec.get("shardGroupDuration", "")),
            }
    return out


async def v1_apply(query: Query, s: InfluxSettings) -> list[str]:
    """Create or alter the per-family policies; returns what was done (empty: nothing to do)."""
    if not managed(s):
        return []
    have = await v1_policies(query, s.database)
    done: list[str] = []
    for family in RETENTION_FAMILIES:
        want = s.retention.seconds(family)
        default = " DEFAULT" if family == DEFAULT_FAMILY else ""
        cur = have.get(family)
        on = f"{_ident(family)} ON {_ident(s.database)} DURATION {influxql_duration(want)}"
        if cur is None:
            stmt = f"CREATE RETENTION POLICY {on} REPLICATION 1{default}"
        elif cur["seconds"] != want or (default and not cur["default"]):
            # SHARD DURATION 0s: InfluxDB picks the group length that fits the new duration
            stmt = f"ALTER RETENTION POLICY {on} SHARD DURATION 0s{default}"
        else:
            continue
        doc = await query(stmt, "POST")
        result = (doc.get("results") or [{}])[0]
        if "error" in result:
            raise SinkError(f"InfluxDB: {stmt}: {result['error']}")
        done.append(stmt)
    return done


# -- InfluxDB 2.x: buckets -------------------------------------------------------------------------


def v2_apply(s: InfluxSettings, token: str) -> list[str]:
    """Create the per-family buckets or update their retention rule (influxdb-client BucketsApi)."""
    from influxdb_client import BucketRetentionRules, InfluxDBClient
    from influxdb_client.rest import ApiException

    if not managed(s):
        return []
    done: list[str] = []
    with InfluxDBClient(url=s.url, token=token, org=s.org, timeout=int(s.timeout_s * 1000)) as c:
        api = c.buckets_api()
        for family in RETENTION_FAMILIES:
            name = v2_bucket(s, family)
            seconds = s.retention.seconds(family)
            rules = [] if seconds is None else [BucketRetentionRules(every_seconds=seconds)]
            try:
                bucket = api.find_bucket_by_name(name)
                if bucket is None:
                    api.create_bucket(bucket_name=name, retention_rules=rules, org=s.org)
                    done.append(f"created bucket {name} ({influxql_duration(seconds)})")
                    continue
                have = [r.every_seconds for r in bucket.retention_rules or [] if r.every_seconds]
                if have != ([] if seconds is None else [seconds]):
                    bucket.retention_rules = rules
                    api.update_bucket(bucket)
                    done.append(f"bucket {name}: retention {influxql_duration(seconds)}")
            except ApiException as err:
                raise SinkError(
                    f"InfluxDB 2.x bucket API at {s.url} ({name}): HTTP {err.status} "
                    f"{(err.body or err.reason or '')[:200]}"
                ) from err
            except (OSError, ValueError) as err:  # urllib3 connection errors are OSErrors
                raise SinkError(f"InfluxDB 2.x at {s.url} unreachable: {err}") from err
    return done


def v2_show(s: InfluxSettings, token: str) -> list[dict[str, Any]]:
    """The per-family buckets as the server has them (``seconds`` None = forever)."""
    from influxdb_client import InfluxDBClient
    from influxdb_client.rest import ApiException

    out: list[dict[str, Any]] = []
    with InfluxDBClient(url=s.url, token=token, org=s.org, timeout=int(s.timeout_s * 1000)) as c:
        api = c.buckets_api()
        for family in RETENTION_FAMILIES:
            name = v2_bucket(s, family)
            try:
                bucket = api.find_bucket_by_name(name)
            except ApiException as err:
                raise SinkError(f"InfluxDB 2.x bucket API at {s.url}: HTTP {err.status}") from err
            except (OSError, ValueError) as err:
                raise SinkError(f"InfluxDB 2.x at {s.url} unreachable: {err}") from err
            rules = [r.every_seconds for r in (bucket.retention_rules or [])] if bucket else []
            out.append({
                "family": family, "bucket": name, "exists": bucket is not None,
                "seconds": (rules[0] or None) if rules else None,
                "configured": s.retention.seconds(family),
            })  # fmt: skip
    return out
