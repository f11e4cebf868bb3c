"""The Cekura simulator in its own process, and the harness's view of what it recorded.

The simulator runs outside the harness so its CPU is not counted as the worker's and it does not share a GIL with
the harness's sampling. It is the single source of truth for poll times: every figure about polls (rate,
lateness, calls per job, terminal time) comes from what it recorded, so all pollers are measured the same way.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.processes import Child, spawn
from tests.support import free_port, wait_for_line

#: The module whose `main()` runs the simulator's CLI.
DEFAULT_SIMULATOR_MODULE = "simulator"
#: The API key the simulator accepts and the pollers send.
API_KEY = "sim-key"
#: Seconds to wait for the simulator's "listening on" line.
DEFAULT_START_TIMEOUT_S = 20.0

_LISTENING = re.compile(r"listening on (http://\S+)")


@dataclass(frozen=True)
class JobPolls:
    """What the simulator recorded for one job: the time of each progress GET and when it turned terminal."""

    progress_id: str
    times: list[float]
    terminal_at: float | None


@dataclass
class Simulator:
    """A running simulator process and an HTTP client for its `/_sim/` introspection endpoints."""

    child: Child
    url: str
    http: httpx.Client

    def stats(self) -> dict[str, Any]:
        """GET /_sim/stats: request counters."""
        response = self.http.get("/_sim/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def polls(self) -> list[JobPolls]:
        """GET /_sim/polls: per-job progress GET times and terminal time."""
        response = self.http.get("/_sim/polls", timeout=120)
        response.raise_for_status()
        return [
            JobPolls(progress_id=pid, times=list(rec.get("times") or []), terminal_at=rec.get("terminal_at"))
            for pid, rec in response.json().items()
        ]

    def requests_total(self) -> int:
        """Total API requests served (start + progress calls), from /_sim/stats."""
        return requests_total(self.stats())

    def stop(self) -> None:
        """Close the client and stop the process."""
        self.http.close()
        self.child.stop(grace_s=2.0)


def requests_total(stats: dict[str, Any]) -> int:
    """Pull the total request count out of /_sim/stats, whatever its exact shape."""
    if "requests_total" in stats:
        return int(stats["requests_total"])
    requests = stats.get("requests")
    if isinstance(requests, dict):
        return int(sum(v for v in requests.values() if isinstance(v, int)))
    if isinstance(requests, int):
        return requests
    raise KeyError(f"no request total in /_sim/stats: {sorted(stats)}")


def start_simulator(
    log_dir: Path,
    name: str,
    polls_to_complete: int,
    env: dict[str, str],
    module: str = DEFAULT_SIMULATOR_MODULE,
) -> Simulator:
    """Start the simulator on a free loopback port with every job terminal on its K-th poll; wait until it listens."""
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        f"from {module} import main; main()",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--polls",
        str(polls_to_complete),
        "--latency-ms",
        "0",
    ]
    child = spawn(name, argv, env=env, log_dir=log_dir)
    match = wait_for_line(child.popen, child.log_path, _LISTENING, DEFAULT_START_TIMEOUT_S)
    if match is None:
        child.stop()
        raise RuntimeError(f"simulator did not report 'listening on http://...':\n{child.log_tail()}")
    url = match.group(1).rstrip("/")
    http = httpx.Client(base_url=url, headers={"X-CEKURA-API-KEY": API_KEY}, timeout=30)
    return Simulator(child=child, url=url, http=http)
