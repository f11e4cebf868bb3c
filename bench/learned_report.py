"""Learn mode's figures, table and trade-off plot (`python -m bench --mode learn`, run by `bench/learned.py`).

Per group and kind: progress calls per job (GETs the group's simulator served for the job's progress id) and the
detection delay (the result entry's id time minus the moment the simulator's job became terminal), the warm-up
left out. Three policies side by side: `fixed` (every declared schedule), `learned` (schedules learned from
durations, as before issue 21: the kinds' progress rules taken out) and `progress` (the worker as shipped:
learned schedules, and polls put off from the progress an answer reports). Evaluator runs are also shown per
suite size (`evaluator.run [N runs]`), since how much their progress says grows with the runs they count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: The policies compared, in table order, each against `fixed` (and `progress` against `learned` too).
POLICIES = ("fixed", "learned", "progress")


class PlannedJob(Protocol):
    """What the summary needs of one job of the workload (`bench.workload.Job`)."""

    kind: str
    job_id: str


def summarise(
    plan: Sequence[PlannedJob],
    results: Mapping[str, list[tuple[int, dict[str, str]]]],
    polls: Mapping[str, Mapping[str, dict[str, Any]]],
    switch_at: Mapping[str, float],
    submitted: Mapping[str, float],
    kinds: Sequence[str],
    subset: Callable[[str], str | None] = lambda job_id: None,
) -> dict[str, Any]:
    """Per group and kind (and over all kinds, and per `subset(job_id)` of a kind): calls per job and detection
    delays, the warm-up (jobs of a kind submitted before `switch_at[kind]`) left out."""
    warmup = {
        kind: sum(1 for job in plan if job.kind == kind and submitted.get(job.job_id, 0) < switch_at.get(kind, 1e18))
        for kind in kinds
    }
    measured = {job.job_id for job in plan if int(job.job_id.rsplit("-", 1)[1]) >= warmup[job.kind]}
    extra = sorted({key for job in plan if (key := subset(job.job_id)) is not None}, key=_natural)
    out: dict[str, Any] = {"warmup_jobs": warmup, "subsets": extra, "groups": {}}
    durations: dict[str, dict[str, float]] = {}
    for name, entries in results.items():
        per_key: dict[str, dict[str, list[float]]] = {k: {"calls": [], "delay": []} for k in [*kinds, *extra, "all"]}
        spread: dict[str, list[float]] = {kind: [] for kind in kinds}
        ran = durations.setdefault(name, {})
        for entry_ms, fields in entries:
            record = polls[name].get(fields.get("progress_id", ""))
            if record is None or fields["job_id"] not in measured or record.get("finishes_at") is None:
                continue
            calls = float(len(record["times"]))
            delay = entry_ms / 1000 - float(record["finishes_at"])
            for key in (fields["kind"], subset(fields["job_id"]), "all"):
                if key is not None:
                    per_key[key]["calls"].append(calls)
                    per_key[key]["delay"].append(delay)
            spread[fields["kind"]].append(float(record["finishes_at"]) - float(record["started_at"]))
            ran[fields["job_id"]] = spread[fields["kind"]][-1]
        out["groups"][name] = {key: _figures(v["calls"], v["delay"]) for key, v in per_key.items()}
        out["groups"][name]["durations_s"] = {
            kind: [round(float(np.percentile(v, q)), 3) for q in (5, 50, 95)] if v else None
            for kind, v in spread.items()
        }
    base = durations.get("fixed", {})
    pairs = [(d, base[job]) for ran in durations.values() for job, d in ran.items() if job in base]
    out["paired_share"] = sum(abs(a - b) <= 0.01 * b + 0.005 for a, b in pairs) / len(pairs) if pairs else None
    return out


def _natural(key: str) -> tuple[str, int]:
    """`evaluator.run [10 runs]` after `[5 runs]`."""
    head, _, tail = key.partition("[")
    digits = "".join(ch for ch in tail if ch.isdigit())
    return head, int(digits or 0)


def _figures(calls: list[float], delays: list[float]) -> dict[str, Any]:
    if not calls:
        return {"jobs": 0}
    c, d = np.array(calls), np.array(delays)
    return {
        "jobs": len(calls),
        "calls_mean": float(c.mean()),
        "calls_p95": float(np.percentile(c, 95)),
        "delay_p50_s": float(np.percentile(d, 50)),
        "delay_p95_s": float(np.percentile(d, 95)),
        "delay_p99_s": float(np.percentile(d, 99)),
        "delay_mean_s": float(d.mean()),
    }


def learned_lines(figures: Mapping[str, Any], kinds: Sequence[str], compression: float, elapsed_s: float) -> list[str]:
    """The table: per kind (and suite size) and over all kinds, the three policies (delays in Cekura seconds,
    that is benchmark seconds x the compression), then the trade-off points of every group."""
    groups = figures["groups"]
    lines = [
        f"\nFixed, learned and progress-aware polling ({elapsed_s:.0f} s; time compressed {compression:g}x, delays "
        "in Cekura seconds; warm-up left out)",
        f"warm-up, jobs of each kind submitted before the learned history was in use: {figures['warmup_jobs']}",
        f"{'kind':28} {'policy':8} {'jobs':>5} {'calls/job':>9} {'p95':>4} {'delay p50':>9} {'p95':>6} {'p99':>6}",
    ]
    for key in [*kinds, *figures.get("subsets", []), "all"]:
        for name in (p for p in POLICIES if p in groups):
            f = groups[name].get(key, {})
            if not f.get("jobs"):
                continue
            line = (
                f"{key:28} {name:8} {f['jobs']:>5} {f['calls_mean']:>9.2f} {f['calls_p95']:>4.0f} "
                + " ".join(f"{f[k] * compression:>{w}.1f}" for k, w in (("delay_p50_s", 9), ("delay_p95_s", 6)))
                + f" {f['delay_p99_s'] * compression:>6.1f}"
            )
            before = POLICIES[: POLICIES.index(name)]  # learned against fixed; progress against both
            line += "".join(_versus(f, groups[other].get(key, {}), other) for other in before if other in groups)
            lines.append(line)
    if len(groups) > len(POLICIES):
        lines.append("\nTrade-off, all kinds (group: calls/job, p95 delay in Cekura s):")
        for name, f in groups.items():
            lines.append(
                f"  {name:14} {f['all'].get('calls_mean', 0):7.2f} {f['all'].get('delay_p95_s', 0) * compression:7.1f}"
            )
    lines.append(f"durations seen, p5/p50/p95 in benchmark s: {groups['fixed']['durations_s']}")
    paired = figures["paired_share"]
    lines.append(f"jobs that ran equally long in every group: {'-' if paired is None else f'{paired:.0%}'}")
    return lines


def _versus(f: Mapping[str, Any], other: Mapping[str, Any], name: str) -> str:
    if not other.get("jobs"):
        return ""
    calls = f["calls_mean"] / other["calls_mean"] - 1
    p95 = f["delay_p95_s"] / other["delay_p95_s"] - 1 if other["delay_p95_s"] else 0.0
    return f"   vs {name}: calls {calls:+.0%}, p95 delay {p95:+.0%}"


def plot_tradeoff(path: Path, groups: Mapping[str, Mapping[str, Any]], compression: float) -> None:
    """Calls per job against p95 detection delay: a curve per policy through its knob settings (fixed: intervals
    x0.5, x1, x2; learned: CEKURA_LEARN_DELAY_TARGET 0.5, 1, 2), the progress-aware point, for all kinds together
    and for each kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(groups.values()))
    panels = ["all", *[k for k in first if k not in ("all", "durations_s") and "[" not in k]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
    for ax, kind in zip(np.atleast_1d(axes), panels, strict=True):
        for policy, marker in (("fixed", "s"), ("learned", "o"), ("progress", "^")):
            points = sorted(
                (f[kind]["delay_p95_s"] * compression, f[kind]["calls_mean"], name)
                for name, f in groups.items()
                if name.split("-")[0] == policy and f.get(kind, {}).get("jobs")
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
        "Calls per job against p95 delay: fixed schedules (intervals x0.5, x1, x2), learned ones "
        f"(CEKURA_LEARN_DELAY_TARGET 0.5, 1, 2) and progress-aware polling; time compressed {compression:g}x",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
