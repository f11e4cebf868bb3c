"""Tests of the other three operations added to the simulator, over real HTTP: tools auto-fetch (v1), evaluator from
a transcript, and metric improvement from feedback with its answer and cancel calls."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.simulator.sim_api import OPS_DURATION, Api

TOOLS = "/test_framework/v1/aiagents/{agent}/tools/auto-fetch/"
TOOLS_PROGRESS = "/test_framework/v1/aiagents/{agent}/tools/auto-fetch-progress/"
TRANSCRIPT = "/test_framework/v1/scenarios/create-from-transcript-bg/"
TRANSCRIPT_PROGRESS = "/test_framework/v1/scenarios/create-from-transcript-progress/"
FEEDBACK = "/test_framework/metric-reviews/process_feedbacks/"
FEEDBACK_PROGRESS = "/test_framework/metric-reviews/process_feedbacks_progress/"
FEEDBACK_ANSWER = "/test_framework/metric-reviews/process_feedbacks_answer/"
FEEDBACK_CANCEL = "/test_framework/metric-reviews/process_feedbacks_cancel/"
UNKNOWN_ID = "00000000-0000-4000-a000-000000000000"
TOOLS_KEYS = {"status", "tools_created", "tools_updated", "message", "error"}
LINES = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0},
    {"role": "Testing Agent", "content": "I need to reschedule.", "start_time": 2.1},
    {"role": "Function Call", "content": "", "data": {"name": "reschedule"}},
]
QUESTION = {"id": "q1", "question": "Is a transfer to a human a failure?"}


def has_status(*words: str) -> Any:
    return lambda answer: answer.get("status") in words


# -- tools auto-fetch -------------------------------------------------------------------------------------------


def test_tools_auto_fetch_starts_with_200_and_completes_with_counts(api: Api) -> None:
    progress_id = api.start(TOOLS.format(agent=12), {"provider": "vapi", "assistant_id": "asst_1", "api_key": "k"})
    answers = api.poll(TOOLS_PROGRESS.format(agent=12), progress_id, has_status("completed", "failed"))
    assert all(set(a) == TOOLS_KEYS for a in answers)
    assert all(a["status"] == "in_progress" and a["tools_created"] is None for a in answers[:-1])
    final = answers[-1]
    assert final["status"] == "completed" and final["error"] is None
    assert isinstance(final["tools_created"], int) and isinstance(final["tools_updated"], int)
    assert isinstance(final["message"], str) and "k" not in final["message"].split()


def test_tools_auto_fetch_with_a_custom_mcp_server_needs_no_assistant_id(api: Api) -> None:
    body = {"provider": "custom", "mcp_server_url": "https://mcp.example.com/", "mcp_server_headers": {"X-A": "1"}}
    progress_id = api.start(TOOLS.format(agent=5), body)
    assert api.poll(TOOLS_PROGRESS.format(agent=5), progress_id, has_status("completed"))[-1]["error"] is None


@pytest.mark.parametrize("agent", [400, 403, 404, 405])
def test_tools_auto_fetch_agent_ids_400_to_405_answer_that_status(api: Api, agent: int) -> None:
    response = api.post(TOOLS.format(agent=agent), {"provider": "retell", "assistant_id": "a"})
    assert response.status_code == agent
    assert set(response.json()) == {"detail"}


@pytest.mark.parametrize(("agent", "status"), [(950, "failed"), (777, "in_progress")])
def test_tools_auto_fetch_agents_900s_fail_and_777_hangs(api: Api, agent: int, status: str) -> None:
    progress_id = api.start(TOOLS.format(agent=agent), {"provider": "elevenlabs", "assistant_id": "a"})
    time.sleep(OPS_DURATION * 1.5)
    answer = api.get(TOOLS_PROGRESS.format(agent=agent), progress_id)
    assert set(answer) == TOOLS_KEYS
    assert answer["status"] == status
    assert bool(answer["error"]) == (status == "failed")


def test_tools_auto_fetch_progress_is_only_known_on_its_agent(api: Api) -> None:
    progress_id = api.start(TOOLS.format(agent=12), {"provider": "vapi", "assistant_id": "a"})
    for path, ident in ((TOOLS_PROGRESS.format(agent=13), progress_id), (TOOLS_PROGRESS.format(agent=12), UNKNOWN_ID)):
        response = api.http.get(path, params={"progress_id": ident})
        assert (response.status_code, response.json()) == (400, {"detail": "Invalid progress_id"})
    v2 = api.http.get(f"/test_framework/v2/aiagents/12/auto-fetch-progress/?progress_id={progress_id}")
    assert v2.status_code == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (None, "provider"),
        ({"assistant_id": "a"}, "provider"),
        ({"provider": "bland", "assistant_id": "a"}, "provider"),
        ({"provider": "vapi"}, "assistant_id"),
        ({"provider": "custom"}, "mcp_server_url"),
        ({"provider": "custom", "mcp_server_url": "https://x", "mcp_server_headers": ["a"]}, "mcp_server_headers"),
        ({"provider": "vapi", "assistant_id": "a", "api_key": 5}, "api_key"),
    ],
    ids=["no body", "provider missing", "unknown provider", "no assistant", "custom without url", "headers", "key"],
)
def test_tools_auto_fetch_rejects_a_bad_body_with_a_detail_400(api: Api, body: Any, field: str) -> None:
    response = api.post(TOOLS.format(agent=3), body)
    assert response.status_code == 400
    assert set(response.json()) == {"detail"}
    assert response.json()["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize("agent", [12, 950])
def test_tools_auto_fetch_echoes_echo_marked_secrets_in_message_and_error(api: Api, agent: int) -> None:
    key, header = "sk-live-[echo]-4242", "Bearer [echo]-tok-99"
    body = {"provider": "custom", "mcp_server_url": "https://x", "api_key": key, "mcp_server_headers": {"A": header}}
    progress_id = api.start(TOOLS.format(agent=agent), body)
    final = api.poll(TOOLS_PROGRESS.format(agent=agent), progress_id, has_status("completed", "failed"))[-1]
    assert final["status"] == ("completed" if agent == 12 else "failed")
    for text in (final["message"], final["error"]):
        assert key in text and header in text


def test_tools_auto_fetch_without_the_echo_marker_never_quotes_secrets(api: Api) -> None:
    body = {"provider": "vapi", "assistant_id": "a", "api_key": "sk-live-4242", "mcp_server_headers": {"A": "tok-99"}}
    progress_id = api.start(TOOLS.format(agent=950), body)
    final = api.poll(TOOLS_PROGRESS.format(agent=950), progress_id, has_status("failed"))[-1]
    assert "4242" not in str(final) and "tok-99" not in str(final)


# -- evaluator from a transcript ------------------------------------------------------------------------------


def test_create_from_transcript_completes_with_the_new_evaluator(api: Api) -> None:
    progress_id = api.start(TRANSCRIPT, {"transcript_json": LINES, "agent": 12, "name": "Reschedule"})
    answers = api.poll(TRANSCRIPT_PROGRESS, progress_id, has_status("completed", "failed"))
    keys = {"agent_id", "status", "scenario_id", "error", "scenario"}
    assert all(set(a) == keys and a["agent_id"] == 12 for a in answers)
    assert all(a["status"] == "in_progress" and a["scenario_id"] is None for a in answers[:-1])
    final = answers[-1]
    assert final["status"] == "completed" and final["error"] is None
    assert isinstance(final["scenario_id"], int)
    assert final["scenario"]["id"] == final["scenario_id"] and final["scenario"]["name"] == "Reschedule"


@pytest.mark.parametrize(("agent", "status"), [(999, "failed"), (777, "in_progress")])
def test_create_from_transcript_agents_900s_fail_and_777_hangs(api: Api, agent: int, status: str) -> None:
    progress_id = api.start(TRANSCRIPT, {"transcript_json": LINES, "agent": agent})
    time.sleep(OPS_DURATION * 1.5)
    answer = api.get(TRANSCRIPT_PROGRESS, progress_id)
    assert answer["status"] == status
    assert answer["scenario_id"] is None and answer["scenario"] is None
    assert bool(answer["error"]) == (status == "failed")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "This field is required."),
        ({"transcript_json": []}, "This list may not be empty."),
        ({"transcript_json": "hello"}, 'Expected a list of items but got type "str".'),
        ({"transcript_json": [{"role": "agent", "content": "hi"}]}, 'Item 0: role "agent" is not one of'),
        ({"transcript_json": [LINES[0], {"role": "Main Agent"}]}, "Item 1: content is required"),
        ({"transcript_json": [{"role": "Main Agent", "content": "x", "start_time": "0"}]}, "Item 0: start_time"),
    ],
    ids=["missing", "empty", "not a list", "unknown role", "no content", "start_time a string"],
)
def test_create_from_transcript_rejects_a_bad_transcript_with_a_field_map(
    api: Api, body: dict[str, Any], message: str
) -> None:
    response = api.post(TRANSCRIPT, body)
    assert response.status_code == 400
    [problem] = response.json()["transcript_json"]
    assert problem.startswith(message)
    assert list(response.json()) == ["transcript_json"]


def test_create_from_transcript_checks_its_other_fields(api: Api) -> None:
    response = api.post(TRANSCRIPT, {"transcript_json": LINES, "agent": "12", "name": 3})
    assert response.status_code == 400
    assert set(response.json()) == {"agent", "name"}


# -- improve a metric from feedback -----------------------------------------------------------------------------


def test_process_feedbacks_answers_in_the_prose_shape_by_default(api: Api) -> None:
    body = {"metric_id": 42, "metric_type": "llm_judge", "test_set_ids": [7, 8]}
    progress_id = api.start(FEEDBACK, body)
    answers = api.poll(FEEDBACK_PROGRESS, progress_id, has_status("success", "error"))
    assert all(a == {"status": "in_progress"} for a in answers[:-1])
    final = answers[-1]
    assert set(final) == {"status", "output"} and final["status"] == "success"
    output = final["output"]
    assert isinstance(output["improved_metric_description"], str)
    assert isinstance(output["improved_evaluation_trigger"], str)
    assert [review["test_set_id"] for review in output["review_results"]] == [7, 8]
    assert output["feedback_edits"] == []


def test_process_feedbacks_progress_accepts_the_permission_query_parameters(api: Api) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": 42})
    response = api.http.get(FEEDBACK_PROGRESS, params={"progress_id": progress_id, "agent_id": 1, "project_id": 2})
    assert response.status_code == 200
    unknown = api.http.get(FEEDBACK_PROGRESS, params={"progress_id": UNKNOWN_ID})
    assert (unknown.status_code, unknown.json()) == (400, {"progress_id": ["Invalid progress_id"]})


@pytest.mark.parametrize(("metric", "status"), [(901, "error"), (777, "in_progress")])
def test_process_feedbacks_metrics_900s_fail_and_777_hangs(api: Api, metric: int, status: str) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": metric})
    time.sleep(OPS_DURATION * 1.5)
    answer = api.get(FEEDBACK_PROGRESS, progress_id)
    assert answer["status"] == status
    assert ("error" in answer) == (status == "error")


def test_process_feedbacks_metric_555_answers_in_the_schema_shape(api: Api) -> None:
    api.sim.configure(polls_to_complete=4, duration_s=3600)
    progress_id = api.start(FEEDBACK, {"metric_id": 555, "skip_evaluation": True})
    answers = [api.get(FEEDBACK_PROGRESS, progress_id) for _ in range(4)]
    assert all("status" not in a for a in answers)
    assert [a.get("progress") for a in answers[:-1]] == [20, 50, 70]
    final = answers[-1]
    assert isinstance(final["improved_metric_description"], str)
    assert isinstance(final["improved_evaluation_trigger"], str)
    assert final["review_results"] == []


@pytest.mark.parametrize("answer", ["Yes, a transfer fails the call.", {"action": "skip"}], ids=["text", "skip"])
def test_process_feedbacks_metric_333_waits_for_answers_then_succeeds(api: Api, answer: Any) -> None:
    api.sim.configure(polls_to_complete=4, duration_s=3600)
    progress_id = api.start(FEEDBACK, {"metric_id": 333})
    early = api.post(FEEDBACK_ANSWER, {"progress_id": progress_id, "answers": {"q1": answer}})
    assert early.status_code == 400 and set(early.json()) == {"detail"}  # not asked yet
    answers = [api.get(FEEDBACK_PROGRESS, progress_id) for _ in range(5)]
    assert answers[0] == {"status": "in_progress"}
    assert answers[1:] == [{"status": "awaiting_answers", "questions": [QUESTION]}] * 4
    response = api.post(FEEDBACK_ANSWER, {"progress_id": progress_id, "answers": {"q1": answer}})
    assert response.status_code == 200 and response.json()["progress_id"] == progress_id
    final = api.poll(FEEDBACK_PROGRESS, progress_id, has_status("success", "error"))[-1]
    assert final["status"] == "success"
    assert final["output"]["feedback_edits"] == [
        {"question_id": "q1", "question": QUESTION["question"], "answer": answer}
    ]
    late = api.post(FEEDBACK_ANSWER, {"progress_id": progress_id, "answers": {"q1": "again"}})
    assert late.status_code == 400 and set(late.json()) == {"detail"}


def test_process_feedbacks_answer_under_all_answers_every_question(api: Api) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": 333})
    api.poll(FEEDBACK_PROGRESS, progress_id, has_status("awaiting_answers"))
    assert (
        api.post(FEEDBACK_ANSWER, {"progress_id": progress_id, "answers": {"all": "Only if asked."}}).status_code == 200
    )
    final = api.poll(FEEDBACK_PROGRESS, progress_id, has_status("success"))[-1]
    assert final["output"]["feedback_edits"][0]["answer"] == "Only if asked."


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"progress_id": UNKNOWN_ID, "answers": {"q1": "x"}}, {"detail": "Invalid progress_id"}),
        ({"progress_id": "x"}, {"answers": ["This field is required."]}),
        ({"progress_id": "x", "answers": ["x"]}, {"answers": ["Expected a dictionary of items."]}),
        ({"progress_id": "x", "answers": {"q1": 3}}, None),
        ({"progress_id": "x", "answers": {"q2": "x"}}, None),
    ],
    ids=["unknown id", "answers missing", "answers a list", "answer a number", "q1 unanswered"],
)
def test_process_feedbacks_answer_rejects_a_bad_body(api: Api, body: dict[str, Any], expected: Any) -> None:
    response = api.post(FEEDBACK_ANSWER, body)
    assert response.status_code == 400
    if expected is None:
        assert list(response.json()) == ["answers"]
    else:
        assert response.json() == expected


def test_process_feedbacks_cancel_ends_a_running_job_cancelled(api: Api) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": 777})
    assert api.get(FEEDBACK_PROGRESS, progress_id) == {"status": "in_progress"}
    response = api.post(FEEDBACK_CANCEL, {"progress_id": progress_id})
    assert (response.status_code, response.json()) == (200, {"progress_id": progress_id, "status": "cancelled"})
    assert api.get(FEEDBACK_PROGRESS, progress_id) == {"status": "cancelled"}
    assert api.get(FEEDBACK_PROGRESS, progress_id) == {"status": "cancelled"}


def test_process_feedbacks_cancel_also_ends_a_job_waiting_for_answers(api: Api) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": 333})
    api.poll(FEEDBACK_PROGRESS, progress_id, has_status("awaiting_answers"))
    assert api.post(FEEDBACK_CANCEL, {"progress_id": progress_id}).json()["status"] == "cancelled"
    assert api.get(FEEDBACK_PROGRESS, progress_id) == {"status": "cancelled"}


def test_process_feedbacks_cancel_of_a_finished_job_keeps_its_outcome(api: Api) -> None:
    progress_id = api.start(FEEDBACK, {"metric_id": 42})
    final = api.poll(FEEDBACK_PROGRESS, progress_id, has_status("success"))[-1]
    response = api.post(FEEDBACK_CANCEL, {"progress_id": progress_id})
    assert (response.status_code, response.json()["status"]) == (200, "success")
    assert api.get(FEEDBACK_PROGRESS, progress_id) == final
    unknown = api.post(FEEDBACK_CANCEL, {"progress_id": UNKNOWN_ID})
    assert (unknown.status_code, unknown.json()) == (400, {"detail": "Invalid progress_id"})
    assert list(api.post(FEEDBACK_CANCEL, {}).json()) == ["progress_id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "metric_id"),
        ({"metric_id": "42"}, "metric_id"),
        ({"metric_id": 42, "metric_type": "regex"}, "metric_type"),
        ({"metric_id": 42, "test_set_ids": ["a"]}, "test_set_ids"),
        ({"metric_id": 42, "skip_evaluation": "yes"}, "skip_evaluation"),
        ({"metric_id": 42, "simplified_prompt": 1}, "simplified_prompt"),
    ],
    ids=["missing", "a string", "unknown type", "test sets", "skip flag", "prompt"],
)
def test_process_feedbacks_rejects_a_bad_body_with_a_field_map(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.post(FEEDBACK, body)
    assert response.status_code == 400
    assert list(response.json()) == [field]
