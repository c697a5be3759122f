"""``jidocoder session ...`` and ``sessions``: everything the Client does to sessions, from a shell.

``session list`` reads each session's file count and idle time from the shared-memory table
(``tableview``): no call reaches any session's process, so a hung session slows nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..errors import InvalidArgumentError, JidocoderError
from .common import EXIT_OK, Progress, add_command, ago, connect, parse_json_object, print_json, socket_of
from .tableview import read_table


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    session = commands.add_parser("session", help="create, list, show, message, terminate or recover sessions",
                                  description="Everything the Client does to sessions, from the shell.")
    actions = session.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, summary, extra in (
            ("create", cmd_create, "create a session and print its id", _create_args),
            ("list", cmd_list, "one row per session: id, status, pid, restarts, messages, files, idle for", None),
            ("show", cmd_show, "a session's info, active files and file index", _id_arg),
            ("send", cmd_send, "store a message (TEXT '-' reads stdin)", _send_args),
            ("history", cmd_history, "a session's messages, oldest first", _history_args),
            ("terminate", cmd_terminate, "terminate sessions and release everything they hold", _ids_arg),
            ("recover", cmd_recover, "bring back a session given up after crashes", _id_arg),
            ("failed", cmd_failed, "sessions given up after crashes, their data kept", None)):
        sub = add_command(actions, name, run, summary, summary[0].upper() + summary[1:] + ".",
                          json_output=None if name in ("send", "terminate", "recover") else "JSON")
        if extra is not None:
            extra(sub)
    add_command(commands, "sessions", cmd_list, "the same as `session list`",
                "One row per session: id, status, pid, restarts, messages, files, idle for.",
                json_output="a JSON array")


def _id_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_id", metavar="ID", help="a session id (session_...)")


def _ids_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session_ids", metavar="ID", nargs="+", help="session ids")


def _create_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metadata", metavar="JSON", help="a JSON object kept with the session")
    parser.add_argument("--config", metavar="JSON", help="SessionConfig as a JSON object, e.g. "
                        "'{\"max_history\": 50, \"persistence_enabled\": false}'")
    parser.add_argument("--llm-config", dest="llm_config", metavar="JSON", help="a JSON object")


def _send_args(parser: argparse.ArgumentParser) -> None:
    _id_arg(parser)
    parser.add_argument("role", metavar="ROLE", help="user, assistant, system or tool")
    parser.add_argument("text", metavar="TEXT", help="the message; '-' reads it from stdin")


def _history_args(parser: argparse.ArgumentParser) -> None:
    _id_arg(parser)
    parser.add_argument("--offset", type=int, default=0, metavar="N", help="skip the first N messages")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N messages")


# -- the commands --------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    options = {name: parse_json_object(getattr(args, name), "--" + name.replace("_", "-"))
               for name in ("metadata", "config", "llm_config")}
    with connect(args) as client:
        session_id = client.create_session(**options)
    print_json({"session_id": session_id}) if args.json else print(session_id)
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        sessions = client.list_sessions()
    slots = {slot.session_id: slot for slot in read_table(socket_of(args))}
    now = time.monotonic()
    rows = [row_of(info, slots.get(info.session_id), now) for info in sessions]
    if args.json:
        print_json(rows)
        return EXIT_OK
    print(f"{'ID':<44} {'STATUS':<12} {'PID':>7} {'RESTARTS':>8} {'MESSAGES':>8} {'FILES':>5} IDLE FOR")
    for row in rows:
        print(f"{row['session_id']:<44} {row['status']:<12} {row['pid'] or '-':>7} {row['restarts']:>8} "
              f"{row['conversation_count']:>8} {_or_dash(row['files']):>5} {ago(row['idle_s'])}")
    return EXIT_OK


def row_of(info: Any, slot: Any, now: float) -> dict[str, Any]:
    """A session's listed info plus what only the table holds: its active files, its idle time."""
    row: dict[str, Any] = info.model_dump(mode="json")
    row["files"] = slot.file_count if slot is not None else None
    row["idle_s"] = round(now - slot.last_activity, 3) if slot is not None and slot.last_activity else None
    return row


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        info = client.get_session_info(args.session_id)
        files = client.get_active_files(args.session_id)
        index = client.get_file_index(args.session_id)
    shown: dict[str, Any] = {"info": info.model_dump(mode="json"),
                             "active_files": [f.model_dump(mode="json") for f in files], "file_index": index}
    if args.json:
        print_json(shown)
        return EXIT_OK
    for key, value in shown["info"].items():
        print(f"{key + ':':<20} {value}")
    print(f"active files ({len(files)}):")
    for f in shown["active_files"]:
        print(f"  {f['added_at']}  {f['path']}")
    print(f"file index ({len(index)}):")
    for path, entry in index.items():
        print(f"  {path}  {entry}")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    # `echo hi | jidocoder session send ID user -` stores "hi": the one newline echo adds goes
    text = sys.stdin.read().removesuffix("\n") if args.text == "-" else args.text
    with connect(args) as client:
        client.send_message(args.session_id, args.role, text)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    with connect(args) as client:
        messages = client.get_conversation_history(args.session_id, offset=args.offset, limit=args.limit)
    if args.json:
        print_json([m.model_dump(mode="json") for m in messages])
        return EXIT_OK
    for m in messages:
        print(f"{m.timestamp.isoformat()} {m.role}: {m.content}")
    return EXIT_OK


def cmd_terminate(args: argparse.Namespace) -> int:
    """Each id in turn; one that fails is reported and the others still go. Exit: the first
    failure's code."""
    first_failure = EXIT_OK
    progress = Progress("terminating", len(args.session_ids))
    with connect(args) as client:
        for done, session_id in enumerate(args.session_ids):
            progress.update(done)
            try:
                client.terminate_session(session_id)
            except (InvalidArgumentError, JidocoderError) as exc:
                if exc.exit_code == 3:
                    raise
                progress.done()
                print(f"jidocoder: {session_id}: {exc.message}", file=sys.stderr)
                first_failure = first_failure or exc.exit_code
                continue
            progress.done()
            print(f"terminated {session_id}")
    return first_failure


def cmd_recover(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.recover_session(args.session_id)
    print(f"recovered {args.session_id}")
    return EXIT_OK


def cmd_failed(args: argparse.Namespace) -> int:
    with connect(args) as client:
        failed = client.list_failed_sessions()
    if args.json:
        print_json([info.model_dump(mode="json") for info in failed])
        return EXIT_OK
    print(f"{'ID':<44} {'SINCE':<26} WHY")
    for info in failed:
        print(f"{info.session_id:<44} {info.updated_at.isoformat(timespec='seconds'):<26} {info.error}")
    return EXIT_OK
