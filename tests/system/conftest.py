"""System-test fixtures: the whole service as real processes.

Each test gets its own `redis-server` (free port, temp dir), the Cekura simulator as a subprocess
(`cekura-worker simulate`), and `cekura-worker run` as a subprocess in its own process group with its output in a
file. Everything a fixture starts is killed on the way out, even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from actors.kinds import KINDS
from config.settings import load_settings
from tests.support import RedisServer, group_alive, kill_group, running, wait_for_line, without_service_env
from tests.support import wait_for as _wait_for
from tests.system.fake_cekura import FakeCekura
from worker.client import Client

#: The console script under test, next to the interpreter running the tests.
CEKURA_WORKER = str(Path(sys.executable).with_name("cekura-worker"))

#: The API key the simulator demands unless a test picks another.
SIM_KEY = "sim-key"

#: Worker settings for fast system tests; a test overrides any of them through `env`.
FAST_ENV: dict[str, str] = {
    "CEKURA_POLL_INITIAL_S": "0.1",
    "CEKURA_POLL_MAX_S": "0.5",
    "CEKURA_POLL_FACTOR": "1.5",
    "CEKURA_POLL_JITTER": "0.1",
    "CEKURA_RETRY_INITIAL_S": "0.1",
    "CEKURA_RETRY_MAX_S": "1.0",
    "CEKURA_HTTP_TIMEOUT_S": "1.0",
    "CEKURA_LEASE_S": "3",
    "CEKURA_RECONCILE_GRACE_S": "2",
    "CEKURA_RECONCILE_INTERVAL_S": "0.5",
    "CEKURA_HEARTBEAT_INTERVAL_S": "1",
    "CEKURA_IDLE_WAKE_MS": "200",
    "CEKURA_SHUTDOWN_TIMEOUT_S": "5",
    # evaluator runs poll like the rest here (they declare 30 s), and no schedule is learned: polls stay countable
    "CEKURA_POLL_OVERRIDES": '{"evaluator.run": {"initial_s": 0.1, "factor": 1.5, "max_s": 0.5, "min_s": 0.05}}',
    "CEKURA_LEARN_POLLING": "false",
    "CEKURA_LOOKUP_SETTLE_S": "1",
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
}

#: Seconds to wait for a process to report it is ready.
START_TIMEOUT_S = 30.0

#: How often system tests look again while they wait (they mostly read logs and ask live processes).
POLL_INTERVAL_S = 0.1

_LISTENING = re.compile(r"cekura simulator listening on (http://\S+)")


def wait_for(
    predicate: Callable[[], bool], *, timeout: float, interval: float = POLL_INTERVAL_S, what: str = "condition"
) -> None:
    """`tests.support.wait_for`, looking every `POLL_INTERVAL_S` unless told otherwise."""
    _wait_for(predicate, timeout, what, interval=interval)


# -- the Cekura simulator -------------------------------------------------------------------------------------


@dataclass
class Simulator:
    """`cekura-worker simulate` in a subprocess, and an HTTP client for its `/_sim/` control routes."""

    popen: subprocess.Popen[bytes]
    url: str
    api_key: str
    log_path: Path
    http: httpx.Client

    def stats(self) -> dict[str, Any]:
        return self._get("/_sim/stats")

    def polls(self) -> dict[str, dict[str, Any]]:
        """Per progress id: `kind`, `times` (epoch seconds of each counted progress GET), `terminal_at`."""
        return self._get("/_sim/polls")

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        response = self.http.post("/_sim/faults", json=changes)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def _get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def stop(self) -> None:
        self.http.close()
        kill_group(self.popen, grace_s=2.0)


# -- cekura-worker run ----------------------------------------------------------------------------------------


def _clean_env() -> dict[str, str]:
    """This environment without any setting of the service, so only what a test passes reaches the worker."""
    return without_service_env("TEST_REDIS_URL")


@dataclass
class WorkerRun:
    """`cekura-worker run` as the leader of its own process group, its output (stdout and stderr) in `log_path`."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (the supervisor's spawned children, not its resource tracker)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.Error:
            return []
        pids = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if running(child) and "spawn_main" in " ".join(child.cmdline()):
                    pids.append(child.pid)
        return sorted(pids)

    def peak_rss_bytes(self) -> int:
        """The highest resident set size any live worker process has reached so far (Linux's VmHWM)."""
        peaks = [0]
        for pid in self.worker_pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
                peaks += [int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:")]
        return max(peaks)

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """Every log line that parses as a JSON object (see `assert_log_shape` for the ones that don't)."""
        out = []
        for line in self.lines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict):
                    out.append(value)
        return out

    def count(self, event: str) -> int:
        return sum(1 for e in self.events() if e.get("event") == event)

    def wait_started(self, processes: int, *, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until `processes` worker processes logged `worker_started` since this run began."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                pytest.fail(f"cekura-worker run exited early ({self.popen.returncode}):\n{self.tail()}")
            return self.count("worker_started") >= processes

        wait_for(ready, timeout=timeout, what=f"{processes} worker processes to start")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.lines()[-lines:])

    def stop(self) -> None:
        kill_group(self.popen, grace_s=10.0)


# -- reading results ------------------------------------------------------------------------------------------


def submit_via_stream(client: redis.Redis, request: dict[str, Any], stream: str = "cekura:requests") -> None:
    """XADD a request the way any producer would."""
    client.xadd(stream, {"request": json.dumps(request)})


def result_events(client: redis.Redis, stream: str = "cekura:results") -> list[dict[str, str]]:
    """Every entry of the results stream, decoded."""
    events = []
    for _, fields in client.xrange(stream):
        events.append({k.decode(): v.decode() for k, v in fields.items()})
    return events


def answered_id(event: dict[str, str]) -> str:
    """The job id an event answers for: its `job_id`, or for a `rejected` event (whose `job_id` is always empty: the
    request never became a job) the `requested_job_id` its request asked for."""
    return event["job_id"] or event.get("requested_job_id", "")


def events_per_job(client: redis.Redis, stream: str = "cekura:results") -> Counter[str]:
    return Counter(event["job_id"] for event in result_events(client, stream))


def wait_all_finished(
    client: redis.Redis, job_ids: set[str], *, timeout: float, worker: WorkerRun | None = None
) -> dict[str, dict[str, str]]:
    """Wait until every job in `job_ids` has a result event (a rejected request counts for the job id it asked for);
    returns the last event per job id."""
    deadline = time.monotonic() + timeout
    while True:
        events = result_events(client)
        seen = {answered_id(e) for e in events}
        missing = job_ids - seen
        if not missing:
            return {answered_id(e): e for e in events if answered_id(e) in job_ids}
        if time.monotonic() > deadline:
            tail = worker.tail() if worker is not None else ""
            pytest.fail(
                f"{len(missing)} of {len(job_ids)} jobs have no result event after {timeout:g}s, "
                f"e.g. {sorted(missing)[:5]}\n{tail}"
            )
        time.sleep(0.25)


def assert_exactly_one_event_each(client: redis.Redis, job_ids: set[str]) -> Counter[str]:
    """Every job in `job_ids` has exactly one result event; nothing else is in the stream."""
    counts = events_per_job(client)
    missing = sorted(job_ids - set(counts))
    twice = {job_id: n for job_id, n in counts.items() if n > 1}
    strangers = sorted(set(counts) - job_ids)
    assert not missing, f"{len(missing)} jobs have no result event: {missing[:10]}"
    assert not twice, f"{len(twice)} jobs have more than one result event: {dict(list(twice.items())[:10])}"
    assert not strangers, f"result events for jobs nobody submitted: {strangers[:10]}"
    return counts


#: Events that are always about one job, so they must carry its `job_id`.
JOB_EVENTS = frozenset(
    {
        "job_submitted",
        "job_already_submitted",
        "job_started",
        "job_progress",
        "job_polled",
        "job_finished",
        "job_cancelled",
        "job_cancelled_during_start",
        "job_rescheduled",
        "cekura_call_retrying",
        "cekura_call_deferred",
        "unexpected_cekura_status",
        "poll_superseded",
        "finish_skipped",
        "message_ignored",
    }
)


def assert_log_shape(lines: list[str]) -> list[dict[str, Any]]:
    """Every line is a JSON object with timestamp, level, event and logger; job lines carry `job_id`."""
    records = []
    bad: list[str] = []
    no_job: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(record, dict) or not {"timestamp", "level", "event", "logger"} <= set(record):
            bad.append(line)
            continue
        about_job = record["event"] in JOB_EVENTS or "progress_id" in record or "poll" in record
        if about_job and not record.get("job_id"):
            no_job.append(line)
        records.append(record)
    assert not bad, f"{len(bad)} log lines are not JSON objects with timestamp/level/event/logger:\n" + "\n".join(
        bad[:10]
    )
    assert not no_job, f"{len(no_job)} log lines about a job have no job_id:\n" + "\n".join(no_job[:10])
    return records


def assert_nothing_left_behind(raw: redis.Redis, job_ids: set[str]) -> int:
    """Once every job has finished, nothing is half-done; returns how many messages Dramatiq dead-lettered.

    No job is still scheduled or unfinished, no per-job secret is left, and no message sits in the queue's message
    hash without being in the queue, its delay set or some worker's ack set (it would never run nor be freed).
    """
    assert raw.zcard("cekura:schedule") == 0, raw.zrange("cekura:schedule", 0, 10)
    states = Counter(raw.hget(f"cekura:job:{job_id}", "state") for job_id in job_ids)
    assert states == {b"finished": len(job_ids)}, states
    assert not list(raw.scan_iter("cekura:secret:*"))
    queue = "cekura:dramatiq:cekura"
    stored = set(raw.hkeys(f"{queue}.msgs"))
    referenced = set(raw.lrange(queue, 0, -1)) | set(raw.zrange(f"{queue}.ZQ", 0, -1))
    for acks in raw.scan_iter("cekura:dramatiq:__acks__.*"):
        referenced |= raw.smembers(acks)
    orphans = sorted(stored - referenced)
    assert not orphans, f"{len(orphans)} Dramatiq messages are stored but queued nowhere: {orphans[:5]}"
    return int(raw.zcard(f"{queue}.XQ"))


# -- job mixes ------------------------------------------------------------------------------------------------


#: The error of a job whose start must not be repeated when its start call's outcome was lost (a fault, a kill).
UNKNOWN_START = "the start call's outcome is unknown"


@dataclass(frozen=True)
class JobSpec:
    """A job to submit and the outcome the simulator's conventions steer it to. String params may hold `{job_id}`:
    each job then sends its own value (an evaluator run's `name`), which the simulator reports as the start's key."""

    kind: str
    params: dict[str, Any]
    expect: str

    def params_for(self, job_id: str) -> dict[str, Any]:
        return {k: v.replace("{job_id}", job_id) if isinstance(v, str) else v for k, v in self.params.items()}

    def ended_as_expected(self, event: dict[str, str]) -> bool:
        """The steered outcome; or, for a kind whose start must not be repeated, `failed` because a fault or a kill
        left the start's outcome unknown (never a second start)."""
        if event["status"] == self.expect:
            return True
        return not KINDS[self.kind].repeatable_start and event["status"] == "failed" and UNKNOWN_START in event["error"]


TRANSCRIPT = [{"role": "Main Agent", "content": "Hello"}, {"role": "Testing Agent", "content": "Hi"}]

#: One of each steerable outcome of each kind (simulator conventions in `simulator/jobs.py`).
JOB_TEMPLATES: tuple[JobSpec, ...] = (
    JobSpec("agent.auto_fetch", {"agent_id": 5}, "completed"),
    JobSpec("agent.auto_fetch", {"agent_id": 12}, "completed"),
    JobSpec("agent.auto_fetch", {"agent_id": 901}, "failed"),
    JobSpec("agent.auto_fetch", {"agent_id": 404}, "failed"),
    JobSpec("agent.toggle_mock_tools", {"agent_id": 6, "enabled": True}, "completed"),
    JobSpec("agent.toggle_mock_tools", {"agent_id": 7, "enabled": False}, "completed"),
    JobSpec("agent.toggle_mock_tools", {"agent_id": 950, "enabled": True}, "failed"),
    JobSpec("scenario.agent", {"user_message": "more detail", "scenarios": [1, 2]}, "completed"),
    JobSpec("scenario.agent", {"user_message": "three please", "num_scenarios": 3}, "completed"),
    JobSpec("scenario.agent", {"user_message": "x [needs_clarification]"}, "needs_input"),
    JobSpec("scenario.agent", {"user_message": "x [needs_agent_clarification]"}, "needs_input"),
    JobSpec("scenario.agent", {"user_message": "x [cancelled]"}, "cancelled"),
    JobSpec("scenario.agent", {"user_message": "x [failed]"}, "failed"),
    JobSpec("metric.clean_description", {"agent": 1, "metric_description": "hi", "eval_type": "rating"}, "completed"),
    JobSpec("metric.clean_description", {"agent": 2, "metric_description": "[fail]", "eval_type": "enum"}, "failed"),
    JobSpec("evaluator.run", {"scenarios": [1, 2], "name": "{job_id}"}, "completed"),
    JobSpec("evaluator.run", {"scenarios": [1, 2], "name": "{job_id} [fail-run]"}, "failed"),
    JobSpec("scenario.generate", {"num_scenarios": 2, "extra_instructions": "{job_id}"}, "completed"),
    JobSpec("scenario.from_transcript", {"transcript_json": TRANSCRIPT, "name": "{job_id}"}, "completed"),
    JobSpec("metric.generate", {"agent_id": 5, "num_metrics": 2}, "completed"),
    JobSpec("agent.tools_auto_fetch", {"agent_id": 5, "provider": "retell", "assistant_id": "a1"}, "completed"),
    JobSpec("metric.improve_from_feedback", {"metric_id": 5}, "completed"),
)


def job_mix(count: int) -> list[JobSpec]:
    """`count` jobs cycling through `JOB_TEMPLATES`, so every kind and outcome is represented."""
    return [JOB_TEMPLATES[i % len(JOB_TEMPLATES)] for i in range(count)]


def submit_mix(
    server: RedisServer, client: Client, specs: list[JobSpec], *, prefix: str, deadline_s: float, stream_every: int = 2
) -> dict[str, JobSpec]:
    """Submit `specs`, every `stream_every`-th through the request stream (XADD) and the rest through the client."""
    jobs: dict[str, JobSpec] = {}
    with server.client() as raw:
        for i, spec in enumerate(specs):
            job_id = f"{prefix}-{i:05d}"
            jobs[job_id] = spec
            if stream_every and i % stream_every == 0:
                params = spec.params_for(job_id)
                submit_via_stream(
                    raw, {"kind": spec.kind, "params": params, "job_id": job_id, "deadline_s": deadline_s}
                )
            else:
                client.submit(spec.kind, spec.params_for(job_id), job_id=job_id, deadline_s=deadline_s)
    return jobs


# -- the fixture ----------------------------------------------------------------------------------------------


class System:
    """Starts the parts of a system test and cleans every one up; also the helpers tests share.

    Tests reach helpers through this fixture rather than importing this module, which pytest loads as `conftest`.
    """

    wait_for = staticmethod(wait_for)
    group_alive = staticmethod(group_alive)
    submit_via_stream = staticmethod(submit_via_stream)
    result_events = staticmethod(result_events)
    events_per_job = staticmethod(events_per_job)
    wait_all_finished = staticmethod(wait_all_finished)
    assert_exactly_one_event_each = staticmethod(assert_exactly_one_event_each)
    assert_log_shape = staticmethod(assert_log_shape)
    assert_nothing_left_behind = staticmethod(assert_nothing_left_behind)
    job_mix = staticmethod(job_mix)
    submit_mix = staticmethod(submit_mix)

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self._servers: list[RedisServer] = []
        self._sims: list[Simulator] = []
        self._runs: list[WorkerRun] = []
        self._clients: list[Client] = []

    def redis(self, *, password: str | None = None, persistent: bool = False) -> RedisServer:
        """A private redis-server (AOF with fsync on every write when `persistent`)."""
        data = self.tmp_path / f"redis-{len(self._servers)}"
        data.mkdir()
        server = RedisServer(dir=data, password=password, persistent=persistent)
        self._servers.append(server)
        server.start()
        return server

    def simulator(self, *args: str, api_key: str = SIM_KEY) -> Simulator:
        """`cekura-worker simulate --port 0 <args>`, once it prints its listening line."""
        log_path = self.tmp_path / f"simulator-{len(self._sims)}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [CEKURA_WORKER, "simulate", "--host", "127.0.0.1", "--port", "0", "--api-key", api_key, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=_clean_env(),
                cwd=self.tmp_path,
            )
        match = wait_for_line(popen, log_path, _LISTENING, START_TIMEOUT_S)
        if match is None:
            kill_group(popen)
            raise RuntimeError(f"simulator did not start:\n{log_path.read_text(errors='replace')}")
        url = match.group(1).rstrip("/")
        sim = Simulator(popen, url, api_key, log_path, httpx.Client(base_url=url, timeout=30, trust_env=False))
        self._sims.append(sim)
        return sim

    def worker_env(self, server: RedisServer, sim: Simulator, **extra: str) -> dict[str, str]:
        """FAST_ENV pointed at `server` and `sim`, plus `extra` (env var names upper-case)."""
        return {**FAST_ENV, "REDIS_URL": server.url, "CEKURA_API_URL": sim.url, "CEKURA_API_KEY": sim.api_key, **extra}

    def worker(self, env: dict[str, str], *, processes: int = 2, threads: int = 4, wait: bool = True) -> WorkerRun:
        """`cekura-worker run --processes N --threads T` in its own process group, output in a file."""
        full_env = {**_clean_env(), **env}
        log_path = self.tmp_path / f"worker-{len(self._runs)}.log"
        with log_path.open("ab") as log:  # O_APPEND: the processes of the group share it line by line
            popen = subprocess.Popen(
                [CEKURA_WORKER, "run", "--processes", str(processes), "--threads", str(threads)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
                cwd=self.tmp_path,  # no stray .env file is read
            )
        run = WorkerRun(popen, log_path, full_env)
        self._runs.append(run)
        if wait:
            run.wait_started(processes)
        return run

    def cli(self, env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run `cekura-worker <args>` to completion with `env`; stdout and stderr kept apart."""
        return subprocess.run(
            [CEKURA_WORKER, *args],
            env={**_clean_env(), **env},
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_many(
        self, commands: list[tuple[dict[str, str], list[str]]], *, timeout: float = 60
    ) -> list[subprocess.CompletedProcess[str]]:
        """Run several `(env, args)` commands at once (each costs an interpreter start-up); results in order."""
        with ThreadPoolExecutor(max_workers=len(commands) or 1) as pool:
            return list(pool.map(lambda command: self.cli(command[0], *command[1], timeout=timeout), commands))

    def client(self, server: RedisServer, **overrides: Any) -> Client:
        """The Python client, as a producer would use it, against `server`."""
        client = Client(load_settings(redis_url=server.url, **overrides))
        self._clients.append(client)
        return client

    def close(self) -> None:
        for run in self._runs:
            run.stop()
        for client in self._clients:
            with contextlib.suppress(redis.RedisError):
                client.close()
        for sim in self._sims:
            sim.stop()
        for server in self._servers:
            server.stop()


@pytest.fixture
def fake() -> Iterator[FakeCekura]:
    """A fake Cekura on loopback answering what the test's `fake.script` says (tests/system/fake_cekura.py)."""
    server = FakeCekura()
    yield server
    server.stop()


@pytest.fixture
def system(tmp_path: Path) -> Iterator[System]:
    """Start redis-servers, simulators and workers through this; all of them are stopped after the test."""
    system = System(tmp_path)
    try:
        yield system
    finally:
        system.close()
