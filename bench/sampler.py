"""A background thread that samples worker RSS, Redis memory and the simulator's request count every 0.5 s.

Peak RSS, Redis memory with all jobs in flight, and throughput over time all come from these samples; the
thread does little work per tick so it does not perturb the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.processes import Child, usage_of

#: Seconds between samples.
DEFAULT_PERIOD_S = 0.5


@dataclass(frozen=True)
class Sample:
    """One tick: wall-clock time, worker CPU seconds so far and memory, Redis memory, requests served so far."""

    t: float
    cpu_s: float
    rss_bytes: int
    rss_by_pid: dict[int, int]
    redis_used_memory: int | None
    requests_total: int | None


@dataclass
class Sampler:
    """Collects `Sample`s in a daemon thread between `start()` and `stop()`."""

    workers: Sequence[Child]
    redis_used_memory: Callable[[], int]
    requests_total: Callable[[], int]
    period_s: float = DEFAULT_PERIOD_S
    samples: list[Sample] = field(default_factory=list)
    #: Every worker-tree process seen, pid -> role ("main", "worker", "resource-tracker").
    roles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sampling."""
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample(self) -> Sample:
        """Take one sample now (also used by the harness for the last one before stopping)."""
        usage = usage_of(self.workers)
        self.roles.update(usage.role_by_pid)
        return Sample(
            t=time.time(),
            cpu_s=usage.cpu_s,
            rss_bytes=usage.rss_bytes,
            rss_by_pid=usage.rss_by_pid,
            redis_used_memory=_quietly(self.redis_used_memory),
            requests_total=_quietly(self.requests_total),
        )

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.samples.append(self.sample())
            next_tick += self.period_s
            self._stop.wait(max(0.0, next_tick - time.monotonic()))


def _quietly(read: Callable[[], int]) -> int | None:
    """Read a counter, or None if the server is momentarily unreachable (a missing sample, not a failed run)."""
    try:
        return read()
    except Exception:
        return None
