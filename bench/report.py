"""The benchmark's output: the side-by-side table (stdout and Markdown), results.json and the lateness plots."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import figures as fig
from bench.phase import PhaseRecord

#: A figure's value for one poller (None: not measured / not applicable).
Value = float | None


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure's key in results.json, its label, and which direction is better."""

    key: str
    label: str
    higher_is_better: bool
    digits: int = 1


#: The table, in order. Keys are those produced by `harness.summarise`.
ROWS: tuple[Row, ...] = (
    Row("sat_polls_per_s", "Sustained polls/s at saturation", higher_is_better=True, digits=0),
    Row("sat_cpu_ms_per_poll", "Worker CPU per poll at saturation (ms)", higher_is_better=False, digits=2),
    Row("lat_p50_ms", "Poll lateness p50 at ~50% load (ms)", higher_is_better=False),
    Row("lat_p99_ms", "Poll lateness p99 at ~50% load (ms)", higher_is_better=False),
    Row("lat_cpu_ms_per_poll", "Worker CPU per poll at ~50% load (ms)", higher_is_better=False, digits=2),
    Row("idle_cpu_pct", "Worker CPU while idle, before any job (% of a core)", higher_is_better=False),
    Row("rss_peak_mib", "Worker RSS, peak, all processes (MiB)", higher_is_better=False),
    Row("redis_bytes_per_job", "Redis memory per in-flight job (bytes)", higher_is_better=False, digits=0),
    Row("http_calls_per_job", "HTTP calls per job (minimum: polls + 1)", higher_is_better=False, digits=2),
    Row("result_p50_ms", "Terminal poll -> result entry p50 (ms)", higher_is_better=False),
    Row("result_p99_ms", "Terminal poll -> result entry p99 (ms)", higher_is_better=False),
)

#: `--mode replicas`' table: the figures `WAIT` can move, with p95 lateness, the client's submission time (each
#: submission WAITs) and the CPU of the Redis primary and its replica (not in the worker's figures).
REPLICA_ROWS: tuple[Row, ...] = (
    *ROWS[:3],
    Row("lat_p95_ms", "Poll lateness p95 at ~50% load (ms)", higher_is_better=False),
    *ROWS[3:5],
    Row("waits_per_job", "Redis WAIT commands per job (MIN_REPLICAS=1: submission + end)", False, digits=2),
    Row("submit_ms_per_job", "Submission, client, per job at saturation (ms)", higher_is_better=False, digits=2),
    Row("redis_cpu_ms_per_poll", "Redis primary CPU per poll at saturation (ms)", higher_is_better=False, digits=3),
    Row("lat_redis_cpu_ms_per_poll", "Redis primary CPU per poll at ~50% load (ms)", higher_is_better=False, digits=3),
    Row("replica_cpu_ms_per_poll", "Redis replica CPU per poll at saturation (ms)", higher_is_better=False, digits=3),
    *ROWS[5:],
)

#: The poller the ratio column is about.
SUBJECT = "cekura"


@dataclass(frozen=True)
class Ratio:
    """The table's last column: `subject`'s figure divided by the best of `against` (every other poller if empty)."""

    subject: str = SUBJECT
    against: tuple[str, ...] = ()
    header: str = "cekura-worker / best alternative"


#: The usual last column: cekura-worker against the best of the alternatives.
BEST_ALTERNATIVE = Ratio()
#: `--mode replicas`: MIN_REPLICAS=1 against 0 on the same primary-with-replica (else against plain cekura).
REPLICA_RATIO = Ratio("cekura-replicated", ("cekura-with-replica",), "MIN_REPLICAS 1 / 0, both with a replica")


def ratio_text(row: Row, figures: Mapping[str, Mapping[str, Any]], ratio: Ratio = BEST_ALTERNATIVE) -> str:
    """The subject's figure divided by the best alternative's, with the direction that is better."""
    mine = figures.get(ratio.subject, {}).get(row.key)
    others: list[float] = [
        f[row.key]
        for name, f in figures.items()
        if name != ratio.subject and (not ratio.against or name in ratio.against) and f.get(row.key) is not None
    ]
    if mine is None or not others:
        return "-"
    best = max(others) if row.higher_is_better else min(others)
    if best == 0:
        return "-"
    return f"{mine / best:.2f}x ({'higher' if row.higher_is_better else 'lower'} is better)"


def _cell(value: Value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table_lines(
    figures: Mapping[str, Mapping[str, Any]],
    pollers: Sequence[str],
    markdown: bool,
    rows: Sequence[Row] = ROWS,
    ratio: Ratio = BEST_ALTERNATIVE,
) -> list[str]:
    """The table as text lines: one row per figure, one column per poller, then the ratio column."""
    header = ["Figure", *[_column_name(p) for p in pollers], ratio.header]
    body = [
        [
            row.label,
            *[_cell(figures.get(p, {}).get(row.key), row.digits) for p in pollers],
            ratio_text(row, figures, ratio),
        ]
        for row in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|"]
        return lines + ["| " + " | ".join(cells) + " |" for cells in body]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def aligned(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [aligned(header), "  ".join("-" * w for w in widths), *[aligned(cells) for cells in body]]


def _column_name(poller: str) -> str:
    return {
        "cekura": "cekura-worker",
        "dramatiq": "bare Dramatiq",
        "celery": "Celery",
        "cekura-with-replica": "cekura, replica, MIN_REPLICAS=0",
        "cekura-replicated": "cekura, replica, MIN_REPLICAS=1",
    }.get(poller, poller)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """results.json: options, every phase's spec and figures, and the summary table's values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")


def write_raw(path: Path, record: PhaseRecord) -> None:
    """The simulator's raw poll times (and result entries) of one phase, gzipped JSON, for analysis after the fact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "poller": record.poller,
        "spec": asdict(record.spec),
        "polls": {job.progress_id: {"times": job.times, "terminal_at": job.terminal_at} for job in record.polls},
        "results": [{"entry_ms": ms, **fields} for ms, fields in record.results],
        "samples": [asdict(sample) for sample in record.samples],
    }
    with gzip.open(path, "wt") as handle:
        json.dump(payload, handle)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plot_lateness(path: Path, lateness_s: Mapping[str, np.ndarray], subtitle: str) -> None:
    """CDF of per-poll lateness, one line per poller, log-scale milliseconds (values under 0.1 ms drawn at 0.1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for poller, values in lateness_s.items():
        if not len(values):
            continue
        xs = np.sort(np.clip(values * 1000, 0.1, None))
        ys = np.arange(1, len(xs) + 1) / len(xs)
        p99 = np.percentile(values * 1000, 99)
        ax.step(xs, ys, where="post", label=f"{_column_name(poller)} (p99 {p99:.0f} ms, n={len(xs)})")
    ax.set_xscale("log")
    ax.set_xlabel("poll lateness: gap between polls minus interval (ms, log scale)")
    ax.set_ylabel("fraction of polls")
    ax.set_title(f"Poll lateness CDF at ~50% of each poller's saturation\n{subtitle}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_over_time(path: Path, series: Mapping[str, Sequence[Mapping[str, Any]]], offered: Mapping[str, float]) -> None:
    """Long mode: lateness p50/p99 and polls/s per time window, one colour per poller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def clipped(values: list[float | None]) -> list[float]:
        """Lateness on a log axis: missing windows as gaps, anything under 1 ms (early polls too) at 1 ms."""
        return [float("nan") if v is None else max(v, 1.0) for v in values]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for poller, windows in series.items():
        xs = [w["end_s"] for w in windows]
        p99 = clipped([w["lateness_p99_ms"] for w in windows])
        line = top.plot(xs, p99, label=f"{_column_name(poller)} p99")[0]
        top.plot(xs, clipped([w["lateness_p50_ms"] for w in windows]), "--", color=line.get_color(), label="p50")
        bottom.plot(xs, [w["polls_per_s"] for w in windows], color=line.get_color(), label=_column_name(poller))
        if poller in offered:
            bottom.axhline(offered[poller], color=line.get_color(), linestyle=":", alpha=0.6)
    top.set_yscale("log")
    top.set_ylabel("poll lateness (ms, log; <1 ms at 1)")
    top.legend(fontsize=8)
    top.grid(True, alpha=0.3)
    bottom.set_ylabel("polls/s (dotted: offered)")
    bottom.set_xlabel("seconds since the first poll")
    bottom.legend(fontsize=8)
    bottom.grid(True, alpha=0.3)
    fig.suptitle("Long run: many jobs in flight at a fixed interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def long_lines(summary: dict[str, Any]) -> list[str]:
    """The long phase per poller: overall figures, then lateness and throughput per window (is it flat?)."""
    lines = []
    for name, figures in summary.items():
        long = figures.get("long")
        if not long:
            continue
        per_process = ", ".join(f"{name} {mib:.0f}" for name, mib in long["rss_peak_by_process_mib"].items())
        saturation = long.get("saturation_polls_per_s") or 0
        lines.append(
            f"{name}: saturation with the long phase's processes {saturation:.0f} polls/s; "
            f"{long['jobs']} jobs every {long['interval_s']:.0f} s; "
            f"{'completed' if long['completed'] else 'FAILED: ' + str(long['error'])}; "
            f"offered {long['offered_polls_per_s']:.0f} polls/s, got {long['polls_per_s'] or 0:.0f}; "
            f"lateness p50 {long['lateness_p50_ms'] or 0:.0f} ms p99 {long['lateness_p99_ms'] or 0:.0f} ms "
            f"({long['early_polls']} polls came less than half an interval after the previous one); "
            f"CPU {long['cpu_ms_per_poll'] or 0:.2f} ms/poll; RSS peak per process (MiB): {per_process}; "
            f"Redis {long['redis_bytes_per_job'] or 0:.0f} B/job"
        )
        lines.append("  window(s)   polls/s  late p50 ms  late p99 ms  RSS MiB  CPU cores")
        for w in long["windows"]:
            lines.append(
                f"  {w['start_s']:>5g}-{w['end_s']:<5g} {w['polls_per_s']:>8.0f} {_fmt(w['lateness_p50_ms']):>12}"
                f" {_fmt(w['lateness_p99_ms']):>12} {_fmt(w['rss_mib']):>8} {_fmt(w['cpu_cores'], 2):>10}"
            )
    return lines


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def phase_json(record: PhaseRecord) -> dict[str, Any]:
    """One phase in results.json: its spec, outcome and figures (not the raw poll times)."""
    lateness = fig.lateness_s(record)
    return {
        "spec": asdict(record.spec),
        "completed": record.completed,
        "error": record.error,
        "polls": fig.total_polls(record),
        "requests_total": record.requests_total,
        "duration_s": record.finished - record.submit_started,
        "polls_per_s": fig.polls_per_s(record),
        "cpu_s": record.cpu_s,
        "cpu_ms_per_poll": fig.cpu_ms_per_poll(record),
        "lateness_ms": {f"p{q}": fig.percentile_ms(lateness, q) for q in (50, 90, 99, 99.9)} if len(lateness) else None,
        "early_polls": fig.early_polls(record),
        "rss_peak_mib": fig.rss_peak_mib(record),
        "rss_peak_by_process_mib": fig.rss_peak_by_process_mib(record),
        "redis_bytes_per_job": fig.redis_bytes_per_job(record),
        "http_calls_per_job": fig.http_calls_per_job(record),
        "results": len(record.results),
        "other_cores": record.other_cores,
        "stolen_cores": record.stolen_cores,
        "harness_cores": record.harness_cores,
        "idle_cores": record.idle_cores,
        "redis_cpu_s": record.redis_cpu_s,
        "redis_waits": record.redis_waits,
        "replica_cpu_s": record.replica_cpu_s,
        "submit_s": record.submit_finished - record.submit_started,
    }
