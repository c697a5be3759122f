"""The daemon's end of a session link: what it sends the session for a client's call."""

from __future__ import annotations

import socket
import weakref

from jidocoder import wire
from jidocoder.daemon.link import Pending, SessionLink


class Replies:
    def __init__(self) -> None:
        self.replies: list = []
        self.closed = False
        self.links: weakref.WeakSet = weakref.WeakSet()

    def reply(self, request_id, message) -> None:
        self.replies.append((request_id, message))

    def reply_packed(self, request_id, packed) -> None:
        self.replies.append((request_id, wire.decode(packed)))


def sent_requests(*pendings: Pending) -> list[dict]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = SessionLink(0, ours, 1, wire.request_limit(1024), lambda link, wanted: None)
        for n, pending in enumerate(pendings):
            link.request("get_file", wire.encode({"session_id": "s1", "path": f"/{n}"}), pending)
        link.flush()
        return [wire.read_frame(theirs, wire.MAX_FRAME) for _ in pendings]


def test_a_call_goes_to_the_session_with_its_clients_deadline_and_none_without_one():
    client = Replies()
    with_deadline, without = sent_requests(Pending(client, 7, "get_file", 1234.5),
                                           Pending(client, 8, "get_file"))
    assert with_deadline["deadline"] == 1234.5
    assert with_deadline["op"] == "get_file" and with_deadline["args"]["path"] == "/0"
    assert "deadline" not in without
    assert with_deadline["id"] != without["id"]  # link ids, not the client's


def test_only_a_number_is_taken_as_a_requests_deadline():
    def deadline(extra):
        return wire.split_request(wire.encode({"id": 1, "op": "x", **extra})).deadline
    assert deadline({"deadline": 12.5}) == 12.5
    assert deadline({"deadline": 12}) == 12.0
    assert type(deadline({"deadline": 12})) is float
    for extra in ({"deadline": "12"}, {"deadline": True}, {}, {"deadline": [1.0]}):
        assert deadline(extra) is None


def test_a_packed_result_reaches_the_client_undecoded():
    client = Replies()
    Pending(client, 9, "get_file").reply_packed(wire.encode({"path": "/a"}))
    assert client.replies == [(9, {"path": "/a"})]


def test_a_closed_clients_calls_are_cancelled_by_link_id_and_no_one_elses():
    gone, stays = Replies(), Replies()
    ours, theirs = socket.socketpair()
    with ours, theirs:
        link = SessionLink(0, ours, 1, wire.request_limit(1024), lambda link, wanted: None)
        for n, client in enumerate([gone, stays, gone]):
            link.request("get_file", wire.encode({"session_id": "s1", "path": f"/{n}"}),
                         Pending(client, n, "get_file"))
        assert set(gone.links) == {link}
        assert link.cancel(gone) is False  # queued behind the calls: the caller need not flush
        assert link.cancel(Replies()) is False  # nothing of its in flight: nothing sent
        link.flush()
        calls = [wire.read_frame(theirs, wire.MAX_FRAME) for _ in range(3)]
        assert wire.read_frame(theirs, wire.MAX_FRAME) == {"cancel": [calls[0]["id"], calls[2]["id"]]}
