"""One benchmark phase for one poller: fresh simulator, fresh Redis, fresh workers; N jobs to the end; stop.

A phase records raw data only (what the simulator saw, CPU/RSS/Redis samples, result entries); `figures.py`
turns it into numbers. Everything it starts is stopped in `finally`, and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import background
from bench.pollers import RESULTS_STREAM, Poller, python_env, read_results, worker_env
from bench.processes import Child, usage_of
from bench.redis_server import RedisServer, start_redis
from bench.sampler import Sample, Sampler
from bench.simulator_process import API_KEY, JobPolls, Simulator, start_simulator

#: Seconds the workers get to start and go idle before jobs are submitted.
DEFAULT_SETTLE_TIMEOUT_S = 60.0
#: A phase fails if the simulator sees no new request for this long.
DEFAULT_STALL_TIMEOUT_S = 30.0
#: Below this many CPU-seconds per second (5% of a core) the worker processes count as idle.
IDLE_CPU_RATE = 0.05
#: Seconds per CPU reading while waiting for the workers to go idle.
SETTLE_TICK_S = 0.5
#: Other processes count as quiet below this many cores.
QUIET_CORES = 0.2
#: Seconds between submission batches when submissions are spread out.
SUBMIT_TICK_S = 0.02


@dataclass(frozen=True)
class PhaseSpec:
    """What one phase runs: N jobs, each terminal on its K-th poll, polled every `interval_s`."""

    name: str
    jobs: int
    polls: int
    interval_s: float
    processes: int
    threads: int
    #: Submissions are spread evenly over this many seconds (0: all at once), so polls are not synchronised.
    spread_s: float = 0.0
    #: Hard cap on the whole phase, seconds.
    max_duration_s: float = 600.0


@dataclass
class PhaseRecord:
    """Raw observations of one phase."""

    poller: str
    spec: PhaseSpec
    polls: list[JobPolls] = field(default_factory=list)
    requests_total: int = 0
    cpu_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    process_roles: dict[int, str] = field(default_factory=dict)
    redis_baseline: int = 0
    results: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    submit_started: float = 0.0
    #: When the submitter was ready (connected, imports done) and the first job went out.
    submitter_ready: float = 0.0
    submit_finished: float = 0.0
    finished: float = 0.0
    completed: bool = False
    error: str | None = None
    #: Cores used on average by processes outside the benchmark while the jobs ran (noise on a shared machine).
    other_cores: float = 0.0
    #: Cores stolen by the hypervisor on average meanwhile (the other kind of noise on a shared VM).
    stolen_cores: float = 0.0
    #: Cores the idle worker processes used before any job was submitted.
    idle_cores: float = 0.0
    #: Cores the harness process itself used meanwhile (it shares the machine with the workers).
    harness_cores: float = 0.0
    #: CPU seconds of the private Redis primary over the same span as `cpu_s` (and of its replicas, if any).
    redis_cpu_s: float = 0.0
    replica_cpu_s: float = 0.0
    #: `WAIT` commands the primary served over the whole phase (INFO commandstats; 0 with MIN_REPLICAS=0).
    redis_waits: int = 0


class PhaseFailed(RuntimeError):
    """Raised when a phase cannot finish: a process died, nothing moved for too long, or the hard cap passed."""


def run_phase(
    poller: Poller, spec: PhaseSpec, out_dir: Path, simulator_module: str | None = None, quiet_wait_s: float = 0.0
) -> PhaseRecord:
    """Run `spec` against `poller`; return what was observed (with `completed=False` and `error` on failure).

    Before anything starts it waits up to `quiet_wait_s` for other processes on the machine to go quiet.
    """
    if quiet_wait_s > 0:
        background.wait_for_quiet(quiet_wait_s, QUIET_CORES)
    tag = f"{poller.name}-{spec.name}"
    log_dir = out_dir / "logs" / tag
    record = PhaseRecord(poller=poller.name, spec=spec)
    redis_server: RedisServer | None = None
    simulator: Simulator | None = None
    workers: list[Child] = []
    sampler: Sampler | None = None
    cpu_before = 0.0
    try:
        redis_server = start_redis(log_dir, "redis", replicas=poller.replicas)
        sim_kwargs = {"module": simulator_module} if simulator_module else {}
        simulator = start_simulator(log_dir, "simulator", spec.polls, env=python_env(), **sim_kwargs)
        env = worker_env(redis_server.url, simulator.url, API_KEY, spec.interval_s)
        workers = poller.start_workers(spec.processes, spec.threads, env, log_dir, tag)
        cpu_before, record.idle_cores = _settle(workers)
        redis_before = _redis_cpu_s(redis_server)
        record.redis_baseline = redis_server.used_memory()
        sampler = Sampler(workers, redis_server.used_memory, simulator.requests_total)
        sampler.start()
        record.submit_started = time.time()
        machine_before = background.mark()
        submitter = poller.submitter(redis_server.url, env)
        record.submitter_ready = time.time()
        try:
            _submit(submitter.submit, spec, workers)
        finally:
            submitter.close()
        record.submit_finished = time.time()
        _wait_until_done(poller, spec, simulator, redis_server, workers, record)
        drain = getattr(poller, "drain", None)  # work a poller still owes after the last job (tracing's export)
        if drain is not None:
            drain()
        # CPU is read just before stopping: the workers' whole tree, minus what start-up had used.
        record.cpu_s = usage_of(workers).cpu_s - cpu_before
        record.redis_cpu_s, record.replica_cpu_s = (
            after - before for after, before in zip(_redis_cpu_s(redis_server), redis_before, strict=True)
        )
        machine_after = background.mark()
        record.other_cores = background.other_cores(machine_before, machine_after)
        record.stolen_cores = background.stolen_cores(machine_before, machine_after)
        record.harness_cores = background.harness_cores(machine_before, machine_after)
        record.finished = time.time()
        sampler.stop()
        sampler.samples.append(sampler.sample())
        record.completed = True
    except Exception as exc:  # a failed phase is reported, and the other pollers still run
        record.error = str(exc) if isinstance(exc, PhaseFailed) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, PhaseFailed):
            log_dir.mkdir(parents=True, exist_ok=True)
            (log_dir / "harness-error.log").write_text(traceback.format_exc())
        record.finished = time.time()
        if workers:
            record.cpu_s = usage_of(workers).cpu_s - cpu_before
    finally:
        if sampler is not None:
            sampler.stop()
            record.samples = sampler.samples
            record.process_roles = sampler.roles
        for child in workers:
            child.stop()
        if simulator is not None:
            try:
                record.polls = simulator.polls()
                record.requests_total = simulator.requests_total()
            except Exception as exc:  # the simulator died: keep what we have, say so
                record.error = record.error or f"could not read the simulator's records: {exc}"
            simulator.stop()
        if redis_server is not None:
            if poller.publishes_results:
                record.results = read_results(redis_server.client)
            with contextlib.suppress(redis.RedisError):
                stats = redis_server.client.info("commandstats").get("cmdstat_wait", {})
                record.redis_waits = int(stats.get("calls", 0)) if isinstance(stats, dict) else 0
            redis_server.stop()
    return record


def _redis_cpu_s(server: RedisServer) -> tuple[float, float]:
    """CPU seconds so far of the Redis primary and of all its replicas together."""
    return usage_of([server.child]).cpu_s, usage_of([r.child for r in server.replicas]).cpu_s


def _settle(workers: list[Child]) -> tuple[float, float]:
    """Wait until the worker processes have started and gone idle.

    Returns their CPU seconds so far (start-up cost: imports, forks, broker handshakes, which is not per-poll cost
    and is subtracted from the phase's CPU) and their CPU rate while idle (cores), over the last quiet second.
    """
    deadline = time.monotonic() + DEFAULT_SETTLE_TIMEOUT_S
    time.sleep(1.0)
    readings = [usage_of(workers).cpu_s]
    quiet_ticks = 0
    while quiet_ticks < 2:
        _check_alive(workers)
        if time.monotonic() > deadline:
            print(f"  warning: workers still busy after {DEFAULT_SETTLE_TIMEOUT_S:.0f} s of start-up; going on")
            break
        time.sleep(SETTLE_TICK_S)
        readings.append(usage_of(workers).cpu_s)
        quiet_ticks = quiet_ticks + 1 if (readings[-1] - readings[-2]) / SETTLE_TICK_S < IDLE_CPU_RATE else 0
    window = readings[-3:]
    return readings[-1], (window[-1] - window[0]) / (SETTLE_TICK_S * (len(window) - 1) or 1)


def _submit(submit: Callable[[int], None], spec: PhaseSpec, workers: list[Child]) -> None:
    """Submit N jobs: all at once, or in small batches spread evenly over `spec.spread_s`."""
    if spec.spread_s <= 0:
        for offset in range(0, spec.jobs, 1000):
            submit(min(1000, spec.jobs - offset))
        return
    ticks = max(1, math.ceil(spec.spread_s / SUBMIT_TICK_S))
    began = time.monotonic()
    sent = 0
    for tick in range(1, ticks + 1):
        target = round(spec.jobs * tick / ticks)
        if target > sent:
            submit(target - sent)
            sent = target
        if tick % 50 == 0:
            _check_alive(workers)
        delay = began + tick * SUBMIT_TICK_S - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _wait_until_done(
    poller: Poller,
    spec: PhaseSpec,
    simulator: Simulator,
    redis_server: RedisServer,
    workers: list[Child],
    record: PhaseRecord,
) -> None:
    """Wait until every job is terminal at the simulator (and, for cekura-worker, has its result entry)."""
    began = time.monotonic()
    last_requests, last_moved = -1, time.monotonic()
    while True:
        _check_alive(workers)
        terminal = count_terminal(simulator)
        results = redis_server.client.xlen(RESULTS_STREAM) if poller.publishes_results else spec.jobs
        if terminal >= spec.jobs and results >= spec.jobs:
            return
        requests = simulator.requests_total()
        if requests != last_requests:
            last_requests, last_moved = requests, time.monotonic()
        stalled = time.monotonic() - last_moved
        if stalled > DEFAULT_STALL_TIMEOUT_S:
            raise PhaseFailed(
                f"{poller.name}/{spec.name}: no request reached the simulator for {stalled:.0f} s "
                f"({terminal}/{spec.jobs} jobs terminal, {results}/{spec.jobs} results); see {workers[0].log_path}"
            )
        if time.monotonic() - began > spec.max_duration_s:
            raise PhaseFailed(
                f"{poller.name}/{spec.name}: not done after {spec.max_duration_s:.0f} s "
                f"({terminal}/{spec.jobs} jobs terminal, {results}/{spec.jobs} results)"
            )
        time.sleep(0.5 if spec.jobs < 5000 else 2.0)


def count_terminal(simulator: Simulator) -> int:
    """How many jobs the simulator has answered with a terminal status (its stats' counter; else from /_sim/polls)."""
    stats = simulator.stats()
    if "terminal_jobs" in stats:
        return int(stats["terminal_jobs"])
    return sum(1 for job in simulator.polls() if job.terminal_at is not None)


def _check_alive(workers: list[Child]) -> None:
    """Fail the phase early, with the log tail, if a worker process group leader has exited."""
    for child in workers:
        if not child.alive():
            raise PhaseFailed(f"{child.name} exited with {child.popen.returncode}:\n{child.log_tail()}")
