"""Live updates: one thread per console tails the progress and result streams and feeds every open page as
server-sent events; what it reads from Redis does not grow with the number of open pages."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from config.settings import load_settings
from tests.conftest import TEST_REDIS_URL
from tests.console.consoles import Served
from tests.console.jobs import finish, make_job, progress
from tests.support import RedisServer
from worker.console import live
from worker.console.overview import Outcomes
from worker.store.jobs import JobStore

Events = list[tuple[str, dict[str, Any]]]


@contextmanager
def listening(served: Served, path: str) -> Iterator[Events]:
    """Read the event stream at `path` in a thread; the list fills as events arrive."""
    events: Events = []
    ready = threading.Event()
    stop = threading.Event()

    def read() -> None:
        with (
            httpx.Client(base_url=served.handle.url, timeout=30, trust_env=False) as http,
            http.stream("GET", path) as stream,
        ):
            ready.set()
            name = ""
            for line in stream.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[len("data: ") :])))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield events
    finally:
        stop.set()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "timed out"
        time.sleep(0.02)


def test_an_open_overview_gets_the_summary_progress_results_and_outcome_counts(
    console: Served, store: JobStore
) -> None:
    make_job(store, "fetch")
    with listening(console, "/events") as events:
        wait_until(lambda: any(name == "summary" for name, _ in events))
        summary = next(data for name, data in events if name == "summary")
        assert summary["figures"]["in_flight"] == "1"
        assert summary["tables"]["in-flight"]["rows"] == [["agent.auto_fetch", "1", "0", "0", "0", "1"]]
        progress(store.client, console.settings, "fetch", "in_progress", "validate")
        finish(store, "fetch", "completed")
        wait_until(lambda: any(name == "result" for name, _ in events))
        wait_until(lambda: any(name == "outcomes" and d["table"]["rows"] for name, d in events))
    line = next(data for name, data in events if name == "progress")
    assert line["job_id"] == "fetch" and line["current_stage"] == "validate" and line["at"].endswith("Z")
    result = next(data for name, data in events if name == "result")
    assert result["job_id"] == "fetch" and result["status"] == "completed"
    outcomes = [data for name, data in events if name == "outcomes" and data["table"]["rows"]][-1]
    assert outcomes["table"]["rows"] == [["agent.auto_fetch", "1", "0", "0", "0", "0", "0", "1"]]


def test_a_jobs_page_gets_only_its_jobs_events_and_its_record(console: Served, store: JobStore) -> None:
    make_job(store, "mine")
    make_job(store, "theirs")
    with listening(console, "/events?job=mine") as events:
        wait_until(lambda: any(name == "job" for name, _ in events))  # the record, read at once
        progress(store.client, console.settings, "theirs", "in_progress", "kb")
        progress(store.client, console.settings, "mine", "in_progress", "prompt", polls=2)
        wait_until(lambda: any(name == "job" and data["current_stage"] == "prompt" for name, data in events))
        wait_until(lambda: any(name == "progress" for name, _ in events))
    assert {name for name, _ in events} == {"job", "progress"}
    assert all(data["job_id"] == "mine" for name, data in events if name == "progress")
    record = [data for name, data in events if name == "job"][-1]
    assert record["state"] == "polling" and record["polls"] == "2" and record["next_due_at"] == ""


def test_a_jobs_record_is_refreshed_even_without_progress_events(console: Served, store: JobStore) -> None:
    make_job(store, "quiet")
    with listening(console, "/events?job=quiet") as events:
        wait_until(lambda: any(name == "job" for name, _ in events))
        store.client.hset(store.job_key("quiet"), mapping={"state": "polling", "current_stage": "kb"})
        wait_until(lambda: any(name == "job" and d["current_stage"] == "kb" for name, d in events), timeout=5)


def test_the_live_thread_stops_once_no_page_is_open(
    console: Served, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "DEFAULT_IDLE_S", 0.1)
    hub = console.handle.app.state.console.hub
    with listening(console, "/events"):
        wait_until(lambda: hub._thread is not None)
    wait_until(lambda: hub._thread is None, timeout=10)


def test_outcomes_count_only_the_last_hour() -> None:
    outcomes = Outcomes(window_s=3600)
    hour = 3_600_000
    outcomes.add(10 * hour, "agent.auto_fetch", "completed")
    outcomes.add(10 * hour + 1, "agent.auto_fetch", "failed")
    outcomes.add(11 * hour - 60_000, "scenario.agent", "completed")
    outcomes.add(11 * hour, "", "rejected")
    assert outcomes.table()["rows"] == [
        ["(none)", "0", "0", "0", "0", "0", "1", "1"],
        ["agent.auto_fetch", "1", "0", "1", "0", "0", "0", "2"],
        ["scenario.agent", "1", "0", "0", "0", "0", "0", "1"],
    ]
    outcomes.advance(11 * hour + 2 * 60_000)
    assert [row[0] for row in outcomes.table()["rows"]] == ["(none)", "scenario.agent"]


def _commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k not in ("cmdstat_info", "cmdstat_config"))


@pytest.mark.slow
def test_what_the_console_reads_does_not_grow_with_the_number_of_open_pages(
    serve: Callable[..., Served], tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Counts every command the console sends to a private Redis while pages are open and events flow."""
    server = RedisServer(dir=tmp_path)
    server.start()
    try:
        served = serve(redis_url=server.url, cekura_results_stream="cekura:results")
        store = JobStore(server.client(), served.settings)
        admin = server.client()
        per_pages: dict[int, float] = {}
        for pages in (1, 5):
            with contextlib.ExitStack() as stack:
                for n in range(pages):
                    stack.enter_context(listening(served, "/events" if n % 2 == 0 else f"/events?job=job-{n}"))
                time.sleep(1.0)  # the feed's start-up reads
                admin.config_resetstat()
                began = time.monotonic()
                for n in range(30):  # events at 20 a second, as a busy service makes them
                    make_job(store, f"p{pages}-{n}")
                    finish(store, f"p{pages}-{n}", "completed")
                    time.sleep(0.05)
                time.sleep(max(0.0, 3.0 - (time.monotonic() - began)))
                writes = 30 * 2  # our own submit and finish scripts
                per_pages[pages] = (_commands(admin) - writes) / (time.monotonic() - began)
        assert per_pages[5] < per_pages[1] * 2 + 2, per_pages
    finally:
        server.stop()


def test_pages_loading_at_once_share_one_summary(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> None:
    """A summary reads every active job: however many overviews load at once, one computes it, the others wait."""
    calls: list[float] = []

    def slow_summarize(client: redis.Redis, settings: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(time.monotonic())
        time.sleep(0.3)
        return real_summarize(client, settings, **kwargs)

    real_summarize = live.summarize
    monkeypatch.setattr(live, "summarize", slow_summarize)
    settings = load_settings(redis_url=TEST_REDIS_URL)
    hub = live.Hub(settings)
    got: list[dict[str, Any]] = []
    threads = [threading.Thread(target=lambda: got.append(hub.summary(redis_client))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)


def test_a_summary_that_fails_on_odd_data_does_not_fail_the_overview(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    def broken(client: redis.Redis, settings: Any) -> dict[str, Any]:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    monkeypatch.setattr(live, "summarize", broken)
    hub = live.Hub(load_settings(redis_url=TEST_REDIS_URL))
    assert hub.summary(redis_client)["figures"]["in_flight"] == "?"
    assert "could not be made" in hub.summary_problem
