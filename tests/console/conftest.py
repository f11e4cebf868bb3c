"""Fixtures for the console's tests: a console serving from a thread (real uvicorn, real HTTP) against the test
Redis database, an HTTP client that keeps cookies like a browser, and the job store to make jobs with.

The browser tests (`test_console_browser.py`) run the whole service as processes instead, through the system
tests' `System`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from config.settings import load_settings
from tests.conftest import TEST_REDIS_URL
from tests.console.consoles import TOKEN, Served
from worker.console import serve_in_thread
from worker.store.jobs import JobStore


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[JobStore]:
    """The job store on the tests' Redis database (flushed before and after each test)."""
    client = redis.Redis.from_url(TEST_REDIS_URL)
    yield JobStore(client, load_settings(redis_url=TEST_REDIS_URL))
    client.close()


@pytest.fixture
def serve(redis_client: redis.Redis) -> Iterator[Callable[..., Served]]:
    """Start a console with `token` (None: read-only) and settings `overrides`; each is stopped after the test."""
    started: list[Served] = []

    def start(token: str | None = TOKEN, **overrides: Any) -> Served:
        settings = load_settings(**{"redis_url": TEST_REDIS_URL, "cekura_console_token": token, **overrides})
        handle = serve_in_thread(settings)
        http = httpx.Client(base_url=handle.url, timeout=15, trust_env=False)
        served = Served(handle, http, settings)
        started.append(served)
        return served

    yield start
    for served in started:
        served.http.close()
        served.handle.stop()


@pytest.fixture
def console(serve: Callable[..., Served]) -> Served:
    """A console with the token configured."""
    return serve()
