"""The embedded store: sqlite3 in WAL mode, a registry for the daemon and a database per session.

Layout under the state dir::

    registry.db              owned by the daemon: one row per persisted session (its SessionState)
    sessions/<id>.db         owned by that session's process: messages, active files, file index
    damaged/                 files and registry rows we could not read, moved aside, never deleted

Why this shape (API.md §6, Durability):

- **One database per session.** It is opened only by the session's own process, after fork, so
  session processes never wait on each other's write lock, and ending a session is "unlink the
  file and its -wal/-shm/-journal": nothing of it is left to scrub.
- **A registry owned by the daemon.** ``sessions(session_id TEXT PRIMARY KEY, state BLOB)`` is a
  WITHOUT ROWID table: one b-tree, so the id is stored once (no separate index holding a copy).
  ``secure_delete=ON`` zeroes what a delete frees. That alone is not enough: measured on SQLite
  3.40, churning 300 ids, 14 of ~900 deleted ids survived in the unallocated gap of pages that a
  b-tree rebalance had rebuilt. So ``delete`` also runs ``VACUUM`` (rebuilds every page from the
  live rows, in memory: ``temp_store=MEMORY``) and ``wal_checkpoint(TRUNCATE)`` (empties the WAL,
  which still holds older page images). Then no byte of registry.db, -wal or -shm holds the id.
  Opening the registry scrubs the same way, which completes a delete that a crash cut short.
- **Durability.** WAL with ``synchronous=NORMAL`` ("normal"): a commit is in the WAL (the kernel's
  page cache) before the call returns, so it survives any process crash. ``FULL`` ("full") also
  fsyncs the WAL on each commit, so it survives a power loss. Every write method is one
  transaction that commits before it returns.
- **Timestamps** are stored as integer microseconds since the Unix epoch: exact, ordered, and read
  back as aware UTC datetimes. Values without a column of their own (the SessionState dict, file
  index entries) are encoded with ``jidocoder.wire``, whose datetimes round-trip too.
- **Schema version** lives in ``PRAGMA user_version``. A store newer than ``SCHEMA_VERSION`` raises
  ``StoreVersionError`` before anything is written: the header is read as plain bytes first, so
  not even the journal mode is switched. A file that is not a usable database (garbage, truncated,
  missing tables) raises ``DamagedStoreError``; the caller quarantines it with ``quarantine``.
- **Fork hazard.** An SQLite connection must not cross a fork: the child's copy believes it holds
  the parent's locks and, if used or even closed (a close may checkpoint and delete the WAL), can
  corrupt the parent's database. After a fork every store open in the parent is disowned in the
  child: its connection is parked, never used or finalized there, and any call raises.
"""

from __future__ import annotations

import os
import re
import sqlite3
import weakref
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator, Self
from urllib.parse import quote

from .. import wire
from ..errors import InvalidArgumentError, JidocoderError
from ..models import ActiveFile, Message, SessionState

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
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)

_REGISTRY_SCHEMA = """
CREATE TABLE sessions (session_id TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
"""
# seq/position are plain INTEGER PRIMARY KEYs (no AUTOINCREMENT): a new rowid is max + 1, so the
# order of insertion is kept without the extra sqlite_sequence write on every insert.
_SESSION_SCHEMA = """
CREATE TABLE messages (seq INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL,
                       timestamp INTEGER NOT NULL);
CREATE TABLE active_files (position INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE,
                           added_at INTEGER NOT NULL);
CREATE TABLE file_index (path TEXT PRIMARY KEY, entry BLOB NOT NULL) WITHOUT ROWID;
"""


class StoreVersionError(JidocoderError):
    """The store was written by a newer jidocoder: upgrade (the file is left untouched)."""

    code = "store_version"


class DamagedStoreError(JidocoderError):
    """The file is not a usable database: move it aside with ``quarantine`` and start empty."""

    code = "store_damaged"


# Stores open in this process, disowned in a forked child (see "Fork hazard" above). A disowned
# connection is parked in _INHERITED so the child never finalizes (closes) it.
_OPEN: "weakref.WeakSet[_Database]" = weakref.WeakSet()
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
    """Unlink a session's database and its -wal/-shm/-journal; files already gone are fine."""
    db_path = session_db_path(state_dir, session_id)
    for suffix in ("", *SIDECARS):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)


def quarantine(state_dir: Path, path: Path, reason: str) -> Path:
    """Move a damaged file and its sidecars into ``damaged/`` under a free name; return it.

    Nothing is deleted: a person may want to recover it. ``<name>.reason`` beside it says why.
    """
    path = Path(path)
    target = _free_name(_damaged_dir(state_dir), path.name, (*SIDECARS, ".reason"))
    for suffix in SIDECARS:
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.rename(source, target.with_name(target.name + suffix))
    os.rename(path, target)
    _write_reason(target, path, reason)
    return target


class _Database:
    """One sqlite3 connection in WAL mode: version check, schema, and one transaction per write."""

    def __init__(self, path: Path, durability: str, schema: str,
                 pragmas: tuple[str, ...] = ()) -> None:
        pragmas = (f"synchronous={_synchronous(durability)}", "temp_store=MEMORY", *pragmas)
        self.path = path
        _check_header(path)
        self._conn: sqlite3.Connection | None = None
        with _translated(path):
            self._conn = sqlite3.connect(path, isolation_level=None)
            try:
                self._prepare(pragmas, schema)
            except BaseException:
                self._conn.close()
                raise
        _OPEN.add(self)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL); closing twice is fine."""
        conn, self._conn = self._conn, None
        _OPEN.discard(self)
        if conn is not None:
            conn.close()

    def _prepare(self, pragmas: tuple[str, ...], schema: str) -> None:
        _check_integrity(self.path, self._conn)
        # Newer only in an uncheckpointed WAL: closing then checkpoints the newer jidocoder's own
        # pages into the file, which loses nothing; every other newer store is refused unchanged.
        _check_version(self.path, _user_version(self._conn))
        for pragma in ("journal_mode=WAL", *pragmas):  # the first write to the file
            self._conn.execute(f"PRAGMA {pragma}")
        with self._write() as conn:
            if _user_version(conn) == 0:
                for statement in filter(str.strip, schema.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        _check_tables(self.path, self._conn, schema)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction, committed before the caller returns (rolled back on error)."""
        conn = self._connection()
        with _translated(self.path):
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also when COMMIT itself failed: leave no open transaction
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _direct(self) -> Iterator[sqlite3.Connection]:
        """The connection outside a transaction: for reads, and VACUUM (which refuses one)."""
        conn = self._connection()
        with _translated(self.path):
            yield conn

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"store {self.path} is closed, or was opened before a fork: "
                               "open a new one in this process")
        return self._conn

    def _disown(self) -> None:
        if self._conn is not None:
            _INHERITED.append(self._conn)
        self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Registry(_Database):
    """The daemon's table of persisted sessions, ``<state_dir>/registry.db``."""

    def __init__(self, state_dir: Path, durability: str = "normal") -> None:
        self.state_dir = Path(state_dir)
        _make_private_dir(self.state_dir)
        super().__init__(self.state_dir / REGISTRY_FILE, durability, _REGISTRY_SCHEMA,
                         pragmas=("secure_delete=ON",))
        try:
            self._scrub()
        except BaseException:
            self.close()
            raise

    def put(self, state: SessionState) -> None:
        """Insert or replace the session's state."""
        blob = wire.encode(state.serialize())
        with self._write() as conn:
            conn.execute("INSERT INTO sessions VALUES (?, ?) ON CONFLICT (session_id) "
                         "DO UPDATE SET state = excluded.state", (state.session_id, blob))

    def delete(self, session_id: str) -> None:
        """Remove the session so that no byte of registry.db, -wal or -shm contains its id."""
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        self._scrub()

    def load_all(self) -> tuple[list[SessionState], list[tuple[str, str]]]:
        """(valid states oldest first, [(session_id, reason)] for rows moved to ``damaged/``)."""
        with self._direct() as conn:
            rows = conn.execute("SELECT session_id, state FROM sessions").fetchall()
        states, damaged = [], []
        for session_id, blob in rows:
            state, reason = _parse_row(session_id, blob)
            if state is not None:
                states.append(state)
            else:
                self._move_row_out(session_id, blob)
                damaged.append((session_id, reason))
        states.sort(key=lambda state: (state.created_at, state.session_id))
        return states, damaged

    def _move_row_out(self, session_id: str, blob: object) -> None:
        # Written and synced before the row is deleted: a crash in between leaves a copy, not none.
        name = quote(session_id, safe="")[:200] + ".registry-row"
        target = _free_name(_damaged_dir(self.state_dir), name, ())
        _write_synced(target, _as_bytes(blob))
        with self._write() as conn:
            conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    def _scrub(self) -> None:
        """Rebuild every page from live rows and empty the WAL (see the module docstring)."""
        with self._direct() as conn:
            conn.execute("VACUUM")
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # only if another connection reads the registry, which nothing should
            raise JidocoderError(f"{self.path}: another connection blocks the checkpoint",
                                 code="store_busy")


class SessionStore(_Database):
    """One session's conversation, active files and file index, ``sessions/<id>.db``.

    Open it only in the session's own process (after fork).
    """

    def __init__(self, state_dir: Path, session_id: str, durability: str = "normal") -> None:
        path = session_db_path(state_dir, session_id)
        _make_private_dir(path.parent)
        super().__init__(path, durability, _SESSION_SCHEMA)

    def load(self) -> tuple[list[Message], list[ActiveFile], dict[str, dict]]:
        """(messages oldest first, active files in insertion order, file index)."""
        with self._direct() as conn:
            messages = conn.execute("SELECT role, content, timestamp FROM messages ORDER BY seq")
            messages = messages.fetchall()
            files = conn.execute("SELECT path, added_at FROM active_files ORDER BY position")
            files = files.fetchall()
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
        """Append, then drop the oldest so that at most ``keep`` (>= 1) messages remain."""
        if not isinstance(keep, int) or keep < 1:
            raise InvalidArgumentError(f"keep must be an int >= 1, got {keep!r}", field="keep")
        with self._write() as conn:
            conn.execute("INSERT INTO messages (role, content, timestamp) VALUES (?, ?, ?)",
                         (message.role, message.content, to_micros(message.timestamp)))
            conn.execute("DELETE FROM messages WHERE seq <= (SELECT seq FROM messages "
                         "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (keep,))

    def clear_messages(self) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM messages")

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

    def put_index(self, path: str, entry: dict) -> None:
        """Insert or replace the file-index entry for ``path``."""
        blob = wire.encode(entry)
        with self._write() as conn:
            conn.execute("INSERT INTO file_index VALUES (?, ?) ON CONFLICT (path) "
                         "DO UPDATE SET entry = excluded.entry", (path, blob))


def _decode_entry(blob: object) -> dict:
    entry = wire.decode(blob)  # type: ignore[arg-type]  # not bytes: TypeError, caught by load
    if not isinstance(entry, dict):
        raise TypeError(f"a file-index entry is a map, not {type(entry).__name__}")
    return entry


def _parse_row(session_id: str, blob: object) -> tuple[SessionState | None, str]:
    """The row's state, or None and the reason it cannot be used."""
    if not isinstance(blob, bytes):  # SQLite columns take any type: someone wrote this by hand
        return None, f"state is a {type(blob).__name__}, not encoded bytes"
    try:
        state = SessionState.deserialize(wire.decode(blob))
    except (JidocoderError, ValueError, TypeError, AttributeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if state.session_id != session_id:
        return None, f"row key {session_id!r} holds the state of {state.session_id!r}"
    return state, ""


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


def _check_header(path: Path) -> None:
    """Refuse a newer or non-SQLite file by reading its header as bytes: nothing is written."""
    try:
        with open(path, "rb") as file:
            header = file.read(_HEADER_SIZE)
    except FileNotFoundError:
        return
    if not header:
        return  # an empty file is an empty database to SQLite
    if len(header) < _HEADER_SIZE or not header.startswith(_SQLITE_MAGIC):
        raise DamagedStoreError(f"{path} is not an SQLite database (bad or short header)")
    _check_version(path, int.from_bytes(header[_USER_VERSION_AT], "big", signed=True))


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
    wanted = set(re.findall(r"CREATE TABLE (\w+)", schema))
    found = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")}
    if not wanted <= found:
        raise DamagedStoreError(f"{path} lacks the tables {sorted(wanted - found)}")


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


@contextmanager
def _translated(path: Path) -> Iterator[None]:
    """sqlite3's corruption errors become DamagedStoreError; others (locked, I/O) pass through."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) not in _DAMAGE_CODES:
            raise
        raise DamagedStoreError(f"{path} is damaged: {exc}", details={"path": str(path)}) from exc


def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


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
    moved_at = datetime.now(timezone.utc).isoformat()
    text = f"{reason}\nmoved from {original} at {moved_at}\n"
    _write_synced(target.with_name(target.name + ".reason"), text.encode())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
