"""Cekura's main workflows through a real worker, real Redis and the simulator over HTTP: every outcome of every
kind added with the enlarged contract (evaluator runs and their pass/fail gate, generation that asks a question,
metrics, tools auto-fetch, evaluators from transcripts, metric improvement), the answer flow, and starts that must
not be repeated. The simulator's steering conventions are in `simulator/jobs.py` and `simulator/operations.py`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dramatiq
import pytest

from config.settings import Settings, get_settings, load_settings
from simulator import SimulatorHandle
from tests.support import free_port, wait_for
from worker.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from worker.client import Client
from worker.errors import InvalidRequest
from worker.intake.stream import Intake
from worker.runtime.app import Runtime


@pytest.fixture
def cli(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads settings from the environment: point it at the test Redis."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url.get_secret_value())
    monkeypatch.setenv("CEKURA_API_URL", settings.cekura_api_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


TRANSCRIPT = [{"role": "Main Agent", "content": "Hello, how can I help?"}, {"role": "Testing Agent", "content": "Hi"}]


@dataclass(frozen=True)
class Case:
    kind: str
    params: dict[str, Any]
    status: str
    cekura_status: str
    error: str = ""  #: a regex the result's `error` must match (fully); empty: no error
    result: dict[str, Any] = field(default_factory=dict)  #: fields the result payload must hold


CASES = {
    "evaluator_passes": Case(
        "evaluator.run",
        {"scenarios": [11, 12, 13], "name": "nightly"},
        "completed",
        "completed",
        result={"total_runs_count": 3, "success_runs_count": 3},
    ),
    "evaluator_text_passes": Case(
        "evaluator.run",
        {"mode": "text", "scenarios": [11], "frequency": 2, "name": "text"},
        "completed",
        "completed",
        result={"total_runs_count": 2, "success_runs_count": 2},
    ),
    "evaluator_run_fails_its_checks": Case(
        "evaluator.run",
        {"scenarios": [11, 12, 13], "name": "nightly [fail-run]"},
        "failed",
        "completed",
        error=r"1 of 3 runs failed: \d+ \(.+\)",
        result={"total_runs_count": 3, "success_runs_count": 2},
    ),
    "evaluator_infrastructure_failure": Case(
        "evaluator.run", {"tags": ["smoke"], "name": "x [failed]"}, "failed", "failed", error=r".+"
    ),
    "evaluator_timeout": Case("evaluator.run", {"scenarios": [1], "name": "x [timeout]"}, "failed", "timeout", r".+"),
    "evaluator_without_runs": Case(
        "evaluator.run",
        {"scenarios": [1], "name": "x [no-runs]"},
        "failed",
        "completed",
        error=r"the result has no runs \(total_runs_count is 0\)",
    ),
    "generation_by_counts": Case(
        "scenario.generate", {"num_scenarios": 3}, "completed", "completed", result={"completed_scenarios": 3}
    ),
    "generation_by_status": Case(
        "scenario.generate", {"num_scenarios": 2, "extra_instructions": "[status]"}, "completed", "completed"
    ),
    "generation_with_a_failed_scenario": Case(
        "scenario.generate",
        {"num_scenarios": 3, "extra_instructions": "[partial]"},
        "completed",
        "completed",
        result={"failed_scenarios": 1},
    ),
    "generation_fails": Case(
        "scenario.generate", {"num_scenarios": 2, "extra_instructions": "[failed]"}, "failed", "failed", r".+"
    ),
    "metrics_generated": Case("metric.generate", {"agent_id": 5, "num_metrics": 2}, "completed", "completed"),
    "metrics_fail": Case("metric.generate", {"agent_id": 901}, "failed", "failed", r".+"),
    "tools_fetched": Case(
        "agent.tools_auto_fetch",
        {"agent_id": 5, "provider": "retell", "assistant_id": "agent_abc"},
        "completed",
        "completed",
    ),
    "tools_fail": Case(
        "agent.tools_auto_fetch", {"agent_id": 950, "provider": "vapi", "assistant_id": "a"}, "failed", "failed", r".+"
    ),
    "evaluator_from_transcript": Case(
        "scenario.from_transcript",
        {"transcript_json": TRANSCRIPT, "agent": 5, "name": "from a call"},
        "completed",
        "completed",
    ),
    "evaluator_from_transcript_fails": Case(
        "scenario.from_transcript", {"transcript_json": TRANSCRIPT, "agent": 901}, "failed", "failed", r".+"
    ),
    "metric_improved": Case("metric.improve_from_feedback", {"metric_id": 5}, "completed", "success"),
    "metric_improved_schema_shape": Case("metric.improve_from_feedback", {"metric_id": 555}, "completed", "success"),
    "metric_improvement_errors": Case("metric.improve_from_feedback", {"metric_id": 901}, "failed", "error", r".+"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_kind_reaches_each_outcome(worker: dramatiq.Worker, client: Client, case: Case) -> None:
    job_id = client.submit(case.kind, case.params)
    event = client.wait(job_id, timeout=20)
    assert (event["status"], event["cekura_status"]) == (case.status, case.cekura_status), event
    if case.error:
        assert re.fullmatch(case.error, event["error"]), event["error"]
    else:
        assert event["error"] == ""
    result = json.loads(event["result"])
    assert {name: result.get(name) for name in case.result} == case.result


def test_the_evaluator_gate_names_every_failed_run_and_a_text_run_uses_the_text_endpoint(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    failing = client.wait(client.submit("evaluator.run", {"scenarios": [7, 8], "name": "ci [fail-run]"}), timeout=20)
    runs = json.loads(failing["result"])["runs"]
    failed = [run for run in (runs.values() if isinstance(runs, dict) else runs) if not run["success"]]
    assert len(failed) == 1
    assert f"{failed[0]['id']} ({failed[0]['scenario_name']})" in failing["error"]
    client.wait(client.submit("evaluator.run", {"mode": "text", "scenarios": [7]}), timeout=20)
    by_route = sim.stats()["by_route"]
    assert (by_route.get("run_scenarios 201"), by_route.get("run_scenarios_text 201")) == (1, 1)


def test_a_metric_improvement_answers_under_output_and_generated_metrics_are_in_the_result(
    worker: dramatiq.Worker, client: Client
) -> None:
    improved = json.loads(client.wait(client.submit("metric.improve_from_feedback", {"metric_id": 5}))["result"])
    assert isinstance(improved["output"]["improved_metric_description"], str)
    metrics = json.loads(client.wait(client.submit("metric.generate", {"agent_id": 5, "num_metrics": 3}))["result"])
    assert len(metrics["metrics"]) == 3


@pytest.mark.parametrize(
    ("kind", "params", "cancel_route"),
    [
        ("evaluator.run", {"scenarios": [1], "name": "long [hang]"}, "end_calls"),
        ("metric.improve_from_feedback", {"metric_id": 777}, "process_feedbacks_cancel"),
    ],
    ids=["evaluator_end_calls", "metric_improvement_cancel"],
)
def test_a_cancelled_job_is_stopped_at_cekura(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle, kind: str, params: dict[str, Any], cancel_route: str
) -> None:
    job_id = client.submit(kind, params)
    wait_for(lambda: (client.status(job_id) or {}).get("polls", 0) >= 1, what="the job to poll")
    assert client.cancel(job_id).result == "cancelled"
    assert client.wait(job_id)["status"] == "cancelled"
    wait_for(lambda: sim.stats()["by_route"].get(f"{cancel_route} 200") == 1, what="the Cekura cancel")


# -- a generation that asks a question ------------------------------------------------------------------------------


def _waiting(client: Client, job_id: str) -> dict[str, Any] | None:
    view = client.status(job_id)
    return view if view and view.get("state") == "waiting" else None


def test_a_generation_that_asks_waits_for_the_answer_then_sends_it_and_completes(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    job_id = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[ask]"})
    view = wait_for(lambda: _waiting(client, job_id), what="the question")
    assert view["question"] == "Which caller personas matter most?"
    # it stops polling while it waits
    polls = sim.stats()["by_route"].get("generate-progress 200", 0)
    event = [e for e in _progress(rt) if e.get("state") == "waiting"]
    assert [(e["job_id"], e["question"]) for e in event] == [(job_id, view["question"])]
    client.answer(job_id, "Impatient callers and callers with accents.")
    result = client.wait(job_id, timeout=20)
    assert result["status"] == "completed"
    assert json.loads(result["result"])["answers"] == ["Impatient callers and callers with accents."]
    assert sim.stats()["by_route"].get("generate-clarify-answer 200") == 1
    assert sim.stats()["by_route"]["generate-progress 200"] > polls


def _progress(rt: Runtime) -> list[dict[str, str]]:
    entries = rt.redis.xrange(rt.settings.cekura_progress_stream)
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


def test_a_metric_improvement_that_asks_is_answered_through_the_same_action(
    worker: dramatiq.Worker, client: Client
) -> None:
    job_id = client.submit("metric.improve_from_feedback", {"metric_id": 333})
    view = wait_for(lambda: _waiting(client, job_id), what="the question")
    assert "transfer to a human" in view["question"]
    client.answer(job_id, json.dumps({"q1": "yes, it is a failure"}))
    result = client.wait(job_id, timeout=20)
    assert result["status"] == "completed"
    assert "yes, it is a failure" in result["result"]


def test_answers_that_cannot_be_taken_get_a_clear_reply(
    worker: dramatiq.Worker, client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    with pytest.raises(InvalidRequest, match="no job nobody-asked is known"):
        client.answer("nobody-asked", "hello")
    running = client.submit("scenario.generate", {"num_scenarios": 2})
    with pytest.raises(InvalidRequest, match=f"job {running} is not waiting for an answer"):
        client.answer(running, "too early")
    client.wait(running)
    with pytest.raises(InvalidRequest, match=r"has already ended \(completed\)"):
        client.answer(running, "too late")
    with pytest.raises(InvalidRequest, match="non-empty string"):
        client.answer(running, "   ")
    # twice: the second is refused, and Cekura hears only the first
    asking = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[ask]"})
    wait_for(lambda: _waiting(client, asking), what="the question")
    client.answer(asking, "first")
    with pytest.raises(InvalidRequest, match=r"already has an answer|is not waiting for an answer"):
        client.answer(asking, "second")
    assert json.loads(client.wait(asking)["result"])["answers"] == ["first"]


def test_a_question_left_unanswered_ends_the_job_at_its_deadline_and_a_late_answer_is_refused(
    worker: dramatiq.Worker, client: Client
) -> None:
    # The question comes a fraction of a second in; the deadline leaves a busy machine seconds to get there.
    job_id = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[ask]"}, deadline_s=4)
    wait_for(lambda: _waiting(client, job_id), what="the question")
    event = client.wait(job_id, timeout=15)
    assert event["status"] == "timed_out"
    assert event["error"] == "deadline of 4s passed while waiting for an answer to: Which caller personas matter most?"
    with pytest.raises(InvalidRequest, match=r"has already ended \(timed_out\)"):
        client.answer(job_id, "sorry, I was out")


def test_answers_arrive_through_the_request_stream_and_the_cli_and_refusals_are_explained(
    cli: None,
    worker: dramatiq.Worker,
    client: Client,
    rt: Runtime,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    intake = Intake(rt, name="answers")
    intake.start()
    try:
        by_stream = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[ask]"})
        wait_for(lambda: _waiting(client, by_stream), what="the question")
        request = {"action": "answer", "job_id": by_stream, "answer": "via the stream"}
        rt.redis.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)})
        assert json.loads(client.wait(by_stream, timeout=20)["result"])["answers"] == ["via the stream"]
        # an answer to a finished job comes back as a rejected event saying why
        entry = rt.redis.xadd(settings.cekura_requests_stream, {"request": json.dumps(request)}).decode()
        rejected = wait_for(
            lambda: next((e for e in client.results() if e["status"] == "rejected"), None), what="reply"
        )
        assert rejected["error"] == (
            f"job {by_stream} has already ended (completed): there is no question to answer (request entry {entry})"
        )
    finally:
        intake.stop()
        intake.join(timeout=10)
    by_cli = client.submit("scenario.generate", {"num_scenarios": 2, "extra_instructions": "[ask]"})
    wait_for(lambda: _waiting(client, by_cli), what="the question")
    assert main(["answer", by_cli, "via the CLI"]) == EXIT_OK
    assert json.loads(client.wait(by_cli, timeout=20)["result"])["answers"] == ["via the CLI"]
    assert main(["answer", "no-such-job", "hello"]) == EXIT_FAILED
    assert "no job no-such-job is known" in capsys.readouterr().err


# -- starts that must not be repeated -------------------------------------------------------------------------------


def test_a_start_whose_answer_is_lost_is_not_repeated_for_a_kind_that_must_not_repeat(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    # The simulator processes a hung start (the run exists) and holds the answer past the call limit; the search
    # for the run's tag hangs too, so the run can't be found again within the settle window.
    sim.set_faults(hang_rate=1.0, hang_s=4.0)
    job_id = client.submit("evaluator.run", {"scenarios": [1], "name": "once"})
    event = client.wait(job_id, timeout=30)
    sim.clear_faults()
    assert event["status"] == "failed"
    assert event["error"].startswith("the start call's outcome is unknown (its answer was lost, and a search by its")
    assert "it was not sent again because this kind's start is not safe to repeat" in event["error"]
    assert sim.stats()["started_by_kind"]["evaluator_run"] == 1


@pytest.mark.parametrize("losses", [1, 2, 3], ids=["dropped", "502", "read timeout"])
def test_an_evaluator_run_whose_start_answer_was_lost_is_found_by_its_tag_and_completes(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle, losses: int
) -> None:
    """Issue 21: the run exists at Cekura although its answer was lost (the simulator takes turns: a dropped
    connection, a 502, a hang past the call limit); the job finds it by its tag and polls it to its verdict."""
    sim.set_faults(lost_start_rate=1.0, hang_s=4.0)
    job_ids = [client.submit("evaluator.run", {"scenarios": [1], "name": f"lost {i}"}) for i in range(losses)]
    events = [client.wait(job_id, timeout=30) for job_id in job_ids]
    sim.clear_faults()
    last = events[-1]
    assert last["status"] == "completed", last["error"]
    assert last["progress_id"]
    assert sim.stats()["started_by_kind"]["evaluator_run"] == losses
    assert sim.polls()[last["progress_id"]]["times"], "the adopted result was polled"


def test_a_repeatable_start_whose_answer_is_lost_is_retried(
    worker: dramatiq.Worker, client: Client, sim: SimulatorHandle
) -> None:
    sim.set_faults(hang_rate=1.0, hang_s=4.0)
    job_id = client.submit("metric.generate", {"agent_id": 5})
    wait_for(lambda: sim.stats()["started_by_kind"]["metric_generate"] >= 2, timeout=20, what="a second start")
    sim.clear_faults()
    assert client.wait(job_id, timeout=30)["status"] == "completed"


def test_a_start_that_never_connected_is_retried_even_for_a_kind_that_must_not_repeat(settings: Settings) -> None:
    from worker.runtime.app import setup

    closed = load_settings(**{**settings.model_dump(), "cekura_api_url": f"http://127.0.0.1:{free_port()}"})
    rt = setup(closed)
    w = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    w.start()
    try:
        client = Client(closed, client=rt.redis, broker=rt.broker)
        job_id = client.submit("evaluator.run", {"scenarios": [1]})
        view = wait_for(
            lambda: (v := client.status(job_id)) and v.get("errors", 0) >= 2 and v, timeout=15, what="two retries"
        )
        assert view["state"] in ("queued", "starting")
        assert "connection failed" in view["error"]
    finally:
        w.stop(timeout=10_000)


def test_a_start_left_unfinished_by_a_worker_that_died_is_not_sent_again(
    client: Client, rt: Runtime, sim: SimulatorHandle
) -> None:
    from worker.store.records import Phase

    job_id = client.submit("scenario.from_transcript", {"transcript_json": TRANSCRIPT})
    # a worker claims the start (and may have sent it) and dies: its lease lapses
    claim = rt.store.claim(job_id, Phase.START, 0)
    assert claim.verdict == "ok"
    assert rt.store.mark_start_sent(job_id, claim) == "ok"  # what a worker does just before the call
    rt.redis.hset(rt.store.job_key(job_id), "lease", 0)
    w = dramatiq.Worker(rt.broker, worker_threads=2, worker_timeout=100)
    w.start()
    try:
        from actors.jobs import start

        start.send(job_id)
        event = client.wait(job_id, timeout=15)
    finally:
        w.stop(timeout=10_000)
    assert event["status"] == "failed"
    assert "an earlier attempt stopped during the start call" in event["error"]
    assert sim.stats()["started_by_kind"]["scenario_from_transcript"] == 0


# -- bad params -----------------------------------------------------------------------------------------------------

BAD_PARAMS = {
    "evaluator_frequency": ("evaluator.run", {"scenarios": [1], "frequency": 0}, "frequency"),
    "evaluator_mode": ("evaluator.run", {"mode": "video"}, "mode"),
    "generate_count": ("scenario.generate", {"num_scenarios": 101}, "num_scenarios"),
    "generate_missing_count": ("scenario.generate", {}, "num_scenarios"),
    "metrics_without_agent": ("metric.generate", {"num_metrics": 2}, "agent_id or assistant_id is required"),
    "tools_provider": ("agent.tools_auto_fetch", {"agent_id": 1, "provider": "twilio"}, "provider"),
    "transcript_role": (
        "scenario.from_transcript",
        {"transcript_json": [{"role": "agent", "content": "hi"}]},
        "transcript_json.0.role",
    ),
    "transcript_empty": ("scenario.from_transcript", {"transcript_json": []}, "transcript_json"),
    "improve_metric_id": ("metric.improve_from_feedback", {"metric_id": "five"}, "metric_id"),
}


@pytest.mark.parametrize(("kind", "params", "named"), BAD_PARAMS.values(), ids=BAD_PARAMS.keys())
def test_bad_params_are_refused_naming_the_field_by_the_stream_the_client_and_the_cli(
    cli: None,
    rt: Runtime,
    client: Client,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    params: dict[str, Any],
    named: str,
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        client.submit(kind, params)
    message = str(refused.value)
    assert message.startswith(f"invalid params for {kind}: ") and named in message
    assert main(["submit", kind, "--params-json", json.dumps(params)]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    intake = Intake(rt, name="bad-params")
    intake.start()
    try:
        entry = rt.redis.xadd(
            settings.cekura_requests_stream, {"request": json.dumps({"kind": kind, "params": params})}
        )
        rejected = wait_for(lambda: next(iter(client.results()), None), what="the rejected event")
    finally:
        intake.stop()
        intake.join(timeout=10)
    assert rejected["error"] == f"{message} (request entry {entry.decode()})"


def test_a_provider_key_and_mcp_headers_never_reach_job_state_events_or_logs(
    worker: dramatiq.Worker, client: Client, rt: Runtime, capfd: pytest.CaptureFixture[str]
) -> None:
    key, header = "sk-provider-KEY-0123456789 [echo]", "Bearer mcp-TOKEN-0123456789 [echo]"
    params = {
        "agent_id": 5,
        "provider": "custom",
        "mcp_server_url": "https://mcp.example",
        "api_key": key,
        "mcp_server_headers": {"Authorization": header},
    }
    job_id = client.submit("agent.tools_auto_fetch", params)
    event = client.wait(job_id, timeout=20)
    assert event["status"] == "completed"
    seen = json.dumps(event) + str(rt.redis.hgetall(rt.store.job_key(job_id))) + capfd.readouterr().err
    for secret in ("sk-provider-KEY-0123456789", "mcp-TOKEN-0123456789"):
        assert secret not in seen
    assert "***" in json.loads(event["result"])["message"]  # Cekura echoed them: masked, not dropped silently
