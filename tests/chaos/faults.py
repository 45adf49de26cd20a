"""The fault schedule: a pure function of the seed, the chaos window and the hosts, so the
same seed gives the same faults at the same offsets (what each fault then meets depends on
timing, which no seed fixes)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

#: Kinds whose window may make a job run again (the lease of a run it hit expires).
RERUN_KINDS = {"kill", "stop", "partition-db", "partition-both", "netem", "pg-restart"}
HOST_KINDS = (
    "kill",
    "stop",
    "partition-db",
    "partition-redis",
    "partition-both",
    "netem",
    "skew",
    "deploy",
)
SERVICE_KINDS = ("redis-restart", "pg-restart")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the chaos window opens
    kind: str
    host: int  # -1 for the services
    duration: float
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        where = "services" if self.host < 0 else f"h{self.host}"
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return (
            f"t+{self.at:6.1f}s {self.kind:<15} {where:<8} {self.duration:5.1f}s {extra}".rstrip()
        )


def _fault(rng: random.Random, kind: str, at: float, hosts: int, lease: float) -> Fault:
    host = rng.randrange(hosts) if kind in HOST_KINDS else -1
    params: dict[str, Any] = {}
    if kind == "kill":
        duration = rng.uniform(0.5, 4.0)  # until the host's worker is started again
    elif kind == "stop":
        duration = rng.uniform(1.5 * lease, 3.0 * lease)  # paused past its lease
    elif kind.startswith("partition"):
        duration = rng.uniform(4.0, 20.0)
    elif kind == "netem":
        duration = rng.uniform(8.0, 30.0)
        params = {
            "delay_ms": rng.choice((20, 80, 200, 500)),
            "jitter_ms": rng.choice((0, 10, 50)),
            "loss_pct": rng.choice((0.0, 1.0, 5.0, 15.0)),
        }
    elif kind == "skew":
        duration = rng.uniform(20.0, 60.0)
        params = {"seconds": rng.choice((-120, 120))}
    elif kind == "deploy":
        duration = rng.uniform(15.0, 40.0)
    elif kind == "redis-restart":
        duration = rng.uniform(1.0, 4.0)
    else:  # pg-restart
        duration = rng.uniform(0.5, 2.0)
    return Fault(round(at, 2), kind, host, round(duration, 2), params)


def schedule(
    seed: int, window: float, hosts: int, lease: float, *, services: bool = True
) -> list[Fault]:
    """Every host kind at least once, the service restarts once per ~5 minutes (at least
    once), then more host faults, about one every ``window / 12`` seconds, so that they
    overlap. All start in the first 85% of the window: the last ones end inside it."""
    rng = random.Random(seed)
    latest = window * 0.85
    kinds = list(HOST_KINDS)
    if services:
        restarts = max(1, round(window / 300))
        kinds += [kind for kind in SERVICE_KINDS for _ in range(restarts)]
    extra = max(0, int(window / 12) - len(kinds))
    kinds += [rng.choice(HOST_KINDS) for _ in range(extra)]
    faults = [_fault(rng, kind, rng.uniform(3.0, latest), hosts, lease) for kind in kinds]
    return sorted(faults, key=lambda fault: (fault.at, fault.kind))
