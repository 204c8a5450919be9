"""InfluxDB sinks, as Telegraf has them: the 1.x HTTP API and the 2.x/3.x API through influxdb-client.

Both take line protocol with microsecond source timestamps, so a retried write rewrites the same
points (same series + timestamp = same point): retries and replays never duplicate.

* 429, 5xx, timeouts and connection errors are transient: retried with exponential backoff and
  full jitter, honouring ``Retry-After``; after ``max_retries`` the write raises ``SinkError`` and
  the caller parks the lines on the retry topic (``stream.retry``).
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
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from core.backoff import exponential, jittered
from core.config import InfluxSettings
from core.errors import SinkError
from stream.retention import DEFAULT_FAMILY, by_family, v1_apply, v1_policy, v2_apply, v2_bucket

log = logging.getLogger(__name__)

RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})
MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # InfluxDB 1.x refuses bodies over 25 MB by default
MAX_BACKOFF_S: Final = 30.0
BASE_BACKOFF_S: Final = 0.1
MAX_REJECT_DETAIL: Final = 500
# Requests of one write in flight at once. The caller still awaits them all before its Kafka
# offsets move, so at-least-once delivery holds; points are idempotent, so order does not matter.
MAX_IN_FLIGHT: Final = 2
# A write this large is cut into MAX_IN_FLIGHT requests at least (smaller ones cost more per line).
SPLIT_MIN_LINES: Final = 1000
# Bodies from this size are compressed in a worker thread (zlib: ~0.13 us of CPU per sample,
# ISA-L: ~0.04).
GZIP_THREAD_BYTES: Final = 64 * 1024
# Extra requests one write may spend isolating refused lines; past it whole requests are refused.
BISECT_BUDGET: Final = 128
# Not about the lines: authentication, unknown bucket or retention policy. Parked, not dead-lettered,
# so that the data is replayed once the configuration is fixed.
CONFIG_STATUS: Final = frozenset({401, 403, 404})


def gzip_fast(body: bytes) -> bytes:
    """gzip at level 1 through ISA-L (``isal``, ~3.5x zlib's speed at a better ratio on line
    protocol, the same gzip format), or zlib where ``isal`` is not installed."""
    return _gzip(body, compresslevel=1)


try:
    from isal.igzip import compress as _gzip
except ImportError:  # pragma: no cover - isal is in the stream extra
    from gzip import compress as _gzip  # type: ignore[assignment]


class Transient(Exception):
    """A write failed in a way that may pass (429, 5xx, timeout); ``retry_after`` from the server."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(Exception):
    """The server refused the lines themselves (4xx other than 429)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class WriteResult:
    """What a write did: lines written, and lines refused with the server's reason."""

    written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (line, reason)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff; the server's ``Retry-After`` is a floor."""
    delay = jittered(exponential(attempt, BASE_BACKOFF_S, MAX_BACKOFF_S), "full")
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_BACKOFF_S * 4))
    return delay


def chunks(lines: Sequence[str], max_lines: int, max_bytes: int = MAX_BODY_BYTES) -> list[bytes]:
    """Request bodies of at most ``max_lines`` lines and about ``max_bytes`` bytes."""
    out: list[bytes] = []
    step = max(1, max_lines)
    for start in range(0, len(lines), step):
        body = ("\n".join(lines[start : start + step]) + "\n").encode()
        if len(body) <= max_bytes or step == 1:
            out.append(body)
            continue
        out.extend(chunks(lines[start : start + step], max(1, step // 2), max_bytes))
    return out


class InfluxSink(ABC):
    """Writes line protocol; ``write`` does chunking, retries, bisection and the log lines."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.s = settings
        self.written_lines = 0
        self.rejected_lines = 0
        self.retries = 0
        self.requests = 0
        self.broken_since: float | None = None
        # the metrics' latency histogram (stream.metrics), once per write, not per line
        self.observe_write: Callable[[float], None] | None = None

    @property
    def broken(self) -> bool:
        return self.broken_since is not None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, create the database where the API allows it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def _write_internal(self, body: bytes, family: str = DEFAULT_FAMILY) -> None:
        """Send one request of ``family``'s lines (its policy or bucket); raise ``Transient``
        or ``Rejected``."""

    async def write(self, lines: Sequence[str], *, max_retries: int | None = None) -> WriteResult:
        """Write ``lines``; raises ``SinkError`` when transient failures outlast the retries."""
        t0 = time.perf_counter()
        try:
            return await self._write(lines, max_retries)
        finally:
            if self.observe_write is not None:
                self.observe_write(time.perf_counter() - t0)

    async def _write(self, lines: Sequence[str], max_retries: int | None) -> WriteResult:
        result = WriteResult()
        retries = self.s.max_retries if max_retries is None else max_retries
        budget = [BISECT_BUDGET]
        per = self.s.batch_lines
        if len(lines) >= SPLIT_MIN_LINES:
            per = min(per, -(-len(lines) // MAX_IN_FLIGHT))
        bodies = [
            (family, body)
            for family, part in by_family(lines).items()
            for body in chunks(part, per)
        ]
        if len(bodies) == 1 or retries == 0:  # one request, or probing a broken link
            for family, body in bodies:
                await self._write_body(body, retries, result, budget, family)
        else:  # InfluxDB ingests faster with a few requests in flight (see BENCHMARKS.md)
            gate = asyncio.Semaphore(MAX_IN_FLIGHT)

            async def one(family: str, body: bytes) -> None:
                async with gate:
                    await self._write_body(body, retries, result, budget, family)

            try:
                async with asyncio.TaskGroup() as tg:  # the first failure cancels the rest
                    for family, body in bodies:
                        tg.create_task(one(family, body))
            except* SinkError as group:
                raise group.exceptions[0] from None
        self.written_lines += result.written
        self.rejected_lines += len(result.rejected)
        return result

    async def _write_body(
        self, body: bytes, retries: int, result: WriteResult, budget: list[int], family: str
    ) -> None:
        try:
            await self._write_retrying(body, retries, family)
        except Rejected as err:
            lines = body.rstrip(b"\n").split(b"\n")
            budget[0] -= 1
            if len(lines) == 1 or budget[0] <= 0:
                why = str(err)[:MAX_REJECT_DETAIL]
                if len(lines) > 1:
                    why = f"{why} (whole request of {len(lines)} lines refused)"
                result.rejected.extend((line.decode(errors="replace"), why) for line in lines)
                return
            # Rewriting the accepted half is harmless (same points), so bisect to the bad lines.
            mid = len(lines) // 2
            for part in (lines[:mid], lines[mid:]):
                await self._write_body(b"\n".join(part) + b"\n", retries, result, budget, family)
            return
        result.written += body.count(b"\n")

    async def _write_retrying(self, body: bytes, retries: int, family: str) -> None:
        attempt = 0
        while True:
            self.requests += 1
            try:
                await self._write_internal(body, family)
            except Transient as err:
                attempt += 1
                self.retries += 1
                if self.broken_since is None:
                    log.warning(
                        "InfluxDB at %s failing (%s); retrying with backoff", self.s.url, err
                    )
                    self.broken_since = time.monotonic()
                if attempt > retries:
                    raise SinkError(
                        f"InfluxDB write to {self.s.url} failed after {attempt} attempts: {err}"
                    ) from err
                await asyncio.sleep(backoff_s(attempt, err.retry_after))
                continue
            if self.broken_since is not None:
                log.warning(
                    "InfluxDB at %s recovered after %.1fs",
                    self.s.url,
                    time.monotonic() - self.broken_since,
                )
                self.broken_since = None
            return


class InfluxV1Sink(InfluxSink):
    """InfluxDB 1.x: ``POST /write?db=..&rp=..&precision=u``."""

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

    async def _write_internal(self, body: bytes, family: str = DEFAULT_FAMILY) -> None:
        assert self._session is not None, "start() first"
        params = {"db": self.s.database, "precision": "u"}
        if rp := v1_policy(self.s, family):
            params["rp"] = rp
        # A BytesIO body: aiohttp warns (an error under pytest) about raw bodies over 1 MB.
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.s.gzip:
            if len(body) >= GZIP_THREAD_BYTES:  # zlib drops the GIL: the event loop goes on
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

    async def _write_internal(self, body: bytes, family: str = DEFAULT_FAMILY) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision

        assert self._api is not None, "start() first"
        try:
            await self._api.write(
                bucket=v2_bucket(self.s, family),
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


def make_sink(settings: InfluxSettings) -> InfluxSink:
    return InfluxV1Sink(settings) if settings.api == "v1" else InfluxV2Sink(settings)
