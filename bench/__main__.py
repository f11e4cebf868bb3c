"""Command line of the benchmark: ``python -m bench --mode short|long|learn|replicas [options]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.harness import SATURATION_INTERVAL_S, Options, run_benchmark
from bench.learned import DEFAULT_COMPRESSION, DEFAULT_JOBS_PER_KIND, LearnOptions, run_learned
from bench.pollers import DEFAULT_POLLERS, POLLERS, REPLICA_POLLERS

#: Saturation jobs per round in tracing mode: its effect is about 10 %, and 400-job phases (4 s) scatter by more than
#: that from round to round; 3,000-job phases keep tracing off against the baseline within a few percent.
TRACING_JOBS = 3_000


def parse_args(argv: list[str] | None = None) -> Options:
    """Options from the command line (defaults sized for a 2-core machine: short mode takes about 2-3 minutes)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmark of cekura-worker, a bare Dramatiq poller and a Celery poller.",
    )
    parser.add_argument(
        "--mode",
        choices=("short", "long", "learn", "replicas", "tracing"),
        default="short",
        help="long adds the many-jobs phase; learn compares learned polling schedules with fixed ones instead; "
        "replicas runs the short phases for cekura-worker with CEKURA_REDIS_MIN_REPLICAS 0 and 1 (a replica "
        "attached to both) and without a replica; tracing runs cekura-worker without the tracing code, with "
        "tracing off and on (python -m bench.tracing --baseline REV for another baseline)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help=f"jobs in the saturation phase (default 400; {TRACING_JOBS} in tracing mode, whose effect is smaller)",
    )
    parser.add_argument("--polls", type=int, default=10, help="polls until terminal per job, saturation phase")
    parser.add_argument("--interval", type=float, default=0.2, help="poll interval of the lateness phase, seconds")
    parser.add_argument("--processes", type=int, default=1, help="worker processes per poller (default 1)")
    parser.add_argument("--threads", type=int, default=8, help="worker threads per process (default 8)")
    parser.add_argument(
        "--saturation-interval",
        type=float,
        default=SATURATION_INTERVAL_S,
        help="poll interval of the saturation phase (default 0.001; 0 makes the alternatives skip their delay path)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="seconds each phase may wait for other processes on the machine to go quiet (default 20; 0: don't)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the saturation and lateness phases, the pollers alternating; the table shows medians",
    )
    parser.add_argument("--only", choices=sorted(POLLERS), action="append", help="run only this poller (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="output directory (default bench/out)")
    parser.add_argument("--long-jobs", type=int, default=20_000, help="jobs in flight in the long phase")
    parser.add_argument("--long-processes", type=int, default=2, help="worker processes in the long phase")
    parser.add_argument(
        "--long-interval", type=float, default=None, help="long phase's poll interval (default: ~50%% of saturation)"
    )
    parser.add_argument("--simulator-module", default=None, help=argparse.SUPPRESS)  # a stand-in simulator, for dev
    parser.add_argument(
        "--learn-jobs", type=int, default=DEFAULT_JOBS_PER_KIND, help="learn mode: jobs per kind (default 150)"
    )
    parser.add_argument(
        "--learn-compression",
        type=float,
        default=DEFAULT_COMPRESSION,
        help="learn mode: Cekura seconds per benchmark second (default 40)",
    )
    parser.add_argument(
        "--learn-no-curve", action="store_true", help="learn mode: only the fixed/learned pair, no trade-off curve"
    )
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = TRACING_JOBS if args.mode == "tracing" else 400
    for name in ("jobs", "polls", "processes", "threads", "long_jobs", "long_processes", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.saturation_interval < 0:
        parser.error("--saturation-interval must not be negative")
    if args.learn_jobs < 1 or args.learn_compression <= 0:
        parser.error("--learn-jobs must be at least 1 and --learn-compression positive")
    return Options(
        mode=args.mode,
        pollers=args.only or list(REPLICA_POLLERS if args.mode == "replicas" else DEFAULT_POLLERS),
        jobs=args.jobs,
        polls=args.polls,
        interval_s=args.interval,
        processes=args.processes,
        threads=args.threads,
        out=args.out,
        long_jobs=args.long_jobs,
        long_processes=args.long_processes,
        long_interval_s=args.long_interval,
        saturation_interval_s=args.saturation_interval,
        repeat=args.repeat,
        quiet_wait_s=args.quiet_wait,
        simulator_module=args.simulator_module,
        learn=LearnOptions(
            out=args.out,
            compression=args.learn_compression,
            jobs_per_kind=args.learn_jobs,
            curve=not args.learn_no_curve,
            quiet_wait_s=args.quiet_wait,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a phase failed, 130 on Ctrl-C (children are stopped either way)."""
    options = parse_args(argv)
    try:
        if options.mode == "learn" and options.learn is not None:
            return run_learned(options.learn)
        if options.mode == "tracing":  # bench/tracing.py: without, off and on, side by side (--baseline there)
            from bench.tracing import run_tracing

            return run_tracing(options)
        return run_benchmark(options)
    except KeyboardInterrupt:
        print("\ninterrupted: all benchmark processes stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
