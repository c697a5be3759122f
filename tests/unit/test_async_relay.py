"""AsyncClient where no channel can be made (docs/protocol.md, "Direct channels"): a daemon
whose hello says ``channels: false``, or whose ``open_channel`` answers ``relay``, gets the
session's calls itself, with the call id a resend would keep. A scripted daemon (tests of the
real one: tests/integration/test_async_direct.py)."""

from __future__ import annotations

import asyncio

from jidocoder import AsyncClient
from tests.support import LONG
from tests.unit.test_client import HELLO, Peer


def relaying(peer: Peer) -> None:
    """Answer ``open_channel`` with relay, the calls as an empty session would."""
    results = {"open_channel": {"relay": "out of fds"}, "get_active_files": []}
    while (request := peer.recv()) is not None:
        peer.reply(request, results.get(request["op"]))


def calls_to(tmp_path, hello: dict) -> list[dict]:
    peer = Peer(str(tmp_path / "peer.sock"), relaying, hello)

    async def main() -> None:
        async with AsyncClient(peer.path, timeout=LONG) as client:
            await client.send_message("s1", "user", "one")
            await client.get_active_files("s1")

    try:
        asyncio.run(asyncio.wait_for(main(), LONG))
    finally:
        peer.stop()
    assert peer.failure is None
    return peer.received


def test_a_relay_answer_sends_the_call_to_the_daemon_with_its_call_id(tmp_path):
    received = calls_to(tmp_path, {**HELLO, "channels": True})
    assert [r["op"] for r in received] == ["hello", "open_channel", "send_message",
                                           "open_channel", "get_active_files"]
    args = received[2]["args"]
    assert args["content"] == "one" and len(args["call_id"]) == 32


def test_a_daemon_without_channels_is_never_asked_for_one(tmp_path):
    received = calls_to(tmp_path, HELLO)
    assert [r["op"] for r in received] == ["hello", "send_message", "get_active_files"]
