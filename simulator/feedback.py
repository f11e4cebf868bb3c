"""Metric improvement from feedback: `process_feedbacks` starts, `..._progress` is polled, `..._answer` and
`..._cancel` steer a running optimization.

The least certain contract: the published schema has no ``status`` but Cekura's prose polls "until status is
success or error" and reads the answer under ``output``. The simulator answers in the prose shape unless the
``metric_id`` asks for the schema's:

=================  =================================================================================================
``metric_id``      Outcome
=================  =================================================================================================
``900``-``999``    ``{"status": "error", "error": ...}``
``777``            never finishes (``{"status": "in_progress"}`` until reset or cancel)
``555``            the SCHEMA shape: no ``status`` key while running (``{"progress": <0-90>}``) and a bare
                   ProcessFeedbacksResponse (``improved_metric_description``, ``review_results``, ...) at the end
``333``            pauses half way on ``{"status": "awaiting_answers", "questions": [{"id": "q1", "question":
                   "Is a transfer to a human a failure?"}]}`` (its clock stops) until ``process_feedbacks_answer``
                   ``{progress_id, answers: {"q1": "text" | {"action": "skip"}}}`` (the key ``all`` answers every
                   question), then ends ``success`` with the answers in ``output.feedback_edits``
any other          ``{"status": "in_progress"}``, then ``{"status": "success", "output": <ProcessFeedbacksResponse>}``
=================  =================================================================================================

``process_feedbacks_cancel`` ``{progress_id}`` answers 200 ``{"progress_id", "status": "cancelled"}`` and the job's
next poll answers ``{"status": "cancelled"}`` (terminal); a job already finished keeps its outcome, which the
cancel answer reports as its ``status``. On the answer and cancel calls an unknown progress id is a 400
``{"detail": "Invalid progress_id"}``, an answer for a job that is not waiting a 400 ``{"detail": ...}``, a bad
body a field map. The progress call answers an unknown id with ``{"progress_id": ["Invalid progress_id"]}``.
"""

from __future__ import annotations

import time
from typing import Any

from simulator.jobs import JobStore
from simulator.model import CANCELLED, METRIC_IMPROVE, NEVER, Answers, Job, Start
from simulator.replies import JsonObject, Reply, detail, dumps
from simulator.validation import BOOL, INT, INT_LIST, OBJECT, STR, check_fields, checked_object, choice, object_or_error

SCHEMA_SHAPE_METRIC = 555
HANG_METRIC = 777
ASKING_METRIC = 333
QUESTIONS = ({"id": "q1", "question": "Is a transfer to a human a failure?"},)
SKIP = {"action": "skip"}

_ASK_AT = 0.5
_METRIC_TYPES = ("basic", "custom_prompt", "custom_code", "llm_judge")
_FIELDS = {
    "metric_id": INT,
    "metric_type": choice(_METRIC_TYPES),
    "test_set_ids": INT_LIST,
    "simplified_prompt": STR,
    "skip_evaluation": BOOL,
}
_ANSWER_FIELDS = {"progress_id": STR, "answers": OBJECT}


def start_process_feedbacks(store: JobStore, body: bytes) -> Reply:
    """POST process_feedbacks: check the body, start an optimization, answer 200 `{progress_id}`."""
    data = checked_object(body, _FIELDS, required=("metric_id",))
    if not isinstance(data, dict):
        return data
    metric_id: int = data["metric_id"]
    outcome, error = "success", None
    if 900 <= metric_id <= 999:
        outcome, error = "error", f"Simulated optimization failure for metric {metric_id}."
    elif metric_id == HANG_METRIC:
        outcome = NEVER
    request: JsonObject = {
        "metric_id": metric_id,
        "metric_type": data.get("metric_type"),
        "test_set_ids": data.get("test_set_ids") or [1],
        "skip_evaluation": data.get("skip_evaluation", False),
        "schema": metric_id == SCHEMA_SHAPE_METRIC,
    }
    hold = _ASK_AT if metric_id == ASKING_METRIC else None
    job = store.launch(Start(METRIC_IMPROVE, None, outcome, error, request, str(metric_id), hold))
    return 200, dumps({"progress_id": job.progress_id})


def _answer_problem(answers: dict[str, Any]) -> str | None:
    for question_id, value in answers.items():
        if not isinstance(value, str) and value != SKIP:
            return f'The answer to "{question_id}" must be a string or {{"action": "skip"}}.'
    for question in QUESTIONS:
        if question["id"] not in answers and "all" not in answers:
            return f'Missing an answer for question "{question["id"]}".'
    return None


def answer_questions(store: JobStore, body: bytes) -> Reply:
    """POST process_feedbacks_answer: resume an optimization paused on its questions."""
    data = object_or_error(body)
    if not isinstance(data, dict):
        return data
    errors = check_fields(data, _ANSWER_FIELDS, required=("progress_id", "answers"))
    if not errors:
        problem = _answer_problem(data["answers"])
        if problem:
            errors["answers"] = [problem]
    if errors:
        return 400, dumps(errors)
    job = store.find(METRIC_IMPROVE, data["progress_id"])
    if job is None:
        return detail(400, "Invalid progress_id")
    now = time.monotonic()
    if not job.waiting(now):
        return detail(400, "This optimization is not waiting for answers.")
    job.resume(now, data["answers"])
    return 200, dumps({"progress_id": job.progress_id, "status": "in_progress"})


def cancel(store: JobStore, body: bytes) -> Reply:
    """POST process_feedbacks_cancel: a running optimization ends `cancelled`."""
    data = checked_object(body, {"progress_id": STR}, required=("progress_id",))
    if not isinstance(data, dict):
        return data
    job = store.find(METRIC_IMPROVE, data["progress_id"])
    if job is None:
        return detail(400, "Invalid progress_id")
    now = time.monotonic()
    if job.is_running(now):
        job.outcome = CANCELLED
        job.error = None
        job.stop(now)
    return 200, dumps({"progress_id": job.progress_id, "status": job.outcome})


def _phase(job: Job, fraction: float) -> int:
    return int(fraction * 10) if (job.request or {})["schema"] else 0


def _running(job: Job, fraction: float, status: str | None) -> JsonObject:
    answer: JsonObject
    if (job.request or {})["schema"]:
        answer = {"progress": int(fraction * 10) * 10}
    elif job.asking(fraction):
        answer = {"status": "awaiting_answers", "questions": list(QUESTIONS)}
    else:
        answer = {"status": "in_progress"}
    if status is not None:
        answer["status"] = status
    return answer


def _feedback_edits(job: Job) -> list[JsonObject]:
    edits: list[JsonObject] = []
    for answers in job.answers:
        for question in QUESTIONS:
            value = answers.get(question["id"], answers.get("all"))
            edits.append({"question_id": question["id"], "question": question["question"], "answer": value})
    return edits


def _improved(job: Job) -> JsonObject:
    """A ProcessFeedbacksResponse for the job's metric."""
    request = job.request or {}
    metric_id = request["metric_id"]
    reviews = [] if request["skip_evaluation"] else request["test_set_ids"]
    return {
        "improved_metric_description": f"Pass when the agent resolves the caller's request (metric {metric_id}).",
        "improved_evaluation_trigger": "always",
        "improved_trigger_kind": "always",
        "trigger_type": "llm_judge",
        "metric_description_variables": [],
        "evaluation_trigger_variables": [],
        "review_results": [
            {
                "review_id": metric_id * 100 + i,
                "test_set_id": test_set,
                "actual_value": True,
                "explanation": "Matches the expected value.",
                "success": True,
                "error": None,
            }
            for i, test_set in enumerate(reviews)
        ],
        "custom_code": "",
        "type": request["metric_type"] or "llm_judge",
        "feedback_edits": _feedback_edits(job),
        "unauthorized_label_changes": [],
        "unresolved_samples": [],
        "optimization_summary": "Tightened the pass condition to the caller's stated goal (simulated).",
        "old_score": {"num_correct": 6, "num_total": 10, "score": 0.6},
        "new_score": {"num_correct": 9, "num_total": 10, "score": 0.9},
    }


def _terminal(job: Job) -> JsonObject:
    if job.outcome == CANCELLED:
        return {"status": CANCELLED}
    if job.outcome == "error":
        return {"status": "error", "error": job.error}
    if (job.request or {})["schema"]:
        return _improved(job)
    return {"status": "success", "output": _improved(job)}


#: How `process_feedbacks_progress` answers.
ANSWERS = {METRIC_IMPROVE: Answers(_phase, _running, _terminal)}
