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
  machine (`tests/tracing/receiver.py --count-only`, a process of its own, as a collector would be), which decodes
  every span the workers export: the batch export runs in the worker processes, so its CPU is in their figures.

Every variant gets its jobs from the same producer, which submits them inside a span of its own (a producer that
traces: the jobs carry a `traceparent`), so the three differ only in the workers. The table is the harness's;
below it, the ratios the tracing work is judged by: CPU per poll with tracing off against the baseline (no
measurable difference wanted), and on against off (at most 10 % more wanted), plus the spans the receiver decoded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

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
from bench.pollers import POLLERS, REPO_ROOT, CekuraWorker, Submitter
from bench.processes import Child, cleanup_on_exit, spawn
from bench.report import write_raw
from tests.support import free_port, kill_group, wait_for_line

#: The variants, in table-column order.
BASELINE, OFF, ON = "cekura-baseline", "cekura-tracing-off", "cekura-tracing-on"
VARIANTS = (BASELINE, OFF, ON)

#: Rounds unless `--repeat` says otherwise: single runs on a shared machine move 10-20 %.
DEFAULT_ROUNDS = 5

#: How long no new span must reach the receiver before a phase's CPU is read: well over the period the workers
#: export at (`worker.tracing.provider.DEFAULT_EXPORT_DELAY_MS`, 1 s).
DRAIN_S = 2.5

#: How long a variant waits for the others at the end of a phase (a phase that failed never comes).
MEET_TIMEOUT_S = 300.0

#: The directory whose `sitecustomize` gives the calibrating variant its known extra cost.
CALIBRATION = Path(__file__).resolve().parent / "calibration"

#: The packages a baseline tree needs (the workers import these; the harness and simulator run from this tree).
SOURCE_PACKAGES = ("worker", "actors", "config", "simulator")


class _TracedProducer:
    """The usual submitter (the Python client), inside a span of a producer that traces (only its context: the
    producer exports nothing)."""

    def __init__(self, inner: Submitter) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.inner = inner
        self.tracer = TracerProvider(shutdown_on_exit=False).get_tracer("bench-producer")

    def submit(self, count: int) -> None:
        with self.tracer.start_as_current_span("submit jobs"):
            self.inner.submit(count)

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

    def drain(self) -> None:
        """Once a phase's jobs are done, before its CPU is read: wait until every variant's jobs are done, then
        until the tracing variant's exporter has sent what its batch held (no new span at the receiver for
        `DRAIN_S`, longer than the export period), so the whole export is in its figure; every variant waits out
        that same stretch, idle, and reads its CPU when the others do."""
        self._meet()
        if self.receiver_url:
            count = _receiver_stats(self.receiver_url)["spans"]
            while True:
                time.sleep(DRAIN_S)
                now = _receiver_stats(self.receiver_url)["spans"]
                if now == count:
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
        return _TracedProducer(super().submitter(redis_url, env))


#: What `stripped_tree` takes out of a copy of this tree to make the baseline: the tracing hooks of the worker's
#: data path, file by file (text, then its replacement). An entry that no longer matches fails the run, naming it.
STRIPPED: dict[str, tuple[tuple[str, str], ...]] = {
    "actors/jobs.py": (
        ("from worker import tracing\n", ""),
        ("    if tracing.enabled:\n        tracing.note_advance(step, fields)\n", ""),
        (
            "    if tracing.enabled:  # before any call: the lookup below is one of the job's calls too\n"
            "        tracing.enter_job(rt.store, job_id, kind_name)\n",
            "",
        ),
    ),
    "actors/step.py": (
        ("from worker import tracing\n", ""),
        (
            "    step = Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)\n"
            "    if tracing.enabled:\n        tracing.enter(step)\n    return step\n",
            "    return Step(rt, job_id, phase, claim, claim.job, KINDS[claim.job.kind], age_s)\n",
        ),
        ("    began_ns = time.time_ns() if tracing.enabled else 0\n", ""),
    ),
    "worker/runtime/app.py": (
        ("    tracing.setup(settings)  # before the Cekura client is made: traced or not\n", ""),
        ("self._cekura = _cekura_client(self.settings)", "self._cekura = CekuraClient(self.settings)"),
    ),
    "worker/store/scripts/_claim.lua": (("'start_claim', 'traceparent', 'tracestate')", "'start_claim')"),),
    "worker/store/records.py": (('    "traceparent",\n    "tracestate",\n)', ")"),),
    "worker/broker/middleware.py": (
        ("from worker import tracing\n", ""),
        (
            "        tracing.leave()  # the thread's next message may be about another job, or about none (on or off:"
            " see leave)\n",
            "",
        ),
        ("        tracing.leave()\n", ""),
    ),
}

#: The hook that ends a job's spans, in `actors/step.py` (two lines, taken out whole).
_ENDED = re.compile(r"    if tracing\.enabled:\n        details = [^\n]*\n        tracing\.ended\([^\n]*\n")


def stripped_tree(into: Path) -> Path:
    """A copy of this tree's packages with the tracing hooks taken out (`STRIPPED`): the same code as the tracing
    variants, less what tracing adds to every step even when off."""
    for package in SOURCE_PACKAGES:
        shutil.copytree(REPO_ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__"))
    for relative, edits in STRIPPED.items():
        path = into / relative
        text = path.read_text()
        for old, new in edits:
            if old not in text:
                shown = old.strip()[:60]
                raise RuntimeError(f"bench/tracing.py: {relative} no longer holds {shown!r}: update STRIPPED")
            text = text.replace(old, new)
        if relative == "actors/step.py":
            text, found = _ENDED.subn("", text)
            if not found:
                raise RuntimeError("bench/tracing.py: actors/step.py no longer ends a job's spans as _ENDED expects")
        path.write_text(text)
    return into


def baseline_tree(baseline: str, into: Path) -> Path:
    """A directory holding the service's packages without the tracing work: this tree with its hooks taken out
    (`stripped`, the default), a directory given as it is, or `git archive` of a revision (read-only: nothing in
    the checkout changes)."""
    if baseline == "stripped":
        return stripped_tree(into)
    if Path(baseline).is_dir():
        return Path(baseline).resolve()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", baseline, *SOURCE_PACKAGES], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    if (into / "worker" / "tracing").exists():
        print(f"note: the baseline {baseline} already holds worker/tracing/: name the commit before the tracing work")
    return into


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
            # The workers' batching as shipped (`worker.tracing.provider`): `drain` waits out the last batch before
            # the CPU is read.
            on_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": url}
            POLLERS[BASELINE] = TracingVariant(name=BASELINE, source=source)
            POLLERS[OFF] = TracingVariant(name=OFF)
            if calibrate_us:
                POLLERS[ON] = TracingVariant(name=ON, busy_us=calibrate_us)
            else:
                POLLERS[ON] = TracingVariant(name=ON, extra_env=on_env, receiver_url=url)
            status = run_side_by_side(options, at_once=at_once)
            stats = _receiver_stats(url)
        finally:
            kill_group(receiver, grace_s=1.0)
    _report(options.out, stats, at_once=at_once, calibrate_us=calibrate_us, polls=options.polls)
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


def _receiver_stats(url: str) -> dict[str, int]:

    stats: dict[str, int] = httpx.get(f"{url}/stats", timeout=10, trust_env=False).json()
    return stats


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


def _report(out: Path, stats: dict[str, int], *, at_once: bool, calibrate_us: float, polls: int) -> None:
    """The ratios the tracing work is judged by, on stdout and in `tracing.md`."""
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
        lines.append(f"\nspans the receiver decoded: {stats.get('spans', 0):,} in {stats.get('requests', 0):,} exports")
    text = "\n".join(lines)
    print(text)
    (out / "tracing.md").write_text(text.lstrip() + "\n")


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
