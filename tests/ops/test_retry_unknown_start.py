"""Retrying a job whose start's outcome is unknown, of a kind whose start must not repeat (issue 19): Cekura may
still be running the first operation, so `retry` refuses it unless forced, and `dead list` says so."""

from __future__ import annotations

import json
from collections.abc import Iterator

import dramatiq
import pytest

from config.settings import Settings, get_settings
from simulator import SimulatorHandle
from tests.conftest import SIM_KEY
from worker.cli import EXIT_FAILED, EXIT_OK, main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake import submission

UNKNOWN_START = "the start call's outcome is unknown"


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    monkeypatch.setenv("CEKURA_API_KEY", SIM_KEY)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unknown_start(client: Client, sim: SimulatorHandle, job_id: str) -> str:
    """An `evaluator.run` job (its start must not repeat) failed because Cekura answered its start with a 5xx: the
    run may exist there."""
    sim.set_faults(error_rate=1.0)
    client.submit("evaluator.run", {"scenarios": [1], "name": "once"}, job_id=job_id)
    event = client.wait(job_id, timeout=15)
    sim.clear_faults()
    assert event["status"] == "failed"
    assert event["error"].startswith(UNKNOWN_START)
    return job_id


def test_retry_of_a_start_whose_outcome_is_unknown_is_refused_unless_forced(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown_start(client, sim, "run-1")
    message = (
        "job run-1's start may have reached Cekura (its outcome is unknown): the first operation may still be "
        "running there, and a retry may start a second one; retry with --force (force=True) to do so anyway"
    )

    code, out, err = cli(capsys, "retry", "run-1")

    assert (code, out) == (EXIT_FAILED, "")
    assert message in err
    with pytest.raises(InvalidRequest) as refused:
        client.retry("run-1", new_job_id="run-1-again")
    assert str(refused.value) == message
    outcome = submission.retry(client.store, client.broker, "run-1")
    assert (outcome.result, outcome.detail, outcome.job_id) == ("unknown_start", "evaluator.run", "")
    assert client.status("run-1-retry-1") is None
    assert client.status("run-1-again") is None

    code, out, _ = cli(capsys, "retry", "run-1", "--force")
    assert (code, out) == (EXIT_OK, "run-1-retry-1\n")
    assert client.wait("run-1-retry-1", timeout=15)["status"] == "completed"
    assert client.retry("run-1", new_job_id="run-1-again", force=True) == "run-1-again"
    assert client.wait("run-1-again", timeout=15)["status"] == "completed"
    # The same forced retry asked for again is that job, force or not: nothing new is started.
    assert client.retry("run-1", new_job_id="run-1-again") == "run-1-again"
    assert client.status("run-1-retry-2") is None
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 2


def test_dead_list_marks_a_start_whose_outcome_is_unknown_as_needing_force(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    unknown_start(client, sim, "run-2")
    # A run Cekura started and then failed: its outcome is known, so it may be retried as it is.
    client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[failed]"}, job_id="gen-1")
    assert client.wait("gen-1", timeout=15)["status"] == "failed"

    code, out, _ = cli(capsys, "dead", "list")

    assert code == EXIT_OK
    (row,) = [line for line in out.splitlines() if " run-2 " in line]
    assert row.split()[1:6] == ["run-2", "evaluator.run", "failed", "needs", "--force"]
    (row,) = [line for line in out.splitlines() if " gen-1 " in line]
    assert row.split()[1:5] == ["gen-1", "scenario.generate", "failed", "yes"]

    code, out, _ = cli(capsys, "dead", "list", "--format", "json")
    jobs = {job["job_id"]: job for job in json.loads(out)["failed_jobs"]}
    assert (jobs["run-2"]["retryable"], jobs["run-2"]["needs_force"]) == (False, True)
    assert (jobs["gen-1"]["retryable"], jobs["gen-1"]["needs_force"]) == (True, False)
    assert client.retry("gen-1") == "gen-1-retry-1"
