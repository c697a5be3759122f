"""The embedded store: sqlite3 in WAL mode, a registry for the daemon and a database per session.

Layout under the state dir::

    registry.db              owned by the daemon: one row per persisted session (its SessionState),
                             live (``sessions``) or given up after crashes (``failed``); a
                             hibernated one also has its few start-time fields in ``asleep``
    sessions/<id>.db         owned by that session's process: messages, active files, file index
    damaged/                 files and registry rows we could not read, moved aside, never deleted

Every file and directory made here is 0600 / 0700 whatever the umask (a database file is made
before SQLite opens it; SQLite gives its -wal, -shm and -journal the file's mode).

What the store keeps (docs/api.md §7): nothing here deletes a session's data unless told to.

- **Faults of the state dir are StorageError.** Any sqlite3 error whose primary code says the
  disk cannot take a write (FULL, IOERR, READONLY, CANTOPEN, PERM, NOLFS), and ENOSPC, EDQUOT,
  EIO, EROFS, EACCES, EPERM or EFBIG from a file operation, becomes ``StorageError`` naming the
  path and the cause; the transaction (a write group's too) is rolled back, and the same store
  takes writes again once the cause is gone. BUSY/LOCKED (another process holds the file: a
  session's previous process, dying) is ``StoreBusyError``: retry, not a crash. Corruption is
  ``DamagedStoreError``. A new file whose creation fails is removed (nothing in it was stored).
- **Rows from a newer jidocoder.** Keys of a row (and of its ``config``) that this version does
  not know are set aside before validation and written back by every later ``put``,
  ``mark_failed`` or ``recover_failed`` of that session: a downgrade then an upgrade loses none.
  Only an undecodable row or one of the wrong types is damaged: its bytes go to ``damaged/``
  with a ``.reason``; its session database stays in ``sessions/`` (an orphan, see below).
- **Failed sessions.** ``mark_failed`` moves a row to ``failed`` (its database stays);
  ``load_failed`` lists them; ``recover_failed`` makes one live again in one transaction.
- **What a start may delete.** ``classify_session_files`` sorts ``sessions/``: files of rows
  ``terminating``/``terminated`` (a terminate to finish: ``destroy_session_files``), orphans
  (no row at all: a lost or damaged row or registry; left alone, and ``adopt_orphan`` offers
  one as failed), lone logs (a -wal with no database and no row: left alone, not adoptable),
  and stray entries (any other name, a directory: ignored, never an error).

Why this shape (docs/api.md §6, Durability):

- **One database per session.** It is opened only by the session's own process, after fork, so
  session processes never wait on each other's write lock, and ending a session is "unlink the
  file and its -wal/-shm/-journal": nothing of it is left to scrub. The process holds the file's
  lock while it is open (``locking_mode=EXCLUSIVE``): SQLite then keeps the WAL index in memory
  (no -shm file to create, map and delete), and a replacement process waits, up to
  ``BUSY_TIMEOUT`` (5 s), until the one before it has exited (after that, StoreBusyError). A small
  page cache (256 KiB; SQLite's default is 2 MB): after loading 1,000 messages of 2 KB a process
  holds 0.7 MB more instead of 2.7 MB (USS). With ``lazy=True`` a session creates no file until
  its first write.
- **Creating and opening.** SQLite 3.40 writes page 1 of an empty file through a rollback
  journal even when ``journal_mode=WAL`` is the first statement (3 fdatasyncs and 2 directory
  fsyncs, ~2 ms). Nothing is promised before the first write returns, so a new file is made with
  no journal file and no sync, and its schema and ``user_version`` go in one transaction; at
  "full", page 1 and the directory are then fsynced once. A file made here is not checked; an
  existing one gets the 100-byte header check and ``PRAGMA quick_check``, kept because it is
  cheap: 0.05 ms for a small session, 0.12 ms at 1,000 messages (reading them costs 0.8 ms),
  0.14 ms for a registry of 1,000 rows, whose damage must show while it is opened (the daemon
  quarantines a registry that fails to open, not one that fails later).
- **A registry owned by the daemon.** ``sessions(session_id TEXT PRIMARY KEY, state BLOB)`` is a
  WITHOUT ROWID table: one b-tree, so the id is stored once (no separate index holding a copy).
  ``secure_delete=ON`` zeroes what a delete frees. That alone is not enough: measured on SQLite
  3.40, churning 300 ids, 14 of ~900 deleted ids survived in the unallocated gap of pages that a
  b-tree rebalance had rebuilt, and pieces of others (14 to 38 of their 44 bytes). So
  ``delete`` runs ``wal_checkpoint(TRUNCATE)`` (empties the WAL, which still holds older page
  images), then reads registry.db and looks for the id and pieces of it (``_PIECE``); only if
  one is there does it run ``VACUUM`` (rebuilds every page from the live rows, in memory:
  ``temp_store=MEMORY``) and empty the WAL again: 1 delete in 50 to 200 needed it. After ~5,000
  such deletes no piece of a deleted id longer than chance matches (11 bytes) was left. Then no
  byte of registry.db, -wal or -shm holds the id. A row in ``scrub_pending``, committed with the
  delete and removed once its scrub is done, survives a crash in between: the next open then
  scrubs with ``VACUUM``. Any other open does not scrub.
- **Durability.** WAL with ``synchronous=NORMAL`` ("normal"): a commit is in the WAL (the kernel's
  page cache) before the call returns, so it survives any process crash. ``FULL`` ("full") also
  fsyncs the WAL on each commit, so it survives a power loss. Every write method is one
  transaction that commits before it returns. Metadata too: a checkpoint never runs at
  ``synchronous=OFF`` (SQLite would empty the WAL before the copied pages reach the disk, and a
  power cut then loses commits), and the directory is fsynced after a file is made (a registry
  at any durability, a session database at "full"), after ``quarantine``'s renames and after
  ``destroy_session_files``'s unlinks.
- **Costs**, measured 2026-11 (2 vCPU VM, ext4 on virtio, CPython 3.11, SQLite 3.40, files in
  /tmp, where creating a file costs ~0.19 ms; medians, ms; "before" is the previous version).
  Re-measured 2026-12 after the checkpoint stopped running unsynced and destroys sync their
  directory, previous version and this one in the same runs (at "normal"): Registry.delete
  0.07 -> 0.57 ms at 10 rows and 1.75 -> 3.3 ms at 1,000 rows (the checkpoint's fdatasyncs);
  ``destroy_session_files`` 0.15 -> 0.34 ms (the directory's fsync); a new SessionStore the same
  in both (1.2-1.8 ms that day, under other load), a new Registry 0.3-0.8 ms. The table below
  is the 2026-11 run; its other rows were not re-measured:

  ======================================  =============  =============
  operation                               before         now
  ======================================  =============  =============
  SessionStore, new file (normal / full)  2.1 / 2.2      0.6 / 1.0
  SessionStore, existing small file       0.54           0.32
  lazy SessionStore + load, no file       --             0.06
  load, 20 messages                       0.10           0.10
  append_message (normal / full)          0.024 / 0.32   0.009 / 0.35
  Registry.delete, 10 rows                0.71           0.56
  Registry.delete, 1,000 rows             2.4            1.3
  Registry open, 1,000 rows               3.4            0.5
  Registry.put (normal / full)            0.025 / 0.31   0.025 / 0.28
  ======================================  =============  =============

  A delete is two fdatasyncs and the truncation of the WAL (0.4-0.5 ms of it), plus reading
  and searching the file (0.6 ms at 1,000 rows), plus a rare VACUUM (2-5 ms at 1,000 rows).
  ``put`` is one small transaction: 0.011 ms of it is encoding the state, the rest the
  statement and its commit; at "full" the commit's fdatasync is nearly all of it.
  ``append_message`` is one autocommitted INSERT (trimming the oldest runs once per 32
  messages), remeasured after that change with keep=100.
- **Timestamps** are stored as integer microseconds since the Unix epoch: exact, ordered, and read
  back as aware UTC datetimes. Values without a column of their own (the SessionState dict, file
  index entries) are encoded with ``jidocoder.wire``, whose datetimes round-trip too.
- **Schema version** lives in ``PRAGMA user_version``. A store newer than ``SCHEMA_VERSION`` raises
  ``StoreVersionError`` before anything is written: the header is read as plain bytes first, so
  not even the journal mode is switched. A file that is not a usable database (garbage, truncated,
  missing tables) raises ``DamagedStoreError``; the caller quarantines it with ``quarantine``.
- **Fork hazard.** An SQLite connection must not cross a fork: the child's copy believes it holds
  the parent's locks and, if used or even closed (a close may checkpoint and delete the WAL), can
  corrupt the parent's database. After a fork every store open in the parent (a lazy one too)
  is disowned in the child: its connection is parked, never used or finalized there, and any
  call raises.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import stat
import time
import weakref
from itertools import repeat
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from pathlib import Path
from typing import Any, Self
from collections.abc import Callable, Iterator, Set as AbstractSet
from urllib.parse import quote

from .. import wire
from ..errors import (DamagedStoreError, InvalidArgumentError, JidocoderError, StorageError,
                      StoreBusyError, StoreVersionError)
from ..models import ActiveFile, Message, SessionConfig, SessionState, utc_now
from ..states import SessionStatus

SCHEMA_VERSION = 1
REGISTRY_FILE = "registry.db"
SESSIONS_DIR = "sessions"
DAMAGED_DIR = "damaged"
SIDECARS = ("-wal", "-shm", "-journal")
DURABILITY = {"normal": "NORMAL", "full": "FULL"}

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_SIZE = 100
_USER_VERSION_AT = slice(60, 64)
_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
# The state dir cannot take a write: StorageError (docs/api.md §7), not damage and not a crash.
_STORAGE_CODES = {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY,
                  sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_NOLFS}
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EACCES,
                   errno.EPERM, errno.EFBIG}
# Another process holds the file's lock (a session's previous process, still dying).
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
BUSY_TIMEOUT = 5.0  # seconds sqlite3 waits for another process's lock before SQLITE_BUSY
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SESSION_CACHE_KIB = 256  # per session process; SQLite's default is 2000
# A deleted id is looked for in registry.db as these pieces of its UTF-8 bytes: any remnant of
# _PIECE + _STEP - 1 bytes or more, and any prefix or suffix of _PIECE or more, contains one.
_PIECE, _STEP = 16, 8
_MICROSECOND = timedelta(microseconds=1)
_STATE_FIELDS = frozenset(SessionState.model_fields)
_CONFIG_FIELDS = frozenset(SessionConfig.model_fields)

# scrub_pending holds a row from a delete's commit until its scrub is done: a registry opened
# with the row set finishes the scrub. Added after version 1 shipped, hence "IF NOT EXISTS".
_SCRUB_MARKER_TABLE = "CREATE TABLE IF NOT EXISTS scrub_pending (pending INTEGER PRIMARY KEY)"
# failed holds the sessions given up after crashes (docs/api.md §7), rows as in sessions. Added
# after version 1 shipped: made on open by any version that knows it; an older jidocoder
# ignores it (and so does not list failed sessions), which keeps SCHEMA_VERSION at 1.
_FAILED_TABLE = ("CREATE TABLE IF NOT EXISTS failed (session_id TEXT PRIMARY KEY, "
                 "state BLOB NOT NULL) WITHOUT ROWID")
# seq_marks: per event topic, a seq above every one sent (events.py, SeqMarks); created_by:
# the call id of each create_session, so that one resent after a lost reply finds its session
# (docs/protocol.md, "Call ids"). Both added after version 1 shipped, like ``failed``; a
# session's rows go in the same transaction as its row, so its scrub covers them.
_SEQ_MARKS_TABLE = ("CREATE TABLE IF NOT EXISTS seq_marks (topic TEXT PRIMARY KEY, "
                    "mark INTEGER NOT NULL) WITHOUT ROWID")
_CREATED_BY_TABLE = ("CREATE TABLE IF NOT EXISTS created_by (call_id TEXT PRIMARY KEY, "
                     "session_id TEXT NOT NULL) WITHOUT ROWID")
_SESSION_TOPIC = "client.session."  # docs/api.md §4
# asleep holds, beside its row in sessions, each hibernated session (docs/api.md §13): what a
# start needs of it, in columns, so that 100,000 of them are read without decoding one state.
# Added after version 1 shipped, like failed: an older jidocoder ignores it and restores them.
_ASLEEP_TABLE = ("CREATE TABLE IF NOT EXISTS asleep (session_id TEXT PRIMARY KEY, "
                 "created_at INTEGER NOT NULL, status TEXT NOT NULL, message_count INTEGER NOT NULL, "
                 "timeout_minutes REAL NOT NULL) WITHOUT ROWID")
_LATE_TABLES = (_FAILED_TABLE, _SCRUB_MARKER_TABLE, _SEQ_MARKS_TABLE, _CREATED_BY_TABLE, _ASLEEP_TABLE)
_REGISTRY_SCHEMA = f"""
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
{_SCRUB_MARKER_TABLE};
{_FAILED_TABLE};
{_SEQ_MARKS_TABLE};
{_CREATED_BY_TABLE};
{_ASLEEP_TABLE};
"""
ORPHAN_ERROR = "its registry row was lost"

_ERASABLE = {SessionStatus.TERMINATING.value, SessionStatus.TERMINATED.value}
# seq/position are plain INTEGER PRIMARY KEYs (no AUTOINCREMENT): a new rowid is max + 1, so the
# order of insertion is kept without the extra sqlite_sequence write on every insert.
_SESSION_SCHEMA = """
CREATE TABLE messages (seq INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL,
                       timestamp INTEGER NOT NULL);
CREATE TABLE active_files (position INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE,
                           added_at INTEGER NOT NULL);
CREATE TABLE file_index (path TEXT PRIMARY KEY, entry BLOB NOT NULL) WITHOUT ROWID;
"""
# calls: the reply of each recent call that changed the session, by its call id, written in the
# same transaction as the change (docs/protocol.md, "Call ids"). Added after version 1 shipped:
# a store made before gets it when its calls are first loaded; still version 1. No index on
# call_id: the session looks ids up in memory (callids.CallLog, loaded with the store), never in
# the table, and an index is one more page in every commit of a stored call (a third, beside
# the message's and this row's: +4.5 us of CPU and +7 us per send_message, measured). Stores
# made with the UNIQUE of earlier versions keep it; record_call's INSERT OR REPLACE suits both.
_CALLS_TABLE = ("CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY, "
                "call_id TEXT NOT NULL, reply BLOB NOT NULL)")
_SESSION_SCHEMA += _CALLS_TABLE + ";\n"


# Stores open in this process, disowned in a forked child (see "Fork hazard" above). A disowned
# connection is parked in _INHERITED so the child never finalizes (closes) it.
_OPEN: weakref.WeakSet[_Database] = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []


def _disown_all_after_fork() -> None:
    for db in list(_OPEN):
        db._disown()


os.register_at_fork(after_in_child=_disown_all_after_fork)


def to_micros(moment: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch (exact)."""
    if moment.tzinfo is None:
        raise InvalidArgumentError("timestamp must be timezone-aware", code="invalid_timestamps")
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The aware UTC datetime ``to_micros`` was given."""
    return _EPOCH + timedelta(microseconds=micros)


def session_db_path(state_dir: Path, session_id: str) -> Path:
    """Where a session's database lives; the id must be usable as a file name."""
    if not isinstance(session_id, str) or not _SAFE_ID.fullmatch(session_id):
        raise InvalidArgumentError(f"session id {session_id!r} cannot name a store file",
                                   code="invalid_session_id", field="session_id")
    return Path(state_dir) / SESSIONS_DIR / f"{session_id}.db"


def destroy_session_files(state_dir: Path, session_id: str) -> None:
    """Unlink a session's -wal/-shm/-journal, then its database, then sync the directory (the
    unlinks are durable when this returns); files already gone are fine."""
    db_path = session_db_path(state_dir, session_id)
    _unlink_database(db_path)
    if db_path.parent.is_dir():
        _fsync_directory(db_path.parent)


@dataclass(frozen=True)
class SessionFiles:
    """What a daemon start may do with the files in ``sessions/`` (``classify_session_files``).

    ``erase``: ids whose row is ``terminating`` or ``terminated``: a terminate was requested,
    so ``destroy_session_files`` may finish it. ``orphans``: ids with files but no row, live or
    failed (a lost or damaged row or registry, or a create that died before its row): never
    deleted; ``Registry.adopt_orphan`` offers one as a failed session. ``stray``: entries that
    are no session's (``backup copy.db``, ``x.txt``, a directory): left alone. ``lone_logs``:
    ids with no row whose ``<id>.db`` is missing but a -wal/-shm/-journal is there: left alone
    and not to be adopted (opening the id would make an empty database, and SQLite discards a
    log beside an empty database).
    """

    erase: tuple[str, ...]
    orphans: tuple[str, ...]
    stray: tuple[Path, ...]
    lone_logs: tuple[str, ...] = ()


def classify_session_files(state_dir: Path, registry: Registry,
                           statuses: dict[str, str | None] | None = None,
                           asleep: AbstractSet[str] = frozenset()) -> SessionFiles:
    """Sort ``sessions/`` by what the registry says of each id; reads only, never raises for a
    strange name. A ``<id>.db-wal``, ``-shm`` or ``-journal`` counts for ``<id>`` even when its
    ``<id>.db`` is missing. Call it after ``load_all`` (which moves damaged rows out, leaving
    their files as orphans). ``asleep``: ids of hibernated sessions, known and never erased by
    a start, whose ``<id>.db`` is not looked at (100,000 of them at a start)."""
    if statuses is None:  # a caller that has read every row already says what they hold
        statuses = registry.row_statuses()
    directory = Path(state_dir) / SESSIONS_DIR
    ids, stray = _session_file_ids(directory, asleep)
    erase = sorted(i for i in ids if i in statuses and statuses[i] in _ERASABLE)
    rowless = sorted(i for i in ids if i not in statuses and i not in asleep)
    orphans = [i for i in rowless if (directory / f"{i}.db").is_file()]
    lone = [i for i in rowless if i not in orphans]
    return SessionFiles(tuple(erase), tuple(orphans), tuple(sorted(stray)), tuple(lone))


def _session_file_ids(directory: Path, asleep: AbstractSet[str]) -> tuple[set[str], list[Path]]:
    """(ids that name a file in ``directory``, the entries that name none); the ``<id>.db`` of
    an id in ``asleep`` is passed over (set operations, no stat: a start lists 100,000)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set(), []
    if asleep:  # "<id>.db" of a sleeper is passed over; anything else, even "<id>", is looked at
        stems = list(map(str.removesuffix, names, repeat(".db")))
        names = [name for name, stem in zip(names, stems, strict=True) if stem not in asleep or stem == name]
    ids: set[str] = set()
    stray: list[Path] = []
    for name in names:
        session_id = _file_session_id(directory / name)
        if session_id is None:
            stray.append(directory / name)
        else:
            ids.add(session_id)
    return ids, stray


def _file_session_id(path: Path) -> str | None:
    """The id a name in ``sessions/`` belongs to: a regular file ``<id>.db`` or one of its
    sidecars, the id one ``session_db_path`` accepts; else None."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return None
    except OSError:
        return None
    for suffix in ("", *SIDECARS):
        ending = ".db" + suffix
        if path.name.endswith(ending):
            session_id = path.name[:-len(ending)]
            return session_id if _SAFE_ID.fullmatch(session_id) else None
    return None


def quarantine(state_dir: Path, path: Path, reason: str) -> Path:
    """Move a damaged file and its sidecars into ``damaged/`` under a free name; return it.

    Nothing is deleted: a person may want to recover it. ``<name>.reason`` beside it says why.
    """
    path = Path(path)
    target = _free_name(_damaged_dir(state_dir), path.name, (*SIDECARS, ".reason"))
    with _translated(path):
        for suffix in (*SIDECARS, ""):
            source = path.with_name(path.name + suffix)
            if suffix and not source.exists():
                continue
            moved = target.with_name(target.name + suffix)
            os.rename(source, moved)
            os.chmod(moved, 0o600)  # private, whoever made it: it holds a session's data
    _write_reason(target, path, reason)  # syncs target's directory
    _fsync_directory(path.parent)
    return target


class _Database:
    """One sqlite3 connection in WAL mode: version check, schema, and one transaction per write.

    ``exclusive`` holds the file lock for the connection's life: no -shm file and no shared
    memory, for a file only one process may use. ``lazy`` leaves a missing file uncreated until
    the first write (``SessionStore.load`` returns an empty store meanwhile).
    """

    on_commit: Callable[[float], None] | None = None  # the daemon times its registry's commits

    def __init__(self, path: Path, durability: str, schema: str, pragmas: tuple[str, ...] = (),
                 *, exclusive: bool = False, lazy: bool = False) -> None:
        self.path = path
        self._synchronous = _synchronous(durability)
        # Settings without I/O, run on a new connection before its first read: the lock mode
        # must come first or SQLite maps a -shm file, the cache size too or it costs a resize.
        self._pragmas = (*(["locking_mode=EXCLUSIVE"] if exclusive else []),
                         f"synchronous={self._synchronous}", "temp_store=MEMORY", *pragmas)
        self._schema = schema
        self._conn: sqlite3.Connection | None = None
        self._deferred = False  # lazy, and the file did not exist: opened by the first write
        exists = _check_header(path)
        if lazy and not exists:
            self._deferred = True
        else:
            self._open(exists)
        _OPEN.add(self)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); closing twice is fine."""
        conn, self._conn, self._deferred = self._conn, None, False
        _OPEN.discard(self)
        if conn is not None:
            conn.close()

    # A new registry's file and directory entry are synced at any durability: it is made once
    # per state dir, and losing it to a power cut would look like a lost registry.
    _sync_new_file = False

    def _open(self, exists: bool) -> None:
        made = False
        if not exists:  # SQLite discards a -wal an earlier file left beside an empty one
            _make_private_dir(self.path.parent)
            made = _make_private_file(self.path)
        try:
            with _translated(self.path):
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT)
                try:
                    for pragma in self._pragmas:
                        conn.execute(f"PRAGMA {pragma}")
                    (self._attach if exists else self._create)(conn)
                except BaseException:
                    conn.close()
                    raise
        except BaseException:
            if made:  # nothing in it was acknowledged: a failed create leaves no file
                _unlink_database(self.path)
            raise
        self._conn = conn

    def _create(self, conn: sqlite3.Connection) -> None:
        """A new file, straight into WAL mode, with its schema in one transaction."""
        # No journal file and no sync while it is built (see "Creating and opening"). At "full",
        # page 1 must then reach the disk: with an empty file SQLite discards a synced WAL.
        for pragma in ("synchronous=OFF", "journal_mode=MEMORY"):
            conn.execute(f"PRAGMA {pragma}")
        _switch_to_wal(self.path, conn)
        self._write_schema(conn)
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        if self._synchronous == "FULL" or self._sync_new_file:
            _fsync_with_directory(self.path)

    def _attach(self, conn: sqlite3.Connection) -> None:
        """An existing file: integrity, version, schema (if still empty) and tables."""
        _check_integrity(self.path, conn)
        # Newer only in an uncheckpointed WAL: closing then checkpoints the newer jidocoder's own
        # pages into the file, which loses nothing; every other newer store is refused unchanged.
        version = _user_version(conn)
        _check_version(self.path, version)
        _switch_to_wal(self.path, conn)  # already WAL (always, for files we wrote): no write
        if version == 0:
            self._write_schema(conn)
        _check_tables(self.path, conn, self._schema)

    def _write_schema(self, conn: sqlite3.Connection) -> None:
        with _Transaction(self.path, conn):
            if _user_version(conn) == 0:
                for statement in filter(str.strip, self._schema.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction, committed before the caller returns (rolled back on error)."""
        return _Transaction(self.path, self._connection(), self.on_commit)

    @contextmanager
    def _direct(self) -> Iterator[sqlite3.Connection]:
        """The connection outside a transaction: for reads, and VACUUM (which refuses one)."""
        conn = self._connection()
        with _translated(self.path):
            yield conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None and self._deferred:
            self._open(_check_header(self.path))
            self._deferred = False
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is closed, or was opened before a fork: "
                               "open a new one in this process")
        return self._conn

    def _disown(self) -> None:
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn, self._deferred = None, False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Registry(_Database):
    """The daemon's table of persisted sessions, ``<state_dir>/registry.db``.

    ``sessions`` holds live sessions, ``failed`` those given up after crashes (docs/api.md §7): their
    data is kept, their database stays in ``sessions/``, and ``recover_failed`` makes one live
    again. A row's keys this version does not know are kept (``_extras``) and written back.
    """

    _sync_new_file = True

    def __init__(self, state_dir: Path, durability: str = "normal") -> None:
        self.state_dir = Path(state_dir)
        # Per session id, the stored keys this version does not know (from a newer jidocoder):
        # stripped before validation, written back by every later put of that session.
        self._extras: dict[str, dict[str, Any]] = {}
        super().__init__(self.state_dir / REGISTRY_FILE, durability, _REGISTRY_SCHEMA,
                         pragmas=("secure_delete=ON",))
        try:
            if self._add_late_tables():
                self._scrub(None)
        except BaseException:
            self.close()
            raise

    def put(self, state: SessionState, *, call_id: str | None = None, hibernated: bool = False) -> None:
        """Insert or replace the session's state; with the call id that created it, if given;
        ``hibernated``: its process left cleanly after all of it was stored, and a start leaves
        it hibernated (docs/api.md §13)."""
        blob = self._encode(state)
        with self._write() as conn:
            conn.execute("INSERT INTO sessions VALUES (?, ?) ON CONFLICT (session_id) "
                         "DO UPDATE SET state = excluded.state", (state.session_id, blob))
            if call_id is not None:
                conn.execute("INSERT OR IGNORE INTO created_by VALUES (?, ?)",
                             (call_id, state.session_id))
            if hibernated:
                conn.execute("INSERT OR REPLACE INTO asleep VALUES (?, ?, ?, ?, ?)",
                             (state.session_id, to_micros(state.created_at), state.status.value,
                              state.conversation_count, state.config.timeout_minutes))
            else:
                conn.execute("DELETE FROM asleep WHERE session_id = ?", (state.session_id,))

    def created_by(self, call_id: str) -> str | None:
        """The session that the create_session call ``call_id`` made, if it was stored."""
        with self._direct() as conn:
            row = conn.execute("SELECT session_id FROM created_by WHERE call_id = ?",
                               (call_id,)).fetchone()
        return row[0] if row else None

    def load_seq_marks(self) -> dict[str, int]:
        with self._direct() as conn:
            rows = conn.execute("SELECT topic, mark FROM seq_marks").fetchall()
        return {str(topic): int(mark) for topic, mark in rows}

    def put_seq_mark(self, topic: str, mark: int) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO seq_marks VALUES (?, ?) ON CONFLICT (topic) "
                         "DO UPDATE SET mark = excluded.mark", (topic, mark))

    def delete(self, session_id: str) -> None:
        """Remove the session (live or failed) so that no byte of registry.db, -wal or -shm
        contains its id."""
        with self._write() as conn:
            earlier = _marked(conn)  # a scrub that did not finish: its id is not known here
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM failed WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM created_by WHERE session_id = ?", (session_id,))
            conn.execute("DELETE FROM seq_marks WHERE topic = ?", (_SESSION_TOPIC + session_id,))
            conn.execute("DELETE FROM asleep WHERE session_id = ?", (session_id,))
            conn.execute("INSERT OR IGNORE INTO scrub_pending VALUES (1)")
        self._extras.pop(session_id, None)
        self._scrub(None if earlier else session_id)

    def load_all(self) -> tuple[list[SessionState], list[tuple[str, str]]]:
        """(valid live states oldest first, [(session_id, reason)] for rows moved to
        ``damaged/``; their session databases are left where they are)."""
        return self._load("sessions")

    def mark_failed(self, state: SessionState) -> None:
        """The session was given up: its row moves from ``sessions`` to ``failed`` as ``state``
        (give it its ``error``), in one transaction. Its database file is not touched."""
        blob = self._encode(state)
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (state.session_id,))
            conn.execute("DELETE FROM asleep WHERE session_id = ?", (state.session_id,))
            conn.execute("INSERT INTO failed VALUES (?, ?) ON CONFLICT (session_id) "
                         "DO UPDATE SET state = excluded.state", (state.session_id, blob))

    def load_failed(self) -> list[SessionState]:
        """The failed sessions, oldest first; damaged rows are moved to ``damaged/``."""
        return self._load("failed")[0]

    def recover_failed(self, state: SessionState) -> bool:
        """If ``state.session_id`` is failed: in one transaction its failed row goes and
        ``state`` (the caller's new live state) is put; True. Otherwise nothing; False."""
        blob = self._encode(state)
        with self._write() as conn:
            gone = conn.execute("DELETE FROM failed WHERE session_id = ?", (state.session_id,))
            if gone.rowcount == 0:
                return False
            conn.execute("INSERT INTO sessions VALUES (?, ?) ON CONFLICT (session_id) "
                         "DO UPDATE SET state = excluded.state", (state.session_id, blob))
        return True

    def adopt_orphan(self, state: SessionState) -> bool:
        """Record a session database that has no row (its row was lost: a damaged row or
        registry) as failed with ``state`` (the caller's: a new one, ended, its ``error``
        ORPHAN_ERROR), so that ``recover_failed`` can bring it back. False, and nothing
        written, if the id has a row already."""
        session_id = state.session_id
        blob = self._encode(state)
        with self._write() as conn:
            if session_id in _row_ids(conn):
                return False
            conn.execute("INSERT INTO failed VALUES (?, ?)", (session_id, blob))
        return True

    def row_statuses(self) -> dict[str, str | None]:
        """Every id with a row (live or failed) and its stored status string (None for a failed
        or unreadable row), read without validating the rest of the row."""
        with self._direct() as conn:
            live = conn.execute("SELECT session_id, state FROM sessions").fetchall()
            failed = conn.execute("SELECT session_id FROM failed").fetchall()
        statuses: dict[str, str | None] = {session_id: None for (session_id,) in failed}
        statuses.update((session_id, _raw_status(blob)) for session_id, blob in live)
        return statuses

    def load_rows(self) -> list[tuple[str, bytes]]:
        """Every live row of a session not hibernated, as stored (``parse`` validates one)."""
        with self._direct() as conn:
            return conn.execute("SELECT session_id, state FROM sessions WHERE session_id NOT IN "
                                "(SELECT session_id FROM asleep)").fetchall()

    def load_asleep(self) -> list[tuple[int, str, str, int, float]]:
        """(created_at µs, session_id, status, message_count, timeout_minutes) of every
        hibernated session, oldest first: no state decoded (a start with 100,000)."""
        with self._direct() as conn:
            return conn.execute("SELECT created_at, session_id, status, message_count, "
                                "timeout_minutes FROM asleep ORDER BY created_at, session_id").fetchall()

    def row(self, session_id: str) -> bytes | None:
        """One session's stored row (``parse`` reads it), None if it has none."""
        with self._direct() as conn:
            found = conn.execute("SELECT state FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        return None if found is None else _as_bytes(found[0])

    def parse(self, session_id: str, blob: object) -> SessionState:
        """A row of ``load_rows`` as a state (its unknown keys kept aside, as ``load_all``
        does); a row that cannot be one is moved to ``damaged/`` and DamagedStoreError raised."""
        state, extras, reason = _parse_row(session_id, blob)
        if state is None:
            self._move_row_out("sessions", session_id, blob, reason)
            raise DamagedStoreError(f"the registry row of {session_id} is damaged ({reason}); "
                                    "kept in damaged/", details={"session_id": session_id})
        if extras:
            self._extras[session_id] = extras
        return state

    def _encode(self, state: SessionState) -> bytes:
        return wire.encode(_with_extras(state.serialize(), self._extras.get(state.session_id)))

    def _load(self, table: str) -> tuple[list[SessionState], list[tuple[str, str]]]:
        with self._direct() as conn:
            rows = conn.execute(f"SELECT session_id, state FROM {table}").fetchall()
        states, damaged = [], []
        for session_id, blob in rows:
            state, extras, reason = _parse_row(session_id, blob)
            if state is None:
                self._move_row_out(table, session_id, blob, reason)
                damaged.append((session_id, reason))
                continue
            states.append(state)
            if extras:
                self._extras[session_id] = extras
        states.sort(key=lambda state: (state.created_at, state.session_id))
        return states, damaged

    def _move_row_out(self, table: str, session_id: str, blob: object, reason: str) -> None:
        # Written and synced before the row is deleted: a crash in between leaves a copy, not none.
        name = quote(session_id, safe="")[:200] + ".registry-row"
        target = _free_name(_damaged_dir(self.state_dir), name, (".reason",))
        _write_synced(target, _as_bytes(blob))
        _write_reason(target, self.path, f"{table} row of {session_id!r}: {reason}")
        with self._write() as conn:
            conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))

    def _add_late_tables(self) -> bool:
        """Make the tables added after version 1 shipped; whether a scrub must run now (one was
        interrupted, or the registry predates the marker)."""
        with self._direct() as conn:
            found = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE name IN "
                "('scrub_pending', 'failed', 'seq_marks', 'created_by', 'asleep')")}
            interrupted = "scrub_pending" in found and _marked(conn)
        if len(found) < len(_LATE_TABLES):
            with self._write() as conn:
                for table in _LATE_TABLES:
                    conn.execute(table)
        return interrupted or "scrub_pending" not in found

    def _scrub(self, session_id: str | None) -> None:
        """Empty the WAL; rebuild every page unless ``session_id`` is given and left no trace.

        Then clear the marker, in a transaction that need not be synced: losing it costs one
        extra scrub at the next open, never a trace. (Unsynced is safe there: the WAL was just
        emptied, so that commit is far from the size that makes SQLite checkpoint on commit.)
        """
        self._checkpoint()
        if session_id is None or _holds_trace(self.path, session_id):
            with self._direct() as conn:
                conn.execute("VACUUM")
            self._checkpoint()
        with self._direct() as conn:
            conn.execute("PRAGMA synchronous=OFF")
        try:
            with self._write() as conn:
                conn.execute("DELETE FROM scrub_pending")
        finally:
            with self._direct() as conn:
                conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def _checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it to zero bytes.

        Never at synchronous=OFF: the file is fsynced before the WAL is emptied, or a power
        cut between the two would lose commits that were only in the WAL."""
        with self._direct() as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # only if another connection reads the registry, which nothing should
            raise StoreBusyError(f"{self.path}: another connection blocks the checkpoint",
                                 details={"path": str(self.path)})


# Messages past max_history are deleted this many at a time: the other appends are one INSERT
# in autocommit, where BEGIN, INSERT, DELETE, COMMIT cost about 10 us more per message (measured
# on a session's round trip, one CPU).
TRIM_EVERY = 32


class SessionStore(_Database):
    """One session's conversation, active files and file index, ``sessions/<id>.db``.

    Open it only in the session's own process (after fork): it holds the file's lock while open.
    With ``lazy=True`` a session that has no file yet creates none until its first write.
    """

    def __init__(self, state_dir: Path, session_id: str, durability: str = "normal", *,
                 lazy: bool = False) -> None:
        super().__init__(session_db_path(state_dir, session_id), durability, _SESSION_SCHEMA,
                         pragmas=(f"cache_size=-{_SESSION_CACHE_KIB}",), exclusive=True,
                         lazy=lazy)
        self._group: _Group | None = None

    def begin_group(self) -> None:
        """Until ``end_group``, writes share one transaction: one commit (one WAL write, one
        fdatasync at "full") for several requests that arrived together. Nothing is begun, and
        a lazy store creates no file, unless a write comes."""
        if self._group is not None:
            raise RuntimeError("write groups do not nest")
        self._group = _Group(self)

    def end_group(self) -> None:
        """Commit the group's writes; raises if any of them (or the commit) failed, in which
        case none of them is stored."""
        group, self._group = self._group, None
        if group is not None:
            group.finish()

    def abort_group(self) -> None:
        """End the group storing none of its writes (its transaction rolled back): for a caller
        that met an error of its own between them."""
        group, self._group = self._group, None
        if group is not None:
            group.abort()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._group if self._group is not None else super()._write()

    def load(self) -> tuple[list[Message], list[ActiveFile], dict[str, dict[str, Any]]]:
        """(messages oldest first, active files in insertion order, file index)."""
        if self._deferred:  # no file yet, and only this process writes it
            return [], [], {}
        with self._direct() as conn:
            messages = conn.execute(
                "SELECT role, content, timestamp FROM messages ORDER BY seq").fetchall()
            files = conn.execute(
                "SELECT path, added_at FROM active_files ORDER BY position").fetchall()
            index = conn.execute("SELECT path, entry FROM file_index").fetchall()
        try:  # rows of the wrong type or range: the file was damaged or written by hand
            return ([Message(role=role, content=content, timestamp=from_micros(ts))
                     for role, content, ts in messages],
                    [ActiveFile(path=path, added_at=from_micros(ts)) for path, ts in files],
                    {path: _decode_entry(blob) for path, blob in index})
        except (JidocoderError, ValueError, TypeError, OverflowError) as exc:
            raise DamagedStoreError(f"{self.path} holds an unreadable row: {exc}",
                                    details={"path": str(self.path)}) from exc

    def append_message(self, message: Message, keep: int) -> None:
        """Append; past ``keep`` (>= 1) the oldest go, ``TRIM_EVERY`` at a time, so at most
        keep + TRIM_EVERY - 1 are held (``load`` returns them all: the reader keeps its last
        ``keep``, as SessionContext.restore does)."""
        if not isinstance(keep, int) or keep < 1:
            raise InvalidArgumentError(f"keep must be an int >= 1, got {keep!r}", field="keep")
        seq = self._write_one("INSERT INTO messages (role, content, timestamp) VALUES (?, ?, ?)",
                              (message.role, message.content, to_micros(message.timestamp)))
        assert seq is not None, "an INSERT's rowid"
        # The seqs held are always consecutive (a new one is max + 1, and only the oldest or
        # all are ever deleted), so the last ``keep`` are exactly those above seq - keep. A
        # crash between the two statements leaves only older rows that the next trim takes.
        if seq > keep and (seq - keep) % TRIM_EVERY == 0:
            self._write_one("DELETE FROM messages WHERE seq <= ?", (seq - keep,))

    def _write_one(self, statement: str, parameters: tuple[object, ...]) -> int | None:
        """One statement, committed on its own (autocommit: no BEGIN/COMMIT round trips), or
        as part of the open group; the rowid it inserted, if any."""
        if self._group is not None:
            with self._group as conn:
                return conn.execute(statement, parameters).lastrowid
        conn = self._connection()
        try:
            return conn.execute(statement, parameters).lastrowid
        except sqlite3.DatabaseError as exc:
            _raise_translated(self.path, exc)
            raise

    def clear_messages(self) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM messages")

    def load_calls(self) -> dict[str, bytes]:
        """The recorded calls' packed replies by call id, oldest first."""
        if self._deferred:
            return {}
        with self._direct() as conn:
            made = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'calls'").fetchone()
        if not made:
            with self._write() as conn:
                conn.execute(_CALLS_TABLE)
            return {}
        with self._direct() as conn:
            rows = conn.execute("SELECT call_id, reply FROM calls ORDER BY seq").fetchall()
        return {call_id: bytes(reply) for call_id, reply in rows}

    def record_call(self, call_id: str, reply: bytes, keep: int) -> None:
        """Record the call's reply; past ``keep`` the oldest go, ``TRIM_EVERY`` at a time. Give
        it the transaction of the change (``begin_group``)."""
        with self._write() as conn:
            seq = conn.execute("INSERT OR REPLACE INTO calls (call_id, reply) VALUES (?, ?)",
                               (call_id, reply)).lastrowid or 0
            if seq > keep and (seq - keep) % TRIM_EVERY == 0:
                conn.execute("DELETE FROM calls WHERE seq <= ?", (seq - keep,))

    def add_file(self, file: ActiveFile) -> None:
        """Append the file; a path already active keeps its place and its ``added_at``."""
        with self._write() as conn:
            conn.execute("INSERT INTO active_files (path, added_at) VALUES (?, ?) "
                         "ON CONFLICT (path) DO NOTHING", (file.path, to_micros(file.added_at)))

    def remove_file(self, path: str) -> None:
        """Remove the active file and its file-index entry; absent ones are fine."""
        with self._write() as conn:
            conn.execute("DELETE FROM active_files WHERE path = ?", (path,))
            conn.execute("DELETE FROM file_index WHERE path = ?", (path,))

    def put_index(self, path: str, entry: dict[str, Any]) -> None:
        """Insert or replace the file-index entry for ``path``."""
        blob = wire.encode(entry)
        with self._write() as conn:
            conn.execute("INSERT INTO file_index VALUES (?, ?) ON CONFLICT (path) "
                         "DO UPDATE SET entry = excluded.entry", (path, blob))


def _decode_entry(blob: object) -> dict[str, Any]:
    entry = wire.decode(blob)  # type: ignore[arg-type]  # not bytes: TypeError, caught by load
    if not isinstance(entry, dict):
        raise TypeError(f"a file-index entry is a map, not {type(entry).__name__}")
    return entry


def _parse_row(session_id: str, blob: object) -> tuple[SessionState | None, dict[str, Any], str]:
    """(the row's state, its keys this version does not know, ""), or (None, {}, the reason
    it cannot be used)."""
    if not isinstance(blob, bytes):  # SQLite columns take any type: someone wrote this by hand
        return None, {}, f"state is a {type(blob).__name__}, not encoded bytes"
    try:
        known, extras = _split_extras(wire.decode(blob))
        state = SessionState.deserialize(known)
    except (JidocoderError, ValueError, TypeError, AttributeError) as exc:
        return None, {}, f"{type(exc).__name__}: {exc}"
    if state.session_id != session_id:
        return None, {}, f"row key {session_id!r} holds the state of {state.session_id!r}"
    return state, extras, ""


def _split_extras(data: object) -> tuple[object, dict[str, Any]]:
    """(``data`` without the keys SessionState and its config do not know, those keys): a
    newer jidocoder's fields, kept aside as they are. Anything else is left for deserialize
    to judge. The extras of the config are under "config" (a known key, so never an extra)."""
    if not isinstance(data, dict):
        return data, {}
    extras = {key: value for key, value in data.items() if key not in _STATE_FIELDS}
    known = {key: value for key, value in data.items() if key in _STATE_FIELDS}
    config = known.get("config")
    if isinstance(config, dict) and not config.keys() <= _CONFIG_FIELDS:
        extras["config"] = {k: v for k, v in config.items() if k not in _CONFIG_FIELDS}
        known["config"] = {k: v for k, v in config.items() if k in _CONFIG_FIELDS}
    return known, extras


def _with_extras(data: dict[str, Any], extras: dict[str, Any] | None) -> dict[str, Any]:
    """``data`` (a serialized state) with the extras ``_split_extras`` took from its row."""
    if not extras:
        return data
    merged = {**data, **{key: value for key, value in extras.items() if key != "config"}}
    if "config" in extras:
        merged["config"] = {**data["config"], **extras["config"]}
    return merged


def _raw_status(blob: object) -> str | None:
    """The status string stored in a row, without validating the rest; None if unreadable."""
    try:
        data = wire.decode(blob)  # type: ignore[arg-type]
    except (JidocoderError, ValueError, TypeError):
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return status if isinstance(status, str) else None


def _row_ids(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT session_id FROM sessions UNION ALL SELECT session_id FROM failed")
    return {row[0] for row in rows}


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else repr(value)).encode("utf-8", "surrogateescape")


def _synchronous(durability: str) -> str:
    try:
        return DURABILITY[durability]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"durability must be one of {sorted(DURABILITY)}, got "
                                   f"{durability!r}", code="invalid_durability",
                                   field="durability") from None


def _check_header(path: Path) -> bool:
    """Whether the file holds anything; a newer or non-SQLite one is refused, read as bytes only."""
    with _translated(path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            header = os.pread(fd, _HEADER_SIZE, 0)
        finally:
            os.close(fd)
    if not header:
        return False  # an empty file is an empty database to SQLite
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        raise DamagedStoreError(f"{path} is not an SQLite database (bad or short header)")
    _check_version(path, int.from_bytes(header[_USER_VERSION_AT], "big", signed=True))
    return True


def _check_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"{path} has store version {version}, newer than this jidocoder's {SCHEMA_VERSION}: "
            "upgrade jidocoder or use another state dir; the file was left unchanged",
            details={"path": str(path), "version": version, "supported": SCHEMA_VERSION})


def _check_integrity(path: Path, conn: sqlite3.Connection) -> None:
    result = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if result != ["ok"]:
        raise DamagedStoreError(f"{path} failed its integrity check: {'; '.join(result[:3])}")


def _check_tables(path: Path, conn: sqlite3.Connection, schema: str) -> None:
    # A table created "IF NOT EXISTS" was added after its file format shipped: made on open.
    wanted = set(re.findall(r"CREATE TABLE (?!IF NOT EXISTS)(\w+)", schema))
    found = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if not wanted <= found:
        raise DamagedStoreError(f"{path} lacks the tables {sorted(wanted - found)}")


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _switch_to_wal(path: Path, conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise StoreBusyError(f"{path}: SQLite kept journal mode {mode!r} instead of WAL",
                             details={"path": str(path)})


def _marked(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM scrub_pending").fetchone() is not None


def _holds_trace(path: Path, session_id: str) -> bool:
    """Whether the file's bytes hold the id or a piece of it (see _PIECE); it is small."""
    data = path.read_bytes()
    return any(piece in data for piece in _id_pieces(session_id))


def _id_pieces(session_id: str) -> list[bytes]:
    raw = session_id.encode("utf-8", "surrogateescape")
    if len(raw) <= _PIECE:
        return [raw]
    return [raw[at:at + _PIECE] for at in (*range(0, len(raw) - _PIECE, _STEP), len(raw) - _PIECE)]


class _Transaction:
    """``with`` it: BEGIN IMMEDIATE ... COMMIT, rolled back on error, also when COMMIT itself
    failed; corruption errors become DamagedStoreError, as in ``_translated``. A class rather
    than nested generator-based managers: it is on the path of every message a session stores,
    where the two generators cost more Python than the INSERT itself."""

    __slots__ = ("path", "conn", "on_commit")

    def __init__(self, path: Path, conn: sqlite3.Connection,
                 on_commit: Callable[[float], None] | None = None) -> None:
        self.path = path
        self.conn = conn
        self.on_commit = on_commit  # told each COMMIT's seconds (the daemon's metrics)

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            _raise_translated(self.path, exc)
            raise
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if kind is None:
            try:
                began = time.perf_counter()
                self.conn.execute("COMMIT")
                if self.on_commit is not None:
                    self.on_commit(time.perf_counter() - began)
                return
            except BaseException as exc:
                self._roll_back(exc)
                raise
        self._roll_back(error)

    def _roll_back(self, error: BaseException | None) -> None:
        """Undo what the failed transaction did; corruption behind ``error`` becomes
        DamagedStoreError, other errors are left to propagate."""
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.DatabaseError as exc:
            _raise_translated(self.path, exc)
            raise
        if isinstance(error, (sqlite3.DatabaseError, OSError)):
            _raise_translated(self.path, error)


class _Group:
    """The transaction that the writes of one group share (``SessionStore.begin_group``): each
    write is ``with`` it; the first begins the transaction, a failed one rolls it all back."""

    __slots__ = ("store", "tx", "failed")

    def __init__(self, store: _Database) -> None:
        self.store = store
        self.tx: _Transaction | None = None
        self.failed: BaseException | None = None

    def __enter__(self) -> sqlite3.Connection:
        if self.failed is not None:
            self._raise_failed("an earlier write of this group failed")
        if self.tx is None:
            tx = _Transaction(self.store.path, self.store._connection())
            tx.__enter__()
            self.tx = tx
        return self.tx.conn

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: object) -> None:
        if kind is not None:
            tx, self.tx, self.failed = self.tx, None, error
            assert tx is not None, "__enter__ began it"
            tx.__exit__(kind, error, traceback)

    def finish(self) -> None:
        if self.failed is not None:
            self._raise_failed("a write of this group failed: none of them is stored")
        if self.tx is not None:
            tx, self.tx = self.tx, None
            tx.__exit__(None, None, None)  # COMMIT, rolled back if that fails

    def abort(self) -> None:
        if self.tx is not None:
            tx, self.tx = self.tx, None
            tx.__exit__(RuntimeError, None, None)  # ROLLBACK

    def _raise_failed(self, what: str) -> None:
        """The store's error that failed the group (a StorageError is one the caller can tell
        its client about), a new one each time; any other failure as RuntimeError."""
        if isinstance(self.failed, JidocoderError):
            error = type(self.failed)(f"{what}: {self.failed.message}", code=self.failed.code,
                                      details=self.failed.details)
            raise error from self.failed
        raise RuntimeError(what) from self.failed


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """The store's edge: sqlite3 and OS errors that say what the caller should do become
    DamagedStoreError, StorageError or StoreBusyError (``_raise_translated``); others pass."""
    try:
        yield
    except (sqlite3.DatabaseError, OSError) as exc:
        _raise_translated(path, exc)
        raise


def _raise_translated(path: Path, exc: BaseException | None) -> None:
    """Raise the store's error for ``exc`` if it has one (from ``exc``); otherwise return."""
    if isinstance(exc, OSError):
        if exc.errno in _STORAGE_ERRNOS:
            raise StorageError(f"{exc.filename or path}: cannot write: {exc.strerror}",
                               details={"path": str(exc.filename or path),
                                        "cause": errno.errorcode.get(exc.errno, str(exc.errno))}
                               ) from exc
        return
    primary = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if primary in _DAMAGE_CODES:
        raise DamagedStoreError(f"{path} is damaged: {exc}", details={"path": str(path)}) from exc
    if primary in _STORAGE_CODES:
        raise StorageError(f"{path}: cannot write: {exc}",
                           details={"path": str(path), "cause": getattr(exc, "sqlite_errorname", "")}
                           ) from exc
    if primary in _BUSY_CODES:
        raise StoreBusyError(f"{path} is held by another process: {exc}",
                             details={"path": str(path)}) from exc


def _make_private_dir(path: Path) -> None:
    """``path`` and any missing parent, each 0700 whatever the umask, and its entry synced."""
    if path.is_dir():
        return
    _make_private_dir(path.parent)
    with _translated(path):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            return  # made meanwhile, by another process: its maker syncs it
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
        _fsync_directory(path.parent)


def _make_private_file(path: Path) -> bool:
    """An empty 0600 file, made before SQLite opens it (SQLite would make it 0644 & ~umask, and
    it gives the -wal, -shm and -journal the database file's mode); whether it was made here."""
    with _translated(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # an empty file: SQLite's empty database, left as it is
            return False
        try:
            os.fchmod(fd, 0o600)  # the open's mode is masked by the umask
        finally:
            os.close(fd)
    return True


def _unlink_database(path: Path) -> None:
    """Unlink the -wal, -shm and -journal first, then the file: a kill in between leaves a
    database without its log, never a log that a new file of that name would misread."""
    with _translated(path):
        for suffix in (*SIDECARS, ""):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


def _fsync_with_directory(path: Path) -> None:
    with _translated(path):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_directory(path.parent)


def _fsync_directory(path: Path) -> None:
    """Make the directory's entries (files made, renamed or unlinked in it) durable."""
    with _translated(path):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _damaged_dir(state_dir: Path) -> Path:
    path = Path(state_dir) / DAMAGED_DIR
    _make_private_dir(path)
    return path


def _free_name(directory: Path, name: str, suffixes: tuple[str, ...]) -> Path:
    """``directory/name``, else ``name.1``, ``name.2``...: the first free with its suffixes."""
    candidate, n = directory / name, 0
    while any(p.exists() for p in (candidate, *(candidate.with_name(candidate.name + s)
                                                 for s in suffixes))):
        n += 1
        candidate = directory / f"{name}.{n}"
    return candidate


def _write_reason(target: Path, original: Path, reason: str) -> None:
    moved_at = utc_now().isoformat()
    text = f"{reason}\nmoved from {original} at {moved_at}\n"
    _write_synced(target.with_name(target.name + ".reason"), text.encode())


def _write_synced(path: Path, data: bytes) -> None:
    """A new 0600 file holding ``data``, synced with its directory entry."""
    with _translated(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            with open(fd, "wb", closefd=False) as file:
                file.write(data)
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_directory(path.parent)
