"""wire: encode/decode round trips, framing limits, the two kinds of EOF, incremental decoding."""

from __future__ import annotations

import enum
import socket
import struct
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta, timezone, UTC

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jidocoder.errors import InvalidArgumentError, LimitExceededError, ProtocolError
from jidocoder.states import SessionStatus
from jidocoder.wire import (
    DEFAULT_MAX_FRAME, HEADER_SIZE, FrameDecoder, decode, encode, pack_frame, read_frame,
    write_frame,
)

MiB = 1024 * 1024


def header(size: int) -> bytes:
    return struct.pack(">I", size)


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


# --- encode / decode --------------------------------------------------------------------

def test_plain_values_are_packed_natively_in_a_stable_format():
    # These bytes are what the store persists: they must not change between versions.
    assert encode({"a": [1, -1, 1.5, True, None, b"x", "s"]}) == bytes.fromhex(
        "81a1619701ffcb3ff8000000000000c3c0c40178a173")


def test_str_and_bytes_stay_distinct():
    value = decode(encode(["text", b"text", bytearray(b"ba"), memoryview(b"mv")]))
    assert value == ["text", b"text", b"ba", b"mv"]
    assert [type(item) for item in value] == [str, bytes, bytes, bytes]


def test_aware_datetime_comes_back_as_the_same_instant_in_utc_to_the_microsecond():
    plus_five = timezone(timedelta(hours=5, minutes=30))
    sent = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=plus_five)
    received = decode(encode(sent))
    assert received == sent
    assert received.tzinfo is UTC
    assert (received.hour, received.minute, received.microsecond) == (18, 29, 123456)


def test_datetimes_before_the_epoch_and_far_ahead_keep_their_microseconds():
    early = datetime(1901, 12, 13, 20, 45, 52, 1, tzinfo=UTC)
    late = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert decode(encode([early, late])) == [early, late]


def test_aware_datetime_subclass_round_trips_exactly():
    class Moment(datetime):
        pass

    sent = Moment(2030, 1, 1, 0, 0, 0, 654321, tzinfo=timezone(timedelta(hours=-7)))
    received = decode(encode(sent))
    assert type(received) is datetime
    assert received == sent


def test_naive_datetime_is_refused():
    with pytest.raises(InvalidArgumentError) as caught:
        encode({"at": datetime(2024, 1, 1, 12, 0)})
    assert caught.value.code == "invalid_argument"
    assert "naive datetime" in caught.value.message


def test_session_status_comes_back_as_the_enum_member():
    received = decode(encode([status for status in SessionStatus]))
    assert received == list(SessionStatus)
    assert all(got is sent for got, sent in zip(received, SessionStatus, strict=True))
    assert decode(encode(SessionStatus.ACTIVE)) is SessionStatus.ACTIVE


def test_session_status_has_a_stable_extension_encoding():
    assert encode(SessionStatus.IDLE) == b"\xd6\x01idle"  # fixext 4, type 1
    assert encode(SessionStatus.ACTIVE) == b"\xc7\x06\x01active"  # ext 8, length 6, type 1


def test_plain_string_equal_to_a_status_stays_a_plain_string():
    received = decode(encode("active"))
    assert type(received) is str
    assert received == "active"


def test_nested_dicts_lists_and_tuples_round_trip_with_tuples_as_lists():
    sent = {"a": {"b": {"c": [1, (2, (3, SessionStatus.IDLE)), {"d": b"\x00"}]}}, "e": ()}
    assert decode(encode(sent)) == {
        "a": {"b": {"c": [1, [2, [3, SessionStatus.IDLE]], {"d": b"\x00"}]}}, "e": []}


def test_int_and_str_keys_round_trip():
    sent = {1: "one", -2: "minus two", "three": 3, 2**40: "big"}
    assert decode(encode(sent)) == sent


def test_subclasses_of_plain_types_are_sent_as_the_plain_values():
    class Colour(str, enum.Enum):
        RED = "red"

        def __str__(self) -> str:
            return "not the value"

    class Level(enum.IntEnum):
        HIGH = 3

    class Ratio(float):
        pass

    sent = OrderedDict([("colour", Colour.RED), ("level", Level.HIGH), ("ratio", Ratio(0.5))])
    received = decode(encode(sent))
    assert received == {"colour": "red", "level": 3, "ratio": 0.5}
    assert [type(value) for value in received.values()] == [str, int, float]
    assert type(received) is dict


def test_integer_limits_of_msgpack():
    assert decode(encode([-(2**63), 2**64 - 1])) == [-(2**63), 2**64 - 1]
    with pytest.raises(InvalidArgumentError) as caught:
        encode(2**64)
    assert caught.value.code == "invalid_argument"
    assert "outside" in caught.value.message


@pytest.mark.parametrize("value", [
    {1, 2}, frozenset(), object(), datetime.now().date(), timedelta(seconds=1), 1 + 2j,
    {"nested": [Exception("x")]},
])
def test_unencodable_objects_are_invalid_arguments(value):
    with pytest.raises(InvalidArgumentError) as caught:
        encode(value)
    assert caught.value.code == "invalid_argument"
    assert "cannot encode" in caught.value.message


def test_self_referencing_list_is_an_invalid_argument():
    loop: list = []
    loop.append(loop)
    with pytest.raises(InvalidArgumentError):
        encode(loop)


def test_lone_surrogate_string_is_an_invalid_argument():
    with pytest.raises(InvalidArgumentError):
        encode("\ud800")


def test_encoding_still_works_after_a_failed_encode():
    with pytest.raises(InvalidArgumentError):
        encode([1, 2, {3}])
    assert decode(encode([1, 2, 3])) == [1, 2, 3]


@pytest.mark.parametrize("data", [
    b"",                      # no object at all
    b"\xc1",                  # the one byte msgpack never uses
    b"\x92\x01",              # an array of two holding one item
    b"\x01\x02",              # two objects where one is expected
    b"\xa2\xff\xfe",          # a str that is not UTF-8
    b"\xd4\x07\x00",          # an extension type nobody registered
    b"\xc7\x05\x01happy",     # a SessionStatus extension naming no status
    b"\x81\x91\x01\x02",      # a map keyed by a list
])
def test_undecodable_bytes_are_a_protocol_error(data):
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.code == "protocol_error"


# --- pack_frame ---------------------------------------------------------------------------

def test_frame_is_a_big_endian_length_then_the_body():
    body = encode({"op": "ping"})
    assert pack_frame({"op": "ping"}, 100) == len(body).to_bytes(4, "big") + body
    assert HEADER_SIZE == 4


def test_default_max_frame_leaves_room_for_a_16_mib_request():
    assert DEFAULT_MAX_FRAME == 16 * MiB + 64 * 1024


def test_body_of_exactly_max_size_is_packed():
    frame = pack_frame(b"x" * 10, max_size=12)  # bin8 header: 2 bytes + 10
    assert frame == header(12) + b"\xc4\x0a" + b"x" * 10


def test_oversized_body_is_refused_with_its_size_and_the_limit():
    with pytest.raises(LimitExceededError) as caught:
        pack_frame(b"x" * 100, max_size=50)
    assert caught.value.code == "limit_exceeded"
    assert caught.value.details == {"size": 102, "limit": 50}


def test_pack_frame_still_works_after_an_oversized_frame():
    with pytest.raises(LimitExceededError):
        pack_frame(b"x" * (2 * MiB), max_size=MiB)
    assert decode(pack_frame([1], 10)[HEADER_SIZE:]) == [1]


def test_encoding_error_in_pack_frame_is_an_invalid_argument():
    with pytest.raises(InvalidArgumentError):
        pack_frame({"bad": {1}}, DEFAULT_MAX_FRAME)


def test_encoding_is_safe_from_many_threads_at_once():
    results: dict[int, list[object]] = {}

    def work(n: int) -> None:
        sent = [{"n": n, "when": datetime(2024, 1, 1, tzinfo=UTC), "t": (n, n)}] * 50
        results[n] = [decode(pack_frame(item, DEFAULT_MAX_FRAME)[HEADER_SIZE:]) for item in sent]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(8):
        assert results[n] == [{"n": n, "when": datetime(2024, 1, 1, tzinfo=UTC),
                               "t": [n, n]}] * 50


# --- FrameDecoder -------------------------------------------------------------------------

def test_decoder_returns_every_complete_frame_and_keeps_the_rest():
    frames = pack_frame("a", 100) + pack_frame({"b": 2}, 100)
    third = pack_frame([3], 100)
    decoder = FrameDecoder(100)
    assert decoder.feed(frames + third[:3]) == ["a", {"b": 2}]
    assert (decoder.pending, decoder.at_boundary) == (3, False)
    assert decoder.feed(third[3:5]) == []
    assert decoder.pending == 5
    assert decoder.feed(third[5:]) == [[3]]
    assert (decoder.pending, decoder.at_boundary) == (0, True)


def test_decoder_accepts_memoryview_and_bytearray_pieces():
    frame = pack_frame({"k": "v"}, 100)
    decoder = FrameDecoder(100)
    assert decoder.feed(memoryview(frame)[:6]) == []
    assert decoder.feed(bytearray(frame[6:])) == [{"k": "v"}]


def test_decoder_refuses_an_oversized_header_without_buffering_the_body():
    decoder = FrameDecoder(max_size=1024)
    with pytest.raises(LimitExceededError) as caught:
        decoder.feed(header(2**31) + b"x" * 1000)
    assert caught.value.details == {"size": 2**31, "limit": 1024}
    assert decoder.pending == 0
    with pytest.raises(ProtocolError):
        decoder.feed(b"x" * 1000)
    assert decoder.pending == 0


def test_decoder_refuses_an_oversized_header_as_soon_as_the_header_is_complete():
    decoder = FrameDecoder(max_size=1024)
    assert decoder.feed(header(1025)[:3]) == []
    with pytest.raises(LimitExceededError):
        decoder.feed(header(1025)[3:])
    assert decoder.pending == 0


def test_decoder_raises_protocol_error_for_an_undecodable_body():
    decoder = FrameDecoder(100)
    with pytest.raises(ProtocolError):
        decoder.feed(header(1) + b"\xc1")
    with pytest.raises(ProtocolError) as caught:
        decoder.feed(pack_frame("fine", 100))
    assert "earlier error" in caught.value.message


def test_empty_frame_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        FrameDecoder(100).feed(header(0))


def test_decoder_close_is_silent_between_frames():
    decoder = FrameDecoder(100)
    assert decoder.feed(pack_frame(1, 100)) == [1]
    assert decoder.pending == 0
    assert decoder.close() is None  # a clean EOF: no ProtocolError, nothing left over
    assert decoder.pending == 0


def test_decoder_close_in_the_middle_of_a_frame_is_a_protocol_error():
    decoder = FrameDecoder(100)
    decoder.feed(pack_frame("abc", 100)[:-1])
    with pytest.raises(ProtocolError) as caught:
        decoder.close()
    assert caught.value.message == "EOF in the middle of a frame"
    assert caught.value.details == {"pending": 7}


def test_decoder_rejects_a_negative_max_size():
    with pytest.raises(InvalidArgumentError):
        FrameDecoder(-1)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5) | st.integers(-5, 5), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(objects=st.lists(json_like, max_size=6), data=st.data())
def test_frames_split_at_any_points_decode_to_the_same_objects_in_order(objects, data):
    stream = b"".join(pack_frame(obj, DEFAULT_MAX_FRAME) for obj in objects)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder(DEFAULT_MAX_FRAME)
    received: list[object] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        received.extend(decoder.feed(stream[start:stop]))
    assert received == objects
    assert decoder.at_boundary
    decoder.close()


def test_ten_mib_frame_fed_in_4_kib_pieces_decodes_in_linear_time():
    content = bytes(range(256)) * (10 * MiB // 256)
    frame = pack_frame({"content": content}, DEFAULT_MAX_FRAME)
    decoder = FrameDecoder(DEFAULT_MAX_FRAME)
    received: list[object] = []
    started = time.perf_counter()
    with memoryview(frame) as view:
        for start in range(0, len(frame), 4096):
            received.extend(decoder.feed(view[start:start + 4096]))
    elapsed = time.perf_counter() - started
    assert received == [{"content": content}]
    assert decoder.at_boundary
    # Linear work takes milliseconds; copying the buffer on every piece would take seconds.
    assert elapsed < 0.5


# --- blocking helpers over real sockets ---------------------------------------------------

def test_write_frame_then_read_frame_round_trips(pair):
    left, right = pair
    write_frame(left, {"op": "ping", "at": SessionStatus.ACTIVE}, 100)
    write_frame(left, [1, 2], 100)
    assert read_frame(right, 100) == {"op": "ping", "at": SessionStatus.ACTIVE}
    assert read_frame(right, 100) == [1, 2]


def test_read_frame_reads_a_frame_larger_than_the_socket_buffer(pair):
    left, right = pair
    sent = {"content": b"\x07" * (3 * MiB)}
    writer = threading.Thread(target=write_frame, args=(left, sent, DEFAULT_MAX_FRAME))
    writer.start()
    assert read_frame(right, DEFAULT_MAX_FRAME) == sent
    writer.join()


def test_read_frame_returns_none_on_a_clean_eof(pair):
    left, right = pair
    write_frame(left, "last", 100)
    left.shutdown(socket.SHUT_WR)
    assert read_frame(right, 100) == "last"
    assert read_frame(right, 100) is None


def test_read_frame_eof_inside_the_header_is_a_protocol_error(pair):
    left, right = pair
    left.sendall(header(10)[:2])
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError) as caught:
        read_frame(right, 100)
    assert caught.value.details == {"received": 2, "expected": 4}


def test_read_frame_eof_inside_the_body_is_a_protocol_error(pair):
    left, right = pair
    left.sendall(pack_frame("abcdefgh", 100)[:-3])
    left.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError) as caught:
        read_frame(right, 100)
    assert caught.value.message == "EOF in the middle of a frame"
    assert caught.value.details == {"received": 6, "expected": 9}


def test_read_frame_refuses_an_oversized_header_without_reading_the_body(pair):
    left, right = pair
    left.sendall(header(101) + b"body bytes")
    with pytest.raises(LimitExceededError) as caught:
        read_frame(right, 100)
    assert caught.value.details == {"size": 101, "limit": 100}
    assert right.recv(100) == b"body bytes"


def test_write_frame_sends_nothing_when_the_frame_is_too_large(pair):
    left, right = pair
    with pytest.raises(LimitExceededError):
        write_frame(left, b"x" * 200, 100)
    with pytest.raises(InvalidArgumentError):
        write_frame(left, {"bad": object()}, 100)
    right.setblocking(False)
    with pytest.raises(BlockingIOError):
        right.recv(1)


def test_decoder_over_a_socket_tells_clean_eof_from_a_truncated_frame(pair):
    left, right = pair
    left.sendall(pack_frame("one", 100) + pack_frame("two", 100))
    left.shutdown(socket.SHUT_WR)
    decoder = FrameDecoder(100)
    received: list[object] = []
    while chunk := right.recv(3):
        received.extend(decoder.feed(chunk))
    assert received == ["one", "two"]
    decoder.close()

    cut_left, cut_right = socket.socketpair()
    with cut_left, cut_right:
        cut_left.sendall(pack_frame("one", 100) + pack_frame("two", 100)[:-1])
        cut_left.shutdown(socket.SHUT_WR)
        decoder = FrameDecoder(100)
        received = []
        while chunk := cut_right.recv(3):
            received.extend(decoder.feed(chunk))
        assert received == ["one"]
        with pytest.raises(ProtocolError, match="EOF in the middle of a frame"):
            decoder.close()


# -- sizes: one place for the limits, bounded decoding, results forwarded undecoded -----------

def test_a_request_frame_may_hold_the_request_and_its_envelope_and_a_reply_what_a_header_says():
    from jidocoder import wire
    assert wire.request_limit(16 * MiB) == 16 * MiB + wire.ENVELOPE_BYTES == DEFAULT_MAX_FRAME
    assert wire.MAX_FRAME == 2**32 - 1
    assert wire.RECV_CHUNK == 64 * 1024


def test_bounded_decoding_refuses_a_frame_of_empty_maps_before_it_grows_past_its_budget():
    from jidocoder import wire
    body = encode({"id": 7, "op": "x", "args": {"m": [[{}] * 1000] * 500}})
    with pytest.raises(LimitExceededError) as info:
        wire.decode_bounded(body)
    assert info.value.details == {"size": len(body), "limit": 5 * len(body)}


@pytest.mark.parametrize("leaf", [b"\xec", b"\xa2ab", b"\xc0"])  # -20, "ab", None
def test_bounded_decoding_refuses_one_container_whose_leaves_alone_would_pass_the_budget(leaf):
    from jidocoder import wire
    count = 4 * MiB // len(leaf)
    body = b"\xdd" + count.to_bytes(4, "big") + leaf * count  # one array, 4 MiB
    with pytest.raises(LimitExceededError, match="holds a container of more than"):
        wire.decode_bounded(body)


def test_bounded_decoding_takes_ordinary_messages_large_and_small():
    from jidocoder import wire
    for obj in ({"id": 1, "op": "send_message", "args": {"content": "x" * (4 * MiB)}},
                {"id": 2, "op": "hello", "args": {}},
                {"k": [{"a": i, "b": str(i)} for i in range(1000)]}):
        assert wire.decode_bounded(encode(obj)) == obj


def test_an_untrusted_decoder_answers_a_refused_frame_with_its_id_and_stays_in_step():
    from jidocoder import wire
    decoder = FrameDecoder(64 * MiB, untrusted=True)
    bomb = pack_frame({"op": "x", "args": {"m": [[{}] * 1000] * 300}, "id": 41}, 64 * MiB)
    after = pack_frame({"id": 42, "op": "hello"}, 100)
    stream = bomb + after
    pieces = [decoder.feed(stream[i:i + 65536]) for i in range(0, len(stream), 65536)]
    refused, good = [obj for piece in pieces for obj in piece]  # a buffered frame, refused
    assert type(refused) is wire.Refused
    assert refused.reply()["id"] == 41
    assert refused.reply()["error"]["code"] == "limit_exceeded"
    assert good == {"id": 42, "op": "hello"}


def test_a_session_reply_carries_its_result_encoded_and_the_daemon_forwards_it_undecoded():
    from jidocoder import wire
    result = [{"role": "user", "content": "é" * 70_000}, None, b"\x00"]
    frame = wire.pack_reply({"id": 3, "events": [["conversation_cleared", {"session_id": "s"}]]},
                            result)
    link_reply = decode(frame[HEADER_SIZE:])
    assert link_reply["id"] == 3 and link_reply["events"] == [["conversation_cleared",
                                                                {"session_id": "s"}]]
    buffers = wire.reply_buffers(99, link_reply["packed"])
    assert buffers[1] is link_reply["packed"]  # a large result is not copied
    client_frame = b"".join(buffers)
    assert struct.unpack(">I", client_frame[:4])[0] == len(client_frame) - 4
    assert decode(client_frame[4:]) == {"id": 99, "result": result}


def test_a_reply_of_many_fields_and_a_large_result_is_framed_exactly():
    from jidocoder import wire
    envelope = {f"k{i}": i for i in range(20)}  # past a fixmap's 15 entries
    frame = wire.pack_reply(envelope, "x" * 70_000)
    assert decode(frame[HEADER_SIZE:]) == {**envelope, "packed": encode("x" * 70_000)}


def test_a_small_result_travels_the_same_way_in_one_buffer():
    from jidocoder import wire
    frame = wire.pack_reply({"id": 4, "events": []}, None)
    link_reply = decode(frame[HEADER_SIZE:])
    assert link_reply == {"id": 4, "events": [], "packed": encode(None)}
    [buffer] = wire.reply_buffers("x", link_reply["packed"])
    assert decode(buffer[HEADER_SIZE:]) == {"id": "x", "result": None}
    assert struct.unpack(">I", buffer[:4])[0] == len(buffer) - HEADER_SIZE


def test_a_refused_frame_whose_id_is_no_int_is_answered_with_none_and_nothing_built():
    nested = [[[[]] * 15] * 15] * 15
    for request_id in (nested, "7", 1.5, None, -3, 2**40):
        body = encode({"id": request_id, "args": {"m": [[{}] * 1000] * 300}})
        [refused] = FrameDecoder(64 * MiB, untrusted=True).feed(pack_frame(decode(body), 64 * MiB))
        assert refused.request_id == (request_id if type(request_id) is int else None)


def test_an_untrusted_decoder_drops_the_stream_on_an_undecodable_frame():
    decoder = FrameDecoder(64 * MiB, untrusted=True)
    deep = b"\x83\xa2id\x05\xa2op\xa1x\xa4args" + b"\x91" * 100_000 + b"\x80"  # nested too deep
    with pytest.raises(ProtocolError):
        decoder.feed(struct.pack(">I", len(deep)) + deep)
    with pytest.raises(ProtocolError):
        decoder.feed(pack_frame({"id": 6}, 100))


# --- the daemon's split of a request: args forwarded as bytes, only session_id read ----------

def split(obj: object):
    from jidocoder import wire
    return wire.split_request(encode(obj))


@pytest.mark.parametrize("args", [
    {"session_id": "s1", "role": "user", "content": "hi"},
    {"role": "user", "content": "x" * 70_000, "session_id": "s1"},  # last, after a long value
    {"content": [[{}] * 1000] * 300, "path": "/p", "session_id": "s1", "metadata": {"k": [1.5]}},
])
def test_a_session_calls_args_are_kept_as_they_came_and_only_session_id_is_read(args):
    from jidocoder import wire
    encoded_args = encode(args)
    body = b"\x84\xa2id\x07\xa2op\xa8get_file\xa8deadline" + encode(12.5) + b"\xa4args" + encoded_args
    request = wire.split_request(body)
    assert type(request) is wire.Request
    assert (request.id, request.op, request.deadline, request.session_id) == (7, "get_file", 12.5,
                                                                            "s1")
    assert request.args == encoded_args  # byte for byte


@pytest.mark.parametrize("args", [{}, {"role": "user"}, {"session_id": 5},
                                  {"session_id": ["s1"]}, {"session_id": None},
                                  {"session_id": b"s1"}, {"session_id": {"m": [{}] * 100}}])
def test_a_missing_or_non_str_session_id_is_read_as_none(args):
    request = split({"id": 1, "op": "send_message", "args": args})
    assert request.session_id is None and decode(request.args) == args


def test_missing_or_nil_args_are_the_empty_map():
    from jidocoder import wire
    for frame in ({"id": 1, "op": "hello"}, {"id": 1, "op": "hello", "args": None}):
        request = split(frame)
        assert request.args == b"\x80" and wire.decode_args(request.args) == {}


def test_a_nested_session_id_is_not_the_calls():
    request = split({"id": 1, "op": "update_file_index",
                     "args": {"metadata": {"session_id": "other"}, "path": "/p"}})
    assert request.session_id is None


@pytest.mark.parametrize("frame, field", [
    (["not", "a", "request"], None),
    ("hello", None),
    ({"id": 3, "args": {}}, None),  # no op
    ({"id": 3, "op": 5, "args": {}}, None),
    ({"id": 3, "op": b"hello", "args": {}}, None),
    ({"id": 3, "op": "hello", "args": ["session_id", "s1"]}, "args"),
    ({"id": 3, "op": "hello", "args": "s1"}, "args"),
    ({"id": 3, "op": "hello", "args": {1: "s1"}}, "args"),
    ({"id": 3, "op": "hello", "args": {"a": 1, b"session_id": "s1"}}, "args"),
])
def test_a_malformed_request_is_refused_as_invalid_request_with_its_id(frame, field):
    from jidocoder import wire
    refused = split(frame)
    assert type(refused) is wire.Refused
    reply = refused.reply()
    assert reply["id"] == (frame.get("id") if isinstance(frame, dict) else None)
    assert (reply["error"]["code"], reply["error"]["field"]) == ("invalid_request", field)


@pytest.mark.parametrize("body", [
    b"\x83\xa2id\x03\xa2op\xa5hello\xa2op\xa5hello",  # op twice
    b"\x83\xa2id\x03\xa2op\xa5hello\xa2id\x04",  # id twice
    b"\x83\xa2id\x03\xa2op\xa5hello\xa4args\x82\xaasession_id\xa1a\xaasession_id\xa1b",
])
def test_a_key_read_twice_is_invalid_request_not_the_last_one_wins(body):
    from jidocoder import wire
    refused = wire.split_request(body)
    assert type(refused) is wire.Refused
    assert refused.reply()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("body", [
    b"", b"\xc1", b"\x81\xa2id", b"\x82\xa2id\x01", b"\x81\xa2id\x01\x00",  # trailing byte
    b"\x82\xa2id\x01\xa2op\xa2\xff\xfe",  # op not UTF-8
    b"\x83\xa2id\x03\xa2op\xa5hello\xa4args" + b"\x91" * 100_000 + b"\x80",  # nested too deep
])
def test_bytes_that_are_no_request_are_a_protocol_error(body):
    from jidocoder import wire
    with pytest.raises(ProtocolError):
        wire.split_request(body)


def test_a_request_with_a_huge_id_is_refused_for_its_id_alone():
    from jidocoder import wire
    refused = split({"id": [[{}] * 1000] * 300, "op": "hello"})
    assert type(refused) is wire.Refused
    assert refused.reply() == {"id": None, "error": refused.error.to_wire()}
    assert refused.error.code == "limit_exceeded"


def test_a_daemon_calls_args_over_their_bound_are_refused_before_decoding():
    from jidocoder import wire
    big = encode({"metadata": {"m": [[{}] * 1000] * 3000}})
    assert len(big) > wire.DAEMON_ARGS_BYTES
    with pytest.raises(LimitExceededError) as info:
        wire.decode_args(big)
    assert info.value.field == "args"
    assert wire.decode_args(encode({"metadata": {"k": "x" * 1000}})) == {"metadata": {"k": "x" * 1000}}
    # create_session's largest legal args fit the bound
    fits = encode({"metadata": {"k": "x" * (MiB - 20)}, "llm_config": {"k": "y" * (MiB - 20)},
                   "config": {"max_history": 10}})
    assert len(fits) <= wire.DAEMON_ARGS_BYTES


@pytest.mark.parametrize("size", [10, 70_000])
@pytest.mark.parametrize("deadline", [None, 99.5])
def test_the_sessions_request_frame_is_built_around_the_args_bytes(size, deadline):
    from jidocoder import wire
    args = encode({"session_id": "s1", "content": "é" * size})
    buffers = wire.request_buffers(2**33, "send_message", args, deadline, wire.request_limit(MiB))
    if size > 65536:
        assert buffers[-1] is args  # not copied
    frame = b"".join(buffers)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - HEADER_SIZE
    expected = {"id": 2**33, "op": "send_message", "args": decode(args)}
    if deadline is not None:
        expected["deadline"] = deadline
    assert decode(frame[HEADER_SIZE:]) == expected
    with pytest.raises(LimitExceededError):
        wire.request_buffers(1, "send_message", args, deadline, len(args))


def test_a_request_decoder_splits_frames_fed_in_pieces_and_stays_in_step_after_a_refusal():
    decoder = FrameDecoder(64 * MiB, requests=True)
    stream = (pack_frame({"id": 1, "op": "send_message",
                          "args": {"session_id": "s", "content": [[{}] * 1000] * 300}}, 64 * MiB)
              + pack_frame({"id": 2, "op": 3}, 100) + pack_frame({"id": 3, "op": "hello"}, 100))
    got = [obj for i in range(0, len(stream), 4096) for obj in decoder.feed(stream[i:i + 4096])]
    first, refused, hello = got
    assert first.session_id == "s" and decode(first.args)["content"] == [[{}] * 1000] * 300
    assert refused.reply()["id"] == 2 and refused.error.code == "invalid_request"
    assert (hello.id, hello.op, hello.args) == (3, "hello", b"\x80")


def test_a_session_answers_relayed_args_it_cannot_decode_and_stays_in_step():
    from jidocoder import wire
    decoder = FrameDecoder(64 * MiB, relayed=True)
    bad_args = b"\x81\xa1k\xa2\xff\xfe"  # a str that is not UTF-8: the daemon never looked
    [bad] = decoder.feed(b"".join(wire.request_buffers(5, "send_message", bad_args, None, MiB)))
    assert bad.reply()["id"] == 5 and bad.error.code == "invalid_request"
    assert decoder.feed(pack_frame({"id": 6, "op": "x"}, 100)) == [{"id": 6, "op": "x"}]
