"""Faust's consumer drain, with a record handed to its streams inline when nothing blocks.

faust-streaming 0.15's ``Consumer._drain_messages`` (the loop that takes fetched records from
``getmany`` and hands each to the conductor) wraps every record's delivery in
``Service.wait_first(callback(message), suspend_flow.wait())``: four tasks (the delivery, the
flow-suspend, stopped and crashed events), an ``asyncio.wait`` and three cancellations per
record, about 0.1 ms of the event loop each, so that a delivery blocked on a full stream buffer,
the producer's buffer or a paused flow (a rebalance) gives way when the flow is suspended. Almost
every delivery blocks on nothing: the conductor decodes the record and puts the event on the
stream's queue without suspending.

``deliver_now`` runs the delivery coroutine up to its first suspension, in the drain's own task:
finished there (the usual case), nothing else is made; suspended, the rest of it runs under
``wait_first`` exactly as before (``Rest``: the same coroutine continued, not a new delivery).
``drain_messages`` is Faust's loop with that one change (``stream.transport.Consumer`` runs it);
the offsets it reads and records, the gap bookkeeping and ``commit_every`` are Faust's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING


class Rest:
    """The remainder of a coroutine that suspended once (it yielded ``yielded`` to its task):
    awaiting it drives the coroutine on, forwarding what the task sends or throws in."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation: the coroutine sees it where it waits
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def deliver_now(coro: Coroutine[Any, Any, Any]) -> Rest | None:
    """Run ``coro`` up to its first suspension: ``None`` when it finished there, else its
    ``Rest`` to await. An exception it raises on the way comes out here."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    return Rest(coro, yielded)


async def drain_messages(self: Any, fetcher: Any) -> None:  # pragma: no cover - a worker's loop
    """Faust 0.15.3's ``Consumer._drain_messages`` for consumer ``self``; only the delivery
    differs (``deliver_now``)."""
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = self._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = getmany(timeout=1.0)
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        rest = deliver_now(callback(message))
                        if rest is not None:  # blocked: give way when the flow is suspended
                            await self.wait_first(rest, self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev("DROPPED MESSAGE ROFF %r", offset)
                unset_flag(CONSUMER_FETCHING)
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)
