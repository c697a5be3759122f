"""A node lost (its processes SIGKILLed, as a machine that dies) while clients write to the
sessions it held: each of them dies with the node as its reason, starts again on a node that
lives, and what the daemon stored is exactly every message it acknowledged, in order.

Last of the cluster's tests on purpose (file order): for ~12 s after the loss, Ray goes on
counting the lost node as alive and places new actors there, which a test after this one with a
backend of its own (not knowing the node was lost) would meet."""

from __future__ import annotations

import re

from jidocoder.daemon.backend import Answered, Died, Ready
from jidocoder.daemon.store import SessionStore
from tests.ray.helpers import Collector, spec
from tests.support import LONG

SESSIONS = 8
ROUNDS = 12          # messages each session is sent, one round at a time
LOSE_AFTER = 4       # rounds answered before the node goes (one more is in flight then)


def test_losing_a_node_while_writing_loses_nothing_acknowledged(cluster, backend, tmp_path):
    sids = [f"session_ray_loss_{i}" for i in range(SESSIONS)]
    seen = Collector(backend)
    for sid in sids:
        backend.start_session(spec(tmp_path, sid))
    seen.until(lambda s: len(seen.of(Ready)) == SESSIONS, what="every session ready")
    node_of = {ready.session_id: ready.node for ready in seen.of(Ready)}
    # The worker node holding most sessions (SPREAD is best effort: one may hold none).
    doomed_node = max(cluster.workers, key=lambda node: list(node_of.values()).count(node.node_id))
    held = {sid for sid, node in node_of.items() if node == doomed_node.node_id}
    assert held and len(held) < SESSIONS, f"SPREAD put sessions on {set(node_of.values())}"

    acknowledged: dict[str, list[str]] = {sid: [] for sid in sids}
    sent = {sid: 0 for sid in sids}
    restarted: list[str] = []

    def send_next(sid: str) -> None:
        sent[sid] += 1
        backend.send(sid, {"id": sent[sid], "op": "send_message",
                           "args": {"role": "user", "content": f"{sid} #{sent[sid]}"}})

    story: dict[str, list[str]] = {sid: [] for sid in sids}  # what each went through, for a failure

    def take(happenings) -> None:
        for happening in happenings:
            what = getattr(happening, "node", "")[:6] + getattr(happening, "reason", "")[:40]
            story[happening.session_id].append(f"{type(happening).__name__} {sent[happening.session_id]} {what}")
            if isinstance(happening, Answered):
                assert "result" in happening.reply, happening.reply
                acknowledged[happening.session_id].append(f"{happening.session_id} #{happening.reply['id']}")
                if sent[happening.session_id] < ROUNDS:
                    send_next(happening.session_id)
            elif isinstance(happening, Died):
                # Ray says the node died, or (first, when the daemon's connection to the actor
                # broke before the cluster noticed) that the actor was unreachable.
                assert re.search("node has died|actor unreachable", happening.reason), happening.reason
                restarted.append(happening.session_id)
                sent[happening.session_id] = len(acknowledged[happening.session_id])
                backend.start_session(spec(tmp_path, happening.session_id))  # our restart
            elif isinstance(happening, Ready) and happening.session_id in restarted:
                assert happening.node != doomed_node.node_id
                if sent[happening.session_id] < ROUNDS:
                    send_next(happening.session_id)

    for sid in sids:
        send_next(sid)
    progress = 0

    def written(until_each: int):
        def check(_):
            nonlocal progress
            take(seen.seen[progress:])
            progress = len(seen.seen)
            return all(len(acks) >= until_each for acks in acknowledged.values())
        return check

    seen.until(written(LOSE_AFTER), what=f"{LOSE_AFTER} messages each")
    cluster.lose_node(doomed_node)  # a round is in flight on it now
    seen.until(written(ROUNDS), timeout=2 * LONG, what="every message, after the node loss")
    # Each died, and ended on a node that lives. Mostly once: its restart is placed away from
    # the lost node (ray_backend.lost_nodes); but Ray 2.60 now and then still placed a first
    # restart there before it noticed the node was gone, and it died there a second time.
    assert set(restarted) == held, story

    for sid in sids:
        backend.stop_session(sid)
    seen.until(lambda s: len([d for d in seen.of(Died) if d.stopped]) == SESSIONS, what="all stopped")
    for sid in sids:
        assert acknowledged[sid] == [f"{sid} #{n}" for n in range(1, ROUNDS + 1)], story[sid]
        store = SessionStore(tmp_path, sid)
        try:
            assert [m.content for m in store.load()[0]] == acknowledged[sid]
        finally:
            store.close()
