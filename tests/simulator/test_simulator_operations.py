"""Tests of the six operations added to the simulator, over real HTTP: shapes, outcome conventions, 4xx bodies, the
answer and cancel flows (evaluator runs, evaluator generation and from a transcript, metric generation and
improvement, tools auto-fetch)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.simulator.sim_api import OPS_DURATION, Api

RUN = "/test_framework/v1/scenarios/run_scenarios/"
RUN_TEXT = "/test_framework/v1/scenarios/run_scenarios_text/"
RESULT = "/test_framework/v1/results/{id}/"
END_CALLS = "/test_framework/v1/results/{id}/end_calls/"
GENERATE = "/test_framework/v1/scenarios/generate-bg/"
GENERATE_PROGRESS = "/test_framework/v1/scenarios/generate-progress/"
CLARIFY = "/test_framework/v1/scenarios/generate-clarify-answer/"
METRICS = "/test_framework/v1/metrics/generate_metrics/"
METRICS_PROGRESS = "/test_framework/v1/metrics/generate_metrics_progress/"
TOOLS = "/test_framework/v1/aiagents/{agent}/tools/auto-fetch/"
TOOLS_PROGRESS = "/test_framework/v1/aiagents/{agent}/tools/auto-fetch-progress/"
TRANSCRIPT = "/test_framework/v1/scenarios/create-from-transcript-bg/"
TRANSCRIPT_PROGRESS = "/test_framework/v1/scenarios/create-from-transcript-progress/"
FEEDBACK = "/test_framework/metric-reviews/process_feedbacks/"
FEEDBACK_PROGRESS = "/test_framework/metric-reviews/process_feedbacks_progress/"
FEEDBACK_ANSWER = "/test_framework/metric-reviews/process_feedbacks_answer/"
FEEDBACK_CANCEL = "/test_framework/metric-reviews/process_feedbacks_cancel/"
UNKNOWN_ID = "00000000-0000-4000-a000-000000000000"
TOO_LONG = "Ensure this field has no more than 10000 characters."
RESULT_TERMINAL = {"completed", "failed", "timeout", "cancelled"}
LINES = [
    {"role": "Main Agent", "content": "Hello, how can I help?", "start_time": 0.0},
    {"role": "Testing Agent", "content": "I need to reschedule.", "start_time": 2.1},
]


def has_status(*words: str) -> Any:
    return lambda answer: answer.get("status") in words


def counts_done(answer: dict[str, Any]) -> bool:
    """The worker's done rule for generate-progress: a status when present, else the counts."""
    if "status" in answer and answer["status"] != "pending_clarification":
        return answer["status"] in ("completed", "failed")
    return answer["completed_scenarios"] + answer["failed_scenarios"] >= answer["total_scenarios"] > 0


def start_run(api: Api, body: dict[str, Any], path: str = RUN) -> dict[str, Any]:
    response = api.post(path, body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


# -- evaluator runs ---------------------------------------------------------------------------------------------


def test_run_scenarios_answers_201_then_the_result_walks_pending_in_progress_evaluating_to_completed(api: Api) -> None:
    api.sim.configure(polls_to_complete=20, duration_s=3600)
    started = start_run(api, {"agent_id": 12, "scenarios": [101, 102], "frequency": 2, "name": "nightly"})
    assert isinstance(started["id"], int)
    assert started["status"] == "pending"
    assert started["run_as_text"] is False
    assert started["total_runs_count"] == 4
    assert (started["success_runs_count"], started["failed_runs_count"], started["completed_runs_count"]) == (0, 0, 0)
    assert [run["scenario"] for run in started["runs"]] == [101, 101, 102, 102]
    answers = [api.get(RESULT.format(id=started["id"])) for _ in range(20)]
    statuses = [a["status"] for a in answers]
    assert statuses[0] == "pending"
    assert statuses[-1] == "completed"
    assert statuses[1:15] == ["in_progress"] * 14  # polls 2-15: fractions 0.1 to 0.75
    assert statuses[15:19] == ["evaluating"] * 4  # the last fifth
    done = [a["completed_runs_count"] for a in answers[:-1]]
    assert done == sorted(done) and done[-1] == 4
    final = answers[-1]
    assert final["id"] == started["id"] and final["name"] == "nightly" and final["agent"] == 12
    assert isinstance(final["runs"], dict)
    assert sorted(final["runs"]) == sorted(str(run["id"]) for run in started["runs"])
    for run_id, run in final["runs"].items():
        assert run["id"] == int(run_id)
        assert run["status"] == "completed" and run["success"] is True and run["error_message"] is None
        assert isinstance(run["scenario_name"], str)
    assert final["success_runs_count"] == final["total_runs_count"] == final["completed_runs_count"] == 4
    assert final["failed_runs_count"] == 0
    assert api.get(RESULT.format(id=started["id"])) == final  # the first terminal GET fixed the answer


@pytest.mark.parametrize(
    ("body", "runs"),
    [
        ({"tags": ["smoke"]}, 3),
        ({"folder_path": "Sales.Inbound", "project_id": 1376, "frequency": 2}, 6),
        ({"scenarios": [7], "frequency": 2, "personality_ids": [3, 4], "test_profile_ids": [20]}, 4),
    ],
    ids=["tags", "folder", "personalities multiply"],
)
def test_the_run_count_follows_the_selection_and_frequency(api: Api, body: dict[str, Any], runs: int) -> None:
    started = start_run(api, body, RUN_TEXT)
    assert started["run_as_text"] is True
    assert started["total_runs_count"] == runs
    final = api.poll(RESULT.format(id=started["id"]), None, has_status(*RESULT_TERMINAL))[-1]
    assert final["run_as_text"] is True
    assert len(final["runs"]) == final["success_runs_count"] == runs


@pytest.mark.parametrize(
    ("marker", "status", "success", "failed"),
    [("[fail-run]", "completed", 2, 1), ("[failed]", "failed", 0, 3), ("[timeout]", "timeout", 0, 3)],
)
def test_run_name_markers_steer_the_result(api: Api, marker: str, status: str, success: int, failed: int) -> None:
    started = start_run(api, {"scenarios": [1, 2, 3], "name": f"ci {marker}"})
    final = api.poll(RESULT.format(id=started["id"]), None, has_status(*RESULT_TERMINAL))[-1]
    assert final["status"] == status
    assert final["total_runs_count"] == 3
    assert (final["success_runs_count"], final["failed_runs_count"]) == (success, failed)
    runs = sorted(final["runs"].values(), key=lambda run: run["id"])
    assert [run["success"] for run in runs].count(False) == failed
    assert all(run["error_message"] for run in runs if not run["success"])
    if marker == "[fail-run]":
        assert runs[-1]["success"] is False and all(run["success"] for run in runs[:-1])
    else:
        assert {run["status"] for run in runs} == {status}
        assert final["failed_reasons"]["total_failed_runs"] == 3


def test_the_no_runs_marker_completes_with_no_runs(api: Api) -> None:
    started = start_run(api, {"scenarios": [1, 2], "name": "empty [no-runs]"})
    assert started["total_runs_count"] == 0
    final = api.poll(RESULT.format(id=started["id"]), None, has_status(*RESULT_TERMINAL))[-1]
    assert final["status"] == "completed"
    assert final["total_runs_count"] == 0 and final["runs"] == {}


def test_the_hang_marker_never_finishes_until_end_calls(api: Api) -> None:
    started = start_run(api, {"scenarios": [1], "name": "[hang]"})
    time.sleep(OPS_DURATION * 1.5)
    path = RESULT.format(id=started["id"])
    assert api.get(path)["status"] == "evaluating"
    response = api.post(END_CALLS.format(id=started["id"]))
    assert (response.status_code, response.content) == (200, b"")
    assert api.get(path)["status"] == "cancelled"


def test_end_calls_cancels_the_runs_not_yet_finished(api: Api) -> None:
    api.sim.configure(polls_to_complete=10, duration_s=3600)
    started = start_run(api, {"scenarios": [1, 2, 3, 4], "name": "cancel me"})
    path = RESULT.format(id=started["id"])
    answers = [api.get(path) for _ in range(5)]  # half way: 2 of 4 runs done
    assert answers[-1]["status"] == "in_progress" and answers[-1]["completed_runs_count"] == 2
    assert api.post(END_CALLS.format(id=started["id"])).status_code == 200
    final = api.get(path)
    assert final["status"] == "cancelled"
    statuses = [run["status"] for run in sorted(final["runs"].values(), key=lambda run: run["id"])]
    assert statuses == ["completed", "completed", "cancelled", "cancelled"]
    assert final["completed_runs_count"] == 2
    assert api.get(path) == final


def test_end_calls_on_a_finished_result_changes_nothing(api: Api) -> None:
    started = start_run(api, {"scenarios": [1]})
    final = api.poll(RESULT.format(id=started["id"]), None, has_status(*RESULT_TERMINAL))[-1]
    assert api.post(END_CALLS.format(id=started["id"])).status_code == 200
    assert api.get(RESULT.format(id=started["id"])) == final
    assert final["status"] == "completed"


def test_an_unknown_result_is_a_404_on_get_and_end_calls(api: Api) -> None:
    for response in (api.http.get(RESULT.format(id=999999)), api.post(END_CALLS.format(id=999999))):
        assert response.status_code == 404
        assert response.json() == {"detail": "Not found."}
    progress_id = api.start(METRICS, {"agent_id": 1})
    assert api.http.get(f"/test_framework/v1/results/{progress_id}/").status_code == 404  # not an integer id


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scenarios": [1], "frequency": 0}, "frequency"),
        ({"scenarios": [1], "frequency": "2"}, "frequency"),
        ({"scenarios": ["101"]}, "scenarios"),
        ({"tags": [1]}, "tags"),
        ({"scenarios": [1], "mode": "one_number"}, "mode"),
        ({"scenarios": [1], "agent_id": None}, "agent_id"),
        ({"folder_path": "Sales"}, "project_id"),
        ({"agent_id": 12}, "non_field_errors"),
        ({"scenarios": []}, "non_field_errors"),
        ({"scenarios": [1], "frequency": 1001}, "non_field_errors"),
    ],
    ids=[
        "frequency zero",
        "frequency a string",
        "scenarios not integers",
        "tags not strings",
        "unknown mode",
        "agent_id null",
        "folder without project",
        "no selection",
        "empty selection",
        "too many runs",
    ],
)
def test_run_scenarios_rejects_a_bad_body_with_a_field_map(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.post(RUN, body)
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert all(isinstance(message, str) for message in errors[field])
    assert api.sim.stats()["started_by_kind"]["evaluator_run"] == 0


def test_run_scenarios_rejects_a_body_that_is_not_an_object(api: Api) -> None:
    response = api.http.post(RUN, content=b"[1]", headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert list(response.json()) == ["non_field_errors"]


def test_each_run_start_is_counted_per_name(api: Api) -> None:
    first = start_run(api, {"scenarios": [1], "name": "release 1.2"})
    second = start_run(api, {"scenarios": [1], "name": "release 1.2"})
    start_run(api, {"scenarios": [1]})
    assert first["id"] != second["id"]
    stats = api.sim.stats()
    assert stats["started_by_key"]["evaluator_run"] == {"release 1.2": 2}
    assert stats["started_by_kind"]["evaluator_run"] == 3


# -- generate evaluators ----------------------------------------------------------------------------------------


def test_generate_bg_counts_grow_with_no_status_key_until_all_are_completed(api: Api) -> None:
    api.sim.configure(polls_to_complete=5, duration_s=3600)
    progress_id = api.start(GENERATE, {"num_scenarios": 4, "agent_id": 9, "tags": ["gen"]})
    answers = [api.get(GENERATE_PROGRESS, progress_id) for _ in range(5)]
    for answer in answers:
        assert set(answer) == {"total_scenarios", "completed_scenarios", "failed_scenarios", "scenarios_list"}
        assert answer["total_scenarios"] == 4
        assert len(answer["scenarios_list"]) == answer["completed_scenarios"]
    done = [a["completed_scenarios"] for a in answers]
    assert done == [0, 1, 2, 3, 4]
    assert not any(counts_done(a) for a in answers[:-1])
    assert answers[-1]["failed_scenarios"] == 0
    assert all(
        s["agent"] == 9 and s["tags"] == ["gen"] and isinstance(s["id"], int) for s in answers[-1]["scenarios_list"]
    )


@pytest.mark.parametrize(
    ("marker", "completed", "failed", "status"),
    [("[partial]", 4, 1, None), ("[failed]", 2, 0, "failed"), ("[status]", 5, 0, "completed")],
)
def test_generate_bg_markers_steer_the_outcome(
    api: Api, marker: str, completed: int, failed: int, status: str | None
) -> None:
    progress_id = api.start(GENERATE, {"num_scenarios": 5, "extra_instructions": f"focus on refunds {marker}"})
    answers = api.poll(GENERATE_PROGRESS, progress_id, counts_done)
    final = answers[-1]
    assert (final["completed_scenarios"], final["failed_scenarios"]) == (completed, failed)
    assert final.get("status") == status
    if marker == "[status]":
        assert all(a["status"] == "in_progress" for a in answers[:-1])
    else:
        assert all("status" not in a for a in answers[:-1])
    if marker == "[failed]":
        assert isinstance(final["error"], str) and final["error"]


def test_generate_bg_asks_half_way_and_waits_for_the_answer(api: Api) -> None:
    api.sim.configure(polls_to_complete=4, duration_s=3600)
    progress_id = api.start(GENERATE, {"num_scenarios": 4, "extra_instructions": "[ask]"})
    first = api.get(GENERATE_PROGRESS, progress_id)
    assert "status" not in first and first["completed_scenarios"] == 1
    early = api.post(CLARIFY, {"progress_id": progress_id, "answer": "too soon"})
    assert (early.status_code, early.json()) == (400, {"detail": "This generation is not waiting for an answer."})
    waiting = [api.get(GENERATE_PROGRESS, progress_id) for _ in range(4)]  # polls while waiting don't count
    for answer in waiting:
        assert answer["status"] == "pending_clarification"
        assert answer["questions"] == ["Which caller personas matter most?"]
        assert answer["clarification_question"] == "Which caller personas matter most?"
        assert answer["completed_scenarios"] == 2
    response = api.post(CLARIFY, {"progress_id": progress_id, "answer": "Seniors calling about refunds."})
    assert (response.status_code, response.json()) == (200, {"progress_id": progress_id})
    resumed = api.get(GENERATE_PROGRESS, progress_id)
    assert "status" not in resumed and resumed["completed_scenarios"] == 3
    final = api.get(GENERATE_PROGRESS, progress_id)
    assert final["completed_scenarios"] == final["total_scenarios"] == 4
    assert final["answers"] == ["Seniors calling about refunds."]
    assert "status" not in final
    again = api.post(CLARIFY, {"progress_id": progress_id, "answer": "late"})
    assert (again.status_code, again.json()) == (400, {"detail": "This generation is not waiting for an answer."})


def test_a_waiting_generation_does_not_finish_on_the_clock(api: Api) -> None:
    api.sim.configure(duration_s=0.6)  # paused at 0.3 s until the answer, then 0.3 s to go
    progress_id = api.start(GENERATE, {"num_scenarios": 2, "extra_instructions": "[ask]"})
    time.sleep(0.8)
    assert api.get(GENERATE_PROGRESS, progress_id)["status"] == "pending_clarification"
    answered = time.time()
    assert api.post(CLARIFY, {"progress_id": progress_id, "answer": "any"}).status_code == 200
    resumed = api.get(GENERATE_PROGRESS, progress_id)
    read = time.time()
    # Resumed at half way, not at the end: the other half of the duration is still to run from the answer on...
    finishes_at = api.sim.polls()[progress_id]["finishes_at"]
    assert finishes_at >= answered + 0.3 - 1e-3, (finishes_at, answered)
    if read < finishes_at - 0.01:  # ...so an answer read before then (always, unless this machine stalled) says so
        assert "status" not in resumed and resumed["completed_scenarios"] == 1, resumed
    final = api.poll(GENERATE_PROGRESS, progress_id, counts_done)[-1]
    assert final["completed_scenarios"] == 2 and final["answers"] == ["any"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"progress_id": "00000000-0000-4000-a000-000000000000", "answer": "x"},
            {"progress_id": ["Invalid progress_id"]},
        ),
        ({"progress_id": "x"}, {"answer": ["This field is required."]}),
        ({"answer": "x"}, {"progress_id": ["This field is required."]}),
        (
            {"progress_id": "x", "answer": "a" * 10001},
            {"answer": ["Ensure this field has no more than 10000 characters."]},
        ),
        ({"progress_id": "x", "answer": 5}, {"answer": ["Not a valid string."]}),
    ],
    ids=["unknown id", "answer missing", "progress_id missing", "answer too long", "answer not a string"],
)
def test_generate_clarify_answer_rejects_a_bad_body_with_a_field_map(
    api: Api, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    response = api.post(CLARIFY, body)
    assert (response.status_code, response.json()) == (400, expected)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "num_scenarios"),
        ({"num_scenarios": 0}, "num_scenarios"),
        ({"num_scenarios": 101}, "num_scenarios"),
        ({"num_scenarios": "5"}, "num_scenarios"),
        ({"num_scenarios": 5, "scenario_type": "chaos"}, "scenario_type"),
        ({"num_scenarios": 5, "tags": "a,b"}, "tags"),
        ({"num_scenarios": 5, "first_message": "x" * 1001}, "first_message"),
        ({"num_scenarios": 5, "generate_expected_outcomes": "yes"}, "generate_expected_outcomes"),
    ],
    ids=["missing", "zero", "over 100", "a string", "unknown type", "tags a string", "long first", "flag a string"],
)
def test_generate_bg_rejects_a_bad_body_with_a_field_map(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.post(GENERATE, body)
    assert response.status_code == 400
    assert list(response.json()) == [field]


# -- generate metrics -------------------------------------------------------------------------------------------


def test_generate_metrics_goes_queued_in_progress_completed_with_the_metrics(api: Api) -> None:
    api.sim.configure(polls_to_complete=8, duration_s=3600)
    progress_id = api.start(METRICS, {"agent_id": 12, "num_metrics": 3})
    answers = [api.get(METRICS_PROGRESS, progress_id) for _ in range(8)]
    assert [a["status"] for a in answers] == ["queued"] + ["in_progress"] * 6 + ["completed"]
    assert all(a["error"] is None and "metrics" not in a for a in answers[:-1])
    metrics = answers[-1]["metrics"]
    assert len(metrics) == 3
    assert all(set(m) == {"name", "description", "eval_type"} for m in metrics)


@pytest.mark.parametrize(
    ("body", "status"),
    [({"agent_id": 950}, "failed"), ({"agent_id": 777}, "in_progress"), ({"assistant_id": "asst_1"}, "completed")],
    ids=["agent 950", "agent 777", "assistant only"],
)
def test_generate_metrics_agent_ids_steer_the_outcome(api: Api, body: dict[str, Any], status: str) -> None:
    progress_id = api.start(METRICS, body)
    time.sleep(OPS_DURATION * 1.5)
    answer = api.get(METRICS_PROGRESS, progress_id)
    assert answer["status"] == status
    assert bool(answer["error"]) == (status == "failed")
    assert ("metrics" in answer) == (status == "completed")


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "agent_id"), ({"agent_id": "12"}, "agent_id"), ({"agent_id": 1, "num_metrics": 0}, "num_metrics"),
     ({"assistant_id": "a", "num_metrics": 101}, "num_metrics")],
    ids=["neither id", "agent_id a string", "zero metrics", "over 100"],
)  # fmt: skip
def test_generate_metrics_rejects_a_bad_body_with_a_field_map(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.post(METRICS, body)
    assert response.status_code == 400
    assert list(response.json()) == [field]
