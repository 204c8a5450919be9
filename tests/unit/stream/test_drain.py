"""The drain's inline delivery: a delivery that blocks on nothing finishes in place, one that
suspends is finished (once) by whoever awaits its rest, and a cancellation reaches it."""

from __future__ import annotations

import asyncio

import pytest

from stream import transport
from stream.drain import Rest, deliver_now, drain_messages


async def put_event(queue: asyncio.Queue[str], log: list[str], value: str) -> str:
    log.append(f"start {value}")
    await queue.put(value)
    log.append(f"put {value}")
    return value


def test_a_delivery_with_room_finishes_inline_and_makes_no_task() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=2)
        log: list[str] = []
        tasks_before = len(asyncio.all_tasks())
        assert deliver_now(put_event(queue, log, "a")) is None
        assert deliver_now(put_event(queue, log, "b")) is None
        assert len(asyncio.all_tasks()) == tasks_before
        assert log == ["start a", "put a", "start b", "put b"]
        assert [queue.get_nowait(), queue.get_nowait()] == ["a", "b"]

    asyncio.run(main())


def test_a_blocked_delivery_is_finished_by_its_rest_exactly_once() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        queue.put_nowait("first")
        log: list[str] = []
        rest = deliver_now(put_event(queue, log, "second"))
        assert isinstance(rest, Rest)
        assert log == ["start second"]  # suspended on the full queue, not run twice
        waiting = asyncio.ensure_future(rest)  # as wait_first does with it
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert queue.get_nowait() == "first"
        assert await asyncio.wait_for(waiting, 1) == "second"
        assert log == ["start second", "put second"]
        assert queue.get_nowait() == "second" and queue.empty()

    asyncio.run(main())


def test_a_blocked_delivery_gives_way_when_the_flow_is_suspended() -> None:
    async def main() -> None:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1)
        queue.put_nowait("first")
        log: list[str] = []
        cleaned: list[str] = []

        async def deliver() -> None:
            try:
                await put_event(queue, log, "second")
            except asyncio.CancelledError:
                cleaned.append("cancelled where it waited")
                raise

        rest = deliver_now(deliver())
        assert rest is not None
        suspend = asyncio.Event()
        delivery = asyncio.ensure_future(rest)
        flow = asyncio.ensure_future(suspend.wait())
        asyncio.get_running_loop().call_later(0.01, suspend.set)
        done, pending = await asyncio.wait({delivery, flow}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {flow}
        for fut in pending:  # what wait_first does with the loser
            fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
        assert cleaned == ["cancelled where it waited"]
        assert log == ["start second"] and queue.qsize() == 1

    asyncio.run(main())


def test_a_delivery_that_fails_before_suspending_raises_in_place() -> None:
    async def broken() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        deliver_now(broken())


def test_a_failure_after_suspending_comes_out_of_the_rest() -> None:
    async def main() -> None:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def late() -> None:
            await gate
            raise KeyError("after the wait")

        rest = deliver_now(late())
        assert rest is not None
        gate.set_result(None)
        with pytest.raises(KeyError):
            await rest

    asyncio.run(main())


def test_the_worker_consumer_drains_through_it() -> None:
    # the stream and CRM workers' consumer (stream.transport) replaces Faust's drain loop
    assert (
        transport.Consumer._drain_messages is not transport.faust_aiokafka.Consumer._drain_messages
    )
    assert "drain_messages" in transport.Consumer._drain_messages.__code__.co_names
    assert drain_messages.__module__ == "stream.drain"
