"""The benchmark's output: the side-by-side table (stdout and Markdown), results.json and the lateness plots."""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


def plot_tradeoff(path: Path, groups: Mapping[str, Mapping[str, Any]], compression: float) -> None:
    """Learn mode: calls per job against p95 detection delay, one curve per policy through its knob settings, for
    all kinds together and for each kind (`groups`: `bench.learned.summarise`'s per-group figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in next(iter(groups.values())) if k not in ("all", "durations_s")]
    panels = ["all", *kinds]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, kind in zip(np.atleast_1d(axes), panels, strict=True):
        for policy, marker in (("fixed", "s"), ("learned", "o")):
            points = sorted(
                (f[kind]["delay_p95_s"] * compression, f[kind]["calls_mean"], name)
                for name, f in groups.items()
                if name.split("-")[0] == policy and f[kind].get("jobs")
            )
            if not points:
                continue
            line = ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=policy)[0]
            for x, y, name in points:
                knob = name.partition("-")[2] or "x1 (default)"
                ax.annotate(knob, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color())
        ax.set_title("all kinds" if kind == "all" else kind, fontsize=10)
        ax.set_xlabel("p95 detection delay (Cekura s)")
        ax.set_ylabel("progress calls per job")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Calls per job against p95 delay: fixed schedules (intervals x0.5, x1, x2) and learned ones "
        f"(CEKURA_LEARN_DELAY_TARGET 0.5, 1, 2); time compressed {compression:g}x, shown in Cekura seconds",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def learned_lines(figures: Mapping[str, Any], kinds: Sequence[str], compression: float, elapsed_s: float) -> list[str]:
    """Learn mode's table: per kind and over all kinds, fixed against learned (delays in Cekura seconds, that is
    benchmark seconds x the compression), then the trade-off points of every group."""
    groups = figures["groups"]
    lines = [
        f"\nLearned vs fixed polling ({elapsed_s:.0f} s; time compressed {compression:g}x, delays shown in Cekura "
        "seconds; warm-up left out)",
        f"warm-up, jobs of each kind submitted before the learned history was in use: {figures['warmup_jobs']}",
        f"{'kind':26} {'policy':8} {'jobs':>5} {'calls/job':>9} {'p95':>4} {'delay p50':>9} {'p95':>6} {'p99':>6}",
    ]
    for kind in [*kinds, "all"]:
        fixed = groups["fixed"][kind]
        for name in ("fixed", "learned"):
            f = groups[name][kind]
            if not f.get("jobs"):
                continue
            line = (
                f"{kind:26} {name:8} {f['jobs']:>5} {f['calls_mean']:>9.2f} {f['calls_p95']:>4.0f} "
                + " ".join(f"{f[key] * compression:>{w}.1f}" for key, w in (("delay_p50_s", 9), ("delay_p95_s", 6)))
                + f" {f['delay_p99_s'] * compression:>6.1f}"
            )
            if name == "learned" and fixed.get("jobs"):
                calls = f["calls_mean"] / fixed["calls_mean"] - 1
                p95 = f["delay_p95_s"] / fixed["delay_p95_s"] - 1
                line += f"   calls {calls:+.0%}, p95 delay {p95:+.0%}"
            lines.append(line)
    if len(groups) > 2:
        lines.append("\nTrade-off, all kinds (group: calls/job, p95 delay in Cekura s):")
        for name, f in groups.items():
            lines.append(
                f"  {name:14} {f['all'].get('calls_mean', 0):7.2f} {f['all'].get('delay_p95_s', 0) * compression:7.1f}"
            )
    lines.append(f"durations seen, p5/p50/p95 in benchmark s: {groups['fixed']['durations_s']}")
    paired = figures["paired_share"]
    lines.append(f"jobs that ran equally long in every group: {'-' if paired is None else f'{paired:.0%}'}")
    return lines
