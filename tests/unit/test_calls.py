"""A request's shape and the call of its handler, as both servers see them."""

from __future__ import annotations

import logging

import pytest

from jidocoder.daemon.calls import call_handler, internal_error, parse_request
from jidocoder.errors import InvalidArgumentError


def test_parse_request_gives_op_and_args() -> None:
    assert parse_request({"id": 1, "op": "hello", "args": {"a": 1}}) == ("hello", {"a": 1})
    assert parse_request({"id": 1, "op": "hello"}) == ("hello", {})
    assert parse_request({"id": 1, "op": "hello", "args": None}) == ("hello", {})


@pytest.mark.parametrize("frame", [[1, 2], "hello", None, {"id": 1}, {"id": 1, "op": 3}])
def test_parse_request_refuses_what_is_not_a_request(frame: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_request(frame)
    assert caught.value.code == "invalid_request"


@pytest.mark.parametrize("args", [[1], "x", {1: "a"}])
def test_parse_request_refuses_args_that_are_not_a_mapping_of_names(args: object) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        parse_request({"id": 1, "op": "x", "args": args})
    assert caught.value.code == "invalid_request"
    assert caught.value.field == "args"


def handler(session: str, *, text: str) -> str:
    return f"{session}:{text}"


def buggy(*, text: str) -> str:
    return len(text) + "x"  # type: ignore[operator]  # a TypeError from inside: a bug


def test_call_handler_calls_with_leading_and_named_arguments() -> None:
    assert call_handler(handler, "op", "s1", text="hi") == "s1:hi"


def test_call_handler_turns_bad_arguments_into_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        call_handler(handler, "send", "s1", txt="hi")
    assert caught.value.code == "invalid_argument"
    assert "send" in caught.value.message


def test_call_handler_lets_a_deeper_type_error_propagate() -> None:
    with pytest.raises(TypeError) as caught:
        call_handler(buggy, "op", text="hi")
    assert not isinstance(caught.value, InvalidArgumentError)


def test_internal_error_logs_and_answers(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.calls")
    with caplog.at_level(logging.ERROR, logger="test.calls"):
        reply = internal_error(log, "send", RuntimeError("boom"))
    assert reply == {"code": "internal_error", "message": "RuntimeError: boom"}
    assert caplog.records[0].exc_info is not None
    assert "'send'" in caplog.records[0].getMessage()
