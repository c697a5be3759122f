"""At most once: a call resent after a lost reply is answered, not applied again.

Each client call that changes what a session stores carries a ``call_id`` (the Client makes it,
once per call, and keeps it across resends: docs/protocol.md, "Call ids"). The session records
the call's packed result in its store *in the same transaction as the change*, so the record
and the change are both there or both not, whatever dies when (the session, the daemon, both);
a request whose id is recorded is answered with that result and changes nothing. A session with
persistence disabled keeps its records in memory, as it keeps everything else. The last
``KEEP`` ids are kept: far more than one client can have waiting at once.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .. import wire

KEEP = 1024
_NOT_FOUND = object()


class CallLog:
    def __init__(self, store: Any) -> None:
        self._store = store
        self._memory: OrderedDict[str, bytes] = OrderedDict()  # without a store only

    def earlier_result(self, call_id: Any) -> Any:
        """The result recorded for ``call_id``, or ``NOT_FOUND``."""
        if not isinstance(call_id, str):
            return _NOT_FOUND
        if self._store is None:
            packed = self._memory.get(call_id)
        else:
            packed = self._store.call_reply(call_id)
        return _NOT_FOUND if packed is None else wire.decode(packed)

    def record(self, call_id: str, result: Any) -> None:
        """Record the result; with a store, inside the transaction the caller holds open."""
        packed = wire.encode(result)
        if self._store is not None:
            self._store.record_call(call_id, packed, KEEP)
            return
        self._memory[call_id] = packed
        if len(self._memory) > KEEP:
            self._memory.popitem(last=False)


NOT_FOUND = _NOT_FOUND
