"""A multi-node Ray cluster on this machine, for the Ray backend's tests and benchmarks.

Only inside a network namespace of its own (``run_in_own_netns``: ``unshare -n``, then loopback
up), where loopback is the only interface: even with ``node_ip_address=127.0.0.1`` Ray binds
some ports to ``*``, which on the machine itself would reach every address it has. The cluster
checks, once up, that nothing listens on an address loopback does not carry
(``listening_addresses``).

Every process of the cluster (GCS, raylets, workers, agents) inherits one environment entry of
this run (``MARK``): at the end, the cluster's processes are found by it and any still alive
after Ray's own shutdown is killed by pid and reported.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import processes_with_env

NETNS_ENV = "JIDOCODER_OWN_NETNS"  # set by run_in_own_netns for the process it starts
MARK = "JIDOCODER_RAY_CLUSTER"


def run_in_own_netns(argv: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``argv`` in a new network namespace with loopback up (needs CAP_SYS_ADMIN: root here)."""
    script = 'ip link set lo up && exec "$@"'
    env = dict(os.environ, **{NETNS_ENV: "1"}, **kwargs.pop("env", {}))
    return subprocess.run(["unshare", "-n", "--", "sh", "-c", script, "sh", *argv], env=env,
                          timeout=timeout, **kwargs)


def in_own_netns() -> bool:
    return os.environ.get(NETNS_ENV) == "1" and [n for _, n in socket.if_nameindex()] == ["lo"]


def listening_addresses() -> set[str]:
    """The local addresses of every listening TCP socket and bound UDP socket in this namespace."""
    found = set()
    for name, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == listening:
                    found.add(_address(fields[1].rsplit(":", 1)[0]))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # /proc/net prints each 32-bit word of the address in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def off_loopback(addresses: set[str]) -> set[str]:
    """Addresses that are not loopback's. A wildcard (0.0.0.0, ::) is counted as loopback's here
    only because loopback is the namespace's one interface (``in_own_netns``)."""
    return {a for a in addresses if not _on_loopback(ipaddress.ip_address(a))}


def _on_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket's
    return address.is_loopback or address.is_unspecified or bool(mapped and mapped.is_loopback)


def descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent = int(f.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.update(children)
        todo += children
    return found


class LocalCluster:
    """A head with no CPU for sessions and ``nodes`` worker nodes, each ``cpus`` CPUs."""

    def __init__(self, nodes: int = 2, cpus: int = 2) -> None:
        if not in_own_netns():
            raise RuntimeError("a test cluster runs only in a network namespace of its own "
                               "(benchmarks.ray_cluster.run_in_own_netns)")
        from ray.cluster_utils import Cluster
        self.cpus = cpus
        self.mark = uuid.uuid4().hex
        os.environ[MARK] = self.mark  # inherited by every process the cluster starts
        self.temp_dir = tempfile.mkdtemp(prefix="jd-ray-", dir="/tmp")
        started = time.monotonic()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False,
            "temp_dir": self.temp_dir})
        self.workers = [self.add_node() for _ in range(nodes)]
        self.cluster.wait_for_nodes()
        self.up_in = time.monotonic() - started
        self.address = self.cluster.address

    def add_node(self):
        return self.cluster.add_node(num_cpus=self.cpus, node_ip_address="127.0.0.1")

    def lose_node(self, node) -> None:
        """The node's machine dies: every process of it, its actors' workers included, is
        SIGKILLed at once (Ray's ``remove_node`` alone kills its own processes, and the workers,
        which the daemon reaches directly, would go on serving for a while)."""
        doomed: set[int] = set()  # its processes, and theirs: the actors' workers are the raylet's
        for infos in node.all_processes.values():
            for info in infos:
                doomed |= {info.process.pid} | descendants(info.process.pid)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def processes(self) -> set[int]:
        return processes_with_env(f"{MARK}={self.mark}".encode()) - {os.getpid()}

    def shutdown(self, timeout: float = 30.0) -> list[int]:
        """Stop every node; the pids that had to be killed after Ray's own shutdown."""
        import ray
        ray.shutdown()
        self.cluster.shutdown()
        deadline = time.monotonic() + timeout
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling interval of a deadline wait
        survivors = sorted(self.processes())
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.environ.pop(MARK, None)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return survivors


if __name__ == "__main__":  # python -m benchmarks.ray_cluster: bring one up, check it, end it
    if not in_own_netns():
        sys.exit(run_in_own_netns([sys.executable, "-m", "benchmarks.ray_cluster"], 120).returncode)
    cluster = LocalCluster()
    print(f"up in {cluster.up_in:.1f} s, {len(cluster.processes())} processes, listening on "
          f"{sorted(listening_addresses())}")
    print("survivors:", cluster.shutdown(), Path(cluster.temp_dir).exists())
