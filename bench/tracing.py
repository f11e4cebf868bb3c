"""`python -m bench --mode tracing`: what OpenTelemetry tracing costs cekura-worker, side by side in one run.

Three variants of cekura-worker run the usual saturation and lateness phases in rounds (`--repeat`, 5 by default
here), on the same workload and settings. In each round every variant runs each phase alone on the machine, one
after another, the order turning by one every round (`_in_turn`); a round's ratios compare runs minutes apart at
most, and the median over rounds steadies what this shared 2-core machine's drift (10-30 % from one minute to the
next) leaves. `python -m bench.tracing --at-once` runs the three at the same time instead, each with its own Redis
and simulator (`_at_once`): drift is then shared, but the variants compete for two cores, and what a variant's CPU
per poll comes to depends on how that contest goes. `--calibrate-us N` checks the method: the third variant is
tracing off with N microseconds of CPU added to every message (`bench/calibration`), a known cost, and the report
says what that cost comes to per poll (README, "Benchmark", has what each way read). Once a variant's jobs are
done it waits (with any running beside it) until the tracing variant's last spans are exported, then its CPU is
read:

- `cekura-baseline`: the service without the tracing code: by default this tree with the tracing hooks of the
  data path taken out (`STRIPPED`: the same code as the other two, less what tracing adds to every step even when
  off); or, with `python -m bench.tracing --baseline`, a git revision or a directory;
- `cekura-tracing-off`: this tree, tracing not configured (the default);
- `cekura-tracing-on`: this tree with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP receiver on this
  machine (`tests/tracing/receiver.py --count-only`, a process of its own, as a collector would be), which parses
  every request the workers export and counts its spans: the batch export runs in the worker processes, so its CPU
  is in their figures; the receiver's own is printed apart.

Every variant gets its jobs from the same producer, which submits them inside a span of its own (a producer that
traces: the jobs carry a `traceparent`), so the three differ only in the workers. The table is the harness's;
below it, the ratios the tracing work is judged by: CPU per poll with tracing off against the baseline (no
measurable difference wanted), and on against off (at most 10 % more wanted), plus the spans the receiver parsed per
job (none lost on the way) and its own CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench import background
from bench import figures as fig
from bench.harness import (
    Options,
    PollerRun,
    _print_and_save,
    lateness_spec,
    saturation_spec,
    summarise_rounds,
)
from bench.phase import QUIET_CORES, PhaseRecord, PhaseSpec, run_phase
from bench.pollers import POLLERS
from bench.processes import cleanup_on_exit
from bench.report import write_raw
from bench.tracing_baseline import baseline_tree
from bench.tracing_report import report
from bench.tracing_variants import BASELINE, OFF, ON, VARIANTS, TracingVariant, receiver_stats, start_receiver
from tests.support import kill_group

#: Rounds unless `--repeat` says otherwise: single runs on a shared machine move 10-20 %.
DEFAULT_ROUNDS = 5


def run_tracing(
    options: Options, baseline: str = "stripped", *, at_once: bool = False, calibrate_us: float = 0.0
) -> int:
    """Run the three variants in rounds; print the table and the tracing ratios. `at_once`: each phase of a round
    runs the three at the same time instead of one after another; `calibrate_us`: the third variant is tracing off
    with that many microseconds of CPU added to every message, instead of tracing on (what the ratio should read is
    then known)."""
    repeat = options.repeat if options.repeat > 1 else DEFAULT_ROUNDS
    options = replace(options, pollers=list(VARIANTS), repeat=repeat)
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as scratch:
        source = baseline_tree(baseline, Path(scratch))
        receiver, url = start_receiver(options.out / "logs" / "otlp-receiver")
        try:
            POLLERS[BASELINE] = TracingVariant(name=BASELINE, source=source)
            POLLERS[OFF] = TracingVariant(name=OFF)
            if calibrate_us:
                POLLERS[ON] = TracingVariant(name=ON, busy_us=calibrate_us)
            else:  # the workers' batching as shipped (`worker.tracing.provider`): `drain` waits out the last batch
                on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url}
                POLLERS[ON] = TracingVariant(name=ON, extra_env=on_env, receiver_url=url)
            status = run_side_by_side(options, at_once=at_once)
            stats = receiver_stats(url)
        finally:
            kill_group(receiver, grace_s=1.0)
    jobs = POLLERS[ON].submitted if isinstance(POLLERS[ON], TracingVariant) else 0
    report(options.out, stats, at_once=at_once, calibrate_us=calibrate_us, polls=options.polls, jobs=jobs)
    return status


def run_side_by_side(options: Options, *, at_once: bool = False) -> int:
    """Every round: the saturation phase of each variant, then their lateness phase (each offered half the
    tracing-off variant's saturation rate in that round), one after another (`_in_turn`) or all at once
    (`_at_once`); then the harness's table and files."""
    rounds: dict[str, list[PollerRun]] = {name: [] for name in VARIANTS}
    began = time.monotonic()
    phase = _at_once if at_once else _in_turn
    how = "at once" if at_once else "one after another"
    with cleanup_on_exit():
        for index in range(options.repeat):
            print(f"== round {index + 1} of {options.repeat}: the three variants {how}", flush=True)
            saturation = phase(saturation_spec(options), options, index)
            runs = {name: PollerRun(saturation=record) for name, record in saturation.items()}
            rate = fig.polls_per_s(runs[OFF].saturation) if runs[OFF].saturation else None
            if rate:
                for name, record in phase(lateness_spec(rate, options), options, index).items():
                    runs[name].lateness = record
            for name in VARIANTS:
                rounds[name].append(runs[name])
    summary = {name: summarise_rounds(runs_of) for name, runs_of in rounds.items()}
    _print_and_save(options, list(VARIANTS), rounds, summary, time.monotonic() - began)
    records = [r for runs_of in rounds.values() for run in runs_of for r in (run.saturation, run.lateness) if r]
    return 1 if any(not r.completed for r in records) else 0


def _at_once(spec: PhaseSpec, options: Options, round_index: int) -> dict[str, PhaseRecord]:
    """Run `spec` for the three variants at the same time (on a machine as quiet as it gets first)."""
    background.wait_for_quiet(options.quiet_wait_s, QUIET_CORES)
    together = threading.Barrier(len(VARIANTS))
    records: dict[str, PhaseRecord] = {}

    def run(name: str) -> None:
        variant = POLLERS[name]
        assert isinstance(variant, TracingVariant)
        variant.together = together
        records[name] = run_phase(variant, spec, options.out, options.simulator_module)
        if not records[name].completed:
            together.abort()

    threads = [threading.Thread(target=run, args=(name,), name=name) for name in VARIANTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _show(spec, options, round_index, records)


def _in_turn(spec: PhaseSpec, options: Options, round_index: int) -> dict[str, PhaseRecord]:
    """Run `spec` for each variant alone, one after another, the order turning by one each round (so no variant
    always runs first, or right after the same one)."""
    shift = round_index % len(VARIANTS)
    records: dict[str, PhaseRecord] = {}
    for name in VARIANTS[shift:] + VARIANTS[:shift]:
        variant = POLLERS[name]
        assert isinstance(variant, TracingVariant)
        variant.together = None
        records[name] = run_phase(variant, spec, options.out, options.simulator_module)
    return _show(spec, options, round_index, records)


def _show(
    spec: PhaseSpec, options: Options, round_index: int, records: dict[str, PhaseRecord]
) -> dict[str, PhaseRecord]:
    suffix = f"-round{round_index + 1}" if round_index else ""
    for name in VARIANTS:
        record = records[name]
        write_raw(options.out / "raw" / f"{name}-{spec.name}{suffix}.json.gz", record)
        cpu, rate = fig.cpu_ms_per_poll(record), fig.polls_per_s(record)
        shown = (
            f"{rate or 0:.0f} polls/s, {cpu or 0:.3f} ms CPU/poll" if record.completed else f"FAILED: {record.error}"
        )
        print(f"   {name}: {spec.name}, {spec.jobs} jobs x {spec.polls} polls: {shown}", flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.tracing [--baseline REV|DIR] [any python -m bench option]`."""
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument(
        "--baseline",
        default="stripped",
        help="the tree without tracing: 'stripped' (this tree, its hooks taken out; the default), a git revision or "
        "a directory",
    )
    parser.add_argument(
        "--at-once",
        action="store_true",
        help="run each phase of a round for the three variants at the same time instead of one after another",
    )
    parser.add_argument(
        "--calibrate-us",
        type=float,
        default=0.0,
        help="instead of tracing on, run tracing off with this many microseconds of CPU added to every message, to "
        "see what the benchmark reads for a known cost",
    )
    known, rest = parser.parse_known_args(argv)
    from bench.__main__ import parse_args

    options = parse_args(["--mode", "tracing", *rest])
    return run_tracing(options, known.baseline, at_once=known.at_once, calibrate_us=known.calibrate_us)


if __name__ == "__main__":
    sys.exit(main())
