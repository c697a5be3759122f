# Type stubs for the part of msgpack (1.x) that jidocoder/wire.py uses: msgpack ships none and
# typeshed has none. Signatures follow msgpack's documented API (msgpack/fallback.py); only
# wire.py imports msgpack, so only what it calls is here. Extend this when wire.py calls more.
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

_Buffer = bytes | bytearray | memoryview

class UnpackException(Exception): ...

class ExtType(NamedTuple):
    code: int
    data: bytes

class Timestamp:
    seconds: int
    nanoseconds: int
    def __init__(self, seconds: int, nanoseconds: int = 0) -> None: ...
    def to_datetime(self) -> datetime: ...

class Packer:
    def __init__(
        self,
        *,
        default: Callable[[Any], Any] | None = None,
        use_single_float: bool = False,
        autoreset: bool = True,
        use_bin_type: bool = True,
        strict_types: bool = False,
        datetime: bool = False,
        unicode_errors: str | None = None,
        buf_size: int | None = None,
    ) -> None: ...
    def pack(self, obj: object) -> bytes | None: ...
    def bytes(self) -> bytes: ...
    def reset(self) -> None: ...
    def getbuffer(self) -> memoryview: ...

class Unpacker:
    def __init__(
        self,
        file_like: Any = None,
        *,
        read_size: int = 0,
        use_list: bool = True,
        raw: bool = False,
        timestamp: int = 0,
        strict_map_key: bool = True,
        object_hook: Callable[[dict[Any, Any]], Any] | None = None,
        object_pairs_hook: Callable[[list[tuple[Any, Any]]], Any] | None = None,
        list_hook: Callable[[list[Any]], Any] | None = None,
        unicode_errors: str | None = None,
        max_buffer_size: int = 100 * 1024 * 1024,
        ext_hook: Callable[[int, bytes], Any] = ...,
        max_str_len: int = -1,
        max_bin_len: int = -1,
        max_array_len: int = -1,
        max_map_len: int = -1,
        max_ext_len: int = -1,
    ) -> None: ...
    def feed(self, next_bytes: _Buffer) -> None: ...
    def skip(self) -> None: ...
    def unpack(self) -> Any: ...
    def read_map_header(self) -> int: ...
    def tell(self) -> int: ...

def packb(o: object, **kwargs: Any) -> bytes: ...
def unpackb(packed: _Buffer, **kwargs: Any) -> Any: ...
