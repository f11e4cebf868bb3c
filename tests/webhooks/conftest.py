"""Fixtures of the webhook tests: settings with slow evaluator runs and webhooks on, a worker, the receiver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from config.settings import Settings
from simulator import SimulatorHandle
from tests.conftest import make_settings
from tests.webhooks.receivers import SLOW, ReceiverProcess
from worker.client import Client
from worker.runtime.app import Runtime, bind_actors, setup


@pytest.fixture
def slow_settings(sim: SimulatorHandle, redis_client: Any) -> Settings:
    sim.reset()
    sim.clear_faults()
    sim.configure(duration_s=0.3, polls_to_complete=None, rate_limit_rps=0)
    return make_settings(sim.url, cekura_poll_overrides=SLOW, cekura_webhooks=True, cekura_webhook_safety_net_s=60)


@pytest.fixture
def running(slow_settings: Settings) -> Iterator[tuple[Runtime, Client]]:
    rt = setup(slow_settings)
    bind_actors()
    worker = dramatiq.Worker(rt.broker, worker_threads=4, worker_timeout=100)
    worker.start()
    client = Client(slow_settings, client=rt.redis, broker=rt.broker)
    yield rt, client
    worker.stop(timeout=10_000)


@pytest.fixture
def receiver(slow_settings: Settings, tmp_path: Path) -> Iterator[ReceiverProcess]:
    process = ReceiverProcess(slow_settings, tmp_path)
    yield process
    process.stop()
