"""Framing and encoding: the only module of jidocoder that imports msgpack.

A frame is a 4-byte big-endian unsigned length followed by that many body bytes, and the body
is exactly one msgpack object::

    +----------------+---------------------------------+
    | length (>I, 4) | body: one msgpack object        |
    +----------------+---------------------------------+

Two kinds of EOF: an EOF between frames is a closed connection (``read_frame`` returns None,
``FrameDecoder.close`` is silent); an EOF after part of a header or body is a ``ProtocolError``,
because a message was cut short.

The size is checked as soon as the header is seen, before the body is read or allocated: the
length is four bytes the peer chose, and trusting it would let one header make us allocate up to
4 GiB (the hazard ``multiprocessing.connection`` guards against with its own maximum). An
oversized frame is a ``LimitExceededError``; after it, or after any ``ProtocolError``, the stream
is out of step and the connection must be closed.

Sizes, written here only: a request frame is at most ``request_limit(max_request_bytes)``
(the request plus ``ENVELOPE_BYTES``); replies and events only what the header can say
(``MAX_FRAME``, 4 GiB - 1); a spec or log frame ``CONTROL_FRAME_BYTES``; every read is at most
``RECV_CHUNK``. A frame from a peer that may be hostile is decoded by ``decode_bounded``, which
stops once the objects it builds pass a budget (``FrameDecoder(untrusted=True)`` turns that
into a ``Refused`` frame, answered with the request's id, the stream still in step). A result
crosses the daemon undecoded: the session encodes it on its own (``pack_reply``) and the daemon
frames those bytes for the client (``reply_buffers``). A request crosses it the same way: the
daemon splits a client's request (``split_request``: id, op, deadline and args.session_id read,
the args kept as bytes) and frames the session's request around those bytes
(``request_buffers``); it decodes only its own operations' args, at most ``DAEMON_ARGS_BYTES``
(``decode_args``).

Encoding (``encode``/``decode``, which the store calls too): msgpack with ``str`` and ``bytes``
kept distinct. Packed natively: None, bool, int (-2**63 .. 2**64-1), float, str, bytes, list,
dict (keys str or int). Converted: tuple and list subclasses → list, dict subclasses → dict,
str/int/float/bytes subclasses (e.g. other str enums) → the plain value, an aware datetime → a
msgpack Timestamp (ext -1; decoded as the same instant as an aware UTC datetime, exact to the
microsecond), ``SessionStatus`` → ext type ``EXT_SESSION_STATUS`` holding its value (decoded as
the enum member). Anything else, a naive datetime included, is an ``InvalidArgumentError``.
Sets are refused on purpose: msgpack has no set and a list would not come back as one.

Thread safety: each thread packs with its own msgpack Packer (a Packer's buffer is shared state,
and the ``default`` hook lets another thread run in the middle of a pack).
"""

from __future__ import annotations

import array
import functools
import itertools
import socket
import struct
import sys
import threading
from collections import deque
from datetime import datetime, UTC
from collections.abc import Callable
from typing import Any, cast

import msgpack

from .errors import InvalidArgumentError, JidocoderError, LimitExceededError, ProtocolError
from .states import SessionStatus

HEADER_SIZE = 4
MAX_FRAME = 2**32 - 1  # what the 4-byte header can express: the only bound on a reply or event
# What a request frame may hold around the request itself (request id, operation, deadline,
# argument names; the daemon's link id on the way to the session).
ENVELOPE_BYTES = 64 * 1024
# Frames that carry no request: a spec, a log record, a "ready" (daemon <-> spare).
CONTROL_FRAME_BYTES = 1024 * 1024
# Reads of at most 64 KiB, everywhere (daemon, session, client): larger reads measured slower
# per round trip in CPython (256 KiB cost about 25 us more than 64 KiB), as the whole requested
# size is allocated or handled on every call.
RECV_CHUNK = 64 * 1024
# Untrusted decoding (``FrameDecoder(budget=...)``): the Python objects a frame may become, as
# a multiple of its size, with a floor so that small frames are never refused for their fixed
# costs. 1 MB of empty maps became 69 MiB of objects when nothing counted them.
DECODE_RATIO = 8
DECODE_FLOOR = 1024 * 1024
OPEN_LEAVES_RATIO = 2  # of the 8: what the leaves of a container not yet closed may take


# A session's ``metadata`` and ``llm_config`` (create_session), each encoded: they are kept in
# the daemon for the session's life, in every SessionInfo and session_created event.
MAX_SESSION_DICT_BYTES = 1024 * 1024
# The encoded ``args`` of one of the daemon's own operations, refused past this before a byte of
# it is decoded: the largest it needs is create_session's, metadata and llm_config (each at most
# MAX_SESSION_DICT_BYTES) plus a SessionConfig and the names, a few hundred bytes (the 64 KiB
# is room for those). Session operations' args are never decoded by the daemon (split_request).
DAEMON_ARGS_BYTES = 2 * MAX_SESSION_DICT_BYTES + 64 * 1024


def check_encoded_size(value: object, limit: int, field: str) -> None:
    """``LimitExceededError`` naming ``field`` if ``value`` encodes to more than ``limit`` bytes."""
    size = len(encode(value))
    if size > limit:
        raise LimitExceededError(f"{field} is {size} bytes encoded, more than the {limit} allowed",
                                 field=field, details={"size": size, "limit": limit})


def request_limit(max_request_bytes: int) -> int:
    """The largest request frame body a reader takes: the request plus its envelope (the Client
    refuses requests over ``max_request_bytes`` itself; this allowance is for the hops after)."""
    return max_request_bytes + ENVELOPE_BYTES


# Before this change the default was the request limit of the default settings; kept for
# readers that want one number for requests.
DEFAULT_MAX_FRAME = request_limit(16 * 1024 * 1024)
# msgpack ext type codes 0..127 are free for applications; -1 is the standard Timestamp.
EXT_SESSION_STATUS = 1

_HEADER = struct.Struct(">I")
_MAX_BODY = MAX_FRAME
# The most buffers one sendmsg takes (Linux's UIO_MAXIOV).
_IOV_MAX = 1024
# A Packer keeps its grown buffer across reset(); after a message larger than this, the thread
# gets a fresh Packer so one 16 MiB frame does not pin 16 MiB in every thread for good.
_RETAIN_PACKER_BELOW = 1024 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATUS_EXT = {status: msgpack.ExtType(EXT_SESSION_STATUS, status.value.encode())
               for status in SessionStatus}
_STATUS_BY_DATA = {ext.data: status for status, ext in _STATUS_EXT.items()}
_ENCODABLE = ("dict, list, tuple, str, bytes, int, float, bool, None, an aware datetime "
              "or SessionStatus")


# --- encoding -----------------------------------------------------------------------------

def encode(obj: object) -> bytes:
    """msgpack bytes for ``obj``; ``InvalidArgumentError`` if it holds anything not encodable."""
    packer = _pack(obj)
    size = 0
    try:
        data = packer.bytes()
        size = len(data)
        return data
    finally:
        _recycle(packer, size)


def decode(data: bytes | bytearray | memoryview) -> object:
    """The one object encoded in ``data``; ``ProtocolError`` if it is not exactly one."""
    try:
        return msgpack.unpackb(data, **_UNPACK_OPTIONS)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as error:
        raise ProtocolError(f"undecodable message of {len(data)} bytes: {error}",
                            details={"size": len(data)}) from error


def decode_bounded(data: bytes | bytearray | memoryview, budget: int | None = None) -> object:
    """``decode`` for untrusted bytes: ``LimitExceededError`` once the objects built would take
    more than ``budget`` bytes (by default ``DECODE_RATIO`` times the size, at least
    ``DECODE_FLOOR``).

    msgpack's ``max_map_len`` and friends bound each container, not their total: a frame of
    empty maps (one byte each, 64 bytes as a dict) grows 70-fold. Every container is charged,
    with the leaves it holds, as msgpack closes it (``object_hook``/``list_hook``), and the
    decode stops at the first container past the budget; a container's length is capped
    (``OPEN_LEAVES_RATIO``) so that its leaves cannot grow past the budget before it closes.
    Known limit: leaves held by the *ancestors* of the container being built (a list of leaves
    whose last item is a list of leaves, 32 deep) are charged only as those close: a 16 MB frame
    of that shape peaked at 596 MiB before it was refused. Forwarding a session call's args
    undecoded (as results are: ``split_request``) leaves only the daemon's own small calls
    (``DAEMON_ARGS_BYTES``) to decode. A frame too small to exceed the budget even at msgpack's
    worst expansion is decoded without hooks (the hooks cost 4 us on a 150-byte request).
    """
    size = len(data)
    if budget is None:
        # The frame itself is held while it is decoded (and was read into a growing buffer):
        # the objects get what is left of DECODE_RATIO times its size.
        budget = max((DECODE_RATIO - 1 - OPEN_LEAVES_RATIO) * size, DECODE_FLOOR)
    if size * _WORST_EXPANSION <= budget:
        return decode(data)  # whatever it holds fits: most requests, decoded at full speed
    spent = _Spent(budget, size)
    # A container's leaves are charged only when it closes: its length is capped so that the
    # leaves of one open container cost at most OPEN_LEAVES_RATIO times the frame.
    open_leaves = max(OPEN_LEAVES_RATIO * size, DECODE_FLOOR)
    try:
        return msgpack.unpackb(data, object_hook=spent.charge_map, list_hook=spent.charge_list,
                               max_array_len=open_leaves // _WORST_ELEMENT,
                               max_map_len=open_leaves // _WORST_ENTRY, **_UNPACK_OPTIONS)
    except ValueError as error:
        if "exceeds max_" in str(error):  # msgpack's own words for a length over its cap
            raise LimitExceededError(
                f"a message of {size} bytes holds a container of more than "
                f"{open_leaves // _WORST_ENTRY} entries or {open_leaves // _WORST_ELEMENT} "
                f"items: {error}", details={"size": size}) from None
        raise ProtocolError(f"undecodable message of {size} bytes: {error}",
                            details={"size": size}) from error
    except (TypeError, OverflowError, msgpack.UnpackException) as error:
        raise ProtocolError(f"undecodable message of {size} bytes: {error}",
                            details={"size": size}) from error


# An element's worst cost while its container is open: a 2-character str (51 bytes) or an
# uncached int (28) and its 8-byte slot; a map entry: two of those and its slot in the table.
_WORST_ELEMENT = 64
_WORST_ENTRY = 160

# The most memory one byte of msgpack becomes: a one-byte map entry ({None: None} is 3 bytes, a
# 224-byte dict and an 8-byte slot in its list) is about 77 times its encoding.
_WORST_EXPANSION = 96


class _Spent:
    """The running charge of one bounded decode."""

    __slots__ = ("left", "budget", "size")

    def __init__(self, budget: int, size: int) -> None:
        self.left = self.budget = budget
        self.size = size

    # Each container is charged its own size, its slot in its parent and its leaves.
    def charge_map(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        self._charge(_SLOT + sys.getsizeof(obj) + sum(map(_leaf_size, obj)) +
                     sum(map(_leaf_size, obj.values())))
        return obj

    def charge_list(self, obj: list[Any]) -> list[Any]:
        self._charge(_SLOT + sys.getsizeof(obj) + sum(map(_leaf_size, obj)))
        return obj

    def _charge(self, cost: int) -> None:
        self.left -= cost
        if self.left < 0:
            raise LimitExceededError(
                f"a message of {self.size} bytes decodes to more than {self.budget} bytes of "
                f"objects (the daemon holds at most {DECODE_RATIO} times a message's size); "
                "send fewer, larger values",
                details={"size": self.size, "limit": self.budget})


_LEAVES = frozenset((str, bytes, int, float))
_SLOT = 8  # a pointer in the list or dict that holds it


def _leaf_size(obj: object) -> int:
    """What a leaf costs (a container was charged when it closed; None and bools are shared)."""
    return sys.getsizeof(obj) if type(obj) in _LEAVES else 0


def pack_reply(envelope: dict[str, Any], result: object, max_size: int = MAX_FRAME) -> bytes:
    """A session's reply frame: ``envelope`` plus ``"packed": <bin: result already encoded>``.

    The daemon forwards the bin's bytes to the client as they are (``reply_buffers``), never
    decoding a result, so a reply has no size limit but the header's and costs the daemon no
    objects. Built by concatenation: the result is copied once, not packed twice.
    """
    packed = encode(result)
    if len(packed) < _JOIN_BELOW:  # packing it again is cheaper than concatenating pieces
        return pack_frame({**envelope, "packed": packed}, max_size)
    entries = encode(envelope)[_map_header_size(len(envelope)):]
    body = b"".join((_map_header(len(envelope) + 1), entries, _PACKED_KEY,
                     _bin_header(len(packed)), packed))
    if len(body) > max_size or len(body) > _MAX_BODY:
        raise _too_large(len(body), max_size)
    return _HEADER.pack(len(body)) + body


def reply_buffers(request_id: object, packed: bytes) -> list[bytes]:
    """The frame ``{"id": request_id, "result": <the object packed encodes>}`` as buffers to
    send one after the other, ``packed`` itself the last: nothing is decoded or copied."""
    prefix = b"".join((_REPLY_HEAD, _packed_id(request_id), _RESULT_KEY))
    size = len(prefix) + len(packed)
    if size > _MAX_BODY:
        raise _too_large(size, _MAX_BODY)
    if len(packed) < _JOIN_BELOW:  # one buffer: a send, not a sendmsg (0.8 us less)
        return [b"".join((_HEADER.pack(size), prefix, packed))]
    return [_HEADER.pack(size) + prefix, packed]


# Below this size a result is copied rather than kept apart: copying it costs less than the
# pieces (measured: a reply with a None result 1.37 us in pieces, 0.89 us packed whole).
_JOIN_BELOW = 64 * 1024


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    if count < 2**16:
        return b"\xde" + struct.pack(">H", count)
    return b"\xdf" + struct.pack(">I", count)


def _map_header_size(count: int) -> int:
    return len(_map_header(count))


def _bin_header(size: int) -> bytes:
    if size < 2**8:
        return b"\xc4" + bytes((size,))
    if size < 2**16:
        return b"\xc5" + struct.pack(">H", size)
    return b"\xc6" + struct.pack(">I", size)


def _default(obj: Any) -> object:
    """Turn what the packer does not take natively (strict_types) into what it does, or refuse."""
    if type(obj) is SessionStatus:
        return _STATUS_EXT[obj]
    if isinstance(obj, (tuple, list)):
        return list(obj)
    if isinstance(obj, datetime):
        return _timestamp(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, str):
        return str.__str__(obj)  # the characters themselves, not a subclass's __str__
    if isinstance(obj, int) and type(obj) is not int:
        return int.__index__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    raise _unencodable(obj)


def _timestamp(value: datetime) -> msgpack.Timestamp:
    """Exact (integer) conversion: going through float seconds would lose microseconds."""
    if value.utcoffset() is None:
        raise InvalidArgumentError(
            f"cannot encode the naive datetime {value.isoformat()}: give it a timezone (UTC)",
            details={"type": "datetime"})
    delta = value - _EPOCH
    return msgpack.Timestamp(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)


def _unencodable(obj: object) -> InvalidArgumentError:
    kind = type(obj).__qualname__
    if type(obj) is int:  # only an int out of msgpack's range comes back to the hook
        return InvalidArgumentError(f"cannot encode the integer {obj}: outside -2**63 .. 2**64-1",
                                    details={"type": kind})
    return InvalidArgumentError(f"cannot encode a {kind} object: use {_ENCODABLE}",
                                details={"type": kind})


def _new_packer() -> msgpack.Packer:
    # strict_types sends tuples, subclasses (SessionStatus is a str) and naive datetimes to
    # _default, while exact built-in types keep msgpack's fast native path.
    return msgpack.Packer(default=_default, use_bin_type=True, strict_types=True, datetime=True,
                          autoreset=False)


class _Packers(threading.local):
    def __init__(self) -> None:
        self.packer = _new_packer()


_PACKERS = _Packers()


def _pack(obj: object) -> msgpack.Packer:
    """The calling thread's Packer, holding ``obj``'s encoding; hand it to ``_recycle``."""
    packer = _PACKERS.packer
    try:
        packer.pack(obj)
    except BaseException as error:
        _PACKERS.packer = _new_packer()  # a failed pack may leave a large buffer behind
        if isinstance(error, JidocoderError):
            raise
        if isinstance(error, (TypeError, ValueError, OverflowError)):
            raise InvalidArgumentError(f"cannot encode the message: {error}") from error
        raise
    return packer


def _recycle(packer: msgpack.Packer, size: int) -> None:
    packer.reset()
    if size >= _RETAIN_PACKER_BELOW:
        _PACKERS.packer = _new_packer()


def _ext_hook(code: int, data: bytes) -> object:
    status = _STATUS_BY_DATA.get(data) if code == EXT_SESSION_STATUS else None
    if status is None:
        raise ValueError(f"unknown msgpack extension {code} holding {data[:40]!r}")
    return status


# strict_map_key=False lets int keys through; timestamp=3 makes Timestamps aware UTC datetimes.
_UNPACK_OPTIONS: dict[str, Any] = {
    "raw": False, "timestamp": 3, "strict_map_key": False, "ext_hook": _ext_hook,
}


_ID_KEY, _RESULT_KEY, _PACKED_KEY, _ARGS_KEY = (msgpack.packb(key)
                                                for key in ("id", "result", "packed", "args"))
_UINT32 = struct.Struct(">BI")  # msgpack uint 32 (any decoder takes it for a smaller value)
_REPLY_HEAD = b"\x82" + _ID_KEY  # a map of two entries, the first key "id"
_OP_KEY, _DEADLINE_KEY = msgpack.packb("op"), msgpack.packb("deadline")
_REQUEST_HEAD = b"\x83" + _ID_KEY  # {"id", "op", "args"}
_REQUEST_HEAD_DEADLINE = b"\x84" + _ID_KEY  # {"id", "op", "deadline", "args"}
_FLOAT64 = struct.Struct(">Bd")
_packed_op = functools.lru_cache(maxsize=128)(encode)  # a session op: one of a few names


def _packed_id(request_id: object) -> bytes:
    # A client's request id is an int from 1 up nearly always: framed without a packer.
    if type(request_id) is int and 0 <= request_id < 2**32:
        return bytes((request_id,)) if request_id < 128 else _UINT32.pack(0xce, request_id)
    return encode(request_id)


# --- framing ------------------------------------------------------------------------------

def pack_frame(obj: object, max_size: int) -> bytes:
    """Header plus encoded ``obj``; ``LimitExceededError`` if the body exceeds ``max_size``."""
    packer = _pack(obj)
    body = packer.getbuffer()  # copied once, from the packer's buffer straight into the frame
    size = len(body)
    try:
        if size > max_size or size > _MAX_BODY:
            raise _too_large(size, max_size)
        return _HEADER.pack(size) + body
    finally:
        body.release()
        _recycle(packer, size)


def _too_large(size: int, max_size: int) -> LimitExceededError:
    limit = min(max_size, _MAX_BODY)
    return LimitExceededError(f"a frame of {size} bytes is larger than the limit of {limit} bytes",
                              details={"size": size, "limit": limit})


class Refused:
    """A whole frame that ``decode_bounded`` refused for its budget: the stream is still in
    step, so the frame's sender gets an error reply (to its request ``request_id``, read
    without decoding the rest) and the connection goes on. (An undecodable frame is garbage:
    its peer is not speaking the protocol, and the connection is dropped.)"""

    __slots__ = ("request_id", "error")

    def __init__(self, request_id: object, error: JidocoderError) -> None:
        self.request_id = request_id
        self.error = error

    def reply(self) -> dict[str, Any]:
        return {"id": self.request_id, "error": self.error.to_wire()}


def _is_int_type(first_byte: int) -> bool:
    """Whether a msgpack object starting with ``first_byte`` is an int (fixints, (u)int 8-64)."""
    return first_byte <= 0x7f or 0xcc <= first_byte <= 0xd3 or first_byte >= 0xe0


def _peek_id(body: bytes | bytearray | memoryview) -> object:
    """The ``id`` of the map in ``body`` if it is a small int, else None; nothing else is built
    (every other value is skipped in place)."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(body), 1), **_UNPACK_OPTIONS)
    unpacker.feed(body)
    try:
        for _ in range(unpacker.read_map_header()):
            start = unpacker.tell()
            unpacker.skip()
            key_size = unpacker.tell() - start
            key = decode(body[start:start + key_size]) if key_size <= 16 else None
            if key == "id":  # unpacked only if it is an int: anything else could be a bomb
                return unpacker.unpack() if _is_int_type(body[unpacker.tell()]) else None
            unpacker.skip()
    except (ValueError, TypeError, IndexError, JidocoderError, msgpack.UnpackException):
        pass
    return None


# --- requests: split, not decoded -----------------------------------------------------------

class Request:
    """A client's request as the daemon reads it (``split_request``): ``id``, ``op`` and
    ``deadline`` decoded, ``args`` the encoded map exactly as it came, and the one value the
    daemon needs inside it, ``session_id`` (None if absent or not a str)."""

    __slots__ = ("id", "op", "deadline", "args", "session_id")

    def __init__(self, request_id: object, op: str, deadline: float | None, args: bytes,
                 session_id: str | None) -> None:
        self.id = request_id
        self.op = op
        self.deadline = deadline
        self.args = args
        self.session_id = session_id

    def __repr__(self) -> str:
        return f"<Request id={self.id!r} op={self.op!r} args={len(self.args)} bytes>"


def bad_request() -> InvalidArgumentError:
    """What a frame that is not ``{id, op, args}`` with ``op`` a string is, on every side."""
    return InvalidArgumentError("a request is {id, op, args} with op a string",
                                code="invalid_request")


def bad_args() -> InvalidArgumentError:
    """What ``args`` that are not a map of str names are, on every side."""
    return InvalidArgumentError("'args' must be a mapping of names", code="invalid_request",
                                field="args")


def split_request(body: bytes | bytearray | memoryview) -> Request | Refused:
    """A request frame's body read without building what it carries: its ``args`` stay bytes
    (to be forwarded as they are, ``request_buffers``), every value but ``id``, ``op``,
    ``deadline`` and ``args.session_id`` skipped in place, so no shape of args can make the
    daemon hold more than the frame's bytes a few times over. A malformed request (not a map,
    ``op`` not a str, ``args`` not a map of str names, a key twice) is a ``Refused`` frame
    carrying ``invalid_request``; bytes that are not one msgpack object are a ``ProtocolError``.
    """
    size = len(body)
    unpacker = msgpack.Unpacker(max_buffer_size=max(size, 1), **_UNPACK_OPTIONS)
    unpacker.feed(body)
    try:
        if not _is_map_type(body[0]):
            unpacker.skip()
            _check_whole(unpacker, size)
            return Refused(None, bad_request())
        found: dict[str, Any] = {}
        error: InvalidArgumentError | None = None
        for _ in range(unpacker.read_map_header()):
            key = _read_key(unpacker, body)
            if key is None or (reader := _ENVELOPE_READERS.get(key)) is None:
                unpacker.skip()
                continue
            if key in found:
                error = error or InvalidArgumentError(
                    f"a request holds {key!r} twice", code="invalid_request", field=key)
            found[key] = reader(unpacker, body)
        _check_whole(unpacker, size)
    except (ValueError, TypeError, IndexError, OverflowError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"undecodable message of {size} bytes: {exc}",
                            details={"size": size}) from exc
    request_id = found.get("id")
    if type(request_id) is Refused:  # an id over its own decoding budget: answered as null
        return request_id
    op = found.get("op")
    args = found.get("args", _NO_ARGS)
    if error is None and type(op) is not str:
        error = bad_request()
    if error is None and type(args) is not tuple:
        error = args
    if error is not None:
        return Refused(request_id, error)
    return Request(request_id, cast(str, op), found.get("deadline"), *args)  # a str: checked above


_EMPTY_MAP = b"\x80"
_NO_ARGS = (_EMPTY_MAP, None)
_NOT_OURS = ""  # a key that is not one we read (too long, or not a str): no reader has it
_MAX_KEY_BYTES = 16  # longer than every key read here: skipped, not decoded


def _is_map_type(first_byte: int) -> bool:
    return 0x80 <= first_byte <= 0x8f or first_byte in (0xde, 0xdf)


def _is_str_type(first_byte: int) -> bool:
    return 0xa0 <= first_byte <= 0xbf or 0xd9 <= first_byte <= 0xdb


def _check_whole(unpacker: msgpack.Unpacker, size: int) -> None:
    if unpacker.tell() != size:
        raise ValueError(f"{size - unpacker.tell()} bytes after the message")


def _read_key(unpacker: msgpack.Unpacker, body: bytes | bytearray | memoryview) -> str | None:
    """The key at the unpacker's position if it is a str (``_NOT_OURS`` if longer than any
    read here), None if it is not a str; skipped either way."""
    first = body[unpacker.tell()]
    if 0xa0 <= first <= 0xbf:  # a fixstr, at most 31 bytes: what every encoder writes here
        key: str = unpacker.unpack()
        return key
    start = unpacker.tell()
    unpacker.skip()
    if not _is_str_type(first):
        return None
    end = unpacker.tell()
    if end - start > _MAX_KEY_BYTES + 2:
        return _NOT_OURS
    return cast(str, decode(body[start:end]))  # a str: _is_str_type(first) said so


def _read_id(unpacker: msgpack.Unpacker, body: bytes | bytearray | memoryview) -> object:
    # Any object (echoed in the reply); an int nearly always, read without a slice.
    if _is_int_type(body[unpacker.tell()]):
        return unpacker.unpack()
    start = unpacker.tell()
    unpacker.skip()
    try:
        return decode_bounded(body[start:unpacker.tell()])
    except LimitExceededError as exc:
        return Refused(None, exc)


def _read_str(unpacker: msgpack.Unpacker, body: bytes | bytearray | memoryview) -> str | None:
    if _is_str_type(body[unpacker.tell()]):
        text: str = unpacker.unpack()
        return text
    unpacker.skip()
    return None


def _read_deadline(unpacker: msgpack.Unpacker, body: bytes | bytearray | memoryview
                   ) -> float | None:
    first = body[unpacker.tell()]
    if first in (0xca, 0xcb) or _is_int_type(first):  # a number; anything else: no deadline
        return float(unpacker.unpack())
    unpacker.skip()
    return None


def _read_args(unpacker: msgpack.Unpacker, body: bytes | bytearray | memoryview
               ) -> tuple[bytes, str | None] | InvalidArgumentError:
    """``(the map's bytes, its session_id if a str)``, nil being the empty map; the error if
    it is not a map of str names, or names ``session_id`` twice (the daemon would route by one
    and the session could read the other)."""
    start = unpacker.tell()
    first = body[start]
    if first == 0xc0:
        unpacker.skip()
        return _NO_ARGS
    if not _is_map_type(first):
        unpacker.skip()
        return bad_args()
    session_id, error, seen = None, None, False
    for _ in range(unpacker.read_map_header()):
        key = _read_key(unpacker, body)
        if key is None:
            error = error or bad_args()
        if key != "session_id":
            unpacker.skip()
            continue
        if seen:
            error = error or InvalidArgumentError("'args' holds 'session_id' twice",
                                                  code="invalid_request", field="args")
        seen = True
        session_id = _read_str(unpacker, body)  # a str, or None (skipped)
    return error or (bytes(body[start:unpacker.tell()]), session_id)


_ENVELOPE_READERS = {"id": _read_id, "op": _read_str, "deadline": _read_deadline,
                     "args": _read_args}


def decode_args(args: bytes, limit: int = DAEMON_ARGS_BYTES) -> dict[str, Any]:
    """The daemon's own operation's ``args`` (a map of names, as ``split_request`` checked),
    decoded within the budget; ``LimitExceededError`` before any decoding if over ``limit``."""
    if len(args) > limit:
        raise LimitExceededError(
            f"the args of a daemon operation are {len(args)} bytes encoded, more than the "
            f"{limit} allowed", field="args", details={"size": len(args), "limit": limit})
    return cast(dict[str, Any], decode_bounded(args))  # a map of str names: split_request said so


def request_buffers(link_id: int, op: str, args: bytes, deadline: float | None,
                    max_size: int) -> list[bytes]:
    """The session's request frame ``{"id", "op", "deadline"?, "args"}`` built around ``args``
    as the client sent them (never decoded nor encoded again), as buffers to send in order;
    ``LimitExceededError`` past ``max_size``."""
    if deadline is None:
        prefix = b"".join((_REQUEST_HEAD, _packed_id(link_id), _OP_KEY, _packed_op(op), _ARGS_KEY))
    else:
        prefix = b"".join((_REQUEST_HEAD_DEADLINE, _packed_id(link_id), _OP_KEY, _packed_op(op),
                           _DEADLINE_KEY, _FLOAT64.pack(0xcb, deadline), _ARGS_KEY))
    size = len(prefix) + len(args)
    if size > max_size or size > _MAX_BODY:
        raise _too_large(size, max_size)
    if len(args) < _JOIN_BELOW:
        return [b"".join((_HEADER.pack(size), prefix, args))]
    return [_HEADER.pack(size) + prefix, args]


class FrameDecoder:
    """Turns bytes from a non-blocking socket, in pieces of any size, into decoded objects.

    An error (oversized header, undecodable body) leaves the stream out of step: the decoder
    drops its buffer (objects decoded earlier in the same ``feed`` go with it) and every later
    ``feed`` raises ``ProtocolError``. Feeding one large frame in small pieces is linear.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME, *, untrusted: bool = False,
                 requests: bool = False, relayed: bool = False) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise InvalidArgumentError(f"max_size must be an int >= 0, not {max_size!r}",
                                       field="max_size")
        self._max_size = max_size
        # Frames from a peer that may be hostile (a client; a request relayed to a session) are
        # decoded within a memory budget; our own replies and events are not.
        # A client's requests reach the daemon split, not decoded (``requests``: the daemon
        # only routes them); a session decodes what the daemon relayed within the budget, and a
        # body it cannot decode is the client's bad args, answered (``relayed``): the daemon
        # never looked inside them, and the frame around them is whole and in step.
        self._decode: Callable[[memoryview], object]
        if requests:
            self._decode = split_request
        elif relayed:
            self._decode = self._decode_relayed
        else:
            self._decode = self._decode_untrusted if untrusted else decode
        self._buf = bytearray()
        self._failure: JidocoderError | None = None

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held until the rest arrives."""
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is held: an EOF now would be a clean one."""
        return not self._buf

    def feed(self, data: bytes | bytearray | memoryview) -> list[object]:
        """Every object completed by ``data``, in order (possibly none)."""
        if self._failure is not None:
            raise ProtocolError(f"the stream is unusable after an earlier error: "
                                f"{self._failure.message}") from self._failure
        # The common case, one whole frame and nothing held: decoded straight from ``data``.
        if not self._buf and len(data) > HEADER_SIZE:
            size = _HEADER.unpack_from(data)[0]
            if size + HEADER_SIZE == len(data) and size <= self._max_size:
                try:
                    with memoryview(data) as view:
                        return [self._decode(view[HEADER_SIZE:])]
                except JidocoderError as error:
                    self._failure = error
                    raise
        # Only a partial frame is ever copied into the buffer; whole frames in ``data`` are
        # decoded where they lie.
        source: bytes | bytearray | memoryview = data
        if self._buf:
            self._buf += data
            source = self._buf
        try:
            objects, used = self._split(source)
        except JidocoderError as error:
            self._failure = error
            self._buf = bytearray()  # a new one: a traceback may still hold a view of the old
            raise
        self._keep_rest(source, used)
        return objects

    @staticmethod
    def _decode_untrusted(body: memoryview) -> object:
        try:
            return decode_bounded(body)
        except LimitExceededError as error:  # the frame was whole: the stream is in step
            # A new error: the raised one's traceback holds a view of the decoder's buffer.
            return Refused(_peek_id(body), LimitExceededError(error.message, details=error.details))

    @classmethod
    def _decode_relayed(cls, body: memoryview) -> object:
        try:
            return cls._decode_untrusted(body)
        except ProtocolError as error:
            return Refused(_peek_id(body), InvalidArgumentError(
                f"the request's args cannot be decoded: {error.message}", code="invalid_request",
                field="args", details=error.details))

    def close(self) -> None:
        """The peer's EOF: ``ProtocolError`` if it cut a frame short, else nothing."""
        pending, self._buf = len(self._buf), bytearray()
        if pending:
            raise ProtocolError("EOF in the middle of a frame", details={"pending": pending})

    def _split(self, source: bytes | bytearray | memoryview) -> tuple[list[object], int]:
        """The objects of the whole frames at the start of ``source``, and the bytes they used."""
        objects: list[object] = []
        pos = 0
        with memoryview(source) as view:
            end = len(view)
            while end - pos >= HEADER_SIZE:
                size = _HEADER.unpack_from(view, pos)[0]
                if size > self._max_size:  # before a single body byte is kept
                    raise _too_large(size, self._max_size)
                stop = pos + HEADER_SIZE + size
                if stop > end:
                    break
                objects.append(self._decode(view[pos + HEADER_SIZE:stop]))
                pos = stop
        return objects, pos

    def _keep_rest(self, source: bytes | bytearray | memoryview, used: int) -> None:
        if source is self._buf:
            # Dropping a bytearray's head is cheap (CPython moves its start), and what remains
            # is only the partial frame that began in this piece: no quadratic copying.
            del self._buf[:used]
        elif used < len(source):
            with memoryview(source) as view:
                self._buf += view[used:]


# --- blocking helpers ---------------------------------------------------------------------

def read_frame(sock: socket.socket, max_size: int) -> object | None:
    """The next object from a blocking socket, or None on a clean EOF before its header.

    EOF inside a frame is a ``ProtocolError``; an oversized header is a ``LimitExceededError``
    raised without reading the body. OS errors and socket timeouts propagate; after any of
    these the stream is out of step and the socket must be closed.
    """
    header = bytearray(HEADER_SIZE)
    got = _recv_exactly(sock, memoryview(header))
    if got == 0:
        return None
    if got < HEADER_SIZE:
        raise ProtocolError("EOF in the middle of a frame header",
                            details={"received": got, "expected": HEADER_SIZE})
    size = _HEADER.unpack(header)[0]
    if size > max_size:
        raise _too_large(size, max_size)
    body = bytearray(size)
    got = _recv_exactly(sock, memoryview(body))
    if got < size:
        raise ProtocolError("EOF in the middle of a frame",
                            details={"received": got, "expected": size})
    return decode(body)


def write_frame(sock: socket.socket, obj: object, max_size: int) -> None:
    """Send one frame; on ``InvalidArgumentError``/``LimitExceededError`` nothing is sent."""
    sock.sendall(pack_frame(obj, max_size))


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds a ``recvmsg`` brought (SCM_RIGHTS), in order: a channel's or the table's."""
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return list(fds)


def set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    """A blocking ``recv`` on ``sock`` raises ``BlockingIOError`` (EAGAIN) after ``seconds`` with
    nothing to read (SO_RCVTIMEO): one syscall per wait, where a poll first would cost two."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def send_buffers(sock: socket.socket, buffers: deque[bytes | memoryview]) -> int:
    """One send of the queued ``buffers`` (at most ``_IOV_MAX`` of them, gathered by the
    kernel: several frames leave in one syscall); the bytes it took. Non-blocking sockets raise
    ``BlockingIOError`` as ``send`` does."""
    if len(buffers) == 1:
        return sock.send(buffers[0])
    return sock.sendmsg(itertools.islice(buffers, _IOV_MAX))


def drop_sent(buffers: deque[bytes | memoryview], sent: int) -> None:
    """Remove the first ``sent`` bytes from the queue ``buffers``."""
    while sent:
        head = buffers[0]
        if sent < len(head):
            buffers[0] = memoryview(head)[sent:]
            return
        sent -= len(head)
        buffers.popleft()


def _recv_exactly(sock: socket.socket, view: memoryview) -> int:
    """Fill ``view`` from ``sock``; the bytes received, fewer than asked only at EOF."""
    got, total = 0, len(view)
    while got < total:
        received = sock.recv_into(view[got:], min(RECV_CHUNK, total - got))
        if received == 0:
            break
        got += received
    return got


__all__ = [
    "HEADER_SIZE", "MAX_FRAME", "ENVELOPE_BYTES", "CONTROL_FRAME_BYTES", "RECV_CHUNK",
    "DECODE_RATIO", "DECODE_FLOOR", "request_limit", "decode_bounded", "pack_reply",
    "reply_buffers", "Refused", "MAX_SESSION_DICT_BYTES", "check_encoded_size",
    "DAEMON_ARGS_BYTES", "Request", "split_request", "decode_args", "request_buffers",
    "bad_request", "bad_args",
    "DEFAULT_MAX_FRAME", "EXT_SESSION_STATUS", "encode", "decode", "pack_frame",
    "FrameDecoder", "read_frame", "write_frame", "send_buffers", "drop_sent",
]
