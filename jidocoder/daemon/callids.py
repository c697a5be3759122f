"""At most once: a call resent after a lost reply is answered, not applied again.

Each client call that changes what a session stores carries a ``call_id`` (the Client makes it,
once per call, and keeps it across resends: docs/protocol.md, "Call ids"). The session records
the call's packed result in its store *in the same transaction as the change*, so the record
and the change are both there or both not, whatever dies when (the session, the daemon, both);
a request whose id is recorded is answered with that result and changes nothing.

The ids are also held in memory, loaded with the store, so looking one up costs no query: an id
joins them only once its transaction has committed (``committed``), and the ids of a
transaction rolled back are forgotten (``rolled_back``), so memory never says "applied" for a
change the store does not hold. A session with persistence disabled has only the memory, as for
everything else. The last ``KEEP`` ids are kept: far more than one client has waiting at once.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .. import wire

KEEP = 1024
NOT_FOUND = object()


class CallLog:
    def __init__(self, store: Any) -> None:
        self._store = store
        self._known: OrderedDict[str, bytes] = OrderedDict(
            store.load_calls() if store is not None else {})
        self._uncommitted: list[tuple[str, bytes]] = []

    def earlier_result(self, call_id: Any) -> Any:
        """The result recorded for ``call_id``, or ``NOT_FOUND``."""
        packed = self._known.get(call_id) if isinstance(call_id, str) else None
        return NOT_FOUND if packed is None else wire.decode(packed)

    @contextlib.contextmanager
    def recording(self, call_id: Any, result: Any, *, grouping: bool) -> Iterator[None]:
        """Around the writes of one call's change: with a call id, the change and its record
        share one transaction (the group's, or one of its own), and the id counts once that
        has committed; a group's ids count when the group commits (the session says so)."""
        if not isinstance(call_id, str):
            yield
            return
        own = self._store is not None and not grouping
        if own:
            self._store.begin_group()
        try:
            yield
            self.record(call_id, result)
            if own:
                self._store.end_group()
        except BaseException:
            if own:
                with contextlib.suppress(Exception):
                    self._store.end_group()  # rolls the group back
            if not grouping:
                self.rolled_back()
            raise
        if not grouping:
            self.committed()

    def record(self, call_id: str, result: Any) -> None:
        """Record the result, inside the transaction of the change (the caller's); it counts
        once ``committed``."""
        packed = wire.encode(result)
        if self._store is not None:
            self._store.record_call(call_id, packed, KEEP)
        self._uncommitted.append((call_id, packed))

    def committed(self) -> None:
        for call_id, packed in self._uncommitted:
            self._known[call_id] = packed
        self._uncommitted.clear()
        while len(self._known) > KEEP:
            self._known.popitem(last=False)

    def rolled_back(self) -> None:
        self._uncommitted.clear()
