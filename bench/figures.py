"""Turns a phase's raw observations into the benchmark's figures.

Poll times come from the simulator (one clock, the same for every poller); CPU and RSS from psutil over the
worker process trees; Redis memory from INFO; result times from the stream entry ids.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from bench.phase import PhaseRecord

MIB = 1024 * 1024


def all_poll_times(record: PhaseRecord) -> np.ndarray:
    """Every progress GET's time, sorted."""
    times = [t for job in record.polls for t in job.times]
    return np.sort(np.asarray(times, dtype=float))


def total_polls(record: PhaseRecord) -> int:
    """How many progress GETs the simulator served."""
    return sum(len(job.times) for job in record.polls)


def polls_per_s(record: PhaseRecord) -> float | None:
    """Progress GETs / wall time between the first and the last one."""
    times = all_poll_times(record)
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return float(len(times) / (times[-1] - times[0]))


def cpu_ms_per_poll(record: PhaseRecord) -> float | None:
    """Worker CPU (user+sys, whole process tree, start-up excluded) per progress GET, in ms."""
    polls = total_polls(record)
    return 1000 * record.cpu_s / polls if polls else None


def redis_cpu_ms_per_poll(record: PhaseRecord, replicas: bool = False) -> float | None:
    """CPU of the private Redis primary (or of its replicas together) per progress GET, in ms."""
    polls = total_polls(record)
    cpu_s = record.replica_cpu_s if replicas else record.redis_cpu_s
    return 1000 * cpu_s / polls if polls and cpu_s else None


def waits_per_job(record: PhaseRecord) -> float:
    """`WAIT` commands the Redis primary served per job (submission and end: 2 with MIN_REPLICAS=1, else 0)."""
    return record.redis_waits / record.spec.jobs


def submit_ms_per_job(record: PhaseRecord) -> float | None:
    """The harness's time to submit the phase's jobs through the poller's producer (once it is connected), per job,
    in ms: with CEKURA_REDIS_MIN_REPLICAS=1 each submission waits for the replica."""
    elapsed = record.submit_finished - record.submitter_ready
    return 1000 * elapsed / record.spec.jobs if record.submit_finished and record.submitter_ready else None


def lateness_s(record: PhaseRecord) -> np.ndarray:
    """Per poll after a job's first: time since the job's previous poll minus the interval, in seconds."""
    gaps = [np.diff(np.sort(np.asarray(job.times, dtype=float))) for job in record.polls if len(job.times) > 1]
    if not gaps:
        return np.asarray([], dtype=float)
    return np.concatenate(gaps) - record.spec.interval_s


def early_polls(record: PhaseRecord) -> int:
    """Polls that came less than half an interval after the job's previous one: duplicates or retries of a poll."""
    return int(np.count_nonzero(lateness_s(record) < -record.spec.interval_s / 2))


def percentile_ms(values_s: np.ndarray, q: float) -> float | None:
    """The q-th percentile of `values_s` (seconds) in ms, or None when there is nothing to measure."""
    return float(np.percentile(values_s, q) * 1000) if len(values_s) else None


def rss_peak_mib(record: PhaseRecord) -> float | None:
    """Peak of the summed RSS of all worker processes, MiB."""
    return max((s.rss_bytes for s in record.samples), default=0) / MIB or None


def rss_peak_by_process_mib(record: PhaseRecord) -> dict[str, float]:
    """Peak RSS of each process in the worker trees, keyed "<role> <pid>" (role: main, worker, resource-tracker)."""
    peaks: dict[str, float] = {}
    for sample in record.samples:
        for pid, rss in sample.rss_by_pid.items():
            key = f"{record.process_roles.get(pid, 'process')} {pid}"
            peaks[key] = max(peaks.get(key, 0.0), rss / MIB)
    return peaks


def in_flight_window(record: PhaseRecord) -> tuple[float, float] | None:
    """The span during which every job had been polled at least once and none was terminal yet."""
    firsts = [min(job.times) for job in record.polls if job.times]
    terminals = [job.terminal_at for job in record.polls if job.terminal_at is not None]
    if len(firsts) < record.spec.jobs or not terminals:
        return None
    return max(firsts), min(terminals)


def redis_bytes_per_job(record: PhaseRecord) -> float | None:
    """(Redis used_memory with all N jobs in flight - before submitting) / N, from the samples in that window.

    The median of the samples inside the all-in-flight window is used; if the window is shorter than a tick, the
    sample closest to its middle.
    """
    window = in_flight_window(record)
    samples = [s for s in record.samples if s.redis_used_memory is not None]
    if window is None or not samples:
        return None
    inside = [s.redis_used_memory for s in samples if window[0] <= s.t <= window[1] and s.redis_used_memory]
    if not inside:
        middle = (window[0] + window[1]) / 2
        inside = [min(samples, key=lambda s: abs(s.t - middle)).redis_used_memory or 0]
    return (statistics.median(inside) - record.redis_baseline) / record.spec.jobs


def http_calls_per_job(record: PhaseRecord) -> float | None:
    """API requests served by the simulator / N jobs (the minimum is K polls + 1 start)."""
    return record.requests_total / record.spec.jobs if record.requests_total else None


def result_latency_s(record: PhaseRecord) -> np.ndarray:
    """Per result entry: the entry id's timestamp minus the simulator's terminal time for its progress_id."""
    terminal = {job.progress_id: job.terminal_at for job in record.polls if job.terminal_at is not None}
    lags = [
        ms / 1000 - terminal[fields["progress_id"]]
        for ms, fields in record.results
        if fields.get("progress_id") in terminal
    ]
    return np.asarray(lags, dtype=float)


@dataclass(frozen=True)
class Window:
    """Polls and lateness in one slice of a long run."""

    start_s: float
    end_s: float
    polls_per_s: float
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    rss_mib: float | None
    #: Worker CPU in this window, in cores (from the samples that bracket it).
    cpu_cores: float | None


def over_time(record: PhaseRecord, window_s: float) -> list[Window]:
    """Throughput, lateness p50/p99 (placed at the later poll's time) and RSS in consecutive windows of `window_s`."""
    times = all_poll_times(record)
    if not len(times):
        return []
    later, lateness = [], []
    for job in record.polls:
        job_times = np.sort(np.asarray(job.times, dtype=float))
        later.append(job_times[1:])
        lateness.append(np.diff(job_times) - record.spec.interval_s)
    late_at, late = np.concatenate(later), np.concatenate(lateness)
    origin = float(times[0])
    windows = []
    for index in range(int((times[-1] - origin) // window_s) + 1):
        lo, hi = origin + index * window_s, origin + (index + 1) * window_s
        inside = [s for s in record.samples if lo <= s.t < hi]
        rss = [s.rss_bytes for s in inside]
        cpu = (inside[-1].cpu_s - inside[0].cpu_s) / (inside[-1].t - inside[0].t) if len(inside) > 1 else None
        windows.append(
            Window(
                start_s=index * window_s,
                end_s=(index + 1) * window_s,
                polls_per_s=int(np.count_nonzero((times >= lo) & (times < hi))) / window_s,
                lateness_p50_ms=percentile_ms(late[(late_at >= lo) & (late_at < hi)], 50),
                lateness_p99_ms=percentile_ms(late[(late_at >= lo) & (late_at < hi)], 99),
                rss_mib=max(rss) / MIB if rss else None,
                cpu_cores=cpu,
            )
        )
    return windows
