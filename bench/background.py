"""How much CPU other processes on this shared machine used during a phase: the benchmark's noise indicator.

The machine has 2 cores and other people's test runs come and go. A phase during which something else burned a
core is not comparable with one that had the machine to itself, so every phase records the CPU used by processes
outside the benchmark's own process tree (system busy time minus the harness and all its descendants).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuMark:
    """System-wide busy CPU seconds and the benchmark's own CPU seconds at one instant."""

    t: float
    system_busy_s: float
    ours_s: float
    steal_s: float
    harness_s: float


def mark() -> CpuMark:
    """Read the counters now."""
    times = psutil.cpu_times()
    steal = getattr(times, "steal", 0.0)
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0) - steal
    ours = 0.0
    me = psutil.Process(os.getpid())
    own = me.cpu_times()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            cpu = proc.cpu_times()
            ours += cpu.user + cpu.system
    return CpuMark(t=time.monotonic(), system_busy_s=busy, ours_s=ours, steal_s=steal, harness_s=own.user + own.system)


def other_cores(start: CpuMark, end: CpuMark) -> float:
    """Average number of cores used by processes outside the benchmark between two marks."""
    elapsed = end.t - start.t
    if elapsed <= 0:
        return 0.0
    return max(0.0, (end.system_busy_s - start.system_busy_s) - (end.ours_s - start.ours_s)) / elapsed


def harness_cores(start: CpuMark, end: CpuMark) -> float:
    """Average number of cores the harness process itself used between two marks (submitting, sampling)."""
    elapsed = end.t - start.t
    return max(0.0, end.harness_s - start.harness_s) / elapsed if elapsed > 0 else 0.0


def stolen_cores(start: CpuMark, end: CpuMark) -> float:
    """Average number of cores the hypervisor gave to other guests between two marks (CPU steal)."""
    elapsed = end.t - start.t
    return max(0.0, end.steal_s - start.steal_s) / elapsed if elapsed > 0 else 0.0


def wait_for_quiet(max_wait_s: float, threshold_cores: float, window_s: float = 2.0) -> float:
    """Wait (at most `max_wait_s`) until other processes use under `threshold_cores`; return the last reading.

    Phases measured while someone else's test suite hogs a core are not comparable, so each phase starts on as
    quiet a machine as it can get within the bound, and records the noise it had anyway.
    """
    deadline = time.monotonic() + max_wait_s
    announced = False
    while True:
        start = mark()
        time.sleep(window_s)
        end = mark()
        busy = other_cores(start, end) + stolen_cores(start, end)
        if busy < threshold_cores or time.monotonic() >= deadline:
            return busy
        if not announced:
            print(f"   waiting up to {max_wait_s:.0f} s for a quieter machine ({busy:.1f} cores busy)", flush=True)
            announced = True
