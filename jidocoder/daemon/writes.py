"""A session's writes made in one place and stored in another: for a session served away from
the daemon's disk (a Ray actor on another node, docs/ray.md).

The session's logic stays exactly that of a forked session process (``session.SessionProcess``
and the ``PERSISTERS`` of ``ops``): what differs is only the store it is handed. A
``WriteRecorder`` stands where the ``SessionStore`` would: it answers ``load`` with what the
daemon read from the real store, and notes each write instead of making it. The calls' writes
travel back with their replies, and the daemon applies them to the real store
(``apply_writes``) before the reply goes to the client: persist first, on the daemon's disk, so
that losing the node that served a call loses nothing that was acknowledged.
"""

from __future__ import annotations

from typing import Any

from ..models import ActiveFile, Message

Stored = tuple[list[Message], list[ActiveFile], dict[str, dict[str, Any]]]  # SessionStore.load()
Calls = dict[str, bytes]  # SessionStore.load_calls(): recorded call ids and their packed results
Write = tuple[str, tuple[Any, ...]]  # (SessionStore method, its arguments)

# The only SessionStore methods a write may name: a recorded write is data from another
# process, never a way to call anything else on the daemon's store.
WRITE_METHODS = frozenset({"append_message", "clear_messages", "add_file", "remove_file",
                           "put_index", "record_call"})


class WriteRecorder:
    """A ``SessionStore`` as the session's handlers and persisters see it, writing nothing."""

    def __init__(self, stored: Stored, calls: Calls | None = None) -> None:
        self._stored: Stored | None = stored
        self._calls = dict(calls or {})
        self._writes: list[Write] = []

    def load(self) -> Stored:
        """What the real store held when the session started; once only (a later read back,
        after a failed write, comes through ``replace``)."""
        stored, self._stored = self._stored, None
        if stored is None:
            raise RuntimeError("a recorder is loaded once; the daemon re-sends the stored state")
        return stored

    def load_calls(self) -> Calls:
        """The call ids the real store had recorded when the session started (``callids``):
        a call resent after its reply was lost is answered from them, on any node."""
        calls, self._calls = self._calls, {}
        return calls

    def take(self) -> list[Write]:
        """The writes noted since the last ``take``, in order."""
        writes, self._writes = self._writes, []
        return writes

    # The daemon stores each call's writes in one transaction of its own (apply_writes), so a
    # group of calls served together needs no boundary here.
    def begin_group(self) -> None:
        pass

    def end_group(self) -> None:
        pass

    def append_message(self, message: Message, keep: int) -> None:
        self._writes.append(("append_message", (message, keep)))

    def clear_messages(self) -> None:
        self._writes.append(("clear_messages", ()))

    def add_file(self, file: ActiveFile) -> None:
        self._writes.append(("add_file", (file,)))

    def remove_file(self, path: str) -> None:
        self._writes.append(("remove_file", (path,)))

    def put_index(self, path: str, entry: dict[str, Any]) -> None:
        self._writes.append(("put_index", (path, entry)))

    def record_call(self, call_id: str, reply: bytes, keep: int) -> None:
        # Stored with the call's other writes, in its one transaction (apply_writes): the
        # change and its record are both kept or neither, as in a forked session's store.
        self._writes.append(("record_call", (call_id, reply, keep)))


def apply_writes(store: Any, writes: list[Write]) -> None:
    """Make one call's ``writes`` on the real ``store``, all or none (one transaction); raises
    what the store raised, with nothing of them kept."""
    if not writes:
        return
    unknown = [name for name, _ in writes if name not in WRITE_METHODS]
    if unknown:
        raise ValueError(f"not a session store write: {unknown!r}")
    # One transaction even for one write: append_message may be two statements (the trim),
    # and a reply that says "not applied" must not leave the first of them stored. It costs
    # ~10-30 us against a call's ~1.2 ms (docs/ray.md).
    store.begin_group()
    try:
        for name, args in writes:
            getattr(store, name)(*args)
    except BaseException:
        store.abort_group()  # one that failed before reaching the database fails the rest too
        raise
    store.end_group()  # commits; raises (nothing kept) if a write or the commit failed
