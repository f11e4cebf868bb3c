"""Progress-aware polling (issue 21): the earliest plausible end from counts of finished parts, the stretch of the
next interval it allows, the evaluator's progress rule, and `PollingBook.stretch` with its limits and its switch.
Poll counts and delays are simulated on a model clock: nothing here waits."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from actors.kinds import KINDS
from actors.kinds.rules import run_progress
from config.settings import load_settings
from tests.conftest import TEST_REDIS_URL
from worker.cekura.polling import PollingBook, PollPlan
from worker.cekura.progress import (
    DEFAULT_RISK,
    Progress,
    earliest_end_s,
    incomplete_beta,
    stretched_delay,
)

EVALUATOR = KINDS["evaluator.run"]
BASE_S, MAX_S = 30.0, 60.0  # the evaluator's declared cadence and its longest interval


# -- the model ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "x"), [(1, 0.5, 0.1), (1, 7.5, 0.3), (3, 1, 0.4), (2.5, 4.5, 0.62), (40, 30.5, 0.5)]
)
def test_the_incomplete_beta_function_matches_its_closed_forms_and_symmetry(a: float, b: float, x: float) -> None:
    value = incomplete_beta(a, b, x)
    if a == 1:
        assert value == pytest.approx(1 - (1 - x) ** b, rel=1e-9)
    if b == 1:
        assert value == pytest.approx(x**a, rel=1e-9)
    assert value + incomplete_beta(b, a, 1 - x) == pytest.approx(1.0, abs=1e-9)
    assert incomplete_beta(a, b, 0.0) == 0.0 and incomplete_beta(a, b, 1.0) == 1.0


@pytest.mark.parametrize(("done", "total", "elapsed"), [(0, 2, 100.0), (3, 10, 100.0), (9, 10, 100.0), (5, 20, 50.0)])
def test_the_earliest_end_is_the_risk_quantile_of_the_time_the_parts_left_need(
    done: int, total: int, elapsed: float
) -> None:
    """Parts finishing at random at an unknown pace: the pace drawn from what was seen (Jeffreys' prior), then the
    parts left; the share of draws ending before the earliest end is the risk."""
    end = earliest_end_s(Progress(done, total), elapsed)
    rng = random.Random(7)
    draws = 40_000
    early = 0
    for _ in range(draws):
        pace = rng.gammavariate(done + 0.5, 1 / elapsed)
        early += rng.gammavariate(total - done, 1 / pace) <= end
    assert early / draws == pytest.approx(DEFAULT_RISK, abs=0.004)


def test_the_earliest_end_comes_later_with_more_parts_left_and_sooner_with_more_done() -> None:
    by_left = [earliest_end_s(Progress(5, 5 + left), 100.0) for left in (1, 2, 5, 20)]
    assert by_left == sorted(by_left) and by_left[0] < by_left[-1]
    by_done = [earliest_end_s(Progress(done, 30), 100.0) for done in (1, 5, 15, 25)]
    assert by_done == sorted(by_done, reverse=True)
    assert earliest_end_s(Progress(3, 3), 100.0) == 0.0  # every part done: nothing to say


@pytest.mark.parametrize(
    ("progress", "elapsed"),
    [
        (None, 100.0),
        (Progress(0, 1), 100.0),  # one part: its count changes when the job ends
        (Progress(4, 4), 100.0),  # every part counted: the last phase, which counts don't measure
        (Progress(2, 10), 0.0),  # no time seen, no pace
        (Progress(2, 10), math.inf),
    ],
)
def test_progress_that_says_nothing_leaves_the_interval_as_it_is(progress: Progress | None, elapsed: float) -> None:
    assert stretched_delay(BASE_S, progress, elapsed, MAX_S) == BASE_S


def test_many_parts_left_stretch_to_max_s_and_the_last_ones_keep_the_schedule() -> None:
    assert stretched_delay(BASE_S, Progress(5, 20), 300.0, MAX_S) == MAX_S
    assert stretched_delay(BASE_S, Progress(0, 20), 60.0, MAX_S) == MAX_S  # none done yet: the prior's half part
    assert stretched_delay(BASE_S, Progress(19, 20), 600.0, MAX_S) == BASE_S
    middle = stretched_delay(BASE_S, Progress(12, 20), 200.0, MAX_S)
    assert BASE_S < middle < MAX_S
    assert earliest_end_s(Progress(12, 20), 200.0) == pytest.approx(middle, rel=1e-2)
    assert stretched_delay(90.0, Progress(5, 20), 300.0, MAX_S) == 90.0  # never shorter than the schedule's


def _polls(job: Callable[[float], tuple[int, int]], end_s: float, stretch: bool) -> tuple[int, float]:
    """Poll a job that ends at `end_s` and counts `job(t)` parts done of total meanwhile: (calls, delay)."""
    t, calls = 0.0, 0
    delay = BASE_S
    while True:
        t += delay
        calls += 1
        if t >= end_s:
            return calls, t - end_s
        done, total = job(t)
        delay = stretched_delay(BASE_S, Progress(done, total), t, MAX_S) if stretch else BASE_S


def test_a_result_whose_runs_finish_one_by_one_is_polled_less_and_seen_as_soon() -> None:
    """The simulator's evaluator result: 10 runs done one by one from a tenth to four fifths of its 20 minutes,
    then every run counted while it evaluates: the counts cover the first four fifths."""
    end = 1200.0

    def counts(t: float) -> tuple[int, int]:
        return max(0, min(10, math.floor(10 * (t / end - 0.1) / 0.7))), 10

    fixed_calls, _ = _polls(counts, end, stretch=False)
    calls, delay = _polls(counts, end, stretch=True)
    assert fixed_calls == 40
    assert calls <= 0.75 * fixed_calls
    assert delay <= BASE_S  # the end falls in the last phase, polled on the schedule


def test_a_job_that_ends_with_its_last_part_is_not_polled_past_the_schedule_near_the_end() -> None:
    """Parts finishing at random, the job ending with the last: across many, the delay at the end stays within
    the schedule's interval but for a few, while the calls drop."""
    rng = random.Random(3)
    fixed = stretched = late = 0
    jobs = 400
    for _ in range(jobs):
        total = rng.choice((2, 5, 10, 30))
        finish = sorted(rng.uniform(0.1, 1.0) for _ in range(total))
        end = 600.0 * math.exp(0.8 * rng.gauss(0, 1))
        finish = [f / finish[-1] * end for f in finish]

        def counts(t: float, finish: list[float] = finish) -> tuple[int, int]:
            return sum(1 for f in finish if f <= t), len(finish)

        fixed += _polls(counts, end, stretch=False)[0]
        calls, delay = _polls(counts, end, stretch=True)
        stretched += calls
        late += delay > BASE_S
    assert stretched < 0.8 * fixed
    assert late <= 0.05 * jobs


# -- the evaluator's rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ({"total_runs_count": 10, "completed_runs_count": 3}, Progress(3, 10)),
        ({"total_runs_count": "10", "completed_runs_count": "4"}, Progress(4, 10)),  # the schema types counts as text
        (
            {"total_runs_count": 10, "completed_runs_count": 2, "success_runs_count": 3, "failed_runs_count": 2},
            Progress(5, 10),
        ),
        ({"total_runs_count": 4, "completed_runs_count": 9}, Progress(4, 4)),
        ({"total_runs_count": 3, "runs": {"1": {"status": "completed"}, "2": {"status": "running"}}}, Progress(1, 3)),
        (
            {"total_runs_count": 3, "runs": [{"status": "failed"}, {"status": "timeout"}, {"status": "pending"}]},
            Progress(2, 3),
        ),
        ({"total_runs_count": 0, "completed_runs_count": 0}, None),
        ({"completed_runs_count": 3}, None),
        ({"total_runs_count": 3}, None),
        ({"total_runs_count": True, "completed_runs_count": 1}, None),
    ],
)
def test_an_evaluator_result_says_how_many_runs_are_done(answer: dict[str, Any], expected: Progress | None) -> None:
    assert run_progress(answer) == expected
    assert EVALUATOR.progress(answer) == expected


def test_a_kind_without_a_rule_or_with_a_rule_that_fails_reports_no_progress() -> None:
    from dataclasses import replace

    assert KINDS["agent.auto_fetch"].progress({"total_runs_count": 3, "completed_runs_count": 1}) is None

    def broken(answer: Any) -> Progress | None:
        raise KeyError("surprise")

    assert replace(EVALUATOR, progress_of=broken).progress({}) is None
    assert replace(EVALUATOR, progress_of=lambda a: Progress(5, 3)).progress({}) is None  # not a count of parts


# -- the book ---------------------------------------------------------------------------------------------------


@pytest.fixture
def book_for(redis_client: redis.Redis) -> Iterator[Callable[..., PollingBook]]:
    def make(**overrides: Any) -> PollingBook:
        values: dict[str, Any] = {"redis_url": TEST_REDIS_URL, "cekura_poll_jitter": 0.0, **overrides}
        return PollingBook(redis_client, load_settings(**values))

    yield make


FLAT = PollPlan(initial_s=BASE_S, factor=1.0, max_s=MAX_S)


def test_the_book_stretches_within_the_kind_s_max_s(book_for: Callable[..., PollingBook]) -> None:
    book = book_for()
    delay = book.next_delay_s("evaluator.run", FLAT, 3, 90.0)
    assert delay == BASE_S
    assert book.stretch("evaluator.run", FLAT, delay, 300.0, Progress(5, 20)) == MAX_S
    assert book.stretch("evaluator.run", FLAT, delay, 600.0, Progress(19, 20)) == BASE_S
    assert book.stretch("evaluator.run", FLAT, delay, 300.0, None) == BASE_S
    tighter = book_for(cekura_poll_overrides={"evaluator.run": {"max_s": 45.0}})
    assert tighter.stretch("evaluator.run", FLAT, delay, 300.0, Progress(5, 20)) == 45.0


def test_with_learning_off_every_declared_schedule_stays(book_for: Callable[..., PollingBook]) -> None:
    book = book_for(cekura_learn_polling=False)
    assert book.stretch("evaluator.run", FLAT, BASE_S, 300.0, Progress(5, 20)) == BASE_S


def test_jitter_never_makes_a_stretched_interval_shorter_than_the_schedule_s(
    book_for: Callable[..., PollingBook],
) -> None:
    book = book_for(cekura_poll_jitter=0.2)
    for done in range(0, 20):
        delay = book.stretch("evaluator.run", FLAT, BASE_S, 200.0 + 10 * done, Progress(done, 20))
        assert BASE_S <= delay <= MAX_S * 1.2
