"""AwsCalls: a boto3 client's blocking calls off the event loop, with deadlines and a close."""

from __future__ import annotations

import asyncio
import threading

import pytest

from exporter.aws import AwsCalls, CallsClosed, CallTimedOut


class FakeClient:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


async def test_the_client_is_built_once_in_a_worker_thread() -> None:
    built: list[str] = []

    def build() -> tuple[FakeClient, None]:
        built.append(threading.current_thread().name)
        return FakeClient(), None

    calls = AwsCalls(build, name="test-aws")
    try:
        first = await calls.run(calls.client)
        second = await calls.run(calls.client)
        assert first is second
        assert built == [built[0]] and built[0].startswith("test-aws")
    finally:
        calls.close()
    assert first.closed


async def test_a_hung_call_times_out_and_the_next_call_still_runs() -> None:
    release = threading.Event()
    calls = AwsCalls(lambda: (FakeClient(), None), name="test-aws", workers=2)
    try:
        with pytest.raises(CallTimedOut, match=r"no answer within 0.05s"):
            await calls.run(release.wait, 30, within=0.05)
        # the hung thread holds one worker; the other answers
        assert await calls.run(lambda: 42, within=5) == 42
    finally:
        release.set()
        calls.close()


async def test_what_the_function_raises_comes_out_as_it_is() -> None:
    calls = AwsCalls(lambda: (FakeClient(), None), name="test-aws")

    def fail() -> None:
        raise TimeoutError("the function's own deadline")

    try:
        with pytest.raises(TimeoutError, match="the function's own deadline"):
            await calls.run(fail, within=5)
    finally:
        calls.close()


async def test_after_close_calls_are_refused_and_a_handed_in_client_stays_open() -> None:
    client = FakeClient()
    calls = AwsCalls(lambda: (FakeClient(), None), name="test-aws", client=client)
    assert await calls.run(calls.client) is client
    calls.close()
    with pytest.raises(CallsClosed):
        await calls.run(lambda: 1)
    with pytest.raises(CallsClosed):
        calls.client()
    assert not client.closed


async def test_a_cancelled_caller_leaves_no_unretrieved_exception() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow_failure() -> None:
        started.set()
        release.wait(5)
        raise RuntimeError("late")

    calls = AwsCalls(lambda: (FakeClient(), None), name="test-aws")
    loop = asyncio.get_running_loop()
    seen: list[object] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        task = asyncio.create_task(calls.run(slow_failure, within=5))
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.sleep(0.05)
    finally:
        calls.close()
    assert seen == []


async def test_building_the_client_is_not_counted_in_the_first_calls_deadline() -> None:
    def slow_build() -> tuple[FakeClient, None]:
        threading.Event().wait(0.3)  # loading service models on a busy machine
        return FakeClient(), None

    calls = AwsCalls(slow_build, name="test-aws")
    try:
        client = await calls.run(calls.client, within=0.1)
        assert isinstance(client, FakeClient)
    finally:
        calls.close()


async def test_a_client_that_cannot_be_built_fails_inside_the_callers_function() -> None:
    def no_region() -> tuple[FakeClient, None]:
        raise LookupError("no region")

    calls = AwsCalls(no_region, name="test-aws")
    seen: list[str] = []

    def fn() -> None:
        try:
            calls.client()
        except LookupError as e:
            seen.append(str(e))  # the caller classifies it, as its own failure
            raise

    try:
        with pytest.raises(LookupError):
            await calls.run(fn, within=5)
    finally:
        calls.close()
    assert seen == ["no region"]
