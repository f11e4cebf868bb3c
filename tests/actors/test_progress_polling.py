"""Progress-aware polling end to end (issue 21): a real worker, real Redis and the simulator over HTTP. An evaluator
run counts its runs as they finish; while many are left, its polls are put off up to its `max_s`, so it is polled
fewer times than a run of the same length whose single run says nothing (polled on the declared cadence). Both
run at once on the same worker, so the comparison counts calls (the simulator's record) and never reads a clock."""

from __future__ import annotations

import dramatiq
import pytest

from config.settings import Settings, load_settings
from simulator import SimulatorHandle
from worker.client import Client

#: The evaluator's declared cadence, scaled down: every 0.05 s, stretched by progress up to 0.4 s.
CADENCE = {"evaluator.run": {"initial_s": 0.05, "factor": 1.0, "max_s": 0.4, "min_s": 0.01}}
#: Each result runs this long in the simulator: its runs finish one by one over its first four fifths.
DURATION_S = 2.0


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Learning on (no history yet, so the declared cadence is the schedule) unless a test says otherwise."""
    overrides = {"cekura_learn_polling": True, "cekura_poll_overrides": CADENCE, **getattr(request, "param", {})}
    return load_settings(**{**settings.model_dump(), **overrides})


def _run_side_by_side(client: Client, sim: SimulatorHandle) -> tuple[int, int]:
    """Polls of a 20-run result and of a 1-run result of the same length, run at once."""
    sim.configure(duration_s=DURATION_S)
    suite = client.submit("evaluator.run", {"scenarios": list(range(1, 21)), "name": "suite of 20"})
    single = client.submit("evaluator.run", {"scenarios": [1], "name": "one evaluator"})
    events = {job_id: client.wait(job_id, timeout=30) for job_id in (suite, single)}
    assert {event["status"] for event in events.values()} == {"completed"}
    served = sim.polls()
    counts = [len(served[events[job_id]["progress_id"]]["times"]) for job_id in (suite, single)]
    assert [int(events[job_id]["polls"]) for job_id in (suite, single)] == counts
    return counts[0], counts[1]


def test_an_evaluator_run_counting_many_runs_is_polled_less_than_its_fixed_schedule(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    suite, single = _run_side_by_side(client, sim)
    assert single >= 10  # the declared cadence: a poll every 0.05 s of the 2 s
    assert suite <= 0.7 * single


@pytest.mark.parametrize("settings", [{"cekura_learn_polling": False}], indirect=True)
def test_with_learning_off_the_counts_change_nothing(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    suite, single = _run_side_by_side(client, sim)
    assert suite >= 0.8 * single
