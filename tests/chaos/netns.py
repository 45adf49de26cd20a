"""Worker "hosts" on one machine: a Linux network namespace each, joined to this machine by
a veth pair (10.77.<i>.1 on this side, 10.77.<i>.2 inside), and nothing else: no route out.

PostgreSQL and Redis listen on 127.0.0.1 only, so :mod:`forward` listens on each link's
host-side address and passes the bytes on. A partition is a packet filter inside the
namespace that drops the host's packets to a service's port (an established connection
goes silent, exactly as over a cut cable: no reset, no FIN). Loss is the packet filter
too, dropping that share of the host's packets at random (``-m statistic``); delay is
added by the forwarder to the bytes the host sends, because this kernel has no ``netem``
qdisc (``tc qdisc ... netem`` answers "Specified qdisc kind is unknown"). Everything here
is idempotent: :func:`clean` removes whatever an earlier run (even a killed one) left behind.
"""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

PREFIX = "djqc"
PORTS = {"db": 5432, "redis": 6379}
PARTITION, LOSS = "DJQPART", "DJQLOSS"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass(frozen=True)
class Host:
    index: int

    @property
    def name(self) -> str:
        return f"{PREFIX}-h{self.index}"

    @property
    def outer(self) -> str:  # the veth end in this (the root) namespace
        return f"{PREFIX}{self.index}a"

    @property
    def inner(self) -> str:  # the veth end inside the host's namespace
        return f"{PREFIX}{self.index}b"

    @property
    def gateway(self) -> str:  # where the host reaches PostgreSQL and Redis
        return f"10.77.{self.index}.1"

    @property
    def address(self) -> str:
        return f"10.77.{self.index}.2"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def in_ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(*self.exec_prefix(), *args, check=check)


def create(host: Host) -> None:
    sh("ip", "netns", "add", host.name)
    sh("ip", "link", "add", host.outer, "type", "veth", "peer", "name", host.inner)
    sh("ip", "link", "set", host.inner, "netns", host.name)
    sh("ip", "addr", "add", f"{host.gateway}/24", "dev", host.outer)
    sh("ip", "link", "set", host.outer, "up")
    host.in_ns("ip", "addr", "add", f"{host.address}/24", "dev", host.inner)
    host.in_ns("ip", "link", "set", host.inner, "up")
    host.in_ns("ip", "link", "set", "lo", "up")
    for chain in (PARTITION, LOSS):
        host.in_ns("iptables", "-w", "-N", chain)
        for builtin in ("OUTPUT", "INPUT"):
            host.in_ns("iptables", "-w", "-A", builtin, "-j", chain)


def clean() -> None:
    """Delete every namespace and link of this harness (from this run or an earlier one);
    a namespace's qdiscs and filters go with it."""
    names = sh("ip", "netns", "list", check=False).stdout.split()
    for name in names:
        if name.startswith(f"{PREFIX}-h"):
            sh("ip", "netns", "delete", name, check=False)
    links = sh("ip", "-o", "link", "show", check=False).stdout.splitlines()
    for line in links:
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link.startswith(PREFIX):
                sh("ip", "link", "delete", link, check=False)


def partition(host: Host, service: str) -> None:
    """Drop every packet between ``host`` and ``service`` ("db" or "redis"), both ways."""
    port = str(PORTS[service])
    for direction in ("--dport", "--sport"):
        host.in_ns("iptables", "-w", "-A", PARTITION, "-p", "tcp", direction, port, "-j", "DROP")


def heal(host: Host) -> None:
    host.in_ns("iptables", "-w", "-F", PARTITION, check=False)


def degrade(host: Host, control: Path, delay_ms: int, jitter_ms: int, loss_pct: float) -> None:
    """Delay the host's traffic by ``delay_ms`` ± ``jitter_ms`` (the forwarder reads
    ``control``) and drop ``loss_pct`` % of its packets both ways."""
    set_delay(control, host.gateway, delay_ms, jitter_ms)
    if loss_pct:
        for direction, ports in (("--dport", PORTS.values()), ("--sport", PORTS.values())):
            for port in ports:
                host.in_ns(
                    "iptables", "-w", "-A", LOSS, "-p", "tcp", direction, str(port),
                    "-m", "statistic", "--mode", "random", "--probability",
                    str(loss_pct / 100), "-j", "DROP",
                )  # fmt: skip


def restore(host: Host, control: Path) -> None:
    set_delay(control, host.gateway, 0, 0)
    host.in_ns("iptables", "-w", "-F", LOSS, check=False)


_control_lock = threading.Lock()


def set_delay(control: Path, gateway: str, delay_ms: int, jitter_ms: int) -> None:
    with _control_lock:
        delays = json.loads(control.read_text()) if control.exists() else {}
        delays[gateway] = [delay_ms, jitter_ms]
        partial = control.with_suffix(".tmp")
        partial.write_text(json.dumps(delays))
        partial.replace(control)
