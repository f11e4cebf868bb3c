"""The three variants `python -m bench --mode tracing` compares (cekura-worker without the tracing code, with it
off, with it on), the producer that submits their jobs inside a span, and the OTLP receiver tracing on exports to."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.pollers import REPO_ROOT, CekuraWorker, Submitter
from bench.processes import Child, spawn
from tests.support import free_port, kill_group, wait_for_line

#: The variants, in table-column order.
BASELINE, OFF, ON = "cekura-baseline", "cekura-tracing-off", "cekura-tracing-on"
VARIANTS = (BASELINE, OFF, ON)

#: How long no new span must reach the receiver before a phase's CPU is read: well over the period the workers
#: export at (`worker.tracing.provider.DEFAULT_EXPORT_DELAY_MS`, 1 s).
DRAIN_S = 2.5

#: How long every variant waits, idle, after its last job before its CPU is read (the tracing variant longer if its
#: spans are still arriving then): the same stretch of idle CPU in each variant's figure, tracing on's export in its.
SETTLE_S = 2 * DRAIN_S

#: How long a variant waits for the others at the end of a phase (a phase that failed never comes).
MEET_TIMEOUT_S = 300.0

#: The directory whose `sitecustomize` gives the calibrating variant its known extra cost.
CALIBRATION = Path(__file__).resolve().parent / "calibration"


class _TracedProducer:
    """The usual submitter (the Python client), inside a span of a producer that traces (only its context: the
    producer exports nothing); it counts what it submits on its variant (`TracingVariant.submitted`)."""

    def __init__(self, inner: Submitter, variant: TracingVariant) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.inner = inner
        self.variant = variant
        self.tracer = TracerProvider(shutdown_on_exit=False).get_tracer("bench-producer")

    def submit(self, count: int) -> None:
        with self.tracer.start_as_current_span("submit jobs"):
            self.inner.submit(count)
        self.variant.submitted += count

    def close(self) -> None:
        self.inner.close()


@dataclass
class TracingVariant(CekuraWorker):
    """cekura-worker with extra environment (tracing on) or from another source tree (the baseline)."""

    extra_env: dict[str, str] | None = None
    source: Path | None = None
    #: The OTLP receiver this variant exports to (None: it exports nothing).
    receiver_url: str | None = None
    #: The variants of the phase running at the same time, met twice in `drain` (None: it runs alone).
    together: threading.Barrier | None = None
    #: Microseconds of CPU every message spends on top (`--calibrate-us`, `bench/calibration`); 0: none.
    busy_us: float = 0.0
    #: Jobs submitted to this variant so far, every phase and round.
    submitted: int = 0

    def drain(self) -> None:
        """Once a phase's jobs are done, before its CPU is read: wait until every variant's jobs are done, then
        `SETTLE_S`, and for the tracing variant until its exporter has sent what its batch held too (no new span at
        the receiver for `DRAIN_S`, longer than the export period), so the whole export is in its figure. Every
        variant waits out that same stretch, idle, whether it runs alone or beside the others (then they read their
        CPU together): a wait only tracing on had would put its idle CPU in its figure alone (0.5 % of a core, some
        1.5 % of a lateness phase's CPU)."""
        self._meet()
        began = time.monotonic()
        count = receiver_stats(self.receiver_url)["spans"] if self.receiver_url else 0
        while True:
            time.sleep(DRAIN_S)
            now = receiver_stats(self.receiver_url)["spans"] if self.receiver_url else 0
            if now == count and time.monotonic() - began >= SETTLE_S:
                break
            count = now
        self._meet()

    def _meet(self) -> None:
        if self.together is not None:  # (a variant whose phase failed breaks it: the others are read as they are)
            with contextlib.suppress(threading.BrokenBarrierError):
                self.together.wait(MEET_TIMEOUT_S)

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        env = {**env, **(self.extra_env or {})}
        if self.busy_us:
            env["PYTHONPATH"] = os.pathsep.join((str(CALIBRATION), env.get("PYTHONPATH", "")))
            env["BENCH_BUSY_US"] = repr(self.busy_us)
        if self.source is not None:  # the tree's packages first on the path: they shadow the installed checkout's
            env["PYTHONPATH"] = str(self.source)
            argv = [sys.executable, "-c", "from worker.cli import main; main()", "run"]
            argv += ["--processes", str(processes), "--threads", str(threads)]
            return [spawn(f"{tag}-workers", argv, env=env, log_dir=log_dir, cwd=self.source)]
        return super().start_workers(processes, threads, env, log_dir, tag)

    def submitter(self, redis_url: str, env: dict[str, str]) -> Submitter:
        return _TracedProducer(super().submitter(redis_url, env), self)


def start_receiver(log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The OTLP/HTTP receiver (count-only), and its base URL. Started apart from the harness's children (which it
    stops after each run), since it serves every round."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "otlp-receiver.log"
    argv = [sys.executable, "-m", "tests.tracing.receiver", "--port", str(free_port()), "--count-only"]
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO_ROOT
        )
    match = wait_for_line(popen, log_path, re.compile(r"listening on (\d+)"), 30.0)
    if match is None:
        kill_group(popen)
        raise RuntimeError(f"the OTLP receiver did not start:\n{log_path.read_text(errors='replace')}")
    return popen, f"http://127.0.0.1:{match.group(1)}"


def receiver_stats(url: str) -> dict[str, float]:
    """What the receiver has parsed so far (`spans`, `requests`, `bytes`) and the CPU it used (`cpu_s`)."""
    stats: dict[str, float] = httpx.get(f"{url}/stats", timeout=10, trust_env=False).json()
    return stats
