"""Learned polling schedules: the histogram a kind's jobs fill, the schedule computed from it and the limits that
hold whatever was learned, against a real Redis (`PollingBook`) and as pure functions (`worker.cekura.durations`)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry
from structlog.testing import capture_logs

from config.settings import Settings, load_settings
from tests.conftest import TEST_REDIS_URL
from tests.support import free_port
from worker.cekura import polling
from worker.cekura.backoff import capped_exponential
from worker.cekura.durations import EDGES, Distribution, Limits, bucket_of, cost, plan, spread
from worker.cekura.polling import PollingBook, PollPlan

KIND = "agent.auto_fetch"
DECLARED = PollPlan()  # the settings' schedule below: 2 s, x1.5, capped at 30 s


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": TEST_REDIS_URL,
        "cekura_poll_initial_s": 2.0,
        "cekura_poll_factor": 1.5,
        "cekura_poll_max_s": 30.0,
        "cekura_poll_min_s": 1.0,
        "cekura_poll_jitter": 0.0,
        "cekura_learn_warmup_jobs": 20,
        "cekura_learn_window_jobs": 200,
        **overrides,
    }
    return load_settings(**values)


@pytest.fixture
def book(redis_client: redis.Redis) -> Iterator[PollingBook]:
    yield PollingBook(redis_client, _settings())


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(sigma * rng.gauss(0, 1))


def _teach(book: PollingBook, durations: list[float], *, kind: str = KIND, width: float = 0.5) -> None:
    """Record jobs that ended at these durations, each seen between two polls `width` s apart."""
    for d in durations:
        book.observe(kind, max(0.0, d - width), d)


def _poll_times(book: PollingBook, plan_: PollPlan, duration: float, *, kind: str = KIND) -> list[float]:
    """When a job of `duration` s is polled, asking the book before each poll as the actors do."""
    times, elapsed, poll = [], 0.0, 1
    while True:
        elapsed += book.next_delay_s(kind, plan_, poll, elapsed)
        times.append(elapsed)
        if elapsed >= duration:
            return times
        poll += 1


def test_without_history_every_kind_polls_on_its_declared_schedule(book: PollingBook) -> None:
    delays = [book.next_delay_s(KIND, DECLARED, poll, 0.0) for poll in range(1, 12)]
    assert delays == [capped_exponential(2.0, 1.5, poll - 1, 30.0) for poll in range(1, 12)]
    flat = PollPlan(initial_s=30.0, factor=1.0, max_s=60.0)
    assert {book.next_delay_s("evaluator.run", flat, poll, 30.0 * poll) for poll in range(1, 6)} == {30.0}


def test_below_the_warm_up_the_declared_schedule_stays(book: PollingBook) -> None:
    _teach(book, [8.0] * 19)
    assert book.schedule(KIND, DECLARED).times is None
    _teach(book, [8.0])
    book._entries.clear()  # read again now rather than after CEKURA_LEARN_REFRESH_S
    assert book.schedule(KIND, DECLARED).times is not None


def test_learned_poll_times_increase_and_every_interval_is_within_the_limits(book: PollingBook) -> None:
    rng = random.Random(1)
    _teach(book, [_lognormal(rng, 8, 0.8) for _ in range(200)])
    schedule = book.schedule(KIND, DECLARED)
    assert schedule.times is not None
    gaps = [b - a for a, b in itertools.pairwise((0.0, *schedule.times))]
    assert all(1.0 - 1e-9 <= gap <= 30.0 + 1e-9 for gap in gaps), gaps
    for duration in (0.5, 3.0, 8.0, 25.0, 90.0, 600.0, 4000.0):
        times = _poll_times(book, DECLARED, duration)
        gaps = [b - a for a, b in itertools.pairwise((0.0, *times))]
        assert all(b > a for a, b in itertools.pairwise(times)), times
        assert all(1.0 - 1e-9 <= gap <= 30.0 + 1e-9 for gap in gaps), (duration, gaps)


def test_learned_schedule_needs_fewer_calls_at_no_worse_mean_and_p95_delay() -> None:
    rng = random.Random(2)
    weights = [0.0] * len(EDGES[:-1])
    for _ in range(400):
        weights[bucket_of(_lognormal(rng, 30, 0.5))] += 0.5  # halved once, as the window keeps it
    limits = Limits(initial_s=2.0, factor=1.5, max_s=30.0, min_s=1.0)
    schedule = plan(weights, limits, warmup=20)
    assert schedule.times is not None and schedule.learned is not None and schedule.declared is not None
    assert schedule.learned.calls <= 0.6 * schedule.declared.calls
    assert schedule.learned.mean_delay_s <= schedule.declared.mean_delay_s
    assert schedule.learned.p95_delay_s <= schedule.declared.p95_delay_s
    # Replayed on fresh draws from the same distribution, not only in expectation:
    replay = [_lognormal(rng, 30, 0.5) for _ in range(2000)]
    learned = _replay(schedule.times, replay, limits)
    declared = _replay(tuple(limits.declared_times(1e5)), replay, limits)
    assert learned[0] <= 0.6 * declared[0]
    assert learned[1] <= declared[1] * 1.05  # p95 delay, within sampling noise


def test_the_delay_target_trades_calls_for_delay_against_the_declared_schedule_scaled_alike() -> None:
    rng = random.Random(6)
    weights = [0.0] * len(EDGES[:-1])
    for _ in range(200):
        weights[bucket_of(_lognormal(rng, 8, 0.8))] += 1
    limits = Limits(initial_s=2.0, factor=1.5, max_s=30.0, min_s=1.0)
    plans = {target: plan(weights, limits, warmup=20, target=target) for target in (0.5, 1.0, 2.0)}
    learned = {t: p.learned for t, p in plans.items()}
    assert all(cost is not None for cost in learned.values())
    assert learned[0.5].calls > learned[1.0].calls > learned[2.0].calls
    for schedule in plans.values():  # each against the declared schedule with its intervals x the target
        assert schedule.declared is not None and schedule.learned is not None
        assert schedule.learned.p95_delay_s <= schedule.declared.p95_delay_s
        assert schedule.learned.calls <= 0.9 * schedule.declared.calls
    assert plans[0.5].declared.calls > plans[1.0].declared.calls


def _replay(times: tuple[float, ...], durations: list[float], limits: Limits) -> tuple[float, float]:
    """Mean calls and p95 delay of polling at `times` (then every max_s) for these durations."""
    calls, delays = [], []
    for d in durations:
        polls = [t for t in times if t < d]
        last = (
            times[len(polls)]
            if len(polls) < len(times)
            else times[-1] + limits.max_s * math.ceil((d - times[-1]) / limits.max_s)
        )
        calls.append(len(polls) + 1)
        delays.append(last - d)
    delays.sort()
    return sum(calls) / len(calls), delays[int(0.95 * len(delays))]


def test_a_declared_schedule_that_already_fits_is_kept() -> None:
    rng = random.Random(3)
    weights = [0.0] * len(EDGES[:-1])
    for _ in range(200):
        weights[bucket_of(_lognormal(rng, 600, 0.8))] += 1
    schedule = plan(weights, Limits(initial_s=30.0, factor=1.0, max_s=60.0, min_s=1.0), warmup=20)
    assert schedule.times is None  # polling every 30 s a job of minutes to an hour: little to gain, so no risk taken
    assert schedule.declared is not None


def test_limits_that_leave_one_interval_keep_it_without_a_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """min_s and initial_s at max_s (a fixed interval, as the benchmark polls every 1 ms): no schedule can differ from
    the declared one, and searching for one took about 1 s of CPU every refresh (`cost` over 1,000 intervals)."""
    from worker.cekura import durations

    searched: list[int] = []
    monkeypatch.setattr(durations, "cost", lambda *a, **k: searched.append(1) or cost(*a, **k))
    weights = [0.0] * len(EDGES[:-1])
    for seconds in (0.4, 0.6, 0.8, 1.0) * 10:
        weights[bucket_of(seconds)] += 1
    fixed = Limits(initial_s=0.001, factor=1.0, max_s=0.001, min_s=0.001)
    schedule = plan(weights, fixed, warmup=20)
    assert schedule.times is None and schedule.delay_after(0.3, 300) == 0.001 and not searched
    plan(weights, Limits(initial_s=0.001, factor=1.0, max_s=0.002, min_s=0.001), warmup=20)
    assert searched  # one step of freedom is searched as before


def test_a_job_far_past_anything_seen_is_polled_every_max_s_and_never_starved(book: PollingBook) -> None:
    _teach(book, [8.0] * 100)
    schedule = book.schedule(KIND, DECLARED)
    assert schedule.times is not None and schedule.far_s > schedule.times[-1]
    # Past the learned support but short of the far tail: never slower than the declared schedule there.
    between = (schedule.times[-1] + schedule.far_s) / 2
    assert book.next_delay_s(KIND, DECLARED, 50, between) <= 30.0
    for elapsed in (schedule.far_s + 1, 3600.0, 86_000.0):
        assert book.next_delay_s(KIND, DECLARED, 500, elapsed) == 30.0
    times = _poll_times(book, DECLARED, 3 * 3600)
    assert times[-1] - times[-2] == 30.0 and len(times) < 3 * 3600 / 30 + 20


def test_the_deadline_caps_whatever_was_learned(book: PollingBook) -> None:
    """The book's delay is finite and at most max_s (plus jitter): the actors cap it at the job's deadline, so a
    job times out on time whatever was learned (shown end to end in tests/system/test_learned_polling.py)."""
    _teach(book, [600.0] * 50, width=30.0)
    jittery = PollingBook(book.client, _settings(cekura_poll_jitter=0.1))
    for elapsed in (0.0, 100.0, 590.0, 1200.0, 10**6):
        assert 0 < jittery.next_delay_s(KIND, DECLARED, 3, elapsed) <= 30.0 * 1.1


def test_a_poll_that_came_early_by_its_jitter_is_not_followed_by_an_extra_one(book: PollingBook) -> None:
    rng = random.Random(4)
    _teach(book, [_lognormal(rng, 8, 0.8) for _ in range(100)])
    times = book.schedule(KIND, DECLARED).times
    assert times is not None and len(times) > 3
    early = times[1] - 0.1 * (times[1] - times[0])
    assert book.next_delay_s(KIND, DECLARED, 3, early) == pytest.approx(times[2] - early)
    late = times[1] + 0.01
    assert book.next_delay_s(KIND, DECLARED, 3, late) == pytest.approx(times[2] - late)


def test_an_observation_is_spread_over_the_interval_it_covers() -> None:
    shares = spread(10.0, 20.0)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert set(shares) == set(range(bucket_of(10.0), bucket_of(20.0) + 1))
    for bucket, share in shares.items():  # evenly in time without history
        overlap = min(20.0, EDGES[bucket + 1]) - max(10.0, EDGES[bucket])
        assert share == pytest.approx(overlap / 10.0)
    # With history, the share follows what is already known about where jobs end.
    history = [0.0] * len(EDGES[:-1])
    history[bucket_of(18.0)] = 50.0
    informed = spread(10.0, 20.0, Distribution(history))
    assert max(informed, key=lambda b: informed[b]) in (bucket_of(18.0) - 1, bucket_of(18.0), bucket_of(18.0) + 1)
    assert informed[bucket_of(10.0)] < shares[bucket_of(10.0)] / 2


def test_observe_records_each_job_once_in_one_round_trip(book: PollingBook, redis_client: redis.Redis) -> None:
    calls: list[Any] = []
    execute = book._record._execute
    book._record._execute = lambda *args: calls.append(args) or execute(*args)
    book.observe(KIND, 4.0, 6.0)
    assert len(calls) == 1 and calls[0][0] == "EVALSHA"
    stored = {k.decode(): v.decode() for k, v in redis_client.hgetall(book.key(KIND)).items()}
    assert stored["jobs"] == "1" and float(stored["weight"]) == pytest.approx(1.0)
    assert sum(float(v) for k, v in stored.items() if k.startswith("b")) == pytest.approx(1.0)


def test_decay_halves_old_history_and_new_durations_take_over(redis_client: redis.Redis) -> None:
    book = PollingBook(redis_client, _settings(cekura_learn_window_jobs=40, cekura_learn_warmup_jobs=10))
    _teach(book, [5.0] * 40)
    jobs, weights = book._read(KIND)
    assert jobs == 40 and sum(weights) == pytest.approx(40.0, rel=0.01)
    _teach(book, [5.0])
    assert sum(book._read(KIND)[1]) == pytest.approx(20.5, rel=0.01)  # passed the window: halved
    _teach(book, [60.0] * 100)
    jobs, weights = book._read(KIND)
    assert jobs == 141 and sum(weights) <= 40.0
    assert Distribution(weights).quantile(0.5) == pytest.approx(60.0, rel=0.3)
    assert Distribution(weights).cdf(10.0) < 0.05  # five halvings later the old 5 s jobs weigh about 1/32


def test_observe_never_raises_into_the_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh logger: the module's own may be cached already (the service's logging caches loggers on first use,
    # and another test in this process may have used it), and capture_logs only sees loggers made after it starts.
    monkeypatch.setattr(polling, "log", structlog.get_logger(polling.__name__))
    dead = redis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    book = PollingBook(dead, _settings())
    with capture_logs() as logs:
        book.observe(KIND, 1.0, 2.0)
        book.observe(KIND, math.nan, 2.0)
        assert book.next_delay_s(KIND, DECLARED, 1, 0.0) == 2.0  # history unreachable: the declared schedule
    assert [entry["event"] for entry in logs] == [
        "duration_not_recorded",
        "duration_not_recorded",
        "polling_history_unavailable",
    ]


def test_the_history_is_read_at_most_once_per_refresh_interval(
    book: PollingBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    _teach(book, [8.0] * 30)
    reads: list[str] = []
    hgetall = book.client.hgetall
    monkeypatch.setattr(book.client, "hgetall", lambda key: reads.append(key) or hgetall(key))
    for poll in range(1, 200):
        book.next_delay_s(KIND, DECLARED, poll, poll * 2.0)
    assert len(reads) == 1


def test_learning_off_keeps_every_declared_schedule_but_still_records(redis_client: redis.Redis) -> None:
    book = PollingBook(redis_client, _settings(cekura_learn_polling=False))
    _teach(book, [8.0] * 50)
    assert book.schedule(KIND, DECLARED).times is None
    assert [book.next_delay_s(KIND, DECLARED, p, 0.0) for p in (1, 2, 3)] == [2.0, 3.0, 4.5]
    assert book.describe(KIND, DECLARED)["schedule"] == {"in_use": "declared", "why": "learning off"}
    assert book.describe(KIND, DECLARED)["jobs"] == 50


def test_overrides_win_over_the_kind_plan_and_the_settings(redis_client: redis.Redis) -> None:
    overrides = {"evaluator.run": {"initial_s": 1.5, "max_s": 3.0, "min_s": 0.05}}
    book = PollingBook(redis_client, _settings(cekura_poll_overrides=overrides))
    plan_ = PollPlan(initial_s=30.0, factor=1.0, max_s=60.0)
    assert book.limits("evaluator.run", plan_) == Limits(initial_s=1.5, factor=1.0, max_s=3.0, min_s=0.05)
    assert book.limits(KIND, DECLARED) == Limits(initial_s=2.0, factor=1.5, max_s=30.0, min_s=1.0)
    assert book.limits(KIND, PollPlan(min_s=5.0, max_s=4.0)) == Limits(2.0, 1.5, 4.0, 4.0)  # min never above max


def test_status_shows_duration_percentiles_and_the_schedule_in_use(book: PollingBook) -> None:
    assert book.describe(KIND, DECLARED)["schedule"]["why"] == "warming up: 0/20 jobs"
    rng = random.Random(5)
    _teach(book, [_lognormal(rng, 8, 0.8) for _ in range(100)])
    view = book.describe(KIND, DECLARED)
    assert view["jobs"] == 100
    assert 5.0 < view["durations_s"]["p50"] < 12.0 < view["durations_s"]["p95"]
    assert view["schedule"]["in_use"] == "learned"
    assert view["schedule"]["learned_expected"]["calls"] < view["schedule"]["declared_expected"]["calls"]


def test_cost_counts_calls_and_delays_of_a_schedule() -> None:
    weights = [0.0] * len(EDGES[:-1])
    weights[bucket_of(5.0)] = 1.0  # every job ends within one bucket around 5 s
    dist = Distribution(weights)
    got = cost([100.0], dist)
    assert got.calls == pytest.approx(1.0)
    assert got.mean_delay_s == pytest.approx(100.0 - (dist.first_moment(100.0)), rel=1e-6)
    assert 90.0 < got.p95_delay_s < 100.0
