"""InfluxDB sinks, as Telegraf has them: the 1.x HTTP API and the 2.x/3.x API through influxdb-client.

Both take line protocol with microsecond timestamps, so a retried write rewrites the same points.
Retries on 429, 5xx and timeouts with exponential backoff and full jitter; a 4xx other than 429
is a bad batch and raises ``SinkError`` at once (the caller dead-letters it).
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import aiohttp

from core.config import InfluxSettings
from core.errors import SinkError

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class InfluxSink(ABC):
    """Writes line protocol; ``write`` does chunking, retries and the broken/recovered log lines."""

    def __init__(self, settings: InfluxSettings) -> None:
        self.s = settings
        self.written_lines = 0
        self.retries = 0
        self._broken = False

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open connections, create the database where the API allows it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def _write_internal(self, body: bytes) -> None:
        """Send one request; raise ``_Retryable`` or ``SinkError``."""

    async def write(self, lines: Sequence[str]) -> None:
        step = max(1, self.s.batch_lines)
        for start in range(0, len(lines), step):
            chunk = lines[start : start + step]
            await self._write_retrying(("\n".join(chunk) + "\n").encode())
            self.written_lines += len(chunk)

    async def _write_retrying(self, body: bytes) -> None:
        attempt = 0
        while True:
            try:
                await self._write_internal(body)
            except _Retryable as err:
                attempt += 1
                self.retries += 1
                if not self._broken:
                    log.warning("InfluxDB write failing (%s); retrying with backoff", err)
                    self._broken = True
                if attempt > self.s.max_retries:
                    raise SinkError(
                        f"InfluxDB write failed after {attempt} attempts: {err}"
                    ) from err
                await asyncio.sleep(random.uniform(0, min(30.0, 0.1 * 2**attempt)))
                continue
            if self._broken:
                log.warning("InfluxDB writes recovered after %d retries", attempt)
                self._broken = False
            return


class _Retryable(Exception):
    pass


class InfluxV1Sink(InfluxSink):
    """InfluxDB 1.x: ``POST /write?db=..&rp=..&precision=u``."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._session: aiohttp.ClientSession | None = None

    def _auth(self) -> aiohttp.BasicAuth | None:
        if self.s.username and self.s.password:
            return aiohttp.BasicAuth(self.s.username, self.s.password.get_secret_value())
        return None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.s.timeout_s), auth=self._auth()
        )
        await self.query(f'CREATE DATABASE "{self.s.database}"', method="POST")

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
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SinkError(f"InfluxDB at {self.s.url} unreachable: {err}") from err

    async def _write_internal(self, body: bytes) -> None:
        assert self._session is not None, "start() first"
        params = {"db": self.s.database, "precision": "u"}
        if self.s.retention_policy:
            params["rp"] = self.s.retention_policy
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.s.gzip:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        try:
            async with self._session.post(
                f"{self.s.url}/write", params=params, data=body, headers=headers
            ) as resp:
                if resp.status == 204:
                    return
                text = (await resp.text())[:300]
                if resp.status in RETRY_STATUS:
                    raise _Retryable(f"HTTP {resp.status}: {text}")
                raise SinkError(f"InfluxDB rejected a batch (HTTP {resp.status}): {text}")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from err


class InfluxV2Sink(InfluxSink):
    """InfluxDB 2.x/3.x (and other servers with ``/api/v2/write``) through influxdb-client."""

    def __init__(self, settings: InfluxSettings) -> None:
        super().__init__(settings)
        self._client: Any = None

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

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _write_internal(self, body: bytes) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision

        assert self._client is not None, "start() first"
        try:
            await self._client.write_api().write(
                bucket=self.s.bucket, org=self.s.org, record=body, write_precision=WritePrecision.US
            )
        except InfluxDBError as err:
            status = getattr(err.response, "status", None)
            if status in RETRY_STATUS:
                raise _Retryable(f"HTTP {status}: {err}") from err
            raise SinkError(f"InfluxDB rejected a batch (HTTP {status}): {err}") from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from err


def make_sink(settings: InfluxSettings) -> InfluxSink:
    return InfluxV1Sink(settings) if settings.api == "v1" else InfluxV2Sink(settings)
