"""Runs the side-by-side benchmark: the same phases, settings and machine for each poller, then one table.

Per poller, in one run: a saturation phase (poll interval ~0, more jobs than threads, so workers are never idle)
gives polls/s and CPU per poll; a lateness phase at a fixed interval, with as many jobs as make the offered poll
rate about half of that poller's own saturation, gives lateness p50/p99. Long mode adds a phase with tens of
thousands of jobs in flight at once in 2 worker processes, reported over time. Replicas mode runs the short
phases for cekura-worker with `CEKURA_REDIS_MIN_REPLICAS` 0 and 1, both on a primary with one replica attached
(and plain cekura-worker, no replica), each lateness phase at the same offered rate.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import figures as fig
from bench import report
from bench.learned import LearnOptions
from bench.phase import PhaseRecord, PhaseSpec, run_phase
from bench.pollers import POLLERS, Poller, cekura_available
from bench.processes import cleanup_on_exit

#: Poll interval of the saturation phase: the smallest every poller accepts (Dramatiq delays are whole ms).
SATURATION_INTERVAL_S = 0.001
#: The lateness phase offers this fraction of the poller's measured saturation rate.
LATENESS_LOAD = 0.5
#: Polls wanted in the lateness phase (enough for a stable p99), bounded by LATENESS_MAX_S of polling.
LATENESS_TARGET_POLLS = 2500
LATENESS_MAX_S = 20.0
#: Polls per job in the long phase: every job is in flight for about this many intervals.
LONG_POLLS = 6
#: Above this many cores used by other processes during a phase, its figures are flagged as noisy.
NOISY_CORES = 0.25
#: Width of the time windows the long phase is reported in, as a fraction of its interval.
LONG_WINDOW_FRACTION = 0.5


@dataclass(frozen=True)
class Options:
    """What `python -m bench` was asked to do."""

    mode: str
    pollers: list[str]
    jobs: int
    polls: int
    interval_s: float
    processes: int
    threads: int
    out: Path
    long_jobs: int = 20_000
    long_processes: int = 2
    long_interval_s: float | None = None
    saturation_interval_s: float = SATURATION_INTERVAL_S
    #: Rounds of the short phases, every poller once per round in turn; the table shows each figure's median.
    repeat: int = 1
    quiet_wait_s: float = 20.0
    simulator_module: str | None = None
    #: `--mode learn`: learned polling schedules against fixed ones (bench/learned.py) instead of the phases.
    learn: LearnOptions | None = None


@dataclass
class PollerRun:
    """All phases of one poller."""

    saturation: PhaseRecord | None = None
    lateness: PhaseRecord | None = None
    long_saturation: PhaseRecord | None = None
    long: PhaseRecord | None = None
    notes: list[str] = field(default_factory=list)


def run_benchmark(options: Options) -> int:
    """Run every selected poller's phases, print the table, write results.json and the plots; 0 if all completed."""
    names = [n for n in options.pollers if not n.startswith("cekura") or cekura_available()]
    for skipped in sorted(set(options.pollers) - set(names)):
        print(f"skipping {skipped}: worker/cli.py or worker/client.py is not there yet")
    rounds: dict[str, list[PollerRun]] = {name: [] for name in names}
    began = time.monotonic()
    with cleanup_on_exit():
        shared_rate: float | None = None  # replicas mode: every lateness phase sized from the first saturation
        for index in range(options.repeat):
            if options.repeat > 1:
                print(f"== round {index + 1} of {options.repeat}", flush=True)
            # Each round starts one poller later (A B C, B C A, C A B): a poller's place in the round is not what
            # sets its figures when the machine drifts through a round.
            for name in names[index % len(names) :] + names[: index % len(names)]:
                run = run_poller(name, options, shared_rate, round_index=index)
                rounds[name].append(run)
                if options.mode == "replicas" and shared_rate is None and run.saturation is not None:
                    shared_rate = fig.polls_per_s(run.saturation)
        runs = {name: runs_of[0] for name, runs_of in rounds.items()}
        if options.mode == "long":
            interval = options.long_interval_s
            for name in names:
                interval = run_long(name, options, runs[name], interval)
    summary = {name: summarise_rounds(runs_of) for name, runs_of in rounds.items()}
    _print_and_save(options, names, rounds, summary, time.monotonic() - began)
    failed = [
        r.error
        for runs_of in rounds.values()
        for run in runs_of
        for r in (run.saturation, run.lateness, run.long)
        if r and not r.completed
    ]
    return 1 if failed else 0


def run_poller(name: str, options: Options, lateness_rate: float | None = None, round_index: int = 0) -> PollerRun:
    """The saturation phase, then the lateness phase sized from it (or from `lateness_rate`, if given)."""
    poller, run = POLLERS[name], PollerRun()
    sat_spec = saturation_spec(options)
    print(
        f"== {name}: saturation, {sat_spec.jobs} jobs x {sat_spec.polls} polls every {sat_spec.interval_s:g} s",
        flush=True,
    )
    run.saturation = _run_phase(poller, sat_spec, options, round_index)
    rate = fig.polls_per_s(run.saturation)
    if not rate:
        run.notes.append("no saturation rate measured: lateness phase skipped")
        return run
    lat_spec = lateness_spec(lateness_rate or rate, options)
    offered = lat_spec.jobs / lat_spec.interval_s
    print(
        f"== {name}: lateness, {lat_spec.jobs} jobs x {lat_spec.polls} polls every {lat_spec.interval_s} s "
        f"(offered ~{offered:.0f} polls/s = {offered / rate:.0%} of saturation)",
        flush=True,
    )
    run.lateness = _run_phase(poller, lat_spec, options, round_index)
    return run


def saturation_spec(options: Options) -> PhaseSpec:
    """The saturation phase: `options.jobs` jobs of `options.polls` polls, polled as fast as every poller accepts."""
    return PhaseSpec(
        name="saturation",
        jobs=options.jobs,
        polls=options.polls,
        interval_s=options.saturation_interval_s,
        processes=options.processes,
        threads=options.threads,
    )


def lateness_spec(saturation_rate: float, options: Options) -> PhaseSpec:
    """Jobs so that N / interval ≈ half the saturation rate; polls per job for about LATENESS_TARGET_POLLS."""
    jobs = max(1, round(LATENESS_LOAD * saturation_rate * options.interval_s))
    polls = min(math.ceil(LATENESS_TARGET_POLLS / jobs), math.ceil(LATENESS_MAX_S / options.interval_s))
    return PhaseSpec(
        name="lateness",
        jobs=jobs,
        polls=max(polls, 3),
        interval_s=options.interval_s,
        processes=options.processes,
        threads=options.threads,
        spread_s=options.interval_s,  # start jobs evenly over one interval: polls arrive as a steady stream
    )


def run_long(name: str, options: Options, run: PollerRun, interval: float | None) -> float:
    """Many jobs in flight at once in `long_processes` processes; returns the interval used, for the next poller.

    Every poller first gets a saturation phase with that many processes. The long phase's interval is the given
    one, or (for the first poller) one that puts the offered rate near half of the measured 2-process saturation;
    later pollers get the same interval, so all face the same offered load.
    """
    poller = POLLERS[name]
    spec = PhaseSpec(
        name="long-saturation",
        jobs=max(options.jobs, 200 * options.long_processes),
        polls=options.polls,
        interval_s=options.saturation_interval_s,
        processes=options.long_processes,
        threads=options.threads,
    )
    print(f"== {name}: saturation with {spec.processes} processes", flush=True)
    run.long_saturation = _run_phase(poller, spec, options)
    if interval is None:
        rate = fig.polls_per_s(run.long_saturation) or 100.0
        interval = max(5.0, 5.0 * math.ceil(options.long_jobs / (LATENESS_LOAD * rate) / 5.0))
    spec = PhaseSpec(
        name="long",
        jobs=options.long_jobs,
        polls=LONG_POLLS,
        interval_s=interval,
        processes=options.long_processes,
        threads=options.threads,
        spread_s=interval,
        max_duration_s=1.5 * (LONG_POLLS + 2) * interval + 120,
    )
    minutes = (spec.polls + 1) * interval / 60
    print(
        f"== {name}: long, {spec.jobs} jobs x {spec.polls} polls every {spec.interval_s:.0f} s in {spec.processes} "
        f"processes (offered {spec.jobs / spec.interval_s:.0f} polls/s; about {minutes:.0f} min)",
        flush=True,
    )
    run.long = _run_phase(poller, spec, options)
    return interval


def summarise(run: PollerRun) -> dict[str, Any]:
    """The table's figures for one poller (keys as in `report.ROWS`), plus long-mode figures if any."""
    out: dict[str, Any] = {}
    if run.saturation:
        out["sat_polls_per_s"] = fig.polls_per_s(run.saturation)
        out["sat_cpu_ms_per_poll"] = fig.cpu_ms_per_poll(run.saturation)
        out["redis_bytes_per_job"] = fig.redis_bytes_per_job(run.saturation)
        out["http_calls_per_job"] = fig.http_calls_per_job(run.saturation)
        out["idle_cpu_pct"] = 100 * run.saturation.idle_cores
        out["submit_ms_per_job"] = fig.submit_ms_per_job(run.saturation)
        out["waits_per_job"] = fig.waits_per_job(run.saturation)
        out["redis_cpu_ms_per_poll"] = fig.redis_cpu_ms_per_poll(run.saturation)
        out["replica_cpu_ms_per_poll"] = fig.redis_cpu_ms_per_poll(run.saturation, replicas=True)
    if run.lateness:
        lateness = fig.lateness_s(run.lateness)
        out["lat_p50_ms"] = fig.percentile_ms(lateness, 50)
        out["lat_p95_ms"] = fig.percentile_ms(lateness, 95)
        out["lat_p99_ms"] = fig.percentile_ms(lateness, 99)
        out["lat_cpu_ms_per_poll"] = fig.cpu_ms_per_poll(run.lateness)
        out["lat_redis_cpu_ms_per_poll"] = fig.redis_cpu_ms_per_poll(run.lateness)
        if run.lateness.results:
            lags = fig.result_latency_s(run.lateness)
            out["result_p50_ms"] = fig.percentile_ms(lags, 50)
            out["result_p99_ms"] = fig.percentile_ms(lags, 99)
    peaks = [fig.rss_peak_mib(r) or 0.0 for r in (run.saturation, run.lateness) if r]
    out["rss_peak_mib"] = max(peaks) if peaks else None
    if run.long:
        out["long"] = long_summary(run.long)
        if run.long_saturation:
            out["long"]["saturation_polls_per_s"] = fig.polls_per_s(run.long_saturation)
            out["long"]["saturation_cpu_ms_per_poll"] = fig.cpu_ms_per_poll(run.long_saturation)
    return out


def summarise_rounds(runs: list[PollerRun]) -> dict[str, Any]:
    """`summarise` of one round; of several, each figure's median over the rounds (and every round's, under
    "rounds"): the rounds alternate the pollers, so a burst of noise on the shared machine hits one round's figures
    rather than one poller's."""
    each = [summarise(run) for run in runs]
    if len(each) == 1:
        return each[0]
    out = dict(each[0])
    for key, value in out.items():
        if key == "long" or not (value is None or isinstance(value, int | float)):
            continue
        values = [f[key] for f in each if isinstance(f.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    out["rounds"] = [{k: v for k, v in f.items() if k != "long"} for f in each]
    return out


def long_summary(record: PhaseRecord) -> dict[str, Any]:
    """Long-phase figures: overall and per-window lateness, throughput against the offered rate, RSS per process."""
    lateness = fig.lateness_s(record)
    windows = fig.over_time(record, max(1.0, LONG_WINDOW_FRACTION * record.spec.interval_s))
    return {
        "completed": record.completed,
        "error": record.error,
        "jobs": record.spec.jobs,
        "interval_s": record.spec.interval_s,
        "offered_polls_per_s": record.spec.jobs / record.spec.interval_s,
        "polls_per_s": fig.polls_per_s(record),
        "lateness_p50_ms": fig.percentile_ms(lateness, 50),
        "lateness_p99_ms": fig.percentile_ms(lateness, 99),
        "early_polls": fig.early_polls(record),
        "cpu_ms_per_poll": fig.cpu_ms_per_poll(record),
        "rss_peak_mib": fig.rss_peak_mib(record),
        "rss_peak_by_process_mib": fig.rss_peak_by_process_mib(record),
        "redis_bytes_per_job": fig.redis_bytes_per_job(record),
        "http_calls_per_job": fig.http_calls_per_job(record),
        "result_p50_ms": fig.percentile_ms(fig.result_latency_s(record), 50),
        "result_p99_ms": fig.percentile_ms(fig.result_latency_s(record), 99),
        "windows": [asdict(w) for w in windows],
    }


def _run_phase(poller: Poller, spec: PhaseSpec, options: Options, round_index: int = 0) -> PhaseRecord:
    """Run one phase with the run's options, then save and print it (`_finish_phase`)."""
    record = run_phase(poller, spec, options.out, options.simulator_module, options.quiet_wait_s)
    _finish_phase(record, options.out, f"-round{round_index + 1}" if round_index else "")
    return record


def _finish_phase(record: PhaseRecord, out: Path, suffix: str = "") -> None:
    """Save the phase's raw poll times and print one line, so progress is visible while the benchmark runs."""
    report.write_raw(out / "raw" / f"{record.poller}-{record.spec.name}{suffix}.json.gz", record)
    status = "ok" if record.completed else f"FAILED: {record.error}"
    noise = record.other_cores + record.stolen_cores
    if noise > NOISY_CORES:
        status += (
            f" (warning: other processes used {record.other_cores:.1f} cores and the hypervisor stole "
            f"{record.stolen_cores:.1f} meanwhile: figures are noisy)"
        )
    parts = [f"{fig.total_polls(record)} polls"]
    rate, cpu, late = fig.polls_per_s(record), fig.cpu_ms_per_poll(record), fig.lateness_s(record)
    if rate:
        parts.append(f"{rate:.0f} polls/s")
    if cpu:
        parts.append(f"{cpu:.2f} ms CPU/poll")
    if len(late):
        parts.append(f"lateness p50 {fig.percentile_ms(late, 50):.1f} ms p99 {fig.percentile_ms(late, 99):.1f} ms")
    parts.append(f"harness {record.harness_cores:.2f} cores")
    print(f"   {status}; " + ", ".join(parts), flush=True)


def _print_and_save(
    options: Options, names: list[str], rounds: dict[str, list[PollerRun]], summary: dict[str, Any], elapsed_s: float
) -> None:
    """Print the table (and the long-mode table), write results.json, results.md and the plots."""
    runs = {name: runs_of[0] for name, runs_of in rounds.items()}
    title = f"{options.processes} process(es) x {options.threads} threads, {options.mode} mode, {elapsed_s:.0f} s"
    if options.repeat > 1:
        title += f", median of {options.repeat} alternating rounds"
    table: dict[str, Any] = {}
    if options.mode == "replicas":
        against = report.REPLICA_RATIO.against if report.REPLICA_RATIO.against[0] in names else ("cekura",)
        table = {"rows": report.REPLICA_ROWS, "ratio": replace(report.REPLICA_RATIO, against=against)}
    lines = report.table_lines(summary, names, markdown=False, **table)
    print(f"\nBenchmark ({title})\n" + "\n".join(lines))
    markdown = report.table_lines(summary, names, markdown=True, **table)
    long_lines = report.long_lines(summary)
    if long_lines:
        print("\nLong run\n" + "\n".join(long_lines))
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.md").write_text("\n".join([title, "", *markdown, "", *long_lines]) + "\n")
    report.write_json(
        options.out / "results.json",
        {
            "options": asdict(options),
            "summary": summary,
            "phases": {
                name: {
                    phase: report.phase_json(record)
                    for phase, record in (
                        ("saturation", run.saturation),
                        ("lateness", run.lateness),
                        ("long_saturation", run.long_saturation),
                        ("long", run.long),
                    )
                    if record is not None
                }
                for name, run in runs.items()
            },
            "notes": {name: run.notes for name, run in runs.items() if run.notes},
            "later_rounds": {
                name: [
                    {phase: report.phase_json(r) for phase, r in (("saturation", sat), ("lateness", late)) if r}
                    for sat, late in ((run.saturation, run.lateness) for run in runs_of[1:])
                ]
                for name, runs_of in rounds.items()
                if len(runs_of) > 1
            },
        },
    )
    lateness = {  # every round's polls together
        name: np.concatenate([fig.lateness_s(run.lateness) for run in runs_of if run.lateness])
        for name, runs_of in rounds.items()
        if any(run.lateness for run in runs_of)
    }
    report.plot_lateness(options.out / "lateness.png", lateness, title)
    long_series = {name: s["long"]["windows"] for name, s in summary.items() if "long" in s}
    if long_series:
        offered = {name: s["long"]["offered_polls_per_s"] for name, s in summary.items() if "long" in s}
        report.plot_over_time(options.out / "long_over_time.png", long_series, offered)
    print(f"\nwrote {options.out / 'results.json'}, {options.out / 'results.md'}, {options.out / 'lateness.png'}")
