"""FileCache: the original session-scoped cache tests, plus LRU, size and mtime rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jidocoder.errors import InvalidArgumentError, LimitExceededError
from jidocoder.filecache import FileCache
from jidocoder.models import CachedFile

MISSING = "/nonexistent/jidocoder-test/file.ex"


def keys(cache: FileCache, *paths: str) -> list[str]:
    """Which of ``paths`` are cached; reads through get, so it counts as use."""
    return [p for p in paths if cache.get(p) is not None]


def test_put_then_get_returns_the_stored_entry() -> None:
    cache = FileCache(1024)
    stored = cache.put(MISSING, "defmodule X", {"language": "elixir"})
    assert stored == CachedFile(path=MISSING, content="defmodule X", size=11, mtime=None,
                                metadata={"language": "elixir"})
    assert cache.get(MISSING) == stored
    assert (len(cache), cache.total_bytes) == (1, 11)


def test_get_of_an_uncached_path_is_none() -> None:
    assert FileCache(1024).get("/never/cached") is None


def test_metadata_none_becomes_empty_dict_and_given_metadata_is_copied() -> None:
    cache = FileCache(1024)
    assert cache.put("/a", "x").metadata == {}
    given = {"tags": ["a"]}
    cache.put("/b", "x", given)
    given["tags"].append("changed")
    assert cache.get("/b").metadata == {"tags": ["a"]}  # type: ignore[union-attr]


def test_two_caches_are_isolated() -> None:
    one, two = FileCache(1024), FileCache(1024)
    one.put("/same/path.ex", "session 1")
    two.put("/same/path.ex", "session 2")
    two.invalidate("/same/path.ex")
    assert one.get("/same/path.ex").content == "session 1"  # type: ignore[union-attr]
    assert two.get("/same/path.ex") is None


def test_invalidate_removes_only_that_path_and_absent_is_no_error() -> None:
    cache = FileCache(1024)
    cache.put("/a", "aaa")
    cache.put("/b", "bb")
    cache.invalidate("/a")
    cache.invalidate("/a")
    cache.invalidate("/never")
    assert cache.get("/a") is None
    assert (len(cache), cache.total_bytes) == (1, 2)


def test_clear_empties_the_cache() -> None:
    cache = FileCache(1024)
    cache.put("/a", "aaa")
    cache.put("/b", b"bb")
    cache.clear()
    assert (len(cache), cache.total_bytes) == (0, 0)
    assert cache.get("/a") is None


def test_replacing_a_path_replaces_its_entry_and_size() -> None:
    cache = FileCache(1024)
    cache.put("/a", "long content")
    cache.put("/a", b"xy", {"v": 2})
    assert cache.get("/a") == CachedFile(path="/a", content=b"xy", size=2, mtime=None,
                                         metadata={"v": 2})
    assert (len(cache), cache.total_bytes) == (1, 2)


def test_lru_evicts_least_recently_used_first_and_get_counts_as_use() -> None:
    cache = FileCache(10)
    for name in ("/a", "/b", "/c"):
        cache.put(name, "123")        # 9 bytes held
    cache.get("/a")                   # order of use now: b, c, a
    cache.put("/d", "123")            # 12 > 10: b goes
    assert keys(cache, "/a", "/b", "/c", "/d") == ["/a", "/c", "/d"]
    assert cache.total_bytes == 9


def test_lru_evicts_as_many_as_needed_in_order() -> None:
    cache = FileCache(10)
    for name in ("/a", "/b", "/c"):
        cache.put(name, "123")
    cache.put("/big", "12345678")     # 17 > 10: a (14), b (11), then c (8) go
    assert keys(cache, "/a", "/b", "/c", "/big") == ["/big"]
    assert cache.total_bytes == 8


def test_replacing_a_path_makes_it_most_recently_used() -> None:
    cache = FileCache(6)
    cache.put("/a", "12")
    cache.put("/b", "12")
    cache.put("/a", "123")            # a is newest now
    cache.put("/c", "12")             # 7 > 6: b goes
    assert keys(cache, "/a", "/b", "/c") == ["/a", "/c"]


def test_entry_exactly_max_bytes_fits() -> None:
    cache = FileCache(4)
    cache.put("/a", "1")
    cache.put("/b", b"1234")
    assert keys(cache, "/a", "/b") == ["/b"]
    assert cache.total_bytes == 4


def test_oversize_entry_is_refused_and_cache_is_unchanged() -> None:
    cache = FileCache(5)
    cache.put("/a", "12")
    cache.put("/b", "123")
    with pytest.raises(LimitExceededError) as info:
        cache.put("/a", "123456")
    assert (info.value.code, info.value.details) == ("limit_exceeded",
                                                     {"size": 6, "max_bytes": 5})
    assert cache.get("/a").content == "12"  # type: ignore[union-attr]
    assert (len(cache), cache.total_bytes) == (2, 5)


def test_mtime_is_the_real_files_and_none_for_a_missing_path(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("on disk")
    os.utime(real, (1_700_000_000.5, 1_700_000_000.5))
    cache = FileCache(1024)
    assert cache.put(str(real), "cached").mtime == 1_700_000_000.5
    assert cache.put(str(tmp_path / "absent.txt"), "cached").mtime is None
    assert cache.put("bad\0name", "cached").mtime is None


def test_str_and_bytes_come_back_as_given() -> None:
    cache = FileCache(1024)
    text, data = "text", b"\x00\xffbinary"
    cache.put("/t", text)
    cache.put("/b", data)
    assert type(cache.get("/t").content) is str  # type: ignore[union-attr]
    assert cache.get("/t").content == text  # type: ignore[union-attr]
    assert type(cache.get("/b").content) is bytes  # type: ignore[union-attr]
    assert cache.get("/b").content == data  # type: ignore[union-attr]


def test_size_of_non_ascii_str_is_its_utf8_byte_length() -> None:
    cache = FileCache(1024)
    text = "héllo €𝄞"                 # 8 characters: 1 + 2 + 3×1 + 1 + 3 + 4 bytes
    assert (len(text), cache.put("/u", text).size) == (8, 14)
    assert cache.total_bytes == 14


@pytest.mark.parametrize(("path", "code"), [(None, "invalid_argument"), (b"/a", "invalid_argument"),
                                            ("", "empty_field")])
def test_bad_path_is_refused_by_every_operation(path: object, code: str) -> None:
    cache = FileCache(1024)
    for call in (lambda: cache.put(path, "x"), lambda: cache.get(path),  # type: ignore[arg-type]
                 lambda: cache.invalidate(path)):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError) as info:
            call()
        assert (info.value.code, info.value.field) == (code, "path")
    assert len(cache) == 0


@pytest.mark.parametrize(("field", "content", "metadata"), [
    ("content", None, None), ("content", bytearray(b"x"), None), ("content", 1, None),
    ("content", "\ud800", None), ("metadata", "x", ["a"]), ("metadata", "x", {1: "int key"})])
def test_bad_content_or_metadata_is_refused(field: str, content: object, metadata: object) -> None:
    cache = FileCache(1024)
    with pytest.raises(InvalidArgumentError) as info:
        cache.put("/a", content, metadata)  # type: ignore[arg-type]
    assert (info.value.code, info.value.field) == ("invalid_argument", field)
    assert len(cache) == 0


@pytest.mark.parametrize("max_bytes", [-1, True, 1.5, "10"])
def test_bad_max_bytes_is_refused(max_bytes: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        FileCache(max_bytes)  # type: ignore[arg-type]
    assert (info.value.code, info.value.field) == ("invalid_argument", "max_bytes")


def test_zero_max_bytes_holds_only_empty_content() -> None:
    cache = FileCache(0)
    cache.put("/empty", "")
    with pytest.raises(LimitExceededError):
        cache.put("/one", b"1")
    assert keys(cache, "/empty", "/one") == ["/empty"]
