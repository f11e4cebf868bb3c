"""Tests of the simulator's timing and bookkeeping for the added operations: per-kind log-normal durations, the
per-job report (`finishes_at`, `key`), and faults, statistics and routing on the new routes."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import httpx
import pytest

from simulator import SimConfig, main
from tests.simulator.sim_api import OPS_DURATION, Api

RUN = "/test_framework/v1/scenarios/run_scenarios/"
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
FEEDBACK = "/test_framework/metric-reviews/process_feedbacks/"
FEEDBACK_PROGRESS = "/test_framework/metric-reviews/process_feedbacks_progress/"
FEEDBACK_CANCEL = "/test_framework/metric-reviews/process_feedbacks_cancel/"
LINES = [{"role": "Main Agent", "content": "Hello"}]


def durations_of(api: Api, ids: list[str]) -> list[float]:
    report = api.sim.polls()
    return [report[i]["finishes_at"] - report[i]["started_at"] for i in ids]


# -- per-kind durations -----------------------------------------------------------------------------------------


def test_durations_draw_log_normal_job_durations_per_kind(api: Api) -> None:
    api.sim.configure(durations={"metric_generate": [1.0, 0.5]})
    ids = [api.start(METRICS, {"agent_id": 1}) for _ in range(200)]
    other = api.start(GENERATE, {"num_scenarios": 1})
    drawn = durations_of(api, ids)
    assert 0.8 <= statistics.median(drawn) <= 1.2
    assert 0.4 <= statistics.stdev(math.log(d) for d in drawn) <= 0.6
    assert durations_of(api, [other]) == [pytest.approx(OPS_DURATION)]  # a kind not in the mapping
    assert api.sim.stats()["durations"] == {"metric_generate": [1.0, 0.5]}


def test_durations_replay_the_same_draws_after_a_reset(api: Api) -> None:
    api.sim.configure(durations={"evaluator_run": [30.0, 1.0]})
    runs = []
    for _ in range(2):
        api.sim.reset()
        ids = [str(api.post(RUN, {"scenarios": [1]}).json()["id"]) for _ in range(5)]
        runs.append(durations_of(api, ids))
    assert runs[0] == pytest.approx(runs[1])
    assert len(set(runs[0])) == 5


def test_polls_to_complete_wins_over_durations(api: Api) -> None:
    api.sim.configure(durations={"metric_generate": [0.01, 0.0]}, polls_to_complete=2)
    progress_id = api.start(METRICS, {"agent_id": 1})
    time.sleep(0.05)
    assert api.get(METRICS_PROGRESS, progress_id)["status"] in ("queued", "in_progress")
    assert api.sim.polls()[progress_id]["finishes_at"] is None
    assert api.get(METRICS_PROGRESS, progress_id)["status"] == "completed"
    record = api.sim.polls()[progress_id]
    assert record["finishes_at"] == record["terminal_at"] == record["times"][1]


@pytest.mark.parametrize(
    ("durations", "words"),
    [
        ({"nope": [1, 0]}, "unknown job kind"),
        ({"evaluator_run": [0, 0.5]}, "median_s"),
        ({"evaluator_run": [1, -0.1]}, "sigma"),
        ({"evaluator_run": [1, True]}, "sigma"),
        ({"evaluator_run": [1]}, "[median_s, sigma]"),
        ([["evaluator_run", 1, 0]], "mapping"),
    ],
    ids=["unknown kind", "zero median", "negative sigma", "boolean sigma", "one number", "not an object"],
)
def test_bad_durations_are_a_clear_400_and_value_error(api: Api, durations: Any, words: str) -> None:
    with httpx.Client(base_url=api.sim.url) as control:
        response = control.post("/_sim/config", json={"durations": durations})
    assert response.status_code == 400
    assert words in response.json()["detail"]
    with pytest.raises(ValueError, match="durations"):
        SimConfig(durations=durations)
    assert api.sim.stats()["durations"] is None


def test_durations_can_be_set_and_cleared_over_the_control_route(api: Api) -> None:
    with httpx.Client(base_url=api.sim.url) as control:
        set_ = control.post("/_sim/config", json={"durations": {"tools_auto_fetch": [2, 0.25]}})
        assert set_.status_code == 200 and set_.json()["durations"] == {"tools_auto_fetch": [2.0, 0.25]}
        cleared = control.post("/_sim/config", json={"durations": None})
        assert cleared.status_code == 200 and cleared.json()["durations"] is None


def test_the_command_line_rejects_bad_durations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0", "--durations", '{"bogus": [1, 0]}']) == 2
    assert "unknown job kind" in capsys.readouterr().err


# -- the per-job report -----------------------------------------------------------------------------------------


def test_finishes_at_is_the_start_plus_the_duration_for_a_timed_job(api: Api) -> None:
    before = time.time()
    progress_id = api.start(METRICS, {"agent_id": 1})
    record = api.sim.polls()[progress_id]
    assert before <= record["started_at"] <= time.time()
    assert record["finishes_at"] == pytest.approx(record["started_at"] + OPS_DURATION)
    api.poll(METRICS_PROGRESS, progress_id, lambda a: a["status"] == "completed")
    record = api.sim.polls()[progress_id]
    assert record["terminal_at"] >= record["finishes_at"]
    assert record["key"] is None


def test_finishes_at_is_null_for_a_job_that_never_finishes(api: Api) -> None:
    progress_id = api.start(METRICS, {"agent_id": 777})
    assert api.sim.polls()[progress_id]["finishes_at"] is None


def test_finishes_at_adds_the_time_a_job_waited_for_its_answer(api: Api) -> None:
    progress_id = api.start(GENERATE, {"num_scenarios": 2, "extra_instructions": "[ask]"})
    time.sleep(OPS_DURATION * 2)  # paused at half way for about 0.3 s
    assert api.sim.polls()[progress_id]["finishes_at"] is None
    before = time.time()
    assert api.post(CLARIFY, {"progress_id": progress_id, "answer": "ok"}).status_code == 200
    after = time.time()
    record = api.sim.polls()[progress_id]
    # resumed at half way when the answer arrived: the other half of the duration is still to run
    assert before + OPS_DURATION / 2 - 1e-3 <= record["finishes_at"] <= after + OPS_DURATION / 2 + 1e-3
    assert record["finishes_at"] > record["started_at"] + OPS_DURATION + 0.2
    final = api.poll(GENERATE_PROGRESS, progress_id, lambda a: a["completed_scenarios"] == 2)[-1]
    assert final["answers"] == ["ok"]
    assert api.sim.polls()[progress_id]["terminal_at"] >= record["finishes_at"]


def test_finishes_at_is_the_cancel_time_for_a_cancelled_job(api: Api) -> None:
    result = api.post(RUN, {"scenarios": [1], "name": "[hang]"}).json()
    feedback_id = api.start(FEEDBACK, {"metric_id": 777})
    report = api.sim.polls()
    assert report[str(result["id"])]["finishes_at"] is None
    before = time.time()
    api.post(END_CALLS.format(id=result["id"]))
    api.post(FEEDBACK_CANCEL, {"progress_id": feedback_id})
    after = time.time()
    report = api.sim.polls()
    for ident in (str(result["id"]), feedback_id):
        assert before <= report[ident]["finishes_at"] <= after


def test_each_job_reports_the_key_of_its_request(api: Api) -> None:
    result = api.post(RUN, {"scenarios": [1], "name": "nightly #7"}).json()
    unnamed = api.post(RUN, {"tags": ["a"]}).json()
    ids = {
        "generate": api.start(GENERATE, {"num_scenarios": 1, "extra_instructions": "refunds"}),
        "transcript": api.start(TRANSCRIPT, {"transcript_json": LINES, "name": "From call 12"}),
        "feedback": api.start(FEEDBACK, {"metric_id": 42}),
        "metrics": api.start(METRICS, {"agent_id": 1}),
        "tools": api.start(TOOLS.format(agent=1), {"provider": "vapi", "assistant_id": "a"}),
    }
    report = api.sim.polls()
    assert report[str(result["id"])]["kind"] == "evaluator_run"
    assert report[str(result["id"])]["key"] == "nightly #7"
    assert report[str(unnamed["id"])]["key"] is None
    keys = {name: report[ident]["key"] for name, ident in ids.items()}
    assert keys == {
        "generate": "refunds",
        "transcript": "From call 12",
        "feedback": "42",
        "metrics": None,
        "tools": None,
    }
    assert {report[i]["kind"] for i in ids.values()} == {
        "scenario_generate",
        "scenario_from_transcript",
        "metric_improve",
        "metric_generate",
        "tools_auto_fetch",
    }
    stats = api.sim.stats()
    assert stats["started_by_key"]["metric_improve"] == {"42": 1}
    assert all(stats["started_by_kind"][kind] >= 1 for kind in {r["kind"] for r in report.values()})


# -- faults, statistics and routing on the new routes ------------------------------------------------------------


def test_injected_errors_on_a_start_never_start_a_job(api: Api) -> None:
    api.sim.set_faults(error_rate=1.0)
    assert api.post(RUN, {"scenarios": [1]}).status_code == 500
    assert api.post(GENERATE, {"num_scenarios": 1}).status_code == 502
    api.sim.clear_faults()
    stats = api.sim.stats()
    assert stats["started_jobs"] == 0
    assert stats["by_route"] == {"run_scenarios 500": 1, "generate-bg 502": 1}


def test_an_unexpected_status_fault_reaches_the_new_progress_routes_without_counting_a_poll(api: Api) -> None:
    result = api.post(RUN, {"scenarios": [1]}).json()
    generate_id = api.start(GENERATE, {"num_scenarios": 2})
    tools_id = api.start(TOOLS.format(agent=4), {"provider": "vapi", "assistant_id": "a"})
    api.sim.set_faults(unknown_status_rate=1.0)
    assert api.get(RESULT.format(id=result["id"]))["status"] == "paused"
    assert api.get(GENERATE_PROGRESS, generate_id)["status"] == "paused"
    assert api.get(TOOLS_PROGRESS.format(agent=4), tools_id)["status"] == "paused"
    assert api.post(RUN, {"scenarios": [1]}).status_code == 201  # start routes never get this fault
    assert all(record["times"] == [] for record in api.sim.polls().values())


def test_an_unexpected_status_fault_on_a_finished_job_rewords_its_final_answer(api: Api) -> None:
    result = api.post(RUN, {"scenarios": [1, 2]}).json()
    generate_id = api.start(GENERATE, {"num_scenarios": 2})
    final = api.poll(RESULT.format(id=result["id"]), None, lambda a: a["status"] == "completed")[-1]
    generated = api.poll(GENERATE_PROGRESS, generate_id, lambda a: a["completed_scenarios"] == 2)[-1]
    api.sim.set_faults(unknown_status_rate=1.0)
    assert api.get(RESULT.format(id=result["id"])) == {**final, "status": "paused"}
    assert api.get(GENERATE_PROGRESS, generate_id) == {**generated, "status": "paused"}
    api.sim.clear_faults()
    assert api.get(RESULT.format(id=result["id"])) == final


def test_stats_name_the_new_routes_by_their_last_path_segment(api: Api) -> None:
    result = api.post(RUN, {"scenarios": [1]}).json()
    api.get(RESULT.format(id=result["id"]))
    api.post(END_CALLS.format(id=result["id"]))
    progress_id = api.start(GENERATE, {"num_scenarios": 1})
    api.get(GENERATE_PROGRESS, progress_id)
    api.post(CLARIFY, {"progress_id": progress_id, "answer": "x"})
    tools_id = api.start(TOOLS.format(agent=2), {"provider": "retell", "assistant_id": "a"})
    api.get(TOOLS_PROGRESS.format(agent=2), tools_id)
    api.post(FEEDBACK_CANCEL, {"progress_id": "nope"})
    by_route = api.sim.stats()["by_route"]
    assert by_route == {
        "run_scenarios 201": 1,
        "results 200": 1,
        "end_calls 200": 1,
        "generate-bg 200": 1,
        "generate-progress 200": 1,
        "generate-clarify-answer 400": 1,
        "tools/auto-fetch 200": 1,
        "tools/auto-fetch-progress 200": 1,
        "process_feedbacks_cancel 400": 1,
    }


def test_the_new_routes_check_the_method_and_the_api_key(api: Api) -> None:
    wrong_method = api.http.get(RUN)
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert api.http.post(RESULT.format(id=1)).headers["allow"] == "GET"
    assert api.http.get(END_CALLS.format(id=1)).status_code == 405
    assert api.http.post("/test_framework/v1/results/abc/end_calls/").status_code == 404
    assert api.http.post("/test_framework/v1/aiagents/12/tools/auto-fetch").status_code == 404
    with httpx.Client(base_url=api.sim.url) as anonymous:
        for path in (RUN, FEEDBACK, TOOLS.format(agent=1)):
            assert anonymous.post(path, json={}).status_code == 401
