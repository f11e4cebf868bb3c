"""Shared fixtures: a dedicated, flushed Redis database, the Cekura simulator over real HTTP, the runtime, a real
`dramatiq.Worker`, and the Python client.

Tests use database 15 of the Redis at `TEST_REDIS_URL` (default redis://127.0.0.1:6379/15), flushed before
and after each test, never db 0. `setup()` binds the actors to the broker once per session, before any test
imports them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
import redis
import structlog

from config.settings import Settings, load_settings
from simulator import SimConfig, SimulatorHandle, start_in_thread
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup


def _per_worker(url: str, worker: str) -> str:
    """The test database of this pytest-xdist worker (`gw<n>`): the configured one minus n, so parallel workers
    never flush each other's data. Without xdist, the configured database."""
    if not worker.startswith("gw"):
        return url
    base, _, db = url.rpartition("/")
    return f"{base}/{int(db or 0) - int(worker[2:])}"


TEST_REDIS_URL = _per_worker(
    os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), os.environ.get("PYTEST_XDIST_WORKER", "")
)
SIM_KEY = "sim-key"

#: Fast polling so integration tests finish in seconds.
FAST: dict[str, Any] = {
    "cekura_poll_initial_s": 0.05,
    "cekura_poll_max_s": 0.2,
    "cekura_poll_factor": 1.5,
    "cekura_poll_jitter": 0.0,
    "cekura_retry_initial_s": 0.05,
    "cekura_retry_max_s": 0.5,
    "cekura_http_timeout_s": 2.0,
    "cekura_reconcile_grace_s": 2.0,
    "cekura_reconcile_interval_s": 0.5,
    "cekura_lease_s": 5.0,
    # Kinds that declare a slow cadence (evaluator runs poll every 30 s) poll as fast as the rest here, and no
    # schedule is learned unless a test turns learning on: poll counts stay what each test expects.
    "cekura_poll_overrides": {"evaluator.run": {"initial_s": 0.05, "factor": 1.5, "max_s": 0.2, "min_s": 0.01}},
    "cekura_learn_polling": False,
    # A lost evaluator start is looked for by its tag for 1 s (2 looks), not 2 minutes.
    "cekura_lookup_settle_s": 1.0,
    "log_level": "INFO",
    "log_format": "json",
}


#: How long a simulated job runs unless a test configures otherwise.
SIM_DURATION_S = 0.3


#: The class of a module's `structlog.get_logger(...)` before it is first used.
_LAZY_LOGGER = type(structlog.get_logger())


@pytest.fixture(autouse=True)
def _uncached_loggers() -> None:
    """Every module logger of the service made lazy again before each test. The service's logging caches a logger's
    processors on its first use (`cache_logger_on_first_use`), and `structlog.testing.capture_logs` sees only loggers
    bound after it starts: without this, whether a test sees a log line would depend on which test ran before it in
    the same pytest worker."""
    for name, module in list(sys.modules.items()):
        if name.split(".", 1)[0] in ("worker", "actors", "simulator", "config"):
            logger = getattr(module, "log", None)
            if isinstance(logger, _LAZY_LOGGER):
                logger.__dict__.pop("bind", None)  # the cached bind, set on first use


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(SimConfig(api_key=SIM_KEY, duration_s=SIM_DURATION_S))
    yield handle
    handle.stop()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(TEST_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def make_settings(sim_url: str, **overrides: Any) -> Settings:
    """Test settings: db 15, the simulator, fast polling; `overrides` win."""
    values: dict[str, Any] = {"redis_url": TEST_REDIS_URL, "cekura_api_url": sim_url, "cekura_api_key": SIM_KEY, **FAST}
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def settings(sim: SimulatorHandle, redis_client: redis.Redis) -> Settings:
    # Each test starts from the simulator's defaults, whatever the previous test changed.
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=SIM_DURATION_S, polls_to_complete=None, rate_limit_rps=0)
    return make_settings(sim.url)


@pytest.fixture
def rt(settings: Settings) -> Runtime:
    runtime = setup(settings)
    bind_actors()  # the test session is an entry point, like a worker process: actors after setup()
    return runtime


@pytest.fixture
def worker(rt: Runtime) -> Iterator[dramatiq.Worker]:
    w = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    w.start()
    yield w
    w.stop(timeout=10_000)


@pytest.fixture
def client(settings: Settings, rt: Runtime) -> Client:
    # The runtime's broker, so a submission wakes the in-process worker at once.
    return Client(settings, client=rt.redis, broker=rt.broker)
