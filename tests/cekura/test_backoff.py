"""Delays: the poll schedule, transient-retry backoff and `Retry-After` parsing as pure functions, and the poll
schedule as the Cekura simulator observes it through a real worker."""

from __future__ import annotations

import itertools
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import dramatiq
import pytest

from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from worker.cekura.backoff import DEFAULT_MAX_RETRY_AFTER_S, parse_retry_after, poll_delay, retry_delay
from worker.client import Client
from worker.runtime.app import Runtime
from worker.store.jobs import Phase


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cekura_poll_initial_s": 2.0,
        "cekura_poll_factor": 1.5,
        "cekura_poll_max_s": 30.0,
        "cekura_poll_jitter": 0.0,
        "cekura_retry_initial_s": 1.0,
        "cekura_retry_max_s": 60.0,
    }
    values.update(overrides)
    return load_settings(**values)


# -- poll_delay ---------------------------------------------------------------------------------------------------


def test_poll_delay_grows_by_the_factor_from_the_initial_interval() -> None:
    s = _settings()
    assert [poll_delay(n, s) for n in range(1, 6)] == pytest.approx([2.0, 3.0, 4.5, 6.75, 10.125])


def test_poll_delay_before_any_poll_is_the_initial_interval() -> None:
    s = _settings()
    assert poll_delay(0, s) == pytest.approx(2.0)
    assert poll_delay(-3, s) == pytest.approx(2.0)


def test_poll_delay_is_capped_at_the_maximum() -> None:
    s = _settings()
    delays = [poll_delay(n, s) for n in range(1, 40)]
    assert max(delays) == pytest.approx(30.0)
    assert delays[-1] == pytest.approx(30.0)
    assert delays == sorted(delays)  # never shrinks once capped


def test_poll_delay_stays_at_the_cap_for_a_day_long_job() -> None:
    # CEKURA_JOB_DEADLINE_MAX_S (86400) at CEKURA_POLL_MAX_S (30) is 2880 polls.
    assert poll_delay(2880, _settings()) == pytest.approx(30.0)


def test_poll_delay_with_factor_one_is_constant() -> None:
    s = _settings(cekura_poll_factor=1.0, cekura_poll_initial_s=5.0)
    assert {poll_delay(n, s) for n in range(1, 20)} == {5.0}


@pytest.mark.parametrize("polls_done", [1, 3, 50])
def test_poll_jitter_stays_within_its_bounds(polls_done: int) -> None:
    s = _settings(cekura_poll_jitter=0.2)
    base = poll_delay(polls_done, _settings())
    rng = random.Random(1234)
    samples = [poll_delay(polls_done, s, rng) for _ in range(2000)]
    assert min(samples) >= base * 0.8
    assert max(samples) <= base * 1.2
    # jitter actually spreads the delays over most of its range, on both sides of the base
    assert min(samples) < base * 0.85
    assert max(samples) > base * 1.15


def test_poll_jitter_may_push_past_the_cap_by_at_most_its_fraction() -> None:
    s = _settings(cekura_poll_jitter=0.1)
    rng = random.Random(7)
    samples = [poll_delay(100, s, rng) for _ in range(500)]
    assert all(27.0 <= d <= 33.0 for d in samples)


def test_zero_jitter_gives_the_exact_schedule() -> None:
    s = _settings(cekura_poll_jitter=0.0)
    rng = random.Random(99)
    assert {poll_delay(2, s, rng) for _ in range(50)} == {3.0}


# -- retry_delay --------------------------------------------------------------------------------------------------


def test_retry_delay_doubles_per_consecutive_failure_within_jitter() -> None:
    s = _settings()
    rng = random.Random(5)
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0)]:
        samples = [retry_delay(attempt, s, rng) for _ in range(300)]
        assert all(base * 0.8 <= d <= base * 1.2 for d in samples), (attempt, min(samples), max(samples))


def test_retry_delay_is_capped_at_the_retry_maximum() -> None:
    s = _settings(cekura_retry_max_s=10.0)
    rng = random.Random(6)
    samples = [retry_delay(attempt, s, rng) for attempt in range(5, 200) for _ in range(5)]
    assert all(8.0 <= d <= 12.0 for d in samples)


def test_retry_delay_for_attempt_zero_is_the_initial_delay() -> None:
    s = _settings(cekura_retry_initial_s=0.5)
    rng = random.Random(8)
    assert all(0.4 <= retry_delay(0, s, rng) <= 0.6 for _ in range(100))


# -- parse_retry_after --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("1", 1.0), ("120", 120.0), (" 30 ", 30.0)])
def test_retry_after_in_seconds_is_read(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_in_seconds_is_capped() -> None:
    assert parse_retry_after("86400") == DEFAULT_MAX_RETRY_AFTER_S
    assert parse_retry_after("99999999999999999999999") == DEFAULT_MAX_RETRY_AFTER_S


def test_retry_after_as_http_date_is_seconds_from_now() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert header.endswith("GMT")
    assert parse_retry_after(header, now=now) == pytest.approx(90.0)


def test_retry_after_as_http_date_without_zone_is_read_as_utc() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Mon, 23 Nov 2026 12:00:45", now=now) == pytest.approx(45.0)


def test_retry_after_date_in_the_past_means_no_wait() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


def test_retry_after_date_far_ahead_is_capped() -> None:
    now = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
    header = format_datetime(now + timedelta(days=2), usegmt=True)
    assert parse_retry_after(header, now=now) == DEFAULT_MAX_RETRY_AFTER_S


def test_retry_after_date_uses_the_current_time_by_default() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=100), usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None
    assert 90.0 <= seconds <= 100.0


@pytest.mark.parametrize(
    "value",
    [None, "", "   ", "soon", "-5", "1.5", "+5", "3 0", "1e3", "Wed, 99 Foo 2015", "NaN", "inf", "0x10"],
)
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_retry_after_with_non_ascii_digits_is_none() -> None:
    assert parse_retry_after("\u00b2") is None


# -- the schedule as Cekura sees it -------------------------------------------------------------------------------

#: Poll schedule for the spacing test: 0.08 s, then x2.5 per poll, capped at 1 s.
SPACING = {
    "cekura_poll_initial_s": 0.08,
    "cekura_poll_factor": 2.5,
    "cekura_poll_max_s": 1.0,
    "cekura_poll_jitter": 0.0,
}


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The shared test settings, with a test's `indirect` overrides (validated like any other settings)."""
    overrides = getattr(request, "param", {})
    return load_settings(**{**settings.model_dump(), **overrides}) if overrides else settings


def _poll_times(sim: SimulatorHandle, progress_id: str) -> list[float]:
    return list(sim.polls().get(progress_id, {}).get("times", []))


@pytest.mark.parametrize("settings", [SPACING], indirect=True)
def test_progress_polls_reach_cekura_on_the_backoff_schedule(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delay each poll step schedules its next poll with, as it records it (polls so far -> delay in ms).
    scheduled: dict[int, int] = {}
    real_advance = rt.store.advance

    def recording_advance(job_id: str, phase: Phase, seq: int, **kwargs: Any) -> Any:
        if phase is Phase.POLL and "polls" in kwargs["fields"]:
            scheduled.setdefault(int(kwargs["fields"]["polls"]), kwargs["delay_ms"])
        return real_advance(job_id, phase, seq, **kwargs)

    monkeypatch.setattr(rt.store, "advance", recording_advance)
    job_id = client.submit("agent.auto_fetch", {"agent_id": 777})  # never finishes
    times: list[float] = []
    give_up = time.monotonic() + 20
    while time.monotonic() < give_up:
        view = client.status(job_id)
        assert view is not None
        if view.get("progress_id"):
            times = _poll_times(sim, view["progress_id"])
            if len(times) >= 5:
                break
        time.sleep(0.05)
    assert client.cancel(job_id).result == "cancelled"
    assert len(times) >= 5, times
    gaps = [b - a for a, b in itertools.pairwise(times)][:4]
    # After poll n the next one is due poll_delay(n + 1): 0.2, 0.5, then capped at 1.0 (uncapped: 1.25, 3.125).
    expected = [0.2, 0.5, 1.0, 1.0]
    for gap, want in zip(gaps, expected, strict=True):
        assert gap >= want * 0.9, (gaps, expected)  # never early
    # Growing by the factor while under the cap, then capped: the delays as scheduled (the gaps above are those plus
    # however long a busy machine took to make each poll, so they can only show that no poll came early).
    delays = [scheduled.get(polls) for polls in range(1, 5)]
    assert all(d is not None and abs(d - want * 1000) <= 1 for d, want in zip(delays, expected, strict=True)), (
        delays,
        expected,
    )
