"""The direct-channel rows (issue 16): a session's calls on its channel, against one hop.

Floors, from the run's floor programs: the one-hop echo (client → worker → back on a socket,
the same framing and codec, no logic) and one sqlite INSERT + COMMIT at ``normal``, the
default durability. A ``send_message`` does both at least once, so its floor is their sum
(sample by sample, both sorted); a read-only call (``get_active_files``) is one hop. The same
calls sent relayed (through the daemon, on the Client's daemon connection) are shown beside
them for information: what the channel saves.

The fds rows: N sessions, each called by 8 Clients (a channel each), read from /proc: the
daemon's (it keeps no channel), one session process's (one per client that calls it) and this
process's (the 8 Clients' ends).
"""

from __future__ import annotations

import os

from jidocoder import Client

from .common import percentile
from .drivers import CONTENT, Context, latency_rows, timed
from .report import Row

CLIENTS = 8


def measure_direct(ctx: Context) -> list[Row]:
    f = ctx.floors
    count = int(ctx.counts["rtt"])
    one_hop_commit = [a + b for a, b in zip(sorted(f.samples["one_hop"]),
                                            sorted(f.samples["sqlite_normal"]), strict=False)]
    with Client(ctx.daemon.socket) as client:
        sid = client.create_session()
        for _ in range(200):  # warm up: the channel is opened by the first call
            client.send_message(sid, "user", CONTENT)
            client.get_active_files(sid)
        send = [timed(lambda: client.send_message(sid, "user", CONTENT)) for _ in range(count)]
        read = [timed(lambda: client.get_active_files(sid)) for _ in range(count)]
        relayed = relayed_samples(client, sid, count)
        client.terminate_session(sid)
    ms = 1000.0
    floor50, floor99 = percentile(one_hop_commit, 50) * ms, percentile(one_hop_commit, 99) * ms
    rows = latency_rows("direct: send_message round trip", send, floor50, floor99,
                        "one hop + one sqlite commit (normal)", 2.0, 2.5)
    rows += latency_rows("direct: get_active_files round trip", read, f.p50("one_hop"),
                         f.p99("one_hop"), "one hop", 1.5, None)
    p50 = percentile(relayed, 50)
    rows.append(Row("relayed: send_message round trip p50", "ms", p50, floor50, None, p50=p50,
                    p99=percentile(relayed, 99), floor_name="one hop + one sqlite commit (normal)",
                    note="for information: the same call through the daemon"))
    sessions = int(ctx.counts["channel_sessions"])
    ctx.log(f"  fds with {sessions} sessions x {CLIENTS} clients ...")
    return rows + fd_rows(ctx, sessions)


def relayed_samples(client: Client, sid: str, count: int) -> list[float]:
    """The same call sent to the daemon, which relays it on the session's link."""
    conn = client._conn  # our own client's relayed path, for comparison
    args = {"session_id": sid, "role": "user", "content": CONTENT}
    for _ in range(100):
        conn.call("send_message", args)
    return [timed(lambda: conn.call("send_message", args)) for _ in range(count)]


def fd_rows(ctx: Context, sessions: int) -> list[Row]:
    daemon_pid = ctx.daemon.proc.pid
    before = fd_count(daemon_pid)
    clients = [Client(ctx.daemon.socket, timeout=60) for _ in range(CLIENTS)]
    try:
        ids = [clients[0].create_session(config={"persistence_enabled": False})
               for _ in range(sessions)]
        with_sessions = fd_count(daemon_pid)
        mine = fd_count(os.getpid())
        for client in clients:
            for sid in ids:
                client.get_active_files(sid)
        daemon_fds, session_fds = fd_count(daemon_pid), fd_count(clients[0].get_session_pid(ids[0]))
        client_fds = fd_count(os.getpid()) - mine
        for sid in ids:
            clients[0].terminate_session(sid)
    finally:
        for client in clients:
            client.close()
    label = f"{sessions} sessions x {CLIENTS} clients"
    return [
        Row(f"fds: daemon, {label}", "fds", daemon_fds, with_sessions, 1.0,
            floor_name=f"the daemon with those sessions, before any channel (none: {before})",
            note="it keeps no channel"),
        Row(f"fds: one session process, {label}", "fds", session_fds, session_fds - CLIENTS, None,
            floor_name="the same without its channels", note=f"one per client: {CLIENTS}"),
        Row(f"fds: the clients' process, {label}", "fds", client_fds, sessions * CLIENTS, 1.0,
            floor_name="one channel per client and session",
            note="closed when unused for CHANNEL_IDLE_SECONDS"),
    ]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
