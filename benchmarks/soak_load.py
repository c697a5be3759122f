"""The soak's daemon, its writers and the ledger they keep (``scripts/soak``; docs/api.md §6).

A writer thread owns one Client and appends numbered messages (``w3-s1-000123``: writer 3,
session 1, its 123rd message to that session) round-robin to every session. Each attempt ends
in one of three ledgers:

- **acknowledged**: ``send_message`` returned. It must be in the history exactly once, after
  every earlier message of the same writer to the same session.
- **uncertain**: the call may have been applied: ``SessionCrashedError`` (the session process
  died with the call inside it), a lost connection (the daemon died) or a timeout. It is *not*
  retried, because the contract does not retry it for us either (it may be what crashed the
  session); the next attempt takes the next number. It may be in the history at most once, in
  its place.
- **refused**: the daemon answered with an error that means nothing was applied
  (``SessionNotFoundError``, ``InvalidArgumentError``, ``LimitExceededError``). It must not be
  in the history at all. Refusals are counted by code; none is expected.

A writer never makes a new Client by hand: its Client reconnects by itself when the daemon comes
back (docs/api.md §10) and resends the call that was waiting, applied at most once, so a
daemon kill costs no acknowledgement. Only a Client that gave up for good (no daemon back within
its timeout) is replaced, and counted (``recreated``: expected 0).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TypeVar
from collections.abc import Callable

from benchmarks.common import alive, processes_with_env
from jidocoder import Client
from jidocoder.errors import (DaemonUnavailableError, InvalidArgumentError, JidocoderError,
                              LimitExceededError, ProtocolError, SessionNotFoundError)

T = TypeVar("T")
REFUSED = (SessionNotFoundError, InvalidArgumentError, LimitExceededError)
RECONNECT_DEADLINE = 60.0  # a daemon restart must let a writer in again within this
POLL = 0.005               # interval of deadline polls (not synchronisation: each has a deadline)


def poll_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``predicate()`` once it is truthy; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


# -- processes ----------------------------------------------------------------------------------
class SoakDaemon:
    """One daemon started exactly as the tests start it (``python -m jidocoder.cli daemon start
    --foreground``, its own process group), on a socket and state dir that outlive it, so that a
    SIGKILLed daemon can be started again on the same state dir."""

    def __init__(self, root: str, **settings: object) -> None:
        self.root = root
        self.socket = os.path.join(root, "d.sock")
        self.state_dir = os.path.join(root, "state")
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.marker = f"JIDOCODER_SOCKET={self.socket}".encode()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOCODER_")}
        env.update(JIDOCODER_SOCKET=self.socket, JIDOCODER_STATE_DIR=self.state_dir)
        return env

    def start(self, timeout: float = 60.0) -> float:
        """Start and return the seconds until it accepted a Client."""
        flags = []
        for name, value in self.settings.items():
            flags += ["--" + name.replace("_", "-"), str(value)]
        began = time.monotonic()
        with open(os.path.join(self.root, "stderr"), "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jidocoder.cli", "daemon", "start", "--foreground", *flags],
                env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True)
        poll_until(self._accepting, timeout, "the daemon to accept a Client")
        return time.monotonic() - began

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.proc.returncode}; see {self.root}/stderr")
        try:
            Client(self.socket, timeout=5.0).close()
        except JidocoderError:
            return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def processes(self) -> set[int]:
        """This daemon's processes and every process it forked, live now (dead daemons' too)."""
        return processes_with_env(self.marker)

    def kill(self, within: float = 1.0) -> tuple[list[int], float]:
        """SIGKILL the daemon only, reap it, and wait ``within`` s for its processes to exit by
        themselves (docs/api.md §6). Returns the ones still alive then (the orphans; they are
        SIGKILLed by pid afterwards so the soak can go on) and the seconds the last one took."""
        killed_at = time.monotonic()
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait()
        try:
            poll_until(lambda: not self.processes(), within, "the session processes to exit")
        except TimeoutError:
            pass
        took = time.monotonic() - killed_at
        orphans = sorted(self.processes())
        self.kill_leftovers(orphans)
        return orphans, took

    def kill_leftovers(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        poll_until(lambda: not any(alive(p) for p in pids), 10.0, "leftover processes to die")

    def stop(self, timeout: float = 30.0) -> int | None:
        """``jidocoder daemon stop``; then, whatever happened, SIGKILL by pid the daemon and every
        process of it still alive. Returns the daemon's exit code (None if it was not running)."""
        if self.proc is None:
            return None
        code = None
        try:
            if self.proc.poll() is None:
                subprocess.run([sys.executable, "-m", "jidocoder.cli", "daemon", "stop"],
                               env=self.env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=timeout)
                code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.kill_leftovers(sorted(self.processes()))
        return code


# -- writers ------------------------------------------------------------------------------------
@dataclass
class Ledger:
    """What one writer sent to one session, by number: acknowledged, uncertain, refused."""

    acked: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


def content_of(writer: int, session: int, n: int) -> str:
    return f"w{writer}-s{session}-{n:06d}"


class Writer(threading.Thread):
    """Appends numbered messages round-robin to ``sessions`` until ``stop`` is set."""

    def __init__(self, index: int, socket_path: str, sessions: list[str], stop: threading.Event,
                 seed: int) -> None:
        super().__init__(name=f"soak-writer-{index}", daemon=True)
        self.index = index
        self.socket_path = socket_path
        self.sessions = sessions
        self.stop = stop
        self.rng = random.Random(seed)
        self.ledgers = [Ledger() for _ in sessions]
        self.errors: Counter[str] = Counter()  # "<code>" of every uncertain or refused call
        self.recreated = 0  # Clients replaced by hand after one gave up for good: expected 0
        self.acked_total = 0  # read by the killers to pace themselves (int writes are atomic)
        self.failure: str | None = None
        self.client: Client | None = None

    def run(self) -> None:
        try:
            self.client = self._connect()
            counters = [0] * len(self.sessions)
            order = list(range(len(self.sessions)))
            while not self.stop.is_set() and self.client is not None:
                self.rng.shuffle(order)
                for s in order:
                    counters[s] += 1
                    self._send(s, counters[s])
                    if self.stop.is_set() or self.client is None:
                        break
        except Exception as exc:  # noqa: BLE001 - reported by the soak, not lost in a thread
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            if self.client is not None:
                self.client.close()

    def _send(self, s: int, n: int) -> None:
        ledger = self.ledgers[s]
        try:
            self.client.send_message(self.sessions[s], "user", content_of(self.index, s, n))
        except REFUSED as exc:
            ledger.refused.append(n)
            self.errors[exc.code] += 1
        except JidocoderError as exc:  # crashed session, lost daemon, timeout: maybe applied
            ledger.uncertain.append(n)
            self.errors[exc.code] += 1
            if isinstance(exc, (DaemonUnavailableError, ProtocolError)) and \
                    self.client._conn.state() == "lost":
                self.client.close()
                self.client = self._connect()
                self.recreated += 1
        else:
            ledger.acked.append(n)
            self.acked_total += 1

    def _connect(self) -> Client | None:
        """A new Client once the daemon answers; None if the soak ended first."""
        deadline = time.monotonic() + RECONNECT_DEADLINE
        while not self.stop.is_set():
            try:
                return Client(self.socket_path, timeout=10.0)
            except DaemonUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL)
        return None


def start_writers(count: int, socket_path: str, sessions: list[str], stop: threading.Event,
                  seed: int) -> list[Writer]:
    writers = [Writer(i, socket_path, sessions, stop, seed * 1000 + i) for i in range(count)]
    for writer in writers:
        writer.start()
    return writers


def acked_total(writers: list[Writer]) -> int:
    return sum(w.acked_total for w in writers)


def wait_for_progress(writers: list[Writer], more: int, timeout: float) -> None:
    """Until the writers together have ``more`` acknowledgements than now (a pace for killers:
    each kill lands among writes, never into an idle system)."""
    target = acked_total(writers) + more
    poll_until(lambda: acked_total(writers) >= target or any(w.failure for w in writers),
               timeout, f"{more} more acknowledged messages")


# -- the check ----------------------------------------------------------------------------------
@dataclass
class Verdict:
    acknowledged: int = 0
    uncertain: int = 0
    uncertain_applied: int = 0
    refused: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    refused_but_applied: int = 0
    foreign: int = 0           # messages in a history that no writer sent
    unreadable_sessions: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)


def check_histories(histories: dict[int, list[str] | None], writers: list[Writer]) -> Verdict:
    """Every acknowledged message exactly once and in its writer's order; uncertain ones at
    most once; refused ones never; nothing no writer sent. ``histories[s]`` is None when the
    session's history could not be read."""
    verdict = Verdict()
    for s, history in histories.items():
        if history is None:
            verdict.unreadable_sessions += 1
            verdict.note(f"session s{s}: history could not be read")
            continue
        counts = Counter(history)
        positions: dict[int, list[int]] = defaultdict(list)  # writer -> numbers in history order
        for content in history:
            writer, number = _parse(content, s)
            if writer is None or writer >= len(writers):
                verdict.foreign += 1
                verdict.note(f"session s{s}: {content!r} was sent by no writer")
                continue
            positions[writer].append(number)
        for writer in writers:
            _check_one(verdict, s, writer, counts, positions[writer.index])
    return verdict


def _parse(content: str, session: int) -> tuple[int | None, int]:
    try:
        w, s, n = content.split("-")
        if w[0] != "w" or s != f"s{session}":
            return None, 0
        return int(w[1:]), int(n)
    except (ValueError, IndexError):
        return None, 0


def _check_one(verdict: Verdict, s: int, writer: Writer, counts: Counter, seen: list[int]) -> None:
    ledger = writer.ledgers[s]
    tag = f"w{writer.index}-s{s}"
    verdict.acknowledged += len(ledger.acked)
    verdict.uncertain += len(ledger.uncertain)
    verdict.refused += len(ledger.refused)
    for n in ledger.acked:
        copies = counts[content_of(writer.index, s, n)]
        if copies == 0:
            verdict.lost += 1
            verdict.note(f"{tag}: acknowledged #{n} is missing")
        elif copies > 1:
            verdict.duplicated += 1
            verdict.note(f"{tag}: acknowledged #{n} is there {copies} times")
    for n in ledger.uncertain:
        copies = counts[content_of(writer.index, s, n)]
        verdict.uncertain_applied += copies > 0
        if copies > 1:
            verdict.duplicated += 1
            verdict.note(f"{tag}: uncertain #{n} is there {copies} times")
    for n in ledger.refused:
        if counts[content_of(writer.index, s, n)]:
            verdict.refused_but_applied += 1
            verdict.note(f"{tag}: refused #{n} was applied")
    first_copies = list(dict.fromkeys(seen))  # a duplicate is counted above, not as disorder
    inversions = [(a, b) for a, b in itertools.pairwise(first_copies) if b < a]
    verdict.out_of_order += len(inversions)
    for a, b in inversions[:3]:
        verdict.note(f"{tag}: #{b} follows #{a} in the history")
