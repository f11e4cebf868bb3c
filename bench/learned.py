"""`python -m bench --mode learn`: learned polling schedules against the declared (fixed) ones, side by side.

Simulated Cekura jobs run log-normal durations per kind (auto-fetch a few seconds to a minute, clean description tens of
seconds, evaluator runs minutes to an hour), compressed `--learn-compression` times so the run takes a few minutes. One
private Redis, and several `cekura-worker run` groups on it, each under its own key prefix and streams and with its own
simulator, all given the same jobs at the same moments. The simulators are seeded alike, so the k-th job started in each
runs equally long: the groups are compared on the same durations, job by job (the share of jobs that matched is
reported), which takes the sampling noise of the durations out of the comparison. Every group's declared schedules are
scaled by the same compression (CEKURA_POLL_OVERRIDES, the only setting the benchmark changes); the learned policy's own
knobs stay at their defaults. The pair compared is `fixed` (CEKURA_LEARN_POLLING=false) against `learned` (the
defaults); the other groups trace the trade-off curve: the fixed schedules with every interval scaled by 0.5 and 2, the
learned one with CEKURA_LEARN_DELAY_TARGET 0.5 and 2.

Measured per job, from the simulator's own record and the result stream: progress calls (GETs the simulator served for
its progress id) and detection delay (the result entry's id time minus the moment the simulator's job became terminal).
The warm-up (jobs of a kind submitted before the learned group's history of that kind reached CEKURA_LEARN_WARMUP_JOBS,
plus one CEKURA_LEARN_REFRESH_S) is left out of every group's figures and reported.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import background, report
from bench.phase import QUIET_CORES
from bench.pollers import CekuraWorker, python_env, read_results
from bench.processes import Child, cleanup_on_exit, spawn
from bench.redis_server import RedisServer, start_redis
from bench.simulator_process import API_KEY
from tests.support import free_port, wait_for_line

#: Cekura seconds per benchmark second: an hour-long evaluator run takes 90 s here.
DEFAULT_COMPRESSION = 40.0
#: Jobs of each kind, submitted at random moments over `DEFAULT_SUBMIT_S` benchmark seconds.
DEFAULT_JOBS_PER_KIND = 150
DEFAULT_SUBMIT_S = 100.0
#: The workload: service kind -> (simulator kind, params, median s, sigma), durations in Cekura (real) seconds.
WORKLOAD: dict[str, tuple[str, dict[str, Any], float, float]] = {
    "agent.auto_fetch": ("auto_fetch", {"agent_id": 5}, 8.0, 0.8),
    "metric.clean_description": (
        "clean_description",
        {"agent": 1, "metric_description": "bench", "eval_type": "boolean"},
        30.0,
        0.5,
    ),
    "evaluator.run": ("evaluator_run", {"agent_id": 5, "scenarios": [1, 2]}, 600.0, 0.8),
}
#: The groups run at once: name -> (learning on, knob). The knob scales every declared interval of a fixed group,
#: and is CEKURA_LEARN_DELAY_TARGET for a learned one. `fixed` and `learned` are the side-by-side pair.
GROUPS: dict[str, tuple[bool, float]] = {
    "fixed": (False, 1.0),
    "learned": (True, 1.0),
    "fixed-x0.5": (False, 0.5),
    "fixed-x2": (False, 2.0),
    "learned-x0.5": (True, 0.5),
    "learned-x2": (True, 2.0),
}
#: Least time between two submissions, so that no group starts two jobs in another order than the others.
DEFAULT_MIN_GAP_S = 0.05
#: Seconds to wait for the last result after the last submission (the longest evaluator runs, compressed).
DEFAULT_DRAIN_S = 240.0

_LISTENING = re.compile(r"listening on (http://\S+)")

#: Wall time each job was submitted (the same moment, within milliseconds, for every group).
job_times: dict[str, float] = {}


@dataclass(frozen=True)
class LearnOptions:
    """What `python -m bench --mode learn` was asked to do."""

    out: Path
    compression: float = DEFAULT_COMPRESSION
    jobs_per_kind: int = DEFAULT_JOBS_PER_KIND
    submit_s: float = DEFAULT_SUBMIT_S
    curve: bool = True
    seed: int = 1
    #: Seconds to wait for other processes on the machine to go quiet first (bench/background.py); 0: don't.
    quiet_wait_s: float = 20.0


@dataclass
class Group:
    """One `cekura-worker run` under its own key prefix and streams, and the client that submits to it."""

    name: str
    learning: bool
    knob: float
    env: dict[str, str]
    #: Its own simulator, seeded like every group's: the k-th job started in each runs equally long.
    sim_url: str = ""
    children: list[Child] = field(default_factory=list)
    client: Any = None

    @property
    def prefix(self) -> str:
        return "g-" + self.name.replace(".", "_")


def declared_overrides(compression: float, scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Every workload kind's declared schedule, as the worker resolves it, with its intervals divided by the
    compression (and multiplied by `scale`): CEKURA_POLL_OVERRIDES for one group."""
    from actors.kinds import KINDS
    from config.settings import load_settings
    from worker.cekura.polling import limits_for

    defaults = load_settings()  # as the workers, started with this environment, resolve them
    out = {}
    for kind in WORKLOAD:
        limits = limits_for(kind, KINDS[kind].poll_plan, defaults)
        out[kind] = {
            "initial_s": limits.initial_s * scale / compression,
            "factor": limits.factor,
            "max_s": limits.max_s * scale / compression,
            "min_s": limits.min_s * scale / compression,
        }
    return out


def run_learned(options: LearnOptions) -> int:
    """Run the groups, print the side-by-side table and the trade-off, write learned.json and the plot."""
    names = list(GROUPS) if options.curve else ["fixed", "learned"]
    log_dir = options.out / "logs" / "learn"
    if options.quiet_wait_s > 0:
        background.wait_for_quiet(options.quiet_wait_s, QUIET_CORES)
    began = time.time()
    with cleanup_on_exit():
        server = start_redis(log_dir, "redis")
        groups = [_start_group(name, server, log_dir, options) for name in names]
        _wait_live(server, groups)
        plan = _workload(options)
        warm = _Warmup(server, [g for g in groups if g.learning and g.knob == 1.0])
        warm.start()
        print(
            f"== learn: {len(plan)} jobs per group over {options.submit_s:.0f} s, {len(groups)} groups, "
            f"time compressed {options.compression:g}x",
            flush=True,
        )
        _submit(plan, groups)
        _drain(server, groups, len(plan), options.submit_s)
        warm.stop()
        polls = {g.name: _sim_polls(g.sim_url) for g in groups}
        results = {g.name: read_results(server.client, f"{g.prefix}:results") for g in groups}
        for group in groups:
            group.client.close()
    figures = summarise(plan, results, polls, warm.switch_at)
    _write_raw(options.out / "raw" / "learned.json.gz", results, polls)
    print("\n".join(report.learned_lines(figures, list(WORKLOAD), options.compression, time.time() - began)))
    options.out.mkdir(parents=True, exist_ok=True)
    report.write_json(options.out / "learned.json", {"options": vars(options), "figures": figures})
    report.plot_tradeoff(options.out / "learned_tradeoff.png", figures["groups"], options.compression)
    print(f"\nwrote {options.out / 'learned.json'} and {options.out / 'learned_tradeoff.png'}")
    return 0


def _start_simulator(log_dir: Path, name: str, options: LearnOptions) -> str:
    durations = {sim: [median / options.compression, sigma] for sim, _, median, sigma in WORKLOAD.values()}
    argv = [sys.executable, "-c", "from simulator import main; main()", "--host", "127.0.0.1"]
    argv += ["--port", str(free_port()), "--latency-ms", "0", "--seed", str(options.seed)]
    argv += ["--durations", json.dumps(durations)]
    child = spawn(name, argv, env=python_env(), log_dir=log_dir)
    match = wait_for_line(child.popen, child.log_path, _LISTENING, 20.0)
    if match is None:
        raise RuntimeError(f"simulator did not start:\n{child.log_tail()}")
    return match.group(1).rstrip("/")


def _start_group(name: str, server: RedisServer, log_dir: Path, options: LearnOptions) -> Group:
    from config.settings import load_settings
    from worker.client import Client

    learning, knob = GROUPS[name]
    group = Group(name, learning, knob, {})
    group.sim_url = sim_url = _start_simulator(log_dir, f"{group.prefix}-simulator", options)
    overrides = declared_overrides(options.compression, 1.0 if learning else knob)
    env = python_env()
    env.update(
        REDIS_URL=server.url,
        CEKURA_API_URL=sim_url,
        CEKURA_API_KEY=API_KEY,
        CEKURA_KEY_PREFIX=group.prefix,
        CEKURA_QUEUE=group.prefix,
        CEKURA_REQUESTS_STREAM=f"{group.prefix}:requests",
        CEKURA_RESULTS_STREAM=f"{group.prefix}:results",
        CEKURA_POLL_OVERRIDES=json.dumps(overrides),
        CEKURA_LEARN_POLLING="true" if learning else "false",
        CEKURA_LEARN_DELAY_TARGET=repr(knob if learning else 1.0),
        CEKURA_HEALTH_DIR=str(log_dir / f"health-{group.prefix}"),
        LOG_LEVEL="WARNING",
    )
    group.env = env
    group.children = CekuraWorker().start_workers(1, 8, env, log_dir, group.prefix)
    settings = load_settings(
        redis_url=server.url,
        cekura_key_prefix=group.prefix,
        cekura_queue=group.prefix,
        cekura_requests_stream=env["CEKURA_REQUESTS_STREAM"],
        cekura_results_stream=env["CEKURA_RESULTS_STREAM"],
        log_level="WARNING",
    )
    group.client = Client(settings)
    return group


def _wait_live(server: RedisServer, groups: list[Group], timeout_s: float = 60.0) -> None:
    """Until every group's worker beats in Redis (its heartbeat set under its own prefix)."""
    deadline = time.monotonic() + timeout_s
    for group in groups:
        while not server.client.zcard(f"{group.prefix}:workers"):  # worker.runtime.heartbeat.workers_key
            if time.monotonic() > deadline or not all(c.alive() for c in group.children):
                tails = "\n".join(c.log_tail() for c in group.children)
                raise RuntimeError(f"group {group.name} did not start:\n{tails}")
            time.sleep(0.2)


@dataclass(frozen=True)
class Job:
    """One job of the workload: when it is submitted (s after the first), its kind and id."""

    at_s: float
    kind: str
    job_id: str


def _workload(options: LearnOptions) -> list[Job]:
    """Every kind's jobs at random moments, at least `DEFAULT_MIN_GAP_S` apart so that every group starts them in
    the same order (each simulator hands out durations in start order); ids count up per kind in that order."""
    rng = random.Random(options.seed)
    moments = sorted(
        (rng.uniform(0, options.submit_s), kind) for kind in WORKLOAD for _ in range(options.jobs_per_kind)
    )
    jobs: list[Job] = []
    seen: dict[str, int] = {}
    for at_s, kind in moments:
        n = seen[kind] = seen.get(kind, -1) + 1
        at_s = max(at_s, jobs[-1].at_s + DEFAULT_MIN_GAP_S) if jobs else at_s
        jobs.append(Job(at_s, kind, f"{kind}-{n:04d}"))
    return jobs


def _submit(plan: list[Job], groups: list[Group]) -> None:
    began = time.monotonic()
    for job in plan:
        wait = job.at_s - (time.monotonic() - began)
        if wait > 0:
            time.sleep(wait)
        params = WORKLOAD[job.kind][1]
        for group in groups:
            group.client.submit(job.kind, params, job_id=job.job_id, deadline_s=3 * 3600)
        job_times[job.job_id] = time.time()


class _Warmup(threading.Thread):
    """Watches the learned group's histograms: when each kind's first reached the warm-up weight."""

    def __init__(self, server: RedisServer, groups: list[Group]) -> None:
        super().__init__(daemon=True)
        from config.settings import load_settings

        defaults = load_settings()
        self.warmup = defaults.cekura_learn_warmup_jobs
        self.refresh_s = defaults.cekura_learn_refresh_s
        self.client = server.client
        self.groups = groups
        self.switch_at: dict[str, float] = {}
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            for group in self.groups:
                for kind in WORKLOAD:
                    if kind in self.switch_at:
                        continue
                    weight = self.client.hget(f"{group.prefix}:durations:{kind}", "weight")
                    if weight is not None and float(weight) >= self.warmup * (1 - 1e-6):
                        self.switch_at[kind] = time.time() + self.refresh_s

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)


def _drain(server: RedisServer, groups: list[Group], jobs: int, submit_s: float) -> None:
    deadline = time.monotonic() + DEFAULT_DRAIN_S
    while True:
        left = {g.name: jobs - server.client.xlen(f"{g.prefix}:results") for g in groups}
        if all(n <= 0 for n in left.values()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs still without a result after {DEFAULT_DRAIN_S:g} s: {left}")
        for group in groups:
            if not all(c.alive() for c in group.children):
                raise RuntimeError(f"group {group.name} died:\n{group.children[0].log_tail()}")
        time.sleep(1.0)


def _sim_polls(url: str) -> dict[str, dict[str, Any]]:
    import httpx

    response = httpx.get(f"{url}/_sim/polls", timeout=120, trust_env=False)
    response.raise_for_status()
    data: dict[str, dict[str, Any]] = response.json()
    return data


def summarise(
    plan: list[Job],
    results: Mapping[str, list[tuple[int, dict[str, str]]]],
    polls: Mapping[str, Mapping[str, dict[str, Any]]],
    switch_at: Mapping[str, float],
) -> dict[str, Any]:
    """Per group and kind (and over all kinds): calls per job and detection delays, warm-up left out."""
    warmup = {
        kind: sum(1 for job in plan if job.kind == kind and job_times.get(job.job_id, 0) < switch_at.get(kind, 1e18))
        for kind in WORKLOAD
    }
    measured = {job.job_id for job in plan if int(job.job_id.rsplit("-", 1)[1]) >= warmup[job.kind]}
    out: dict[str, Any] = {"warmup_jobs": warmup, "groups": {}}
    durations: dict[str, dict[str, float]] = {}
    for name, entries in results.items():
        per_kind: dict[str, dict[str, list[float]]] = {kind: {"calls": [], "delay": []} for kind in [*WORKLOAD, "all"]}
        spread: dict[str, list[float]] = {kind: [] for kind in WORKLOAD}
        ran = durations.setdefault(name, {})
        for entry_ms, fields in entries:
            record = polls[name].get(fields.get("progress_id", ""))
            if record is None or fields["job_id"] not in measured or record.get("finishes_at") is None:
                continue
            calls = float(len(record["times"]))
            delay = entry_ms / 1000 - float(record["finishes_at"])
            for key in (fields["kind"], "all"):
                per_kind[key]["calls"].append(calls)
                per_kind[key]["delay"].append(delay)
            spread[fields["kind"]].append(float(record["finishes_at"]) - float(record["started_at"]))
            ran[fields["job_id"]] = spread[fields["kind"]][-1]
        out["groups"][name] = {kind: _figures(values["calls"], values["delay"]) for kind, values in per_kind.items()}
        out["groups"][name]["durations_s"] = {
            kind: [round(float(np.percentile(v, q)), 3) for q in (5, 50, 95)] if v else None
            for kind, v in spread.items()
        }
    base = durations.get("fixed", {})
    pairs = [(d, base[job]) for ran in durations.values() for job, d in ran.items() if job in base]
    out["paired_share"] = sum(abs(a - b) <= 0.01 * b + 0.005 for a, b in pairs) / len(pairs) if pairs else None
    return out


def _write_raw(
    path: Path,
    results: Mapping[str, list[tuple[int, dict[str, str]]]],
    polls: Mapping[str, Mapping[str, dict[str, Any]]],
) -> None:
    """Per group and job: kind, result entry time, and the simulator's record of it (poll times, finish)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        name: {
            fields["job_id"]: {
                **polls[name].get(fields.get("progress_id", ""), {}),  # its `kind` is the simulator's name
                "kind": fields["kind"],
                "entry_ms": ms,
            }
            for ms, fields in entries
        }
        for name, entries in results.items()
    }
    with gzip.open(path, "wt") as handle:
        json.dump(payload, handle)


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
