"""InfluxDB sink plug-ins, as Telegraf has them: the 1.x HTTP API (``influx-v1``) and the 2.x/3.x
API through influxdb-client (``influx-v2``); both render ``Points`` as line protocol (``stream.lines``).

Both take line protocol with microsecond source timestamps, so a retried write rewrites the same
points (same series + timestamp = same point): retries and replays never duplicate.

* 429, 5xx, timeouts and connection errors are transient: retried with exponential backoff and
  full jitter, honouring ``Retry-After``; after ``max_retries`` the write raises ``SinkError`` and
  the caller parks the lines on the retry topic (``stream.sinks.writer``, format ``influx-line/1``).
* Any other 4xx (400 partial write, 413 too large, 404 unknown database...) is about the lines:
  the chunk is bisected so that only the lines the server refuses come back in
  ``WriteResult.rejected`` with the server's reason; the rest is written. The caller dead-letters
  the rejected ones.
* A write is cut into requests of at most ``batch_lines`` lines and ``MAX_BODY_BYTES`` bytes, and
  a write of ``SPLIT_MIN_LINES`` or more into at least ``MAX_IN_FLIGHT`` about equal requests, so
  that InfluxDB parses one micro-batch on several cores (its ingest is the slowest step).

A broken link is logged once when it breaks and once when it recovers (``broken`` tells callers,
so that during an outage they park at once instead of each waiting through the whole backoff).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from core.config import InfluxSettings
from core.errors import SinkError
from stream.lines import INFLUX_MAX_ABS_US, escape_key, points_block, points_lines
from stream.retention import (
    DEFAULT_FAMILY,
    by_family,
    family_of,
    v1_apply,
    v1_policy,
    v2_apply,
    v2_bucket,
)
from stream.sinks.base import (  # noqa: F401 - re-exported: the sink's public names
    MAX_BODY_BYTES,
    MAX_IN_FLIGHT,
    MAX_REJECT_DETAIL,
    SPLIT_MIN_LINES,
    Block,
    Points,
    Rejected,
    Sink,
    Transient,
    WriteResult,
    backoff_s,
    chunks,
    parse_retry_after,
)

log = logging.getLogger(__name__)

RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})
# Bodies from this size are compressed in a worker thread (zlib: ~0.13 us of CPU per sample,
# ISA-L: ~0.04), smaller ones on the loop: the hand-off to a thread and back cost 0.15-0.2 ms of
# CPU, half as much again as ISA-L compressing a 270 kB body (0.3 ms), which is what a busy
# worker writes 20-40 times a second (BENCHMARKS.md, issue 22). 1 MB takes ~1 ms with ISA-L.
GZIP_THREAD_BYTES: Final = 1024 * 1024
# Not about the lines: authentication, unknown bucket or retention policy. Parked, not dead-lettered,
# so that the data is replayed once the configuration is fixed.
CONFIG_STATUS: Final = frozenset({401, 403, 404})
LINE_FORMAT: Final = "influx-line/1"  # gzip line protocol, microsecond timestamps


def gzip_fast(body: bytes) -> bytes:
    """gzip at level 1 through ISA-L (``isal``, ~3.5x zlib's speed at a better ratio on line
    protocol, the same gzip format), or zlib where ``isal`` is not installed."""
    return _gzip(body, compresslevel=1)


try:
    from isal.igzip import compress as _gzip
except ImportError:  # pragma: no cover - isal is in the stream extra
    from gzip import compress as _gzip  # type: ignore[assignment]


class InfluxSink(Sink):
    """Line protocol to InfluxDB; the base (``stream.sinks.base.Sink``) does chunking, retries,
    bisection and the log lines; requests are grouped by retention family (``stream.retention``)."""

    health_name = "influx"
    label = "InfluxDB"
    reject_reason = "influx_rejected"
    record_format = LINE_FORMAT
    ts_range_us = (-INFLUX_MAX_ABS_US, INFLUX_MAX_ABS_US)

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings.url, settings.batch_lines, settings.max_retries)
        self.s = settings

    @classmethod
    def from_settings(cls, settings: Any) -> Sink:
        return cls(settings.influx)

    async def ping(self) -> str:
        return f"{self.s.url} (version {await ping(self.s)})"

    def _render_internal(self, points: Points) -> list[str]:
        return points_lines(points)

    def _render_blocks_internal(self, points: Points) -> list[Block]:
        # one buffer straight from the compiled renderer; the family is the measurement's (as
        # by_family finds it from a line's start)
        data, ends = points_block(points)
        return [Block(family_of(escape_key(points.measurement) + " "), data, ends)]

    def _group_internal(self, records: Sequence[str]) -> dict[str, list[str]]:
        return by_family(records)

    @abstractmethod
    async def _write_internal(self, body: bytes, group: str = DEFAULT_FAMILY) -> None:
        """Send one request of ``group``'s lines (its retention family's policy or bucket)."""


class InfluxV1Sink(InfluxSink):
    """InfluxDB 1.x: ``POST /write?db=..&rp=..&precision=u``."""

    name = "influx-v1"

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._session: aiohttp.ClientSession | None = None

    def _auth(self) -> aiohttp.BasicAuth | None:
        if self.s.username and self.s.password:
            return aiohttp.BasicAuth(self.s.username, self.s.password.get_secret_value())
        return None

    def open_session(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.s.timeout_s), auth=self._auth()
            )

    async def start(self) -> None:
        self.open_session()
        try:
            await self._create_database()
        except SinkError as err:  # not fatal: writes retry, and create it on "database not found"
            log.warning("could not create InfluxDB database yet: %s", err)

    async def _create_database(self) -> list[str]:
        """Create the database (a no-op when it exists) and its per-family retention policies
        (``stream.retention``); returns the statements that changed something."""
        await self.query(f'CREATE DATABASE "{self.s.database}"', method="POST")
        done = await v1_apply(self.query, self.s)
        for stmt in done:
            log.info("InfluxDB retention: %s", stmt)
        return done

    async def apply_retention(self) -> list[str]:
        """``carpulse influx retention apply``: what ``start`` does, with errors raised."""
        self.open_session()
        return await self._create_database()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, q: str, method: str = "GET") -> dict:  # type: ignore[type-arg]
        assert self._session is not None, "start() first"
        params = {"q": q, "db": self.s.database, "epoch": "u"}
        try:
            async with self._session.request(method, f"{self.s.url}/query", params=params) as resp:
                data = await resp.json(content_type=None)
                if resp.status != 200:
                    raise SinkError(f"InfluxDB query failed ({resp.status}): {data}")
                return data  # type: ignore[no-any-return]
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise SinkError(f"InfluxDB at {self.s.url} unreachable: {err}") from err

    async def read(self, measurement: str, tags: dict[str, str]) -> list[tuple[int, str, float]]:
        """The fields stored under ``measurement`` and ``tags`` (InfluxQL ``SELECT *::field``)."""
        self.open_session()
        rp = v1_policy(self.s, family_of(f"{measurement} "))
        source = f"{_ident(self.s.database)}.{_ident(rp)}." if rp else ""
        where = " AND ".join(f"{_ident(k)} = {_literal(v)}" for k, v in tags.items())
        q = f"SELECT *::field FROM {source}{_ident(measurement)}" + (
            f" WHERE {where}" if where else ""
        )
        data = await self.query(q)
        out: list[tuple[int, str, float]] = []
        for result in data.get("results", []):
            if "error" in result:
                raise SinkError(f"InfluxDB query failed: {result['error']}")
            for series in result.get("series", []):
                cols = series["columns"]
                for row in series["values"]:
                    out += [
                        (row[0], c, float(v))
                        for c, v in zip(cols[1:], row[1:], strict=True)
                        if v is not None
                    ]
        return sorted(out)

    async def _write_internal(self, body: bytes, group: str = DEFAULT_FAMILY) -> None:
        assert self._session is not None, "start() first"
        params = {"db": self.s.database, "precision": "u"}
        if rp := v1_policy(self.s, group):
            params["rp"] = rp
        # A BytesIO body: aiohttp warns (an error under pytest) about raw bodies over 1 MB.
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.s.gzip:
            if len(body) >= GZIP_THREAD_BYTES:  # gzip drops the GIL: the event loop goes on
                body = await asyncio.to_thread(gzip_fast, body)
            else:
                body = gzip_fast(body)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(
                f"{self.s.url}/write", params=params, data=io.BytesIO(body), headers=headers
            ) as resp:
                if resp.status == 204:
                    return
                text = (await resp.text())[:MAX_REJECT_DETAIL]
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Transient(f"{type(err).__name__}: {err}") from err
        if (resp.status == 404 and "database not found" in text) or (
            "retention policy not found" in text
        ):
            try:  # created after a wipe, or InfluxDB was down when we started
                await self._create_database()
            except SinkError as err:
                raise Transient(str(err)) from err
            raise Transient("database or retention policy was missing; created it", 0.0)
        if resp.status in RETRY_STATUS or resp.status in CONFIG_STATUS:
            raise Transient(f"HTTP {resp.status}: {text}", retry_after)
        raise Rejected(resp.status, text)


class InfluxV2Sink(InfluxSink):
    """InfluxDB 2.x/3.x (and other servers with ``/api/v2/write``) through influxdb-client."""

    name = "influx-v2"

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._client: Any = None
        self._api: Any = None

    def _token(self) -> str:
        if self.s.token is not None:
            return self.s.token.get_secret_value()
        if self.s.token_file is not None:
            return self.s.token_file.read_text().strip()
        return ""

    async def start(self) -> None:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        self._client = InfluxDBClientAsync(
            url=self.s.url,
            token=self._token(),
            org=self.s.org,
            timeout=int(self.s.timeout_s * 1000),
            enable_gzip=self.s.gzip,
        )
        self._api = self._client.write_api()
        try:  # not fatal: servers without the bucket API (VictoriaMetrics) still take writes
            for done in await asyncio.to_thread(v2_apply, self.s, self._token()):
                log.info("InfluxDB retention: %s", done)
        except SinkError as err:
            log.warning("could not apply the bucket retention: %s", err)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def read(self, measurement: str, tags: dict[str, str]) -> list[tuple[int, str, float]]:
        """The fields stored under ``measurement`` and ``tags``: a Flux query, or, on servers
        with the v2 write API but no Flux (VictoriaMetrics: 400/404/422 on ``/api/v2/query``),
        their Prometheus-style ``/api/v1/export`` (metric ``<measurement>_<field>``, millisecond
        timestamps)."""
        from influxdb_client.client.exceptions import InfluxDBError

        assert self._client is not None, "start() first"
        bucket = v2_bucket(self.s, family_of(f"{measurement} "))
        cond = " and ".join(
            [f"r._measurement == {_flux(measurement)}"]
            + [f"r[{_flux(k)}] == {_flux(v)}" for k, v in tags.items()]
        )
        flux = (
            f"from(bucket: {_flux(bucket)}) |> range(start: 1677-09-21T00:12:44Z, "
            f"stop: 2262-04-11T23:47:16Z) |> filter(fn: (r) => {cond})"
        )
        try:
            tables = await self._client.query_api().query(flux, org=self.s.org)
        except InfluxDBError as err:
            status = getattr(err.response, "status", None)
            if status not in (400, 404, 422):
                raise SinkError(f"InfluxDB query failed: {err}") from err
            return await self._export(measurement, tags)
        out = [
            (
                int(rec.get_time().timestamp() * 1_000_000),
                str(rec.get_field()),
                float(rec.get_value()),
            )
            for table in tables
            for rec in table.records
        ]
        return sorted(out)

    async def _export(self, measurement: str, tags: dict[str, str]) -> list[tuple[int, str, float]]:
        labels = "".join(f",{k}={_prom(v)}" for k, v in tags.items())
        match = f"{{__name__=~{_prom(_regex_quote(measurement) + '_.+')}{labels}}}"
        headers = {"Authorization": f"Token {self._token()}"} if self._token() else {}
        timeout = aiohttp.ClientTimeout(total=self.s.timeout_s * 5)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
                # what was just written is searchable after a flush (VictoriaMetrics buffers ~1 s)
                async with session.get(f"{self.s.url.rstrip('/')}/internal/force_flush"):
                    pass
                text = await self._export_text(session, match)
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SinkError(f"{self.s.url} unreachable: {type(err).__name__}") from err
        return _export_rows(text, measurement)

    async def _export_text(self, session: aiohttp.ClientSession, match: str) -> str:
        url = f"{self.s.url.rstrip('/')}/api/v1/export"
        async with session.get(url, params={"match[]": match}) as resp:
            if resp.status != 200:
                raise SinkError(f"export from {self.s.url} answered {resp.status}")
            return await resp.text()

    async def _write_internal(self, body: bytes, group: str = DEFAULT_FAMILY) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision

        assert self._api is not None, "start() first"
        try:
            await self._api.write(
                bucket=v2_bucket(self.s, group),
                org=self.s.org,
                record=body,
                write_precision=WritePrecision.US,
            )
        except InfluxDBError as err:
            status = getattr(err, "status", None) or getattr(err.response, "status", None)
            retry_after = parse_retry_after(err.retry_after)
            msg = err.message
            text = msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)
            if not status or status in RETRY_STATUS or status in CONFIG_STATUS:  # 0: timeout
                raise Transient(f"HTTP {status}: {text}", retry_after) from err
            raise Rejected(status, text[:MAX_REJECT_DETAIL]) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise Transient(f"{type(err).__name__}: {err}") from err


def _export_rows(text: str, measurement: str) -> list[tuple[int, str, float]]:
    """``(ts_us, field, value)`` of a ``/api/v1/export`` answer (JSON lines, ms timestamps)."""
    out: list[tuple[int, str, float]] = []
    prefix = f"{measurement}_"
    for row in text.splitlines():
        doc = json.loads(row)
        name = doc["metric"]["__name__"].removeprefix(prefix)
        out += [
            (t * 1000, name, float(v))
            for t, v in zip(doc["timestamps"], doc["values"], strict=True)
        ]
    return sorted(out)


def _ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _flux(value: str) -> str:
    """A Flux string literal (``${`` would interpolate)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _prom(value: str) -> str:
    """A PromQL/MetricsQL label value, double-quoted."""
    return json.dumps(value, ensure_ascii=False)


def _regex_quote(text: str) -> str:
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


async def ping(settings: InfluxSettings, timeout_s: float = 3.0) -> str:
    """Ask the server's ``/ping`` (InfluxDB 1.x and 2.x); returns its version, raises ``SinkError``."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{settings.url.rstrip('/')}/ping") as resp,
        ):
            if resp.status not in (200, 204):
                raise SinkError(f"InfluxDB at {settings.url}: /ping answered {resp.status}")
            return resp.headers.get("X-Influxdb-Version", "?")
    except (aiohttp.ClientError, TimeoutError) as err:
        raise SinkError(f"InfluxDB at {settings.url} unreachable: {type(err).__name__}") from err
