"""The three pollers under test, each as: how to start its worker processes and how to submit N jobs to it.

All three get the same environment (the variables cekura-worker reads), the same processes x threads, the same
simulator and a private Redis. The alternatives receive N `start` messages enqueued straight onto their broker
(what their own producer code would do); cekura-worker gets its jobs through its Python client, as a user would.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis

from bench.processes import Child, spawn
from tests.support import free_port

#: The repository root: the pollers run from here so `bench.*`, `worker.*` and `config.*` import.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The workload: Cekura's metric clean-description operation, the same body for every job.
JOB_BODY: dict[str, Any] = {"agent": 1, "metric_description": "bench", "eval_type": "boolean"}
#: cekura-worker's job kind for that operation.
CEKURA_KIND = "metric.clean_description"
#: The Redis stream cekura-worker publishes one result entry per job on.
RESULTS_STREAM = "cekura:results"


def python_env() -> dict[str, str]:
    """This environment plus the repository on PYTHONPATH and unbuffered output (for the simulator and workers)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def worker_env(redis_url: str, api_url: str, api_key: str, interval_s: float) -> dict[str, str]:
    """The environment every poller's workers get: cekura-worker's variable names, a fixed poll interval, quiet logs."""
    env = python_env()
    env.update(
        REDIS_URL=redis_url,
        CEKURA_API_URL=api_url,
        CEKURA_API_KEY=api_key,
        CEKURA_POLL_INITIAL_S=repr(interval_s),
        CEKURA_POLL_MAX_S=repr(interval_s),
        CEKURA_POLL_FACTOR="1",
        CEKURA_POLL_JITTER="0",
        LOG_LEVEL="WARNING",
    )
    return env


class Submitter(Protocol):
    """Puts jobs into a poller's queue."""

    def submit(self, count: int) -> None:
        """Submit `count` jobs (one start call each)."""

    def close(self) -> None:
        """Release connections."""


class Poller(Protocol):
    """One poller implementation under test."""

    #: Short name used in --only, file names and table columns.
    name: str
    #: Whether it publishes result entries on RESULTS_STREAM (cekura-worker only).
    publishes_results: bool
    #: Replicas attached to its private Redis (`--replicaof` the primary, synced before the workers start).
    replicas: int

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        """Start the worker processes; return their process-group leaders."""

    def submitter(self, redis_url: str, env: dict[str, str]) -> Submitter:
        """A submitter connected to this run's Redis."""


class _DramatiqSubmitter:
    """Enqueues `bench.bare_dramatiq.start` messages directly with a stock RedisBroker."""

    def __init__(self, redis_url: str) -> None:
        from dramatiq.brokers.redis import RedisBroker

        self.broker = RedisBroker(url=redis_url)
        self.broker.declare_queue("default")

    def submit(self, count: int) -> None:
        from dramatiq import Message

        for _ in range(count):
            message = Message(queue_name="default", actor_name="start", args=(JOB_BODY,), kwargs={}, options={})
            self.broker.enqueue(message)

    def close(self) -> None:
        self.broker.close()


@dataclass
class BareDramatiq:
    """`bench/bare_dramatiq.py` under the stock `dramatiq` CLI."""

    name: str = "dramatiq"
    publishes_results: bool = False
    replicas: int = 0

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        argv = [sys.executable, "-m", "dramatiq", "bench.bare_dramatiq", "--processes", str(processes)]
        argv += ["--threads", str(threads)]
        return [spawn(f"{tag}-workers", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT)]

    def submitter(self, redis_url: str, env: dict[str, str]) -> Submitter:
        return _DramatiqSubmitter(redis_url)


class _CelerySubmitter:
    """Sends `bench.start` tasks with a bare Celery app on the same broker."""

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.app = Celery("bench-submit", broker=redis_url)
        self.app.conf.broker_connection_retry_on_startup = True

    def submit(self, count: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(count):
                self.app.send_task("bench.start", args=(JOB_BODY,), producer=producer)

    def close(self) -> None:
        self.app.close()


@dataclass
class CeleryPoller:
    """`bench/celery_poller.py` under `celery worker --pool threads`, one OS process per requested process."""

    name: str = "celery"
    publishes_results: bool = False
    replicas: int = 0

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        children = []
        for index in range(processes):
            argv = [sys.executable, "-m", "celery", "-A", "bench.celery_poller", "worker", "--pool", "threads"]
            argv += ["--concurrency", str(threads), "-n", f"bench{index}@%h"]
            children.append(spawn(f"{tag}-worker{index}", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT))
        return children

    def submitter(self, redis_url: str, env: dict[str, str]) -> Submitter:
        return _CelerySubmitter(redis_url)


class _CekuraSubmitter:
    """Submits jobs through cekura-worker's own client, as a user of the service would."""

    def __init__(self, redis_url: str, env: dict[str, str], min_replicas: int = 0) -> None:
        from config.settings import load_settings
        from worker.client import Client
        from worker.runtime import logging as service_logging

        settings = load_settings(
            redis_url=redis_url,
            cekura_api_url=env["CEKURA_API_URL"],
            cekura_api_key=env["CEKURA_API_KEY"],
            log_level="WARNING",  # the client logs every submission at INFO: not wanted in the harness's output
            cekura_redis_min_replicas=min_replicas,  # a submission WAITs as the workers' writes do
        )
        service_logging.configure(settings)
        self.client = Client(settings)

    def submit(self, count: int) -> None:
        self.client.submit_many([{"kind": CEKURA_KIND, "params": dict(JOB_BODY)} for _ in range(count)])

    def close(self) -> None:
        self.client.close()


@dataclass
class CekuraWorker:
    """cekura-worker's `run` command, with `CEKURA_REDIS_MIN_REPLICAS=min_replicas` (for its submitter too)."""

    name: str = "cekura"
    publishes_results: bool = True
    replicas: int = 0
    min_replicas: int = 0

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        script = Path(sys.executable).parent / "cekura-worker"
        base = [str(script)] if script.exists() else [sys.executable, "-c", "from worker.cli import main; main()"]
        argv = [*base, "run", "--processes", str(processes), "--threads", str(threads)]
        env = {**env, "CEKURA_REDIS_MIN_REPLICAS": str(self.min_replicas)}
        return [spawn(f"{tag}-workers", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT)]

    def submitter(self, redis_url: str, env: dict[str, str]) -> Submitter:
        return _CekuraSubmitter(redis_url, env, self.min_replicas)


@dataclass
class CekuraWithConsole(CekuraWorker):
    """cekura-worker with its web console open: `cekura-worker console` plus a viewer that keeps the overview's event
    stream open and reloads the overview and the jobs page every 2 s (`bench/console_viewer.py`). Run beside
    `cekura` (`--only cekura --only cekura-console`) to see what an open console costs the workers."""

    name: str = "cekura-console"

    def start_workers(self, processes: int, threads: int, env: dict[str, str], log_dir: Path, tag: str) -> list[Child]:
        children = super().start_workers(processes, threads, env, log_dir, tag)
        env = {**env, "CEKURA_REDIS_MIN_REPLICAS": str(self.min_replicas)}
        port = free_port()
        script = Path(sys.executable).parent / "cekura-worker"
        base = [str(script)] if script.exists() else [sys.executable, "-c", "from worker.cli import main; main()"]
        argv = [*base, "console", "--port", str(port)]
        children.append(spawn(f"{tag}-console", argv, env=env, log_dir=log_dir, cwd=REPO_ROOT))
        viewer = [sys.executable, "-m", "bench.console_viewer", f"http://127.0.0.1:{port}"]
        children.append(spawn(f"{tag}-viewer", viewer, env=env, log_dir=log_dir, cwd=REPO_ROOT))
        return children


#: cekura-worker on a Redis with one replica attached, as `CEKURA_REDIS_MIN_REPLICAS` 0 and 1 (issue 20). Both have
#: the replica, so that the primary's cost of feeding it is the same in both and the pair differs only by `WAIT`:
#: the submission, each answer and each job's end wait for the replica's acknowledgement before being relied on.
#: `--mode replicas` runs them beside plain `cekura` (no replica), which shows what the replica alone costs.
WITH_REPLICA = CekuraWorker(name="cekura-with-replica", replicas=1, min_replicas=0)
REPLICATED = CekuraWorker(name="cekura-replicated", replicas=1, min_replicas=1)

#: Every poller, in table-column order (cekura-worker first, then the alternatives; the rest only on ask).
POLLERS: dict[str, Poller] = {
    p.name: p for p in (CekuraWorker(), BareDramatiq(), CeleryPoller(), CekuraWithConsole(), WITH_REPLICA, REPLICATED)
}
#: What `--mode short` and `--mode long` run without `--only`.
DEFAULT_POLLERS: tuple[str, ...] = ("cekura", "dramatiq", "celery")
#: What `--mode replicas` runs without `--only`: no replica, a replica and MIN_REPLICAS=0, the same and =1.
REPLICA_POLLERS: tuple[str, ...] = ("cekura", WITH_REPLICA.name, REPLICATED.name)


def cekura_available() -> bool:
    """Whether cekura-worker's CLI and client exist in this tree yet."""
    return (REPO_ROOT / "worker" / "cli.py").exists() and (REPO_ROOT / "worker" / "client.py").exists()


def read_results(client: redis.Redis, stream: str = RESULTS_STREAM) -> list[tuple[int, dict[str, str]]]:
    """All entries of the result stream as (entry id's millisecond timestamp, fields)."""
    entries: list[tuple[int, dict[str, str]]] = []
    start = "-"
    while True:
        batch = client.xrange(stream, min=start, max="+", count=5000)
        if not batch:
            return entries
        for entry_id, fields in batch:
            ms = int(entry_id.decode().split("-")[0])
            entries.append((ms, {k.decode(): v.decode(errors="replace") for k, v in fields.items()}))
        start = "(" + batch[-1][0].decode()  # exclusive: continue after the last entry read
