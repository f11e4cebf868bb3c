"""The report of `python -m bench --mode tracing`: each round's ratios (tracing off against the baseline, on against
off) and their medians, on stdout and in `tracing.md`, beside the harness's own table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.tracing_variants import OFF, VARIANTS


def _change(new: float | None, old: float | None) -> str:
    if not new or not old:
        return "-"
    return f"{(new / old - 1) * 100:+.1f} %"


def _paired(rounds: list[list[dict[str, Any]]], key: str) -> tuple[str, str]:
    """Off against baseline and on against off as the median of each round's own ratio, with its range: the
    machine drifts by more than the effect between rounds (10-30 %), much less within one, so a ratio taken inside
    a round and then summarised is the steadier figure (the table's medians are taken per variant)."""
    pairs: tuple[list[float], list[float]] = ([], [])
    for base, off, on in zip(*rounds, strict=False):
        values = [r.get(key) for r in (base, off, on)]
        if values[0] and values[1]:
            pairs[0].append(values[1] / values[0] - 1)
        if values[1] and values[2]:
            pairs[1].append(values[2] / values[1] - 1)
    return tuple(  # type: ignore[return-value]
        f"{statistics.median(r) * 100:+.1f} % ({min(r) * 100:+.1f} to {max(r) * 100:+.1f} %)" if r else "-"
        for r in pairs
    )


def report(out: Path, stats: dict[str, float], *, at_once: bool, calibrate_us: float, polls: int, jobs: int) -> None:
    """The ratios the tracing work is judged by, on stdout and in `tracing.md`; `jobs`: what tracing on ran, every
    phase and round (the spans the receiver parsed are counted against them: none dropped on the way)."""
    summary: dict[str, Any] = json.loads((out / "results.json").read_text())["summary"]
    third = f"off + {calibrate_us:g} us/message" if calibrate_us else "tracing on"
    lines = ["", "Tracing cost (medians of the rounds; CPU of the worker processes, export included)", ""]
    lines.append(f"| figure | baseline | tracing off | {third} | off vs baseline | {third} vs off |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for key, label in (
        ("sat_cpu_ms_per_poll", "CPU per poll at saturation (ms)"),
        ("lat_cpu_ms_per_poll", "CPU per poll at ~50% load (ms)"),
        ("sat_polls_per_s", "polls/s at saturation"),
        ("lat_p99_ms", "lateness p99 (ms)"),
        ("rss_peak_mib", "RSS peak (MiB)"),
    ):
        base, off, on = (summary.get(name, {}).get(key) for name in VARIANTS)
        shown = [f"{value:,.3f}" if isinstance(value, float) else "-" for value in (base, off, on)]
        lines.append(f"| {label} | {' | '.join(shown)} | {_change(off, base)} | {_change(on, off)} |")
    rounds = [summary.get(name, {}).get("rounds", [summary.get(name, {})]) for name in VARIANTS]
    how = "at the same time" if at_once else "one after another"
    for key, label in (("sat_cpu_ms_per_poll", "at saturation"), ("lat_cpu_ms_per_poll", "at ~50% load")):
        off_base, on_off = _paired(rounds, key)
        lines.append(
            f"\nCPU per poll {label}, each round's ratio (the variants ran {how} in it), median over the"
            f" rounds: tracing off vs baseline {off_base}, {third} vs off {on_off}"
        )
    for round_index, (base, off, on) in enumerate(zip(*rounds, strict=False)):
        cpu = [r.get("sat_cpu_ms_per_poll") for r in (base, off, on)]
        lines.append(
            f"\nround {round_index + 1}: CPU/poll at saturation {' / '.join(f'{c:.3f}' if c else '-' for c in cpu)} ms"
            f" (off vs baseline {_change(cpu[1], cpu[0])}, {third} vs off {_change(cpu[2], cpu[1])})"
        )
    off_cpu = summary.get(OFF, {}).get("sat_cpu_ms_per_poll")
    if calibrate_us and off_cpu:
        # A job is one start message and `polls` poll messages: each poll carries (polls + 1) / polls messages.
        expected = calibrate_us / 1000 * (polls + 1) / polls / off_cpu
        lines.append(
            f"\ncalibration: {calibrate_us:g} us more CPU per message is {expected * 100:+.1f} % per poll at"
            f" saturation against tracing off's median; the rounds above read what the benchmark makes of it"
        )
    else:
        spans, cpu_s = stats.get("spans", 0), stats.get("cpu_s", 0.0)
        lines.append(
            f"\nspans the receiver parsed: {spans:,} in {stats.get('requests', 0):,} exports for {jobs:,} jobs"
            f" ({spans / jobs if jobs else 0:.2f} a job), in {cpu_s:.1f} s of its CPU"
            f" ({1e6 * cpu_s / spans if spans else 0:.1f} us a span: a process of its own on the same cores, in no"
            " variant's figure)"
        )
    text = "\n".join(lines)
    print(text)
    (out / "tracing.md").write_text(text.lstrip() + "\n")
