"""``jidocoder watch [ID]``: events as they come, one line each (or JSON lines), until ^C.

A line: time, type, session, ``#seq``, and a short payload a person reads at a glance
(``initializing → active``, ``user: hello…``, ``killed by SIGKILL, will restart``).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..client import Client
    from ..models import Event
from .common import EXIT_OK, add_command, connect, print_json

SHORT = 60  # characters of content or payload on a line


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = add_command(commands, "watch", cmd_watch, "follow events (all sessions, or one), one line each, until ^C",
                        "Follow events as they come: all sessions' lifecycle events, or everything about "
                        "one session (ID), one line each, until ^C.", json_output="one JSON object a line")
    watch.add_argument("session_id", metavar="ID", nargs="?",
                       help="one session's events (default: every session's lifecycle)")
    watch.add_argument("--since", type=int, metavar="SEQ",
                       help="first every held event after SEQ (of the topic watched), then the live ones")


def cmd_watch(args: argparse.Namespace) -> int:
    with connect(args) as client:
        subscribe(client, args.session_id, args.since)
        while True:
            event = client.next_event(None)
            if event is None:
                continue
            if args.json:
                print_json(event.model_dump(mode="json"))
            else:
                print(line_of(event), flush=True)
    return EXIT_OK


def subscribe(client: Client, session_id: str | None, since: int | None) -> None:
    """All sessions' lifecycle or one session's events; with ``since``, every held event after
    it first (docs/api.md §10: or one ``events_gap`` when they are no longer held)."""
    if session_id is None:
        client.subscribe_to_all_sessions(since=since)
    else:
        client.subscribe_to_session(session_id, since=since)


def line_of(event: Event) -> str:
    when = event.timestamp.strftime("%H:%M:%S.%f")[:-3]
    return f"{when} {event.type:<20} {event.session_id or '-'} #{event.seq} {summary(event.type, event.payload)}"


def summary(kind: str, p: dict[str, Any]) -> str:
    if kind == "session_status":
        return f"{p.get('previous_status')} → {p.get('status')}"
    if kind == "conversation_added":
        return f"{p.get('role')}: {shorten(str(p.get('content', '')))}"
    if kind == "session_crashed":
        then = "will restart" if p.get("will_restart") else "given up"
        return f"{p.get('reason')}, {then} (restarts so far {p.get('restarts')})"
    if kind == "session_restarted":
        return f"pid {p.get('pid')}, restarts {p.get('restarts')}"
    if kind == "session_terminated":
        return str(p.get("reason"))
    if "file_path" in p:
        return str(p["file_path"])
    rest = {k: v for k, v in p.items() if k != "session_id"}
    return shorten(json.dumps(rest, default=str, ensure_ascii=False)) if rest else ""


def shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHORT else text[:SHORT - 1] + "…"
