"""`python -m bench --mode learn`: learned and progress-aware polling against the declared (fixed) schedules.

Simulated Cekura jobs run log-normal durations per kind (auto-fetch a few seconds to a minute, clean description tens of
seconds, evaluator runs minutes to an hour), compressed `--learn-compression` times so the run takes a few minutes. One
private Redis, and several `cekura-worker run` groups on it, each under its own key prefix and streams and with its own
simulator, all given the same jobs at the same moments. The simulators are seeded alike, so the k-th job started in each
runs equally long: the groups are compared on the same durations, job by job (the share of jobs that matched is
reported), which takes the sampling noise of the durations out of the comparison. Every group's declared schedules are
scaled by the same compression (CEKURA_POLL_OVERRIDES, the only setting the benchmark changes); the learned policy's own
knobs stay at their defaults. The policies compared are `fixed` (CEKURA_LEARN_POLLING=false), `learned` (the defaults,
with every kind's progress rule taken out: the worker as it was before issue 21, `bench/without_progress.py`) and
`progress` (the worker as shipped: learned schedules, and polls put off from the counts an answer reports); the other
groups trace the trade-off curve: the fixed schedules with every interval scaled by 0.5 and 2, the learned one (no
progress rules) with CEKURA_LEARN_DELAY_TARGET 0.5 and 2. Evaluator runs cycle through CI suites of
`bench.workload.SUITES` evaluators (one run each), since how much their run counts say grows with the runs they
count. Two more groups, `webhooks` and `webhooks-lost`, run the `progress` worker with result webhooks on, each
with its own receiver (`bench/learned_webhooks.py`): the same jobs, their evaluator runs compared with `progress` in
a table of their own.

Measured per job (`bench/learned_report.py`): progress calls and detection delay. The warm-up (jobs of a kind submitted
before the learned groups' history of that kind reached CEKURA_LEARN_WARMUP_JOBS, plus one CEKURA_LEARN_REFRESH_S) is
left out of every group's figures and reported.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import background, report
from bench import learned_webhooks as hooks
from bench.learned_report import learned_lines, plot_tradeoff, summarise
from bench.phase import QUIET_CORES
from bench.pollers import REPO_ROOT, CekuraWorker, python_env, read_results
from bench.processes import Child, cleanup_on_exit, spawn
from bench.redis_server import RedisServer, start_redis
from bench.simulator_process import API_KEY
from bench.workload import WORKLOAD, Job, params_for, suite_of, workload
from tests.support import free_port, wait_for_line

#: Cekura seconds per benchmark second: an hour-long evaluator run takes 90 s here.
DEFAULT_COMPRESSION = 40.0
#: Jobs of each kind, submitted at random moments over `DEFAULT_SUBMIT_S` benchmark seconds.
DEFAULT_JOBS_PER_KIND = 150
DEFAULT_SUBMIT_S = 100.0
#: The groups run at once: name -> (learning on, knob, progress rules kept). The knob scales every declared interval
#: of a fixed group, and is CEKURA_LEARN_DELAY_TARGET for a learned one. The first three are the side-by-side ones.
GROUPS: dict[str, tuple[bool, float, bool]] = {
    "fixed": (False, 1.0, True),  # (CEKURA_LEARN_POLLING off: no progress either)
    "learned": (True, 1.0, False),
    "progress": (True, 1.0, True),
    "fixed-x0.5": (False, 0.5, True),
    "fixed-x2": (False, 2.0, True),
    "learned-x0.5": (True, 0.5, False),
    "learned-x2": (True, 2.0, False),
}
SIDE_BY_SIDE = ("fixed", "learned", "progress")
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
    #: Run the webhook groups too (`bench/learned_webhooks.py`).
    webhooks: bool = True


@dataclass
class Group:
    """One `cekura-worker run` under its own key prefix and streams, and the client that submits to it."""

    name: str
    learning: bool
    knob: float
    progress: bool
    env: dict[str, str]
    #: Its own simulator, seeded like every group's: the k-th job started in each runs equally long.
    sim_url: str = ""
    #: A webhook group's simulator faults (loss, duplicate rates) and its receiver's URL; None: polling alone.
    webhook_faults: tuple[float, float] | None = None
    receiver_url: str = ""
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
    names = list(GROUPS) if options.curve else list(SIDE_BY_SIDE)
    names += list(hooks.WEBHOOK_GROUPS) if options.webhooks else []
    log_dir = options.out / "logs" / "learn"
    if options.quiet_wait_s > 0:
        background.wait_for_quiet(options.quiet_wait_s, QUIET_CORES)
    began = time.time()
    with cleanup_on_exit():
        server = start_redis(log_dir, "redis")
        groups = [_start_group(name, server, log_dir, options) for name in names]
        _wait_live(server, groups)
        plan = workload(options.seed, options.submit_s, options.jobs_per_kind)
        warm = _Warmup(server, [g for g in groups if g.learning and g.knob == 1.0 and g.webhook_faults is None])
        warm.start()
        print(
            f"== learn: {len(plan)} jobs per group over {options.submit_s:.0f} s, {len(groups)} groups, "
            f"time compressed {options.compression:g}x",
            flush=True,
        )
        cpu_start = background.mark()
        _submit(plan, groups)
        _drain(server, groups, len(plan), options.submit_s)
        cpu_end = background.mark()
        warm.stop()
        polls = {g.name: _sim_polls(g.sim_url) for g in groups}
        results = {g.name: read_results(server.client, f"{g.prefix}:results") for g in groups}
        counters = {
            g.name: {
                "simulator": hooks.sim_webhook_stats(g.sim_url),
                "receiver": hooks.receiver_outcomes(g.receiver_url),
            }
            for g in groups
            if g.webhook_faults is not None
        }
        for group in groups:
            group.client.close()
    polling = {name: entries for name, entries in results.items() if name not in hooks.WEBHOOK_GROUPS}
    figures = summarise(plan, polling, polls, warm.switch_at, job_times, list(WORKLOAD), suite_of)
    figures["other_cores"] = background.other_cores(cpu_start, cpu_end) + background.stolen_cores(cpu_start, cpu_end)
    if options.webhooks:
        figures["webhooks"] = _summarise_webhooks(plan, figures["warmup_jobs"], results, polls, counters, options)
    _write_raw(options.out / "raw" / "learned.json.gz", results, polls)
    print("\n".join(learned_lines(figures, list(WORKLOAD), options.compression, time.time() - began)))
    if options.webhooks:
        print("\n".join(hooks.webhook_lines(figures["webhooks"], options.compression)))
    print(f"other processes on this machine used {figures['other_cores']:.2f} cores on average meanwhile")
    options.out.mkdir(parents=True, exist_ok=True)
    report.write_json(options.out / "learned.json", {"options": vars(options), "figures": figures})
    plot_tradeoff(options.out / "learned_tradeoff.png", figures["groups"], options.compression)
    print(f"\nwrote {options.out / 'learned.json'} and {options.out / 'learned_tradeoff.png'}")
    return 0


def _summarise_webhooks(
    plan: list[Job],
    warmup: Mapping[str, int],
    results: Mapping[str, list[tuple[int, dict[str, str]]]],
    polls: Mapping[str, Mapping[str, dict[str, Any]]],
    counters: Mapping[str, Mapping[str, Any]],
    options: LearnOptions,
) -> dict[str, Any]:
    """The webhook groups' evaluator runs against the `progress` group's, the same warm-up left out."""
    measured = {job.job_id for job in plan if int(job.job_id.rsplit("-", 1)[1]) >= warmup[job.kind]}
    planned = sum(1 for job in plan if job.kind == hooks.KIND)
    return hooks.summarise_webhooks(results, polls, measured, planned, options.compression, counters)


def _start_simulator(log_dir: Path, name: str, options: LearnOptions, extra: Sequence[str] = ()) -> str:
    durations = {sim: [median / options.compression, sigma] for sim, _, median, sigma in WORKLOAD.values()}
    argv = [sys.executable, "-c", "from simulator import main; main()", "--host", "127.0.0.1"]
    argv += ["--port", str(free_port()), "--latency-ms", "0", "--seed", str(options.seed)]
    argv += ["--durations", json.dumps(durations), *extra]
    child = spawn(name, argv, env=python_env(), log_dir=log_dir)
    match = wait_for_line(child.popen, child.log_path, _LISTENING, 20.0)
    if match is None:
        raise RuntimeError(f"simulator did not start:\n{child.log_tail()}")
    return match.group(1).rstrip("/")


def _start_group(name: str, server: RedisServer, log_dir: Path, options: LearnOptions) -> Group:
    from config.settings import load_settings
    from worker.client import Client

    learning, knob, progress = GROUPS.get(name, GROUPS["progress"])  # a webhook group: the worker as shipped
    group = Group(name, learning, knob, progress, {}, webhook_faults=hooks.WEBHOOK_GROUPS.get(name))
    overrides = declared_overrides(options.compression, 1.0 if learning else knob)
    env = python_env()
    env.update(
        REDIS_URL=server.url,
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
    simulator_args: list[str] = []
    if group.webhook_faults is not None:  # its own receiver, under its prefix; its simulator POSTs there
        env = hooks.worker_env(env, options.compression)
        receiver, group.receiver_url = hooks.start_receiver(env, log_dir, group.prefix)
        group.children.append(receiver)
        simulator_args = hooks.simulator_args(group.receiver_url, group.webhook_faults)
    group.sim_url = sim_url = _start_simulator(log_dir, f"{group.prefix}-simulator", options, simulator_args)
    env["CEKURA_API_URL"] = sim_url
    group.env = env
    if learning and not progress:  # the same worker, its kinds' progress rules taken out
        argv = [sys.executable, "-m", "bench.without_progress", "run", "--processes", "1", "--threads", "8"]
        env["CEKURA_REDIS_MIN_REPLICAS"] = "0"  # as CekuraWorker starts its workers
        group.children = [spawn(f"{group.prefix}-workers", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT)]
    else:
        group.children = CekuraWorker().start_workers(1, 8, env, log_dir, group.prefix) + group.children
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


def _submit(plan: list[Job], groups: list[Group]) -> None:
    began = time.monotonic()
    for job in plan:
        wait = job.at_s - (time.monotonic() - began)
        if wait > 0:
            time.sleep(wait)
        params = params_for(job)
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
