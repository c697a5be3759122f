"""AsyncClient against the real daemon (docs/api.md §11): the same calls, results and errors as
Client, many tasks at once, cancellation at any point, reconnect, and nothing left behind."""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import threading

import pytest

from jidocoder import (AsyncClient, InvalidArgumentError, Message, SessionInfo,
                       SessionNotFoundError)
from tests.support import LONG, SHORT, contents, fd_count, wait_until


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, LONG))


def test_the_calls_answer_as_the_client_does(daemon):
    async def main():
        async with AsyncClient(daemon.socket) as client:
            session_id = await client.create_session(metadata={"app": "x"})
            await client.subscribe_to_session(session_id, since=0)
            await client.send_message(session_id, "user", "hello")
            history = await client.get_conversation_history(session_id)
            info = await client.get_session_info(session_id)
            events = [await client.next_event(SHORT) for _ in range(2)]
            with pytest.raises(InvalidArgumentError) as bad:
                await client.send_message(session_id, "robot", "x")
            with pytest.raises(SessionNotFoundError):
                await client.get_session_info("session_nope")
            assert await client.next_event(0) is None
            return session_id, history, info, events, bad.value

    session_id, history, info, events, bad = run(main())
    assert [type(m) for m in history] == [Message] and history[0].content == "hello"
    assert isinstance(info, SessionInfo) and info.metadata == {"app": "x"}
    assert [e.type for e in events] == ["session_status", "conversation_added"]
    assert [e.seq for e in events] == [1, 2]
    assert bad.code == "invalid_role"


def test_one_async_client_serves_100_tasks_at_once(daemon):
    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            sessions = [await client.create_session() for _ in range(5)]

            async def task(n: int) -> int:
                session_id = sessions[n % 5]
                for k in range(3):
                    await client.send_message(session_id, "user", f"{n}:{k}")
                return len(await client.get_conversation_history(session_id))

            counts = await asyncio.gather(*(task(n) for n in range(100)))
            return sessions, counts

    sessions, counts = run(main())
    assert all(3 <= c <= 60 for c in counts)
    with daemon.client() as client:
        for i, session_id in enumerate(sessions):
            held = contents(client, session_id)
            expected = {f"{n}:{k}" for n in range(i, 100, 5) for k in range(3)}
            assert sorted(held) == sorted(expected)  # each exactly once
            for n in range(i, 100, 5):  # one task's messages in its order
                assert [m for m in held if m.startswith(f"{n}:")] == [f"{n}:{k}" for k in range(3)]


def test_calls_cancelled_at_random_points_are_applied_once_or_not_at_all(daemon):
    rng = random.Random(20261205)

    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id = await client.create_session(config={"max_history": 1000})
            finished = []

            async def send(n: int) -> None:
                await client.send_message(session_id, "user", f"m{n}")
                finished.append(f"m{n}")

            for n in range(200):
                task = asyncio.ensure_future(send(n))
                # A random point: before it is written, while it waits for its reply, or after.
                delay = rng.choice([None, 0, rng.uniform(0, 0.002), 0.01])
                if delay is not None:
                    await asyncio.sleep(delay)
                task.cancel()
                [outcome] = await asyncio.gather(task, return_exceptions=True)
                assert outcome is None or isinstance(outcome, asyncio.CancelledError), outcome
            await client.send_message(session_id, "user", "still usable")
            return session_id, finished, await client.get_conversation_history(session_id)

    session_id, finished, history = run(main())
    held = [m.content for m in history]
    assert held[-1] == "still usable"
    assert len(held) == len(set(held))  # nothing applied twice
    assert set(finished) <= set(held)  # everything answered is there
    assert 0 < len(finished) < len(held) - 1 < 200  # cancelled before, during and after


def test_an_async_writer_whose_daemon_dies_after_commit_reconnects_and_stores_once(daemon):
    async def main():
        async with AsyncClient(daemon.socket, timeout=LONG) as client:
            session_id = await client.create_session()
            await client.subscribe_to_session(session_id)
            await client._call("debug_kill_daemon_after_commit", {"session_id": session_id})
            sending = asyncio.ensure_future(client.send_message(session_id, "user", "once"))
            await asyncio.get_running_loop().run_in_executor(None, restart_when_killed, daemon)
            await sending
            await client.send_message(session_id, "user", "after")
            return session_id, await client.get_conversation_history(session_id)

    session_id, history = run(main())
    assert [m.content for m in history] == ["once", "after"]


def restart_when_killed(daemon) -> None:
    wait_until(lambda: daemon.proc.poll() is not None, SHORT, "the session to kill the daemon")
    assert daemon.proc.returncode == -signal.SIGKILL
    daemon.kill()
    daemon.start()


def test_no_task_thread_or_fd_outlives_close_or_the_client(daemon):
    threads = set(threading.enumerate())
    fds = fd_count()

    async def closed() -> None:
        client = AsyncClient(daemon.socket)
        await client.connect()
        await client.subscribe_to_all_sessions()
        await client.create_session()
        await client.close()
        await client.close()  # twice is fine

    async def dropped() -> None:
        tasks = asyncio.all_tasks()
        client = AsyncClient(daemon.socket)
        await client.connect()
        await client.subscribe_to_all_sessions()
        del client
        gc.collect()
        assert asyncio.all_tasks() == tasks  # it reads from a callback: no task to end

    run(closed())
    run(dropped())
    assert set(threading.enumerate()) == threads
    wait_until(lambda: fd_count() == fds, SHORT, "every fd of the clients to close")
