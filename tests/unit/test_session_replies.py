"""What a session process writes back for a request: results packed apart, refusals answered."""

from __future__ import annotations

from jidocoder import wire
from jidocoder.daemon.session import SessionProcess
from jidocoder.errors import LimitExceededError


def bare_session() -> SessionProcess:
    return SessionProcess.__new__(SessionProcess)  # handle/encode_reply need no store or socket


def test_a_result_goes_packed_apart_for_the_daemon_to_forward_and_events_stay_decoded():
    session = bare_session()
    for result in (None, {"path": "/a"}, ["x" * 100_000]):
        frame = session.encode_reply({"id": 5, "result": result, "events": [["e", {"k": 1}]]})
        reply = wire.decode(frame[wire.HEADER_SIZE:])
        assert reply["id"] == 5 and reply["events"] == [["e", {"k": 1}]]
        assert "result" not in reply and wire.decode(reply["packed"]) == result


def test_an_error_reply_and_a_frame_without_result_go_as_they_are():
    session = bare_session()
    for frame in ({"id": 6, "error": {"code": "not_found", "message": "no"}},
                  {"ready": {"message_count": 3}}):
        assert wire.decode(session.encode_reply(frame)[wire.HEADER_SIZE:]) == frame


def test_a_request_over_its_decoding_budget_is_answered_with_its_id():
    refused = wire.Refused(41, LimitExceededError("too many objects"))
    reply = bare_session().handle(refused)
    assert reply["id"] == 41 and reply["error"]["code"] == "limit_exceeded"
