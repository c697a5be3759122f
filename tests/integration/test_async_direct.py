"""AsyncClient on direct channels (docs/protocol.md, "Direct channels"): a session's calls go
straight to its process, with Client's guarantees (docs/api.md §10, §11): many tasks on one
channel, cancellation at any await, a session or the daemon killed mid-call, events before
replies, and no fd left once closed."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import resource
import signal
import time
from collections.abc import Callable

import pytest

from jidocoder import AsyncClient, RequestTimeoutError, SessionCrashedError
from jidocoder import _channel
from tests.integration.test_async_client import restart_when_killed, run
from tests.support import EXPIRES, LONG, SHORT, check_settled, cpu_seconds, fd_count


async def until(predicate: Callable[[], object], message: str, timeout: float = SHORT) -> None:
    """``wait_until`` for a test's own event loop: poll with a deadline, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {message}"
        await asyncio.sleep(0.002)  # polling interval of a deadline wait


async def history(client: AsyncClient, session_id: str) -> list[str]:
    return [m.content for m in await client.get_conversation_history(session_id)]


async def session_with(client: AsyncClient, content: str) -> tuple[str, int]:
    """A new session holding one message (so its channel is open), and its process."""
    session_id = await client.create_session(config={"max_history": 1000})
    await client.send_message(session_id, "user", content)
    return session_id, await client.get_session_pid(session_id)


def channel_pid(client: AsyncClient, session_id: str) -> int:
    return client._direct.channels[session_id].pid


def test_calls_go_on_a_channel_and_are_answered_while_the_daemon_is_stopped(daemon):
    async def main():
        async with AsyncClient(daemon.socket) as client:
            session_id = await client.create_session()
            daemon_fds = fd_count(daemon.pid)
            await client.send_message(session_id, "user", "one")
            pid = await client.get_session_pid(session_id)
            assert channel_pid(client, session_id) == pid
            assert fd_count(daemon.pid) == daemon_fds  # handed out, both ends closed
            session_fds = fd_count(pid)
            async with AsyncClient(daemon.socket) as other:
                await other.get_active_files(session_id)
                assert fd_count(pid) == session_fds + 1  # one per client using it
            await until(lambda: fd_count(pid) == session_fds, "the closed channel to go")
            os.kill(daemon.pid, signal.SIGSTOP)  # not on the path: the calls still answer
            try:
                await client.send_message(session_id, "user", "two")
                return await history(client, session_id)
            finally:
                os.kill(daemon.pid, signal.SIGCONT)

    assert run(main()) == ["one", "two"]


def test_many_tasks_share_one_channel_and_each_message_is_stored_once_in_order(daemon):
    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id = await client.create_session(config={"max_history": 1000})
            await client.send_message(session_id, "user", "first")
            pid = await client.get_session_pid(session_id)
            session_fds = fd_count(pid)

            async def task(many: AsyncClient, n: int) -> None:
                for k in range(4):
                    await many.send_message(session_id, "user", f"{n}:{k}:é\x00✓")

            async with AsyncClient(daemon.socket, timeout=LONG) as many:
                await asyncio.gather(*(task(many, n) for n in range(50)))
                assert fd_count(pid) == session_fds + 1  # the tasks shared one open_channel
            return (await history(client, session_id))[1:]

    held = run(main())
    assert sorted(held) == sorted(f"{n}:{k}:é\x00✓" for n in range(50) for k in range(4))
    for n in range(50):  # one task's messages in its order
        assert [m for m in held if m.startswith(f"{n}:")] == [f"{n}:{k}:é\x00✓" for k in range(4)]


def test_tasks_pipelining_on_one_channel_each_settle_when_the_session_is_killed(daemon):
    # 8 tasks, one channel, their calls in flight together. The session is SIGKILLed
    # mid-stream: each call returned (stored once), raised SessionCrashedError (begun: stored
    # or not), or was served by the successor; none twice, each task's in its order.
    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id, pid = await session_with(client, "first")
            outcomes: dict[str, str] = {}

            async def write(task: int) -> None:
                for i in range(50):
                    content = f"t{task}-{i}"
                    try:
                        await client.send_message(session_id, "user", content)
                        outcomes[content] = "stored"
                    except SessionCrashedError:
                        outcomes[content] = "crashed"

            writers = asyncio.gather(*(write(t) for t in range(8)))
            await until(lambda: len(outcomes) >= 100, "100 calls answered", LONG)
            os.kill(pid, signal.SIGKILL)
            await writers
            assert channel_pid(client, session_id) != pid
            return outcomes, (await history(client, session_id))[1:]

    outcomes, stored = run(main())
    check_settled(outcomes, stored, writers=8, each=50)


def test_calls_cancelled_at_any_await_are_stored_once_or_not_at_all_on_one_channel(daemon):
    rng = random.Random(20261205)
    sent = [f"m{n:03d}-" + "x" * rng.randrange(0, 3000) for n in range(150)]

    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id = await client.create_session(config={"max_history": 1000})
            await client.send_message(session_id, "user", "first")
            channel = client._direct.channels[session_id]
            finished = []

            async def send(content: str) -> None:
                await client.send_message(session_id, "user", content)
                finished.append(content)

            for content in sent:
                task = asyncio.ensure_future(send(content))
                delay = rng.choice([None, 0, rng.uniform(0, 0.002), 0.01])
                if delay is not None:  # before the write, awaiting the reply, or after it
                    await asyncio.sleep(delay)
                task.cancel()
                [outcome] = await asyncio.gather(task, return_exceptions=True)
                assert outcome is None or isinstance(outcome, asyncio.CancelledError), outcome
            await client.send_message(session_id, "user", "last")
            assert client._direct.channels[session_id] is channel  # in step all along
            return finished, await history(client, session_id)

    finished, held = run(main())
    assert held[0] == "first" and held[-1] == "last"
    stored = held[1:-1]
    assert stored == [m for m in sent if m in set(stored)]  # in order, each once, byte for byte
    assert set(finished) <= set(stored)
    assert 0 < len(finished) < len(stored) < len(sent)  # cancelled before, during and after


def test_a_call_whose_frame_the_stopped_session_never_took_is_never_applied(daemon):
    big = "z" * (4 << 20)  # more than a socket's buffers hold: the frame stays partly unsent

    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id, pid = await session_with(client, "before")
            os.kill(pid, signal.SIGSTOP)
            try:
                client.timeout = EXPIRES * 5
                with pytest.raises(RequestTimeoutError, match="not applied"):
                    await client.send_message(session_id, "user", big)
                assert session_id not in client._direct.channels or \
                    client._direct.channels[session_id].closed
            finally:
                os.kill(pid, signal.SIGCONT)
            client.timeout = LONG
            await client.send_message(session_id, "user", "after")
            return await history(client, session_id), pid, await client.get_session_pid(session_id)

    held, pid, pid_after = run(main())
    assert held == ["before", "after"]
    assert pid_after == pid  # the half frame cost its channel, not the session


def test_a_call_the_killed_process_had_begun_raises_crashed_and_the_next_is_served(daemon_factory):
    daemon = daemon_factory(debug_ops=True)

    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id, pid = await session_with(client, "before")
            cpu = cpu_seconds(pid)
            hanging = asyncio.ensure_future(
                client._call("debug_hang", {"session_id": session_id, "seconds": 60}))
            # Busy in the call: it spins, as an idle session never does.
            await until(lambda: cpu_seconds(pid) > cpu + 0.1, "the session to begin the call")
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(SessionCrashedError):
                await hanging
            await client.send_message(session_id, "user", "after")  # a channel to the successor
            assert channel_pid(client, session_id) != pid
            return await history(client, session_id)

    assert run(main()) == ["before", "after"]


def test_a_call_the_killed_process_never_read_is_served_once_by_its_successor(daemon):
    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id, pid = await session_with(client, "before")
            os.kill(pid, signal.SIGSTOP)  # it reads nothing more
            queued = asyncio.ensure_future(client.send_message(session_id, "user", "queued"))
            channel = client._direct.channels[session_id]
            await until(lambda: channel.waiters, "the call to be written")
            os.kill(pid, signal.SIGKILL)
            await queued
            assert channel_pid(client, session_id) != pid
            return await history(client, session_id)

    assert run(main()) == ["before", "queued"]


def test_a_daemon_killed_and_restarted_during_a_direct_write_stores_it_once(daemon_factory):
    daemon = daemon_factory(debug_ops=True)

    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id, pid = await session_with(client, "before")
            await client._call("debug_kill_daemon_after_commit", {"session_id": session_id})
            sending = asyncio.ensure_future(client.send_message(session_id, "user", "once"))
            await asyncio.get_running_loop().run_in_executor(None, restart_when_killed, daemon)
            await sending  # its channel died with the daemon: resent, and its call id matched
            await client.send_message(session_id, "user", "after")
            assert channel_pid(client, session_id) != pid
            return await history(client, session_id)

    assert run(main()) == ["before", "once", "after"]


def test_a_subscribed_async_client_has_its_calls_events_before_they_return(daemon):
    async def main():
        async with AsyncClient(daemon.socket) as client:
            session_id = await client.create_session()
            await client.subscribe_to_session(session_id)
            for i in range(30):
                await client.send_message(session_id, "user", f"m{i}")
                event = await client.next_event(timeout=0)  # here already: the reply waited
                assert event is not None and event.type == "conversation_added"
                assert event.payload["content"] == f"m{i}"

    run(main())


def test_an_unused_channel_is_closed_at_the_next_call(daemon, monkeypatch):
    monkeypatch.setattr(_channel, "CHANNEL_IDLE_SECONDS", 0.0)

    async def main():
        async with AsyncClient(daemon.socket) as client:
            first, second = await client.create_session(), await client.create_session()
            await client.send_message(first, "user", "x")  # its store and channel are open
            pid = await client.get_session_pid(first)
            fds = fd_count(pid)
            await client.get_active_files(second)  # the first's channel is now unused: closed
            assert list(client._direct.channels) == [second]
            await until(lambda: fd_count(pid) == fds - 1, "the session to close its end")

    run(main())


def test_close_and_collection_leave_no_fd_and_no_task(daemon):
    fds = fd_count()  # outside any event loop (each has fds of its own)

    async def used(client: AsyncClient) -> None:
        await client.connect()
        await client.subscribe_to_all_sessions()
        for _ in range(3):
            session_id = await client.create_session()
            await client.send_message(session_id, "user", "x")
        assert len(client._direct.channels) == 3

    async def closed() -> None:
        before = fd_count()
        client = AsyncClient(daemon.socket)
        await used(client)
        await client.aclose()
        await client.aclose()  # twice is fine
        assert fd_count() == before

    async def dropped() -> None:
        before, tasks = fd_count(), asyncio.all_tasks()
        await used(AsyncClient(daemon.socket))  # never closed: its finalizers close the fds
        gc.collect()
        assert fd_count() == before
        assert asyncio.all_tasks() == tasks

    run(closed())
    run(dropped())
    assert fd_count() == fds


def test_a_daemon_out_of_fds_answers_relay_and_the_async_call_goes_relayed(daemon):
    # The real daemon's fallback (the scripted one: tests/unit/test_async_relay.py).
    async def main():
        async with AsyncClient(daemon.socket) as client:
            session_id = await client.create_session()
            await client.get_session_pid(session_id)  # its process serves: only the pair is left
            soft, hard = resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (fd_count(daemon.pid), hard))
            try:
                await client.send_message(session_id, "user", "relayed")
                assert session_id not in client._direct.channels
            finally:
                resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (soft, hard))
            await client.send_message(session_id, "user", "direct")
            assert channel_pid(client, session_id) == await client.get_session_pid(session_id)
            assert await history(client, session_id) == ["relayed", "direct"]
    run(main())
