"""Tests of the Cekura API simulator over real HTTP: contract shapes, outcome conventions, faults and the HTTP layer."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from simulator import Faults, SimConfig, SimulatorHandle, start_in_thread

KEY = "sim-key"
DURATION = 0.2
AGENT = "/test_framework/v2/aiagents/{agent}/"
AUTO_FETCH = AGENT + "auto-fetch/"
AUTO_FETCH_PROGRESS = AGENT + "auto-fetch-progress/"
TOGGLE = AGENT + "toggle-mock-tools/"
TOGGLE_PROGRESS = AGENT + "toggle-mock-tools-progress/"
SCENARIO = "/test_framework/v1/scenarios/scenario-agent/"
SCENARIO_PROGRESS = "/test_framework/v1/scenarios/scenario-agent-progress/"
CANCEL = "/test_framework/v1/scenarios/cancel-agent/"
CLEAN = "/test_framework/v1/metrics/generate_clean_description_bg/"
CLEAN_PROGRESS = "/test_framework/v1/metrics/generate_clean_description_progress/"
STAGES = ["validate", "prompt", "settings", "phone", "tools", "dynamic_variables", "kb", "finalize"]
SCENARIO_TERMINAL = {"completed", "needs_clarification", "needs_agent_clarification", "cancelled", "failed"}
REPO_ROOT = Path(__file__).resolve().parents[2]
SSL_CONTEXT = ssl.create_default_context()  # built once: loading CA certificates per client costs ~30 ms


def make_client(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url=url, headers=headers or {}, timeout=timeout, verify=SSL_CONTEXT)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    handle = start_in_thread(SimConfig(duration_s=DURATION, seed=7))
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def clean_sim(sim: SimulatorHandle) -> None:
    sim.clear_faults()
    sim.configure(duration_s=DURATION, polls_to_complete=None, rate_limit_rps=0)
    sim.reset()


@pytest.fixture
def client(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with make_client(sim.url, {"X-CEKURA-API-KEY": KEY}) as c:
        yield c


@pytest.fixture
def control(sim: SimulatorHandle) -> Iterator[httpx.Client]:
    with make_client(sim.url) as c:
        yield c


def poll(client: httpx.Client, path: str, progress_id: str, terminal: set[str], limit_s: float = 30.0) -> list[Any]:
    """GET the progress path until its status is terminal; returns every answer body in order."""
    answers: list[Any] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        response = client.get(path, params={"progress_id": progress_id})
        assert response.status_code == 200, response.text
        answers.append(response.json())
        if answers[-1]["status"] in terminal:
            return answers
        time.sleep(0.02)
    raise AssertionError(f"no terminal status within {limit_s}s: {answers[-1]}")


def start_auto_fetch(client: httpx.Client, agent: int) -> str:
    response = client.post(AUTO_FETCH.format(agent=agent))
    assert response.status_code == 202, response.text
    return str(response.json()["progress_id"])


# -- the four operations, happy path ------------------------------------------------------------------------------


def test_auto_fetch_answers_202_then_walks_its_stages_to_completed(client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 12)
    answers = poll(client, AUTO_FETCH_PROGRESS.format(agent=12), progress_id, {"completed", "failed"})
    for answer in answers:
        assert set(answer) == {"agent_id", "status", "current_stage", "stages", "error"}
        assert answer["agent_id"] == 12
        assert [stage["name"] for stage in answer["stages"]] == STAGES
        assert answer["current_stage"] in STAGES
        assert {stage["status"] for stage in answer["stages"]} <= {"pending", "in_progress", "completed"}
    assert {a["status"] for a in answers[:-1]} <= {"queued", "in_progress"}
    assert answers[-1]["status"] == "completed"
    assert answers[-1]["error"] is None
    assert all(stage["status"] == "completed" for stage in answers[-1]["stages"])
    indexes = [STAGES.index(a["current_stage"]) for a in answers]
    assert indexes == sorted(indexes)


def test_a_finished_job_keeps_answering_the_same_terminal_body(client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 12)
    path = AUTO_FETCH_PROGRESS.format(agent=12)
    final = poll(client, path, progress_id, {"completed"})[-1]
    time.sleep(0.05)
    assert client.get(path, params={"progress_id": progress_id}).json() == final


def test_toggle_mock_tools_enabling_completes_with_one_mcp_endpoint(client: httpx.Client) -> None:
    response = client.post(TOGGLE.format(agent=21), json={"enabled": True, "api_key": "provider-secret"})
    assert response.status_code == 202
    answers = poll(client, TOGGLE_PROGRESS.format(agent=21), response.json()["progress_id"], {"completed", "failed"})
    for answer in answers:
        assert {"status", "mock_enabled", "mcp_endpoints", "message", "error"} <= set(answer)
    final = answers[-1]
    assert final["status"] == "completed"
    assert final["mock_enabled"] is True
    assert final["error"] is None
    [endpoint] = final["mcp_endpoints"]
    assert set(endpoint) == {"mock_index", "url", "tool_names"}
    assert isinstance(endpoint["tool_names"], list)


def test_toggle_mock_tools_disabling_completes_with_no_endpoints(client: httpx.Client) -> None:
    response = client.post(TOGGLE.format(agent=21), json={"enabled": False})
    final = poll(client, TOGGLE_PROGRESS.format(agent=21), response.json()["progress_id"], {"completed", "failed"})[-1]
    assert final["status"] == "completed"
    assert final["mock_enabled"] is False
    assert final["mcp_endpoints"] == []


def test_scenario_agent_answers_200_with_a_new_session_and_completes_in_clarify_mode(client: httpx.Client) -> None:
    response = client.post(SCENARIO, json={"user_message": "Write a refund scenario", "num_scenarios": 2})
    assert response.status_code == 200
    started = response.json()
    assert set(started) == {"progress_id", "session_id"}
    assert isinstance(started["session_id"], int)
    answers = poll(client, SCENARIO_PROGRESS, started["progress_id"], SCENARIO_TERMINAL)
    for answer in answers:
        assert set(answer) == {"progress_id", "session_id", "mode", "status", "result", "error"}
        assert answer["progress_id"] == started["progress_id"]
        assert answer["session_id"] == started["session_id"]
        assert answer["mode"] == "clarify"
    assert all(a["status"] == "in_progress" and a["result"] is None for a in answers[:-1])
    assert answers[-1]["status"] == "completed"
    assert isinstance(answers[-1]["result"], dict)
    assert len(answers[-1]["result"]["scenarios"]) == 2


def test_scenario_agent_echoes_the_session_id_and_uses_improve_mode_when_scenarios_are_given(
    client: httpx.Client,
) -> None:
    response = client.post(SCENARIO, json={"user_message": "More detail", "session_id": 4242, "scenarios": [101, 102]})
    assert response.json()["session_id"] == 4242
    final = poll(client, SCENARIO_PROGRESS, response.json()["progress_id"], SCENARIO_TERMINAL)[-1]
    assert final["mode"] == "improve"
    assert final["session_id"] == 4242
    assert final["status"] == "completed"


def test_clean_description_goes_queued_then_processing_then_completed(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    # Progress by GET, not by the clock: on a busy machine the first GET may come after the queued quarter.
    sim.configure(polls_to_complete=8, duration_s=3600)
    body = {"agent": 5, "metric_description": "did the agent  greet the caller", "eval_type": "boolean"}
    response = client.post(CLEAN, json=body)
    assert response.status_code == 200
    assert set(response.json()) == {"progress_id"}
    answers = poll(client, CLEAN_PROGRESS, response.json()["progress_id"], {"completed", "failed"})
    statuses = [a["status"] for a in answers]
    assert statuses[0] == "queued"
    assert "processing" in statuses
    assert statuses == sorted(statuses, key=["queued", "processing", "completed"].index)
    assert all(set(a) == {"status"} for a in answers[:-1])
    final = answers[-1]
    assert final["status"] == "completed"
    assert isinstance(final["clean_description"], str) and final["clean_description"]
    assert isinstance(final["thinking"], str)


# -- authentication, routing and request validation ------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-CEKURA-API-KEY": "wrong"}], ids=["missing key", "wrong key"])
def test_a_missing_or_wrong_api_key_gets_401(sim: SimulatorHandle, headers: dict[str, str]) -> None:
    with make_client(sim.url, headers) as c:
        response = c.post(AUTO_FETCH.format(agent=1))
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key."}


def test_an_unknown_path_is_404_and_a_wrong_method_is_405(client: httpx.Client) -> None:
    assert client.get("/test_framework/v1/nothing/").status_code == 404
    assert client.post("/test_framework/v2/aiagents/12/auto-fetch").status_code == 404  # no trailing slash
    assert client.post("/test_framework/v2/aiagents/abc/auto-fetch/").status_code == 404
    response = client.get(AUTO_FETCH.format(agent=12))
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert client.post(SCENARIO_PROGRESS).status_code == 405


def test_auto_fetch_with_a_request_body_is_rejected(client: httpx.Client) -> None:
    response = client.post(AUTO_FETCH.format(agent=12), json={})
    assert response.status_code == 400
    assert response.json() == {"detail": "auto-fetch takes no request body"}


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[1, 2]", b"{}", b'{"enabled": "yes"}', b'{"enabled": true, "api_key": 5}'],
    ids=["invalid json", "not an object", "enabled missing", "enabled not a boolean", "api_key not a string"],
)
def test_toggle_mock_tools_rejects_a_bad_body_with_a_detail_400(client: httpx.Client, content: bytes) -> None:
    response = client.post(TOGGLE.format(agent=3), content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metric_description": "x", "eval_type": "boolean"}, "agent"),
        ({"agent": 1, "eval_type": "boolean"}, "metric_description"),
        ({"agent": 1, "metric_description": "x"}, "eval_type"),
        ({"agent": 1, "metric_description": "x", "eval_type": "percent"}, "eval_type"),
        ({"agent": "1", "metric_description": "x", "eval_type": "rating"}, "agent"),
        ({"agent": True, "metric_description": "x", "eval_type": "rating"}, "agent"),
        ({"agent": 1, "metric_description": 3, "eval_type": "enum"}, "metric_description"),
    ],
    ids=[
        "agent missing",
        "description missing",
        "eval_type missing",
        "unknown eval_type",
        "agent a string",
        "agent a boolean",
        "description not a string",
    ],
)
def test_clean_description_rejects_a_bad_body_with_a_field_error_map(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = client.post(CLEAN, json=body)
    assert response.status_code == 400
    errors = response.json()
    assert field in errors
    assert all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in errors.values())


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"context": [{"role": "system", "content": "hi"}]}, "context"),
        ({"num_scenarios": 0}, "num_scenarios"),
        ({"session_id": "abc"}, "session_id"),
        ({"user_message": 5}, "user_message"),
        ({"scenarios": "101,102"}, "scenarios"),
        ({"knowledge_base": ["a"]}, "knowledge_base"),
        ({"agent_selections": {"101": 0}}, "agent_selections"),
    ],
    ids=[
        "unknown context role",
        "zero scenarios",
        "session_id not an integer",
        "user_message not a string",
        "scenarios as a stringified list",
        "knowledge_base not integers",
        "agent selection below one",
    ],
)
def test_scenario_agent_rejects_a_bad_body_with_a_field_error_map(
    client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    response = client.post(SCENARIO, json=body)
    assert response.status_code == 400
    assert list(response.json()) == [field]


@pytest.mark.parametrize("content", [b"{oops", b'"just a string"'], ids=["invalid json", "not an object"])
def test_scenario_agent_rejects_a_body_that_is_not_a_json_object(client: httpx.Client, content: bytes) -> None:
    response = client.post(SCENARIO, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert list(response.json()) == ["non_field_errors"]


def test_scenario_agent_accepts_an_empty_body_because_no_field_is_required(client: httpx.Client) -> None:
    assert client.post(SCENARIO).status_code == 200


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (AUTO_FETCH_PROGRESS.format(agent=12), {"detail": "Invalid progress_id"}),
        (TOGGLE_PROGRESS.format(agent=12), {"detail": "Invalid progress_id"}),
        (SCENARIO_PROGRESS, {"progress_id": ["Invalid progress_id"]}),
        (CLEAN_PROGRESS, {"progress_id": ["Invalid progress_id"]}),
    ],
    ids=["auto-fetch", "toggle-mock-tools", "scenario agent", "clean description"],
)
def test_an_unknown_progress_id_is_a_400_on_every_progress_endpoint(
    client: httpx.Client, path: str, expected: dict[str, Any]
) -> None:
    response = client.get(path, params={"progress_id": "00000000-0000-4000-a000-000000000000"})
    assert response.status_code == 400
    assert response.json() == expected
    assert client.get(path).status_code == 400


def test_a_progress_id_is_unknown_on_another_operation_or_another_agent(client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 12)
    assert client.get(AUTO_FETCH_PROGRESS.format(agent=13), params={"progress_id": progress_id}).status_code == 400
    assert client.get(TOGGLE_PROGRESS.format(agent=12), params={"progress_id": progress_id}).status_code == 400
    assert client.get(SCENARIO_PROGRESS, params={"progress_id": progress_id}).status_code == 400
    assert client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": progress_id}).status_code == 200


def test_reset_forgets_every_job(sim: SimulatorHandle, client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 12)
    sim.reset()
    assert client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": progress_id}).status_code == 400
    assert sim.stats()["started_jobs"] == 0


# -- outcome conventions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("agent", [400, 403, 404, 405])
@pytest.mark.parametrize("operation", ["auto-fetch", "toggle-mock-tools", "clean description"])
def test_agent_ids_400_403_404_405_make_the_start_call_answer_that_status(
    client: httpx.Client, agent: int, operation: str
) -> None:
    if operation == "auto-fetch":
        response = client.post(AUTO_FETCH.format(agent=agent))
    elif operation == "toggle-mock-tools":
        response = client.post(TOGGLE.format(agent=agent), json={"enabled": True})
    else:
        response = client.post(CLEAN, json={"agent": agent, "metric_description": "x", "eval_type": "numeric"})
    assert response.status_code == agent
    assert isinstance(response.json(), dict)


@pytest.mark.parametrize("agent", [900, 950, 999])
def test_agent_ids_in_the_900s_end_failed_with_an_error_text(client: httpx.Client, agent: int) -> None:
    auto_fetch_id = start_auto_fetch(client, agent)
    toggle_id = client.post(TOGGLE.format(agent=agent), json={"enabled": True}).json()["progress_id"]
    clean = client.post(CLEAN, json={"agent": agent, "metric_description": "x", "eval_type": "enum"}).json()
    ends = {"completed", "failed"}

    final = poll(client, AUTO_FETCH_PROGRESS.format(agent=agent), auto_fetch_id, ends)[-1]
    assert final["status"] == "failed"
    assert isinstance(final["error"], str) and final["error"]
    assert "failed" in {stage["status"] for stage in final["stages"]}
    final = poll(client, TOGGLE_PROGRESS.format(agent=agent), toggle_id, ends)[-1]
    assert final["status"] == "failed"
    assert final["error"]
    final = poll(client, CLEAN_PROGRESS, clean["progress_id"], ends)[-1]
    assert final["status"] == "failed"
    assert final["error"]


def test_agent_id_777_never_finishes(client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 777)
    toggle_id = client.post(TOGGLE.format(agent=777), json={"enabled": True}).json()["progress_id"]
    clean_id = client.post(CLEAN, json={"agent": 777, "metric_description": "x", "eval_type": "boolean"}).json()
    time.sleep(DURATION * 2)
    for _ in range(3):
        answer = client.get(AUTO_FETCH_PROGRESS.format(agent=777), params={"progress_id": progress_id}).json()
        assert answer["status"] == "in_progress"
        toggle = client.get(TOGGLE_PROGRESS.format(agent=777), params={"progress_id": toggle_id}).json()
        assert toggle["status"] == "in_progress"
        clean = client.get(CLEAN_PROGRESS, params={"progress_id": clean_id["progress_id"]}).json()
        assert clean["status"] == "processing"


@pytest.mark.parametrize(("marker", "status"), [("[fail]", "failed"), ("[hang]", "processing")])
def test_clean_description_markers_steer_the_outcome(client: httpx.Client, marker: str, status: str) -> None:
    body = {"agent": 5, "metric_description": f"greets the caller {marker}", "eval_type": "boolean"}
    progress_id = client.post(CLEAN, json=body).json()["progress_id"]
    time.sleep(DURATION * 1.5)
    answer = client.get(CLEAN_PROGRESS, params={"progress_id": progress_id}).json()
    assert answer["status"] == status
    if status == "failed":
        assert answer["error"]


@pytest.mark.parametrize(
    "status", ["needs_clarification", "needs_agent_clarification", "failed", "cancelled"], ids=lambda s: f"[{s}]"
)
def test_scenario_agent_user_message_markers_end_in_that_status(client: httpx.Client, status: str) -> None:
    started = client.post(SCENARIO, json={"user_message": f"please [{status}]"}).json()
    final = poll(client, SCENARIO_PROGRESS, started["progress_id"], SCENARIO_TERMINAL)[-1]
    assert final["status"] == status
    assert (final["error"] is not None) == (status == "failed")


def test_scenario_agent_hang_marker_stays_in_progress(client: httpx.Client) -> None:
    started = client.post(SCENARIO, json={"user_message": "[hang]"}).json()
    time.sleep(DURATION * 1.5)
    answer = client.get(SCENARIO_PROGRESS, params={"progress_id": started["progress_id"]}).json()
    assert answer["status"] == "in_progress"


def test_cancel_agent_ends_the_running_jobs_of_that_session_cancelled(client: httpx.Client) -> None:
    done = client.post(SCENARIO, json={"user_message": "quick", "session_id": 77}).json()
    poll(client, SCENARIO_PROGRESS, done["progress_id"], SCENARIO_TERMINAL)
    running = client.post(SCENARIO, json={"user_message": "[hang]", "session_id": 77}).json()
    other = client.post(SCENARIO, json={"user_message": "[hang]", "session_id": 78}).json()
    response = client.post(CANCEL, json={"session_id": 77})
    assert response.status_code == 200
    assert response.json() == {"success": True, "session_id": 77}
    answer = client.get(SCENARIO_PROGRESS, params={"progress_id": running["progress_id"]}).json()
    assert answer["status"] == "cancelled"
    assert client.get(SCENARIO_PROGRESS, params={"progress_id": done["progress_id"]}).json()["status"] == "completed"
    assert client.get(SCENARIO_PROGRESS, params={"progress_id": other["progress_id"]}).json()["status"] == "in_progress"


@pytest.mark.parametrize(
    ("body", "message"),
    [({"session_id": 123456}, "Invalid session_id"), ({}, "This field is required."), ({"session_id": "7"}, None)],
    ids=["unknown session", "session missing", "session not an integer"],
)
def test_cancel_agent_rejects_an_unknown_or_invalid_session_with_a_field_map(
    client: httpx.Client, body: dict[str, Any], message: str | None
) -> None:
    response = client.post(CANCEL, json=body)
    assert response.status_code == 400
    assert list(response.json()) == ["session_id"]
    if message:
        assert response.json()["session_id"] == [message]


# -- progression ---------------------------------------------------------------------------------------------------


def test_polls_to_complete_makes_exactly_the_kth_get_terminal(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(polls_to_complete=3, duration_s=3600)
    progress_id = client.post(SCENARIO, json={"user_message": "x"}).json()["progress_id"]
    statuses = [client.get(SCENARIO_PROGRESS, params={"progress_id": progress_id}).json()["status"] for _ in range(5)]
    assert statuses == ["in_progress", "in_progress", "completed", "completed", "completed"]
    record = sim.polls()[progress_id]
    assert record["kind"] == "scenario_agent"
    assert len(record["times"]) == 5
    assert record["terminal_at"] == record["times"][2]
    assert record["times"] == sorted(record["times"])
    assert abs(record["times"][0] - time.time()) < 5


def test_polls_to_complete_advances_auto_fetch_stages_per_poll(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.configure(polls_to_complete=8, duration_s=3600)
    progress_id = start_auto_fetch(client, 12)
    path = AUTO_FETCH_PROGRESS.format(agent=12)
    answers = [client.get(path, params={"progress_id": progress_id}).json() for _ in range(8)]
    assert [a["current_stage"] for a in answers[:-1]] == STAGES[1:]
    assert answers[-1]["status"] == "completed"


def test_control_polls_route_reports_each_progress_get(
    sim: SimulatorHandle, client: httpx.Client, control: httpx.Client
) -> None:
    progress_id = start_auto_fetch(client, 12)
    poll(client, AUTO_FETCH_PROGRESS.format(agent=12), progress_id, {"completed"})
    report = control.get("/_sim/polls").json()
    assert report[progress_id]["kind"] == "auto_fetch"
    assert report[progress_id]["terminal_at"] == report[progress_id]["times"][-1]


# -- fault injection ---------------------------------------------------------------------------------------------


def test_error_rate_answers_500_502_503_in_rotation(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.set_faults(error_rate=1.0)
    statuses = [client.post(AUTO_FETCH.format(agent=1)).status_code for _ in range(6)]
    assert statuses == [500, 502, 503, 500, 502, 503]
    assert sim.stats()["started_jobs"] == 0


def test_rate_429_alternates_delta_seconds_and_http_date_retry_after(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.set_faults(rate_429=1.0, retry_after_s=2)
    first = client.post(AUTO_FETCH.format(agent=1))
    before = time.time()
    second = client.post(AUTO_FETCH.format(agent=1))
    after = time.time()
    assert first.status_code == second.status_code == 429
    assert first.headers["retry-after"] == "2"
    when = parsedate_to_datetime(second.headers["retry-after"])
    # 2 s after the simulator answered, rounded up to a whole second (an HTTP date has no fraction)
    assert before + 2 <= when.timestamp() <= after + 3
    assert client.post(AUTO_FETCH.format(agent=1)).headers["retry-after"] == "2"


def test_latency_ms_delays_every_answer(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.set_faults(latency_ms=150)
    began = time.monotonic()
    assert client.post(AUTO_FETCH.format(agent=1)).status_code == 202
    assert time.monotonic() - began >= 0.14


def test_hang_rate_holds_the_answer_for_hang_s(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.set_faults(hang_rate=1.0, hang_s=0.3)
    began = time.monotonic()
    assert client.post(AUTO_FETCH.format(agent=1)).status_code == 202
    assert time.monotonic() - began >= 0.29
    sim.set_faults(hang_s=30)
    with pytest.raises(httpx.ReadTimeout):
        client.post(AUTO_FETCH.format(agent=1), timeout=0.2)


def test_drop_rate_closes_the_connection_without_an_answer(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(AUTO_FETCH.format(agent=1))
    sim.set_faults(drop_rate=0.0)
    assert client.post(AUTO_FETCH.format(agent=1)).status_code == 202
    assert sim.stats()["by_route"]["auto-fetch dropped"] == 1


def test_malformed_rate_answers_200_with_invalid_json(sim: SimulatorHandle, client: httpx.Client) -> None:
    sim.set_faults(malformed_rate=1.0)
    for _ in range(2):
        response = client.post(AUTO_FETCH.format(agent=1))
        assert response.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            response.json()


def test_unknown_status_rate_answers_a_schema_valid_unexpected_status(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    progress_id = start_auto_fetch(client, 12)
    scenario = client.post(SCENARIO, json={"user_message": "x"}).json()
    sim.set_faults(unknown_status_rate=1.0)
    answer = client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": progress_id}).json()
    assert answer["status"] == "paused"
    assert {"agent_id", "status", "current_stage", "stages", "error"} <= set(answer)
    answer = client.get(SCENARIO_PROGRESS, params={"progress_id": scenario["progress_id"]}).json()
    assert answer["status"] == "paused"
    assert answer["session_id"] == scenario["session_id"]
    assert client.post(AUTO_FETCH.format(agent=1)).status_code == 202  # start routes never get this fault


def test_faults_never_touch_the_control_routes(sim: SimulatorHandle, control: httpx.Client) -> None:
    sim.set_faults(drop_rate=0.5, error_rate=0.5)
    for _ in range(10):
        assert control.get("/_sim/stats").status_code == 200


def test_faults_can_be_changed_over_the_control_route(
    sim: SimulatorHandle, client: httpx.Client, control: httpx.Client
) -> None:
    response = control.post("/_sim/faults", json={"error_rate": 1.0})
    assert response.status_code == 200
    assert response.json()["error_rate"] == 1.0
    assert client.post(AUTO_FETCH.format(agent=1)).status_code == 500
    assert control.post("/_sim/faults", json={"error_rate": 2}).status_code == 400
    assert control.post("/_sim/faults", json={"bogus": 1}).status_code == 400
    assert control.post("/_sim/reset").status_code == 200
    assert sim.stats()["requests_total"] == 0


def test_the_same_seed_replays_the_same_fault_sequence() -> None:
    sequences = []
    for _ in range(2):
        with (
            start_in_thread(SimConfig(seed=42, faults=Faults(error_rate=0.5))) as handle,
            make_client(handle.url, {"X-CEKURA-API-KEY": KEY}) as c,
        ):
            sequences.append([c.post(AUTO_FETCH.format(agent=1)).status_code for _ in range(20)])
    assert sequences[0] == sequences[1]
    assert {202, 500} <= set(sequences[0])


def test_rate_limit_rps_answers_429_with_retry_after_above_the_limit(
    sim: SimulatorHandle, client: httpx.Client
) -> None:
    sim.configure(rate_limit_rps=5)
    responses = [client.post(AUTO_FETCH.format(agent=1)) for _ in range(12)]
    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 5
    assert statuses.count(429) == 7
    assert all("retry-after" in r.headers for r in responses if r.status_code == 429)
    stats = sim.stats()
    assert stats["max_rps_1s"] >= 12
    assert stats["faults_injected"]["rate_limit"] == 7


# -- statistics and the HTTP layer -------------------------------------------------------------------------------


def test_stats_count_requests_by_route_and_status(
    sim: SimulatorHandle, client: httpx.Client, control: httpx.Client
) -> None:
    progress_id = start_auto_fetch(client, 12)
    client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": progress_id})
    client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": "nope"})
    stats = control.get("/_sim/stats").json()
    assert stats["requests_total"] == 3
    assert stats["by_route"] == {"auto-fetch 202": 1, "auto-fetch-progress 200": 1, "auto-fetch-progress 400": 1}
    assert stats["started_jobs"] == 1
    assert stats["max_rps_1s"] == 3


def test_keep_alive_serves_many_requests_on_one_connection(sim: SimulatorHandle, client: httpx.Client) -> None:
    progress_id = start_auto_fetch(client, 12)
    opened = sim.stats()["connections_total"]
    for _ in range(200):
        response = client.get(AUTO_FETCH_PROGRESS.format(agent=12), params={"progress_id": progress_id})
        assert response.status_code == 200
    assert sim.stats()["connections_total"] == opened


def _read_responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """Read `count` Content-Length framed HTTP responses from a raw socket."""
    data = b""
    answers: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 30
    while len(answers) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.5)
        if ready:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        while b"\r\n\r\n" in data:
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            if len(rest) < length:
                break
            answers.append((int(head.split(b" ")[1]), rest[:length]))
            data = rest[length:]
    return answers


def test_pipelined_and_split_requests_are_answered_in_order(sim: SimulatorHandle) -> None:
    key = f"X-CEKURA-API-KEY: {KEY}\r\n".encode()
    start = b"POST /test_framework/v2/aiagents/12/auto-fetch/ HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n"
    body = b'{"enabled": true}'
    toggle = (
        b"POST /test_framework/v2/aiagents/12/toggle-mock-tools/ HTTP/1.1\r\nHost: x\r\n"
        + key
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )
    missing = b"GET /nope/ HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((sim.host, sim.port)) as sock:
        sock.sendall(start + toggle[:30])
        time.sleep(0.05)
        sock.sendall(toggle[30:-5])
        time.sleep(0.05)
        sock.sendall(toggle[-5:] + missing)
        answers = _read_responses(sock, 3)
    assert [status for status, _ in answers] == [202, 202, 404]
    assert "progress_id" in json.loads(answers[1][1])


def test_pipelined_requests_stay_in_order_behind_a_delayed_answer(sim: SimulatorHandle) -> None:
    sim.set_faults(latency_ms=100)
    key = f"X-CEKURA-API-KEY: {KEY}\r\n".encode()
    start = b"POST /test_framework/v2/aiagents/12/auto-fetch/ HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n"
    bad = b"POST /test_framework/v2/aiagents/404/auto-fetch/ HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n"
    with socket.create_connection((sim.host, sim.port)) as sock:
        sock.sendall(start + bad + start)
        answers = _read_responses(sock, 3)
    assert [status for status, _ in answers] == [202, 404, 202]


def test_chunked_request_bodies_are_refused_and_connection_close_is_honoured(sim: SimulatorHandle) -> None:
    request = (
        b"POST /test_framework/v1/scenarios/scenario-agent/ HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    with socket.create_connection((sim.host, sim.port)) as sock:
        sock.sendall(request)
        answers = _read_responses(sock, 1)
        assert [status for status, _ in answers] == [411]
    with make_client(sim.url, {"X-CEKURA-API-KEY": KEY, "Connection": "close"}) as c:
        response = c.post(SCENARIO)
        assert response.headers["connection"] == "close"
        c.post(SCENARIO)
    assert sim.stats()["connections_total"] >= 3


def test_the_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    code = "from simulator import main; raise SystemExit(main(['--port', '0', '--duration', '0.1']))"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("cekura simulator listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with make_client(url, {"X-CEKURA-API-KEY": KEY}) as c:
            assert c.post(AUTO_FETCH.format(agent=1)).status_code == 202
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
