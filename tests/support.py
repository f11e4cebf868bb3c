"""Helpers shared by several test modules: polling for a condition, a free loopback port, the environment for a
`cekura-worker` subprocess, and a `cekura-worker run` that cleans up after itself.

They live here, one copy each, so a fix to how tests wait or kill processes reaches every test that uses them
(fixtures belong in `conftest.py`; these are plain functions that tests call).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from pydantic import SecretStr

from config.settings import Settings
from worker.runtime.supervisor import run_in_subprocess

T = TypeVar("T")

#: How many characters of a worker's log a timed-out wait shows.
LOG_TAIL_CHARS = 3000


def wait_for(
    probe: Callable[[], T | None],
    timeout: float = 10.0,
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
            pytest.fail(message)
        time.sleep(interval)


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(settings: Settings | None = None, **values: object) -> dict[str, str]:
    """This process's environment with `settings` (then `values`) as the service's environment variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CEKURA_", "REDIS_", "PROMETHEUS_", "LOG_"))}
    fields = settings.model_dump() if settings is not None else {}
    for name, value in {**fields, **values}.items():
        if value is not None:
            env[name.upper()] = str(value.get_secret_value() if isinstance(value, SecretStr) else value)
    return env


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
