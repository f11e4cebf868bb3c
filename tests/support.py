"""The one home for helpers that tests and the benchmark share: polling for a condition, a free loopback port,
killing a process group, waiting for a child's log line, a private `redis-server`, the environment for a
`cekura-worker` subprocess, and a `cekura-worker run` that cleans up after itself.

They live here, one copy each, so a fix to how tests and `bench/` wait, pick ports, start Redis or kill processes
reaches every caller (fixtures belong in `conftest.py`; these are plain functions that tests call). `bench/`
imports this module too, so nothing here imports pytest at import time: `wait_for` fetches it only to fail a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import psutil
import redis
from pydantic import SecretStr

from config.settings import Settings
from worker.runtime.supervisor import run_in_subprocess

T = TypeVar("T")

#: How many characters of a worker's log a timed-out wait shows.
LOG_TAIL_CHARS = 3000

#: The prefixes of the service's environment variables (see `config/settings.py`).
SERVICE_ENV_PREFIXES = ("CEKURA_", "REDIS_", "PROMETHEUS_", "LOG_")

#: Seconds a private redis-server gets to answer PING.
REDIS_START_TIMEOUT_S = 30.0


#: How long `wait_for` waits unless told otherwise: only a failure takes this long, and a 2-core machine running two
#: pytest workers, Redis and worker subprocesses can stall for seconds.
WAIT_TIMEOUT_S = 30.0


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = WAIT_TIMEOUT_S,
    what: str = "condition",
    log_path: Path | None = None,
    *,
    interval: float = 0.02,
) -> T:
    """Poll `probe` every `interval` seconds until it returns something truthy and return that; fail the test
    after `timeout` seconds.

    With `log_path`, the failure shows the end of that log (a subprocess's output), which is usually the reason.
    """
    give_up = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > give_up:
            message = f"timed out after {timeout:g}s waiting for {what}"
            if log_path is not None and log_path.exists():
                message += "\n" + log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
            import pytest  # here, not at the top: bench/ imports this module and runs without pytest

            pytest.fail(message)
        time.sleep(interval)


def pending_messages(client: redis.Redis, namespace: str, queue: str, job_id: str | None = None) -> int:
    """How many messages of the Dramatiq queue `queue` (of the broker namespace `namespace`) are queued, delayed or
    held by a consumer (fetched and not yet acked); with `job_id`, only those whose first argument is that job.

    Where each message is is read in one transaction: one moving from the delayed set to the queue to an ack set
    while this looks is seen in exactly one of them, never missed. A message still counts until its ack reaches
    Redis, so 0 means every message that could still make a Cekura call (for that job) has run to the end.
    """
    prefix = f"{namespace}:{queue}"
    acks = [key for key in client.scan_iter(f"{namespace}:__acks__.*") if key.decode().endswith(f".{queue}")]
    with client.pipeline(transaction=True) as pipe:
        pipe.lrange(prefix, 0, -1)
        pipe.zrange(f"{prefix}.ZQ", 0, -1)
        for key in acks:
            pipe.smembers(key)
        queued, delayed, *held = pipe.execute()
    ids = [*queued, *delayed, *(member for members in held for member in members)]
    if job_id is None or not ids:
        return len(ids)
    bodies = client.hmget(f"{prefix}.msgs", ids)  # one acked meanwhile reads None: it has run
    return sum(1 for body in bodies if body is not None and json.loads(body)["args"][:1] == [job_id])


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def without_service_env(*drop: str) -> dict[str, str]:
    """This process's environment without any of the service's variables (nor the names in `drop`), so only what
    a caller passes reaches a `cekura-worker` subprocess."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_ENV_PREFIXES) and k not in drop}


def service_env(settings: Settings | None = None, **values: object) -> dict[str, str]:
    """This process's environment with `settings` (then `values`) as the service's environment variables."""
    env = without_service_env()
    fields = settings.model_dump() if settings is not None else {}
    for name, value in {**fields, **values}.items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, dict | list):
            env[name.upper()] = json.dumps(value)  # complex settings are JSON in the environment
        elif value is not None:
            env[name.upper()] = str(value)
    return env


# -- process groups -------------------------------------------------------------------------------------------


def running(proc: psutil.Process) -> bool:
    """Whether `proc` still runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return bool(proc.is_running()) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_group(popen: subprocess.Popen[bytes], *, grace_s: float = 3.0, reap_timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by `popen`, SIGKILL what is left after `grace_s` (and any descendant that left
    the group), then reap the leader, waiting at most `reap_timeout_s`."""
    members: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        members = psutil.Process(popen.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (popen.poll() is None or any(running(p) for p in members)):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(popen.pid, signal.SIGKILL)
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(timeout=reap_timeout_s)


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` still exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_line(
    popen: subprocess.Popen[bytes], log_path: Path, pattern: re.Pattern[str], timeout: float
) -> re.Match[str] | None:
    """Wait until `pattern` appears in `log_path` (the output of `popen`) and return the match; None if `popen`
    exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not (match := pattern.search(log_path.read_text(errors="replace"))):
        if popen.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return match


# -- redis-server ---------------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    """The redis-server on PATH (else Debian's /usr/bin/redis-server); RuntimeError if there is neither."""
    binary = shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    return binary


def redis_server_argv(
    port: int, *, dir: Path | None = None, password: str | None = None, persistent: bool = False
) -> list[str]:
    """A loopback-only redis-server on `port`: no RDB snapshots; with `persistent` an AOF fsynced on every write."""
    argv = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1"]
    if dir is not None:
        argv += ["--dir", str(dir)]
    argv += ["--daemonize", "no", "--save", ""]
    if persistent:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    else:
        argv += ["--appendonly", "no"]
    if password:
        argv += ["--requirepass", password]
    return argv


def wait_redis_ready(popen: subprocess.Popen[bytes], probe: redis.Redis, timeout: float) -> bool:
    """Wait until the redis-server `popen` answers PING through `probe` (True), exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            return False
        try:
            if probe.ping():
                return True
        except redis.ConnectionError:  # includes BusyLoadingError: still reading its AOF
            pass
        time.sleep(0.05)
    return False


@dataclass
class RedisServer:
    """A private redis-server on loopback; `start()` after `shutdown()` or `kill()` brings it back on the same port
    and data dir (with `persistent`, its AOF is fsynced on every write, so nothing acknowledged is lost)."""

    dir: Path
    port: int = 0
    password: str | None = None
    persistent: bool = False
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def start(self) -> None:
        """Start the server (on a fresh free port the first time) and wait until it answers PING."""
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            argv = redis_server_argv(self.port, dir=self.dir, password=self.password, persistent=self.persistent)
            if self._log is not None:
                self._log.close()
            self._log = (self.dir / "redis-server.log").open("ab")
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
            with self.client(socket_connect_timeout=1, socket_timeout=1) as probe:
                if wait_redis_ready(self.popen, probe, REDIS_START_TIMEOUT_S):
                    return
            self.stop()
            if self.persistent:  # keep the port: a restart must come back where the workers look
                time.sleep(0.5)
            else:
                self.port = 0
        raise RuntimeError(f"redis-server did not start; log in {self.dir / 'redis-server.log'}")

    def shutdown(self) -> None:
        """Stop the server the way an operator would (SHUTDOWN: AOF flushed), and wait until it has exited."""
        with contextlib.suppress(redis.ConnectionError), self.client() as admin:
            admin.shutdown()
        if self.popen is not None:
            self.popen.wait(timeout=15)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.popen is not None:
            self.popen.kill()
            self.popen.wait(timeout=15)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            kill_group(self.popen, grace_s=2.0)
        if self._log is not None:
            self._log.close()
            self._log = None


# -- cekura-worker run ----------------------------------------------------------------------------------------


@contextmanager
def running_workers(
    env: Mapping[str, str], log_path: Path, *, processes: int = 1, threads: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """`cekura-worker run` in its own process group, logging to `log_path`; the whole group dies on the way out."""
    with (
        log_path.open("wb") as log,
        run_in_subprocess(
            env, processes=processes, threads=threads, stdout=log, cwd=log_path.parent, stop_timeout_s=20
        ) as process,
    ):
        yield process


#: The result event's fields as the issue specifies them, written out here so the tests pin the contract
#: independently of `worker.store.jobs.RESULT_FIELDS` (which `test_result_fields_constant_matches_the_contract` checks).
#: A `rejected` event has these too (see `REJECTED_EVENT_FIELDS`), but answers a request, not a job: its `job_id`
#: is always empty.
RESULT_EVENT_FIELDS = frozenset(
    {
        "job_id",
        "kind",
        "status",
        "cekura_status",
        "progress_id",
        "result",
        "error",
        "polls",
        "submitted_at",
        "finished_at",
        "metadata",
    }
)

#: A `rejected` event's fields: the result event's, with `job_id` always empty (a rejected request never became a
#: job), plus `request_id` (the request-stream entry) and `requested_job_id` (the job id the request asked for, when
#: it could be read safely: a valid id in a request within the size limit; else empty).
REJECTED_EVENT_FIELDS = RESULT_EVENT_FIELDS | {"request_id", "requested_job_id"}
