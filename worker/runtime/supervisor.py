"""`cekura-worker run`: starts N worker processes, restarts one that dies, and stops them all on SIGTERM.

Processes are spawned (not forked) so each builds its own Redis connections and Prometheus multiprocess
files. When `CEKURA_METRICS_PORT` is set the supervisor serves `/metrics`, merged across the processes.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import IO, Any

import structlog

from config.settings import Settings

log = structlog.get_logger(__name__)

#: Pause before restarting a worker process that died, so a crash loop doesn't spin.
DEFAULT_RESTART_DELAY_S = 1.0

#: Extra seconds past CEKURA_SHUTDOWN_TIMEOUT_S before stragglers are killed.
DEFAULT_KILL_GRACE_S = 3.0

#: A worker process that dies within this many seconds of starting counts as a failed start ...
DEFAULT_FAILED_START_S = 10.0

#: ... and after this many failed starts in a row the supervisor gives up (exit 1) instead of crash-looping.
DEFAULT_MAX_FAILED_STARTS = 5


def _child(threads: int) -> None:
    from worker.runtime.process import main

    main(threads)


def run(settings: Settings, *, processes: int, threads: int) -> int:
    """Supervise `processes` worker processes with `threads` threads each until SIGTERM/SIGINT.

    Returns 0, or 1 when worker processes keep dying right after they start.
    """
    if settings.cekura_metrics_port is not None:
        # Must be in the environment before any process imports prometheus_client.
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="cekura-metrics-"))
        from worker.ops.exposition import serve_metrics

        serve_metrics(settings)

    context = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:
            log.info("supervisor_stopping", signal=signal.Signals(signum).name)
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def spawn(slot: int) -> BaseProcess:
        process = context.Process(target=_child, args=(threads,), name=f"cekura-worker-{slot}", daemon=False)
        process.start()
        log.info("worker_process_started", slot=slot, pid=process.pid)
        return process

    children = [spawn(slot) for slot in range(processes)]
    started = [time.monotonic()] * processes
    failed_starts = 0
    exit_code = 0
    while not stopping:
        time.sleep(0.2)
        for slot, process in enumerate(children):
            if not process.is_alive() and not stopping:
                log.error("worker_process_died", slot=slot, pid=process.pid, exitcode=process.exitcode)
                _mark_dead(process.pid)
                failed_starts = failed_starts + 1 if time.monotonic() - started[slot] < DEFAULT_FAILED_START_S else 0
                if failed_starts >= DEFAULT_MAX_FAILED_STARTS:
                    log.critical("supervisor_giving_up", failed_starts=failed_starts, hint="see the errors above")
                    stopping, exit_code = True, 1
                    break
                time.sleep(DEFAULT_RESTART_DELAY_S)
                if not stopping:
                    children[slot] = spawn(slot)
                    started[slot] = time.monotonic()

    for process in children:
        if process.is_alive() and process.pid:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.cekura_shutdown_timeout_s + DEFAULT_KILL_GRACE_S
    for process in children:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("worker_process_killed", pid=process.pid, reason="did not stop in time")
            process.kill()
            process.join()
    log.info("supervisor_stopped", exit_code=exit_code)
    return exit_code


def _mark_dead(pid: int | None) -> None:
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@contextmanager
def run_in_subprocess(
    env: Mapping[str, str],
    *,
    processes: int,
    threads: int,
    stdout: IO[Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stop_timeout_s: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """`cekura-worker run` as a child in its own process group (the demo and the tests use it).

    On the way out it gets SIGTERM and `stop_timeout_s` to stop gracefully, then SIGKILL; finally the whole
    group is killed, so no worker process it spawned can outlive it.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--processes", str(processes), "--threads", str(threads)],
        env=dict(env),
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
