"""A fault-injecting HTTP proxy (aiohttp) for sink tests: 429, 503 and stalls on a schedule.

Every request whose path ends in ``/write`` takes the next action of the schedule (then ``ok``
once the schedule is used up); other requests (queries, health) pass through untouched.

Actions:
    ``ok``           forward and relay the answer
    ``429`` / ``503``  answer that status without forwarding (``Retry-After: <retry_after>``)
    ``stall``        hold the request longer than the client's timeout, never forward it
    ``stall_after``  forward it (the server stores the points), then hold the answer past the
                     client's timeout: the client retries a write that did land, the case that
                     tests "same timestamp = same point"
    ``down``         answer 503 until ``recover()`` is called (a long outage)

``refuse`` (a substring) makes the proxy act as InfluxDB 2.x does with a partial write: lines
containing it are dropped, the others forwarded, and the answer is 400 naming the refused line
(for servers, such as VictoriaMetrics, that skip bad lines without saying so).

The proxy runs its own event loop in a thread, so sync and async tests can both use it.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# aiohttp has already inflated a gzip request body: forward it plain.
REQUEST_DROP = HOP_HEADERS | {"content-encoding"}


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        schedule: Iterable[str] = (),
        *,
        stall_s: float = 3.0,
        retry_after: str = "0.2",
        refuse: str | None = None,
    ) -> None:
        self.refuse = refuse
        self.upstream = upstream.rstrip("/")
        self.schedule: deque[str] = deque(schedule)
        self.stall_s = stall_s
        self.retry_after = retry_after
        self.log: list[tuple[str, str, int]] = []  # (path, action, status returned)
        self.times: list[float] = []  # time.monotonic() each write request arrived, as in log
        self.forwarded_writes = 0
        # (query parameters, body gunzipped) of every write request, whatever its fate
        self.writes: list[tuple[dict[str, str], bytes]] = []
        self._down = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def add(self, *actions: str) -> None:
        self._loop.call_soon_threadsafe(self.schedule.extend, actions)

    def go_down(self) -> None:
        self._down = True

    def recover(self) -> None:
        self._down = False

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in REQUEST_DROP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=headers,
        ) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
            return web.Response(status=resp.status, body=data, headers=out)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not request.path.endswith("/write"):
            return await self._forward(request, body)
        self.times.append(time.monotonic())
        try:
            plain = gzip.decompress(body)
        except (OSError, EOFError):  # not gzip
            plain = body
        self.writes.append((dict(request.query), plain))
        action = "down" if self._down else (self.schedule.popleft() if self.schedule else "ok")
        if action in ("429", "503", "down"):
            status = 503 if action == "down" else int(action)
            self.log.append((request.path, action, status))
            return web.Response(
                status=status,
                text='{"error":"injected fault"}',
                headers={"Retry-After": self.retry_after, "Content-Type": "application/json"},
            )
        if action == "stall":
            self.log.append((request.path, action, 0))
            await asyncio.sleep(self.stall_s)
            return web.Response(status=503, text="stalled")
        if self.refuse is not None and self.refuse.encode() in body:
            lines = body.split(b"\n")
            bad = [ln for ln in lines if self.refuse.encode() in ln]
            kept = b"\n".join(ln for ln in lines if self.refuse.encode() not in ln)
            if kept.strip():
                await self._forward(request, kept)
                self.forwarded_writes += 1
            self.log.append((request.path, "refuse", 400))
            message = f"partial write error: unable to parse {bad[0].decode()!r}: bad timestamp"
            return web.json_response({"code": "invalid", "message": message}, status=400)
        resp = await self._forward(request, body)
        self.forwarded_writes += 1
        self.log.append((request.path, action, resp.status))
        if action == "stall_after":
            await asyncio.sleep(self.stall_s)
        return resp
