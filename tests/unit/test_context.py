"""SessionContext: the original ContextManager tests, ported to a plain object with no I/O."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone, UTC

import pytest

from jidocoder.context import SessionContext
from jidocoder.errors import InvalidArgumentError
from jidocoder.models import ActiveFile, Message, SessionConfig

SID = "session_test"
T0 = datetime(2025, 1, 24, 12, 0, 0, tzinfo=UTC)


class TickClock:
    """Returns T0, T0+1s, T0+2s, ... so every timestamp is known in advance."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        current = self.now
        self.now += timedelta(seconds=1)
        return current


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make(session_id: str = SID, **config: object) -> SessionContext:
    return SessionContext(session_id, SessionConfig(**config), clock=TickClock())


@pytest.fixture
def ctx() -> SessionContext:
    return make()


def contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


def paths(files: list[ActiveFile]) -> list[str]:
    return [f.path for f in files]


@contextmanager
def raises(code: str, field: str) -> Iterator[None]:
    """An InvalidArgumentError with exactly this code and field."""
    with pytest.raises(InvalidArgumentError) as info:
        yield
    assert (info.value.code, info.value.field) == (code, field)


# -- add_message (5) ----------------------------------------------------------------------

def test_add_message_stores_user_message_with_clock_timestamp(ctx: SessionContext) -> None:
    ctx.add_message("user", "Hello, world!")
    assert ctx.history() == [Message(role="user", content="Hello, world!", timestamp=T0)]


def test_add_message_stores_assistant_message(ctx: SessionContext) -> None:
    ctx.add_message("assistant", "Hi there!")
    assert [(m.role, m.content) for m in ctx.history()] == [("assistant", "Hi there!")]


def test_add_message_keeps_messages_in_order(ctx: SessionContext) -> None:
    for role, text in [("user", "First"), ("assistant", "Second"), ("user", "Third")]:
        ctx.add_message(role, text)
    assert contents(ctx.history()) == ["First", "Second", "Third"]
    assert [m.timestamp for m in ctx.history()] == [at(0), at(1), at(2)]


@pytest.mark.parametrize("role", ["", "User", "bot", None, 1, ["user"]])
def test_add_message_rejects_unknown_role_as_invalid_role(ctx: SessionContext,
                                                          role: object) -> None:
    with raises("invalid_role", "role"):
        ctx.add_message(role, "x")  # type: ignore[arg-type]
    assert ctx.history() == []


@pytest.mark.parametrize("content", [None, 1, b"bytes", ["x"]])
def test_add_message_rejects_non_str_content(ctx: SessionContext, content: object) -> None:
    with raises("invalid_argument", "content"):
        ctx.add_message("user", content)  # type: ignore[arg-type]
    assert ctx.history() == []


def test_add_message_accepts_every_role_and_empty_content(ctx: SessionContext) -> None:
    for role in ("user", "assistant", "system", "tool"):
        ctx.add_message(role, "")
    assert [m.role for m in ctx.history()] == ["user", "assistant", "system", "tool"]


# -- history (3) --------------------------------------------------------------------------

def test_history_is_empty_initially(ctx: SessionContext) -> None:
    assert ctx.history() == []
    assert ctx.message_count == 0


def test_history_returns_all_messages(ctx: SessionContext) -> None:
    ctx.add_message("user", "Message 1")
    ctx.add_message("assistant", "Message 2")
    assert contents(ctx.history()) == ["Message 1", "Message 2"]
    assert ctx.message_count == 2


def test_history_is_a_copy_callers_cannot_change(ctx: SessionContext) -> None:
    ctx.add_message("user", "kept")
    ctx.history().clear()
    assert contents(ctx.history()) == ["kept"]


# -- clear_conversation (2) ---------------------------------------------------------------

def test_clear_conversation_empties_history(ctx: SessionContext) -> None:
    ctx.add_message("user", "Message 1")
    ctx.add_message("assistant", "Message 2")
    assert ctx.clear_conversation() == [("conversation_cleared", {"session_id": SID})]
    assert ctx.history() == []
    assert ctx.message_count == 0


def test_clear_conversation_emits_event_even_when_empty(ctx: SessionContext) -> None:
    assert ctx.clear_conversation() == [("conversation_cleared", {"session_id": SID})]


# -- add_file (5) -------------------------------------------------------------------------

def test_add_file_appends_active_file_with_clock_time(ctx: SessionContext) -> None:
    ctx.add_file("/path/to/file.ex")
    assert ctx.active_files() == [ActiveFile(path="/path/to/file.ex", added_at=T0)]


def test_add_file_adds_multiple_files_in_order(ctx: SessionContext) -> None:
    for name in ("/a", "/b", "/c"):
        ctx.add_file(name)
    assert paths(ctx.active_files()) == ["/a", "/b", "/c"]


def test_add_file_already_active_keeps_its_place_and_emits_nothing(ctx: SessionContext) -> None:
    ctx.add_file("/a")
    ctx.add_file("/b")
    assert ctx.add_file("/a") == []
    assert ctx.active_files() == [ActiveFile(path="/a", added_at=at(0)),
                                  ActiveFile(path="/b", added_at=at(1))]


def test_add_file_rejects_non_str_path(ctx: SessionContext) -> None:
    with raises("invalid_argument", "path"):
        ctx.add_file(42)  # type: ignore[arg-type]


def test_add_file_rejects_empty_path_as_empty_field(ctx: SessionContext) -> None:
    with raises("empty_field", "path"):
        ctx.add_file("")
    assert ctx.active_files() == []


# -- remove_file (3) ----------------------------------------------------------------------

def test_remove_file_removes_it_from_active_files(ctx: SessionContext) -> None:
    ctx.add_file("/path/to/file.ex")
    ctx.add_file("/path/to/file2.ex")
    assert ctx.remove_file("/path/to/file.ex") == [
        ("file_removed", {"session_id": SID, "file_path": "/path/to/file.ex"})]
    assert paths(ctx.active_files()) == ["/path/to/file2.ex"]


def test_remove_file_removes_its_file_index_entry(ctx: SessionContext) -> None:
    ctx.add_file("/path/to/file.ex")
    ctx.update_file_index("/path/to/file.ex", {"language": "elixir"})
    ctx.update_file_index("/other.ex", {"language": "erlang"})
    ctx.remove_file("/path/to/file.ex")
    assert list(ctx.file_index()) == ["/other.ex"]


def test_remove_file_absent_is_no_error_and_no_event(ctx: SessionContext) -> None:
    ctx.add_file("/a")
    assert ctx.remove_file("/missing") == []
    assert paths(ctx.active_files()) == ["/a"]


# -- active_files (3) ---------------------------------------------------------------------

def test_active_files_is_empty_initially(ctx: SessionContext) -> None:
    assert ctx.active_files() == []


def test_active_files_returns_all_in_insertion_order(ctx: SessionContext) -> None:
    for name in ("/z", "/a", "/m"):
        ctx.add_file(name)
    assert paths(ctx.active_files()) == ["/z", "/a", "/m"]


def test_active_files_is_a_copy_callers_cannot_change(ctx: SessionContext) -> None:
    ctx.add_file("/a")
    ctx.active_files().clear()
    assert paths(ctx.active_files()) == ["/a"]


# -- file index (6) -----------------------------------------------------------------------

def test_update_file_index_stores_metadata_and_last_accessed(ctx: SessionContext) -> None:
    events = ctx.update_file_index("/f.ex", {"language": "elixir", "line_count": 42})
    assert events == [("file_index_updated", {"session_id": SID, "file_path": "/f.ex"})]
    assert ctx.file_index() == {"/f.ex": {"language": "elixir", "line_count": 42,
                                          "last_accessed": T0}}


def test_update_file_index_merges_new_keys_win_and_restamps(ctx: SessionContext) -> None:
    ctx.update_file_index("/f.ex", {"language": "elixir", "line_count": 1})
    ctx.update_file_index("/f.ex", {"line_count": 42, "last_accessed": "ignored"})
    assert ctx.file_index() == {"/f.ex": {"language": "elixir", "line_count": 42,
                                          "last_accessed": at(1)}}


@pytest.mark.parametrize("metadata", [None, ["a"], "x", {1: "int key"}])
def test_update_file_index_rejects_bad_metadata(ctx: SessionContext, metadata: object) -> None:
    with raises("invalid_argument", "metadata"):
        ctx.update_file_index("/f.ex", metadata)  # type: ignore[arg-type]
    assert ctx.file_index() == {}


def test_file_index_is_empty_initially(ctx: SessionContext) -> None:
    assert ctx.file_index() == {}


def test_file_index_returns_entries_for_every_path_active_or_not(ctx: SessionContext) -> None:
    ctx.add_file("/file1.ex")
    ctx.update_file_index("/file1.ex", {"language": "elixir"})
    ctx.update_file_index("/file2.ex", {"language": "erlang"})
    index = ctx.file_index()
    assert {path: entry["language"] for path, entry in index.items()} == {
        "/file1.ex": "elixir", "/file2.ex": "erlang"}
    assert paths(ctx.active_files()) == ["/file1.ex"]


def test_file_index_is_a_deep_copy_both_ways(ctx: SessionContext) -> None:
    given = {"tags": ["a"]}
    ctx.update_file_index("/f", given)
    given["tags"].append("from caller")
    ctx.file_index()["/f"]["tags"].append("from reader")
    ctx.file_index()["/f"]["new"] = 1
    assert ctx.file_index()["/f"] == {"tags": ["a"], "last_accessed": T0}


# -- build_context (7) --------------------------------------------------------------------

def test_build_context_with_conversation(ctx: SessionContext) -> None:
    ctx.add_message("user", "Hello")
    context = ctx.build_context(["conversation"])
    assert set(context) == {"session_id", "metadata", "conversation"}
    assert context["session_id"] == SID
    assert context["conversation"] == [Message(role="user", content="Hello", timestamp=T0)]


def test_build_context_with_files(ctx: SessionContext) -> None:
    ctx.add_file("/path/to/file.ex")
    context = ctx.build_context(("files",))
    assert set(context) == {"session_id", "metadata", "files"}
    assert context["files"] == [ActiveFile(path="/path/to/file.ex", added_at=T0)]


def test_build_context_with_file_index(ctx: SessionContext) -> None:
    ctx.update_file_index("/path/to/file.ex", {"language": "elixir"})
    context = ctx.build_context({"file_index"})
    assert set(context) == {"session_id", "metadata", "file_index"}
    assert context["file_index"] == {"/path/to/file.ex": {"language": "elixir",
                                                          "last_accessed": T0}}


def test_build_context_default_includes_everything_with_metadata(ctx: SessionContext) -> None:
    ctx.add_message("user", "Hello")            # t0
    ctx.add_file("/path/to/file.ex")            # t1
    ctx.update_file_index("/path/to/file.ex", {"language": "elixir"})  # t2
    context = ctx.build_context()               # t3
    assert set(context) == {"session_id", "metadata", "conversation", "files", "file_index"}
    assert context["metadata"] == {"conversation_count": 1, "active_file_count": 1,
                                   "timestamp": at(3)}


def test_build_context_metadata_counts_totals_not_the_returned_slice(ctx: SessionContext) -> None:
    for i in range(4):
        ctx.add_message("user", f"m{i}")
        ctx.add_file(f"/f{i}")
    context = ctx.build_context([], max_messages=1, max_files=1)
    assert set(context) == {"session_id", "metadata"}
    assert (context["metadata"]["conversation_count"],
            context["metadata"]["active_file_count"]) == (4, 4)
    assert context["metadata"]["timestamp"].tzinfo == UTC


def test_build_context_max_messages_three_of_ten_gives_the_last_three(ctx: SessionContext) -> None:
    for i in range(1, 11):
        ctx.add_message("user", f"Message {i}")
    context = ctx.build_context(["conversation"], max_messages=3)
    assert contents(context["conversation"]) == ["Message 8", "Message 9", "Message 10"]
    assert contents(ctx.build_context(["conversation"], max_messages=0)["conversation"]) == []
    assert len(ctx.build_context(["conversation"], max_messages=99)["conversation"]) == 10


def test_build_context_max_files_three_of_ten_gives_the_last_three(ctx: SessionContext) -> None:
    for i in range(1, 11):
        ctx.add_file(f"/path/to/file{i}.ex")
    context = ctx.build_context(["files"], max_files=3)
    assert paths(context["files"]) == ["/path/to/file8.ex", "/path/to/file9.ex",
                                       "/path/to/file10.ex"]
    assert ctx.build_context(["files"], max_files=0)["files"] == []


@pytest.mark.parametrize("include", ["conversation", ["history"], ["files", 3], None, {"a": 1}])
def test_build_context_rejects_bad_include(ctx: SessionContext, include: object) -> None:
    with raises("invalid_include", "include"):
        ctx.build_context(include)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["max_messages", "max_files"])
@pytest.mark.parametrize("value", [-1, True, 2.0, "3"])
def test_build_context_rejects_bad_limits(ctx: SessionContext, field: str, value: object) -> None:
    with raises("invalid_argument", field):
        ctx.build_context(**{field: value})  # type: ignore[arg-type]


# -- session isolation (3) ----------------------------------------------------------------

def test_conversation_is_isolated_per_session() -> None:
    one, two = make("s1"), make("s2")
    one.add_message("user", "Session 1 message")
    two.add_message("user", "Session 2 message")
    assert contents(one.history()) == ["Session 1 message"]
    assert contents(two.history()) == ["Session 2 message"]


def test_active_files_are_isolated_per_session() -> None:
    one, two = make("s1"), make("s2")
    one.add_file("/file1.ex")
    two.add_file("/file2.ex")
    assert paths(one.active_files()) == ["/file1.ex"]
    assert paths(two.active_files()) == ["/file2.ex"]


def test_file_index_is_isolated_per_session() -> None:
    one, two = make("s1"), make("s2")
    one.update_file_index("/f.ex", {"session": 1})
    two.update_file_index("/f.ex", {"session": 2})
    assert one.file_index()["/f.ex"]["session"] == 1
    assert two.file_index()["/f.ex"]["session"] == 2


# -- max_history (2) ----------------------------------------------------------------------

def test_max_history_five_with_ten_messages_keeps_six_to_ten_in_order() -> None:
    ctx = make(max_history=5)
    for i in range(1, 11):
        ctx.add_message("user", f"Message {i}")
    assert contents(ctx.history()) == [f"Message {i}" for i in range(6, 11)]
    assert ctx.message_count == 5


def test_max_history_one_keeps_only_the_newest() -> None:
    ctx = make(max_history=1)
    ctx.add_message("user", "old")
    events = ctx.add_message("assistant", "new")
    assert contents(ctx.history()) == ["new"]
    assert [kind for kind, _ in events] == ["conversation_added"]


# -- max_files (2) ------------------------------------------------------------------------

def test_max_files_three_with_five_files_keeps_the_last_three() -> None:
    ctx = make(max_files=3)
    for i in range(1, 6):
        ctx.add_file(f"/file{i}.ex")
    assert paths(ctx.active_files()) == ["/file3.ex", "/file4.ex", "/file5.ex"]


def test_max_files_drops_oldest_with_index_entry_and_emits_file_removed_after_added() -> None:
    ctx = make(max_files=2)
    for name in ("/a", "/b"):
        ctx.add_file(name)
        ctx.update_file_index(name, {"n": name})
    ctx.update_file_index("/inactive", {})
    events = ctx.add_file("/c")
    assert events == [("file_added", {"session_id": SID, "file_path": "/c"}),
                      ("file_removed", {"session_id": SID, "file_path": "/a"})]
    assert paths(ctx.active_files()) == ["/b", "/c"]
    assert sorted(ctx.file_index()) == ["/b", "/inactive"]


# -- events (3) ---------------------------------------------------------------------------

def test_add_message_emits_conversation_added_with_stored_timestamp(ctx: SessionContext) -> None:
    events = ctx.add_message("user", "Hello")
    assert events == [("conversation_added", {"session_id": SID, "role": "user",
                                              "content": "Hello", "timestamp": T0})]
    assert events[0][1]["timestamp"] == ctx.history()[0].timestamp


def test_add_file_emits_file_added(ctx: SessionContext) -> None:
    assert ctx.add_file("/path/to/file.ex") == [
        ("file_added", {"session_id": SID, "file_path": "/path/to/file.ex"})]


def test_failed_operations_emit_nothing_and_change_nothing(ctx: SessionContext) -> None:
    ctx.add_message("user", "kept")
    for bad in (lambda: ctx.add_message("nobody", "x"), lambda: ctx.add_file(""),
                lambda: ctx.update_file_index("/f", None)):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError):
            bad()
    assert (contents(ctx.history()), ctx.active_files(), ctx.file_index()) == (["kept"], [], {})


# -- clock and restore --------------------------------------------------------------------

def test_timestamps_from_a_non_utc_clock_are_stored_as_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    ctx = SessionContext(SID, SessionConfig(),
                         clock=lambda: datetime(2025, 1, 1, 14, 0, tzinfo=plus_two))
    ctx.add_message("user", "x")
    ctx.update_file_index("/f", {})
    expected = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert ctx.history()[0].timestamp.tzinfo == UTC
    assert ctx.history()[0].timestamp == expected
    assert ctx.file_index()["/f"]["last_accessed"].tzinfo == UTC


def test_restore_rebuilds_state_and_applies_limits() -> None:
    messages = [Message(role="user", content=f"m{i}", timestamp=at(i)) for i in range(5)]
    files = [ActiveFile(path=f"/f{i}", added_at=at(i)) for i in range(4)]
    index = {"/f0": {"k": 0}, "/f3": {"k": 3}, "/other": {"k": -1}}
    config = SessionConfig(max_history=3, max_files=2)
    ctx = SessionContext.restore(SID, config, messages, files, index, clock=TickClock())
    assert ctx.history() == messages[2:]
    assert ctx.active_files() == files[2:]
    assert ctx.file_index() == {"/f3": {"k": 3}, "/other": {"k": -1}}
    index["/f3"]["k"] = "changed by caller"
    assert ctx.file_index()["/f3"] == {"k": 3}


def test_restored_context_keeps_going_under_the_same_limits() -> None:
    files = [ActiveFile(path="/a", added_at=at(0)), ActiveFile(path="/b", added_at=at(1))]
    ctx = SessionContext.restore(SID, SessionConfig(max_files=2), [], files, {}, clock=TickClock())
    assert ctx.add_file("/a") == []
    assert [kind for kind, _ in ctx.add_file("/c")] == ["file_added", "file_removed"]
    assert paths(ctx.active_files()) == ["/b", "/c"]


# -- paging ------------------------------------------------------------------------------------

def test_history_pages_are_exact_slices_oldest_first():
    ctx = SessionContext("s1", SessionConfig(max_history=10))
    for i in range(7):
        ctx.add_message("user", f"m{i}")
    contents = lambda messages: [m.content for m in messages]  # noqa: E731
    assert contents(ctx.history()) == [f"m{i}" for i in range(7)]
    assert contents(ctx.history(2, 3)) == ["m2", "m3", "m4"]
    assert contents(ctx.history(5)) == ["m5", "m6"]
    assert contents(ctx.history(6, 10)) == ["m6"]
    assert ctx.history(7) == [] and ctx.history(0, 0) == []


@pytest.mark.parametrize("offset, limit, field", [
    (-1, None, "offset"), (0, -2, "limit"), ("1", None, "offset"), (0, 1.0, "limit"),
    (True, None, "offset"), (None, None, "offset")])
def test_a_negative_or_non_int_offset_or_limit_is_an_invalid_argument_naming_it(offset, limit, field):
    ctx = SessionContext("s1", SessionConfig())
    with pytest.raises(InvalidArgumentError) as info:
        ctx.history(offset, limit)
    assert (info.value.code, info.value.field) == ("invalid_argument", field)
