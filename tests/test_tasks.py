"""The supervisor that owns the daemon's tasks: groups, cancellation awaited, failures logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from exporter.tasks import Supervisor


async def forever(log: list[str], name: str) -> None:
    try:
        await asyncio.sleep(3600)
    finally:
        await asyncio.sleep(0)  # a clean-up that itself awaits, as closing a socket may
        log.append(name)


async def test_stop_group_waits_for_its_tasks_and_leaves_the_others() -> None:
    ended: list[str] = []
    tasks = Supervisor()
    tasks.spawn(forever(ended, "a"), "a", "probe")
    tasks.spawn(forever(ended, "b"), "b", "probe")
    other = tasks.spawn(forever(ended, "c"), "c", "slack")
    await asyncio.sleep(0)
    await tasks.stop_group("probe")
    assert sorted(ended) == ["a", "b"]  # finished, clean-ups included, when stop returns
    assert not other.done() and len(tasks) == 1
    await tasks.aclose()
    assert ended[-1] == "c" and len(tasks) == 0


async def test_a_cancelled_task_stays_owned_until_it_has_ended() -> None:
    ended: list[str] = []
    tasks = Supervisor()
    old = tasks.spawn(forever(ended, "old"), "old", "probe")
    await asyncio.sleep(0)
    tasks.cancel([old])  # as a reload does, without waiting
    tasks.spawn(forever(ended, "new"), "new", "probe")
    assert len(tasks) == 2
    await asyncio.sleep(0)
    await tasks.aclose()
    assert sorted(ended) == ["new", "old"] and len(tasks) == 0


async def test_a_task_that_dies_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug of ours")

    tasks = Supervisor(logging.getLogger("cutover.test"))
    task = tasks.spawn(broken(), "route53", "route53")
    await asyncio.wait([task])
    await asyncio.sleep(0)
    [record] = [r for r in caplog.records if r.name == "cutover.test"]
    assert record.getMessage() == "task route53 ended with an unexpected error"
    assert record.exc_info is not None and "a bug of ours" in str(record.exc_info[1])
    assert len(tasks) == 0


async def test_a_task_that_swallows_its_cancellation_cannot_hold_a_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed: list[int] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise  # the second cancel is obeyed
                swallowed.append(1)

    tasks = Supervisor(grace=0.05)
    task = tasks.spawn(stubborn(), "stubborn", "traffic")
    await asyncio.sleep(0)
    await tasks.stop_group("traffic")
    assert task.cancelled() and swallowed == [1] and len(tasks) == 0
    assert "stubborn did not end within 0.05s of being cancelled" in caplog.text


async def test_a_task_that_never_ends_is_left_behind_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def deaf() -> None:
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    tasks = Supervisor(grace=0.05)
    task = tasks.spawn(deaf(), "deaf", "traffic")
    await asyncio.sleep(0)
    await tasks.stop_group("traffic")  # returns: a shutdown is never held forever
    assert not task.done()
    assert "deaf still runs after a second cancel: left behind" in caplog.text
    task.get_coro().close()  # type: ignore[union-attr]
