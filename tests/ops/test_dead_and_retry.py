"""`cekura-worker retry` and `Client.retry` (a finished job again as a new job, linked by `metadata.retry_of`), and
`cekura-worker dead list` (dead-lettered messages and failed jobs), with a real worker, Redis and the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import dramatiq
import pytest

from actors import names
from config.settings import Settings, get_settings
from simulator import SimulatorHandle
from tests.conftest import SIM_KEY
from tests.support import wait_for
from worker.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.runtime.app import Runtime

DAY_MS = 86_400_000


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[None]:
    """The CLI reads settings from the environment: the test Redis, and the API key so its output is redacted."""
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


def seconds_between(view: dict[str, Any], start: str, end: str) -> float:
    def parse(text: str) -> datetime:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(view[end]) - parse(view[start])).total_seconds()


def queue_key(rt: Runtime) -> str:
    return f"{rt.broker.namespace}:{rt.settings.cekura_queue}"


def failed_job(client: Client, job_id: str, **submit: Any) -> str:
    """A finished `failed` job: agent 901 always ends failed at the simulator."""
    client.submit("agent.auto_fetch", {"agent_id": 901}, job_id=job_id, **submit)
    assert client.wait(job_id, timeout=15)["status"] == "failed"
    return job_id


def dead_letter_from_worker(rt: Runtime, job_id: str) -> None:
    """A message the worker gives up on: a start message with an argument too many raises TypeError in every
    attempt; its own options allow one retry, soon, so it is dead-lettered in well under a second."""
    options = {"max_retries": 1, "min_backoff": 10, "max_backoff": 20}
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=rt.settings.cekura_queue,
        actor_name=names.START,
        args=(job_id, False, "one too many"),
        kwargs={},
        options=options,
    )
    rt.broker.enqueue(message)
    wait_for(lambda: rt.redis.zcard(f"{queue_key(rt)}.XQ") == 1, what="the message dead-lettered")


# -- retry --------------------------------------------------------------------------------------------------------


def test_a_failed_job_is_retried_as_a_new_job_with_the_same_params_linked_by_retry_of(
    client: Client, worker: dramatiq.Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_job(client, "fail-1", metadata={"ticket": "OPS-7"}, deadline_s=120)

    new_id = client.retry("fail-1")

    assert new_id == "fail-1-retry-1"
    event = client.wait(new_id, timeout=15)
    assert event["status"] == "failed"  # the same params steer the simulator to the same end
    assert json.loads(event["metadata"]) == {"ticket": "OPS-7", "retry_of": "fail-1"}
    view = client.status(new_id)
    assert view is not None
    assert (view["kind"], view["params"]) == ("agent.auto_fetch", {"agent_id": 901})
    assert seconds_between(view, "submitted_at", "deadline_at") == 120
    # The next retry takes the next free number, from the CLI as from the client.
    code, out, _ = cli(capsys, "retry", "fail-1")
    assert (code, out) == (EXIT_OK, "fail-1-retry-2\n")
    assert client.wait("fail-1-retry-2", timeout=15)["status"] == "failed"
    assert client.status("fail-1")["metadata"] == {"ticket": "OPS-7"}  # type: ignore[index]


def test_a_timed_out_job_retried_once_its_cause_is_gone_completes(
    client: Client, worker: dramatiq.Worker, sim: SimulatorHandle
) -> None:
    sim.set_faults(error_rate=1.0)  # every call a 5xx: the job retries until its deadline
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="slow-1", deadline_s=3)
    assert client.wait("slow-1", timeout=15)["status"] == "timed_out"
    sim.clear_faults()

    new_id = client.retry("slow-1")

    event = client.wait(new_id, timeout=15)
    assert (event["status"], json.loads(event["metadata"])) == ("completed", {"retry_of": "slow-1"})
    view = client.status(new_id)
    assert view is not None
    assert view["params"] == {"agent_id": 5}
    assert seconds_between(view, "submitted_at", "deadline_at") == 3


def test_retry_is_refused_while_the_job_is_active(
    client: Client, worker: dramatiq.Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    client.submit("agent.auto_fetch", {"agent_id": 777}, job_id="busy-1")  # never finishes
    wait_for(lambda: (client.status("busy-1") or {}).get("state") == "polling", what="the job polling")
    try:
        code, out, err = cli(capsys, "retry", "busy-1")
        assert (code, out) == (EXIT_FAILED, "")
        assert "job busy-1 is still polling: retry it once it has finished (or cancel it first)" in err
        with pytest.raises(InvalidRequest, match="is still polling"):
            client.retry("busy-1")
        assert client.status("busy-1-retry-1") is None
    finally:
        client.cancel("busy-1")
    assert client.retry("busy-1") == "busy-1-retry-1"  # cancelled is finished: it may be tried again


def test_retry_of_an_unknown_job_is_refused(client: Client, rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "retry", "never-submitted")
    assert (code, out) == (EXIT_FAILED, "")
    assert "no job never-submitted is known (never submitted, or its record expired): nothing to retry" in err
    with pytest.raises(InvalidRequest, match="no job never-submitted is known"):
        client.retry("never-submitted")
    code, _, err = cli(capsys, "retry", "not a job id")
    assert code == EXIT_USAGE
    assert "job_id must be 1-128 characters" in err
    assert rt.redis.keys("*job:*") == []


def test_retry_with_job_id_uses_it_returns_it_again_and_refuses_another_jobs_id(
    client: Client, worker: dramatiq.Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_job(client, "fail-2")
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="bystander")

    code, out, _ = cli(capsys, "retry", "fail-2", "--job-id", "rerun-of-fail-2", "--format", "json")

    assert code == EXIT_OK
    assert json.loads(out) == {"job_id": "rerun-of-fail-2", "retry_of": "fail-2"}
    assert client.wait("rerun-of-fail-2", timeout=15)["status"] == "failed"
    assert client.status("rerun-of-fail-2")["metadata"] == {"retry_of": "fail-2"}  # type: ignore[index]
    # The same retry again is that job, as a submit with the same job_id is; nothing new is made.
    assert client.retry("fail-2", new_job_id="rerun-of-fail-2") == "rerun-of-fail-2"
    assert client.status("fail-2-retry-1") is None
    code, out, err = cli(capsys, "retry", "fail-2", "--job-id", "bystander")
    assert (code, out) == (EXIT_FAILED, "")
    assert "job_id bystander is already taken by another job" in err
    assert client.status("bystander")["params"] == {"agent_id": 5}  # type: ignore[index]


def test_retry_of_a_kind_with_secret_params_is_refused_and_says_to_submit_again(
    client: Client, worker: dramatiq.Worker, capsys: pytest.CaptureFixture[str]
) -> None:
    params = {"agent_id": 901, "enabled": True, "api_key": "provider-secret-1"}
    client.submit("agent.toggle_mock_tools", params, job_id="toggle-1")
    assert client.wait("toggle-1", timeout=15)["status"] == "failed"

    code, out, err = cli(capsys, "retry", "toggle-1")

    assert (code, out) == (EXIT_FAILED, "")
    assert "agent.toggle_mock_tools jobs take secret params, which are never stored" in err
    assert "submit a new job with `submit`, giving the secret again" in err
    with pytest.raises(InvalidRequest, match="secret params"):
        client.retry("toggle-1", new_job_id="toggle-2")
    assert client.status("toggle-1-retry-1") is None
    assert client.status("toggle-2") is None


# -- dead list ----------------------------------------------------------------------------------------------------


def test_dead_list_shows_a_failed_job_and_a_dead_lettered_message(
    client: Client, worker: dramatiq.Worker, rt: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    failed_job(client, "fail-3")
    client.submit("agent.auto_fetch", {"agent_id": 5}, job_id="fine-1")
    assert client.wait("fine-1", timeout=15)["status"] == "completed"
    dead_letter_from_worker(rt, "doomed-1")

    code, out, _ = cli(capsys, "dead", "list")

    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[2] == f"Dead-lettered messages in queue {rt.settings.cekura_queue}: 1 in all, 1 shown"
    assert lines[3].split() == ["DEAD-LETTERED", "AT", "ACTOR", "JOB", "ID", "RETRIES", "LAST", "ERROR"]
    assert lines[4].split()[1:4] == [names.START, "doomed-1", "1"]
    assert "TypeError: start() takes from 1 to 2 positional arguments but 3 were given" in lines[4]
    assert "Failed and timed-out jobs: 1 shown" in out
    (row,) = [line for line in lines if "fail-3" in line]
    assert row.split()[1:5] == ["fail-3", "agent.auto_fetch", "failed", "yes"]
    assert "fine-1" not in out


def test_dramatiq_keeps_retries_and_traceback_in_a_dead_letters_options(
    client: Client, worker: dramatiq.Worker, rt: Runtime
) -> None:
    """The assumption `worker/ops/dead.py` makes of Dramatiq: `Retries` records `retries` and `traceback` in the
    options before re-enqueueing, and `nack` dead-letters the message as last enqueued, so the error shown is the
    previous attempt's."""
    dead_letter_from_worker(rt, "doomed-2")
    (data,) = rt.redis.hvals(f"{queue_key(rt)}.XQ.msgs")
    message = dramatiq.Message.decode(data)
    assert message.options["retries"] == 1
    assert message.options["traceback"].rstrip().endswith("were given")


def test_dead_list_json_has_both_sections_newest_first_within_since_and_limit(
    client: Client, worker: dramatiq.Worker, rt: Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    seconds, _ = rt.redis.time()
    old_id = f"{int(seconds) * 1000 - 2 * DAY_MS}-0"  # a failed job's event from two days ago
    old = {"job_id": "old-1", "kind": "agent.auto_fetch", "status": "timed_out", "error": "deadline passed"}
    rt.redis.xadd(rt.settings.cekura_results_stream, {**old, "finished_at": "2020-01-01T00:00:00.000Z"}, id=old_id)
    failed_job(client, "fail-4")
    failed_job(client, "fail-5")
    dead_letter_from_worker(rt, "doomed-3")

    code, out, _ = cli(capsys, "dead", "list", "--format", "json")

    assert code == EXIT_OK
    report = json.loads(out)
    assert set(report) == {"generated_at", "since", "dead_letters", "failed_jobs"}
    assert set(report["dead_letters"]) == {"queue", "total", "messages"}
    assert report["dead_letters"]["total"] == 1
    (message,) = report["dead_letters"]["messages"]
    assert set(message) == {
        "redis_message_id",
        "dead_lettered_at",
        "actor",
        "job_id",
        "message_id",
        "enqueued_at",
        "retries",
        "error",
    }
    assert (message["actor"], message["job_id"], message["retries"]) == (names.START, "doomed-3", 1)
    assert message["error"].startswith("TypeError: ")
    jobs = report["failed_jobs"]
    assert [job["job_id"] for job in jobs] == ["fail-5", "fail-4"]  # newest first; old-1 is outside 24h
    assert set(jobs[0]) == {"job_id", "kind", "status", "error", "finished_at", "retryable", "needs_force"}
    assert (jobs[0]["kind"], jobs[0]["status"], jobs[0]["retryable"]) == ("agent.auto_fetch", "failed", True)
    assert jobs[0]["needs_force"] is False
    assert jobs[0]["error"]

    code, out, _ = cli(capsys, "dead", "list", "--format", "json", "--since", "3d", "--limit", "5")
    jobs = json.loads(out)["failed_jobs"]
    assert [job["job_id"] for job in jobs] == ["fail-5", "fail-4", "old-1"]
    gone = {"finished_at": "2020-01-01T00:00:00.000Z", "retryable": False, "needs_force": False}
    assert jobs[2] == {**old, **gone}  # its record is gone
    code, out, _ = cli(capsys, "dead", "list", "--format", "json", "--since", "3d", "--limit", "1")
    assert [job["job_id"] for job in json.loads(out)["failed_jobs"]] == ["fail-5"]

    with pytest.raises(SystemExit) as exited:
        main(["dead", "list", "--since", "yesterday"])
    assert exited.value.code == EXIT_USAGE
    assert "expected a positive duration" in capsys.readouterr().err


def test_dead_list_redacts_secrets_in_what_it_shows(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    """A dead letter written the way Dramatiq's `nack` writes one, whose recorded error quotes the API key."""
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=rt.settings.cekura_queue,
        actor_name=names.CANCEL_REMOTE,
        args=("scenario-9", "scenario.agent", 12),
        kwargs={},
        options={"retries": 5, "traceback": f"Traceback (most recent call last):\nTransientError: 503 for {SIM_KEY}"},
    )
    seconds, _ = rt.redis.time()
    rt.redis.zadd(f"{queue_key(rt)}.XQ", {"entry-9": int(seconds) * 1000})
    rt.redis.hset(f"{queue_key(rt)}.XQ.msgs", "entry-9", message.encode())
    event = {"job_id": "leaky-1", "kind": "scenario.agent", "status": "failed", "error": f"refused {SIM_KEY}"}
    rt.redis.xadd(rt.settings.cekura_results_stream, event)

    for argv in (["dead", "list"], ["dead", "list", "--format", "json"]):
        code, out, _ = cli(capsys, *argv)
        assert code == EXIT_OK
        assert SIM_KEY not in out
        assert "TransientError: 503 for ***" in out
        assert "refused ***" in out
        assert "scenario-9" in out
        assert names.CANCEL_REMOTE in out
