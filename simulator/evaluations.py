"""Evaluator runs: `run_scenarios(_text)` starts a result, `results/{id}/` is polled, `end_calls` ends it.

There is no progress id here: the start answers **201** with the result itself and the worker polls the result by
its integer id. The result is steered by markers in the request's ``name``:

=========================  ==========================================================================================
``name`` contains          Outcome
=========================  ==========================================================================================
``[hang]``                 never finishes (``evaluating`` until reset or ``end_calls``)
``[failed]``               ``failed`` (infrastructure failure): every run ``failed``, ``failed_reasons`` set
``[timeout]``              ``timeout``: every run ``timeout``, ``success`` false, ``error_message`` set
``[no-runs]``              no runs at all: ``completed`` with ``total_runs_count`` 0 and ``runs`` ``{}``
``[fail-run]``             ``completed``, but the last run has ``success`` false and an ``error_message``
                           (``success_runs_count`` N-1, ``failed_runs_count`` 1)
anything else              ``completed``, every run ``success`` true (``success_runs_count`` == ``total_runs_count``)
=========================  ==========================================================================================

The first marker in this order wins, except ``[no-runs]``, which only sets the run count. The number of runs N is
``len(scenarios)`` (3 when evaluators are chosen by ``tags`` or ``folder_path``) x ``frequency`` x
``max(1, len(personality_ids))`` x ``max(1, len(test_profile_ids))``, at most 1000 (more is a 400). A result is
``pending`` for the first tenth of its duration, ``in_progress`` (runs completing one by one) until four fifths, then
``evaluating``; then terminal, and the first GET that sees it fixes the answer. ``runs`` is an object keyed by run id
(ResultDetailV2), while the 201 lists them as an array (the start's published schema).
``end_calls`` (200, no body) ends a running result: its next GET says ``cancelled``, runs that had completed stay
completed and the others are ``cancelled``. An unknown result id is a 404 ``{"detail": "Not found."}`` on both.
The body is checked as SchemaPostRunScenarios (field-map 400); one of ``scenarios``, ``tags`` or ``folder_path`` is
required (``{"non_field_errors": [...]}``) and ``folder_path`` needs ``project_id``.

Around the result: ``GET results/?search=<name part>`` lists results newest first in DRF pagination
(`simulator/results.py`), so a run whose start answer was lost can be found by a unique tag in its ``name``; the
``lost_start_rate`` fault makes ``run_scenarios`` create its result and then lose the answer (closed connection,
502, or a hang ending in 504: `simulator/faults.py`); with a ``webhook_url`` set, every result that ends (at its
duration, at the deciding poll under ``polls_to_complete``, or at ``end_calls``) is POSTed as Cekura's
``result.completed`` webhook, subject to the ``webhook_*`` faults (`simulator/webhooks.py`).
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from simulator.jobs import JobStore
from simulator.model import CANCELLED, EVALUATOR_RUN, NEVER, Answers, Job, Start
from simulator.replies import JsonObject, Reply, detail, dumps
from simulator.validation import (
    INT,
    INT_LIST,
    OBJECT,
    STR,
    STR_LIST,
    checked_object,
    choice,
    int_between,
    nullable,
    str_max,
)

#: The most runs one simulated result holds (each is rendered on every phase change).
MAX_RUNS = 1000
#: Evaluators a `tags` or `folder_path` selection stands for.
SELECTED_BY_FILTER = (201, 202, 203)

_PENDING_UNTIL = 0.1
_EVALUATING_FROM = 0.8
_MARKERS = (("[hang]", NEVER), ("[failed]", "failed"), ("[timeout]", "timeout"))
_RUN_FIELDS = {
    "agent_id": INT,
    "assistant_id": STR,
    "scenarios": INT_LIST,
    "tags": STR_LIST,
    "folder_path": STR,
    "project_id": INT,
    "frequency": int_between(1),
    "name": str_max(255),
    "outbound_phone_number": STR,
    "personality_ids": nullable(INT_LIST),
    "test_profile_ids": nullable(INT_LIST),
    "personality_id": nullable(INT),
    "test_profile_id": nullable(INT),
    "mode": choice(("same_number", "different_numbers")),
    "agent_number": STR,
    "concurrency_limit": int_between(1),
    "mock_tool_names": nullable(STR_LIST),
}
_TEXT_FIELDS = {**_RUN_FIELDS, "websocket_url": STR, "websocket_headers": OBJECT}
_ERRORS = {
    "failed": "Simulated infrastructure failure: the call could not be placed.",
    "timeout": "Simulated timeout: no call arrived before the dial window closed.",
    "fail-run": "Simulated: the expected outcome was not met.",
    CANCELLED: "Call ended through end_calls.",
}


def iso(wall: float) -> str:
    """A wall time as Cekura writes it: ISO 8601, UTC, `Z`."""
    return datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


def _scenario_name(scenario: int) -> str:
    return f"Simulated evaluator {scenario}"


def _selection(data: JsonObject) -> list[int]:
    """The evaluator id of every run, in run order."""
    chosen = data.get("scenarios") or list(SELECTED_BY_FILTER)
    repeat = data.get("frequency", 1)
    repeat *= max(1, len(data.get("personality_ids") or ()))
    repeat *= max(1, len(data.get("test_profile_ids") or ()))
    return [scenario for scenario in chosen for _ in range(repeat)]


def start_run(store: JobStore, body: bytes, as_text: bool) -> Reply:
    """POST run_scenarios(_text): check the body, start a result, answer 201 with it."""
    data = checked_object(body, _TEXT_FIELDS if as_text else _RUN_FIELDS)
    if not isinstance(data, dict):
        return data
    if not (data.get("scenarios") or data.get("tags") or data.get("folder_path")):
        return 400, dumps({"non_field_errors": ["Either scenarios, tags, or folder_path must be provided."]})
    if data.get("folder_path") and data.get("project_id") is None:
        return 400, dumps({"project_id": ["This field is required when folder_path is given."]})
    name: str = data.get("name") or ""
    scenarios = [] if "[no-runs]" in name else _selection(data)
    if len(scenarios) > MAX_RUNS:
        return 400, dumps(
            {"non_field_errors": [f"{len(scenarios)} runs requested; the simulator runs at most {MAX_RUNS}."]}
        )
    outcome = next((status for marker, status in _MARKERS if marker in name), "completed")
    result_id = store.numbers(1)
    request: JsonObject = {
        "name": data.get("name"),
        "run_as_text": as_text,
        "scenarios": scenarios,
        "first_run": store.numbers(len(scenarios)),
        "fail_run": "[fail-run]" in name,
        "settings": {
            "frequency": data.get("frequency", 1),
            "concurrency_limit": data.get("concurrency_limit"),
            "personality_ids": data.get("personality_ids"),
            "test_profile_ids": data.get("test_profile_ids"),
            "mode": data.get("mode", "same_number"),
        },
    }
    start = Start(EVALUATOR_RUN, data.get("agent_id"), outcome, None, request, data.get("name"))
    job = store.launch(start, str(result_id))
    job.filters = {"project_id": data.get("project_id"), "scenarios": frozenset(scenarios)}
    request["created_at"] = iso(job.created_wall)
    runs = [_run(job, i, "pending", False, None) for i in range(len(scenarios))]
    started = {**_summary(job, "pending", (0, 0, 0)), "runs": runs, "created_at": request["created_at"]}
    return 201, dumps(started)


def end_calls(store: JobStore, result_id: int) -> Reply:
    """POST results/{id}/end_calls/: a running result ends `cancelled`; 200 with no body either way."""
    job = store.find(EVALUATOR_RUN, str(result_id))
    if job is None:
        return detail(404, "Not found.")
    now = time.monotonic()
    if job.is_running(now):
        job.outcome = CANCELLED
        job.stop(now)
        store.changed(job)
    return 200, b""


def _run(job: Job, index: int, status: str, success: bool, error: str | None) -> JsonObject:
    request = job.request or {}
    scenario = request["scenarios"][index]
    return {
        "id": request["first_run"] + index,
        "scenario": scenario,
        "scenario_name": _scenario_name(scenario),
        "status": status,
        "success": success,
        "error_message": error,
    }


def _summary(job: Job, status: str, counts: tuple[int, int, int]) -> JsonObject:
    """The result's fields other than `runs`; `counts` is (completed, success, failed)."""
    request = job.request or {}
    total = len(request["scenarios"])
    completed, success, failed = counts
    rate = round(100.0 * success / total, 2) if total else 0.0
    return {
        "id": int(job.progress_id),
        "name": request["name"],
        "agent": job.agent_id,
        "status": status,
        "run_as_text": request["run_as_text"],
        "is_cronjob": False,
        "total_runs_count": total,
        "completed_runs_count": completed,
        "success_runs_count": success,
        "failed_runs_count": failed,
        "success_rate": rate,
        "scenarios": [{"id": s, "name": _scenario_name(s)} for s in dict.fromkeys(request["scenarios"])],
        "run_settings": request["settings"],
    }


def _done_runs(job: Job, fraction: float) -> int:
    total = len((job.request or {})["scenarios"])
    share = (fraction - _PENDING_UNTIL) / (_EVALUATING_FROM - _PENDING_UNTIL)
    return max(0, min(total, math.floor(total * share)))


def _phase(job: Job, fraction: float) -> int:
    if fraction < _PENDING_UNTIL:
        return 0
    if fraction < _EVALUATING_FROM:
        return 1 + _done_runs(job, fraction)
    return 2 + len((job.request or {})["scenarios"])


def _running(job: Job, fraction: float, status: str | None) -> JsonObject:
    total = len((job.request or {})["scenarios"])
    if fraction < _PENDING_UNTIL:
        word, done, states = "pending", 0, ("pending", "pending")
    elif fraction < _EVALUATING_FROM:
        word, done, states = "in_progress", _done_runs(job, fraction), ("completed", "running")
    else:
        word, done, states = "evaluating", total, ("completed", "completed")
    runs = [_run(job, i, states[0] if i < done else states[1], False, None) for i in range(total)]
    return {**_summary(job, status or word, (done, 0, 0)), "runs": {str(run["id"]): run for run in runs}}


def _terminal(job: Job) -> JsonObject:
    request = job.request or {}
    total = len(request["scenarios"])
    outcome = job.outcome
    extra: dict[str, Any] = {"failed_reasons": None}
    if outcome in ("failed", "timeout"):
        runs = [_run(job, i, outcome, False, _ERRORS[outcome]) for i in range(total)]
        counts = (0, 0, total)
        issue = {"rank": 1, "run_ids": [r["id"] for r in runs], "description": _ERRORS[outcome]}
        extra["failed_reasons"] = {"issues": [{**issue, "affected_count": total}], "total_failed_runs": total}
    elif outcome == CANCELLED:
        done = _done_runs(job, job.stop_fraction)
        runs = [
            _run(job, i, "completed", True, None) if i < done else _run(job, i, CANCELLED, False, _ERRORS[CANCELLED])
            for i in range(total)
        ]
        counts = (done, done, 0)
    else:
        failed = 1 if request["fail_run"] and total else 0
        runs = [
            _run(job, i, "completed", False, _ERRORS["fail-run"])
            if i >= total - failed
            else _run(job, i, "completed", True, None)
            for i in range(total)
        ]
        counts = (total, total - failed, failed)
    result = {**_summary(job, outcome, counts), "runs": {str(run["id"]): run for run in runs}, **extra}
    result["overall_evaluation"] = {"success_rate": result["success_rate"]} if total else None
    result["created_at"] = request["created_at"]
    return result


def current_view(job: Job, now: float) -> JsonObject:
    """What `GET results/{id}/` would answer now, without counting a poll or fixing the answer (for the list and
    the webhooks): the fixed answer once a GET saw it terminal, else the terminal or running one."""
    if job.final is not None:
        view: JsonObject = json.loads(job.final)
        return view
    fraction = job.fraction(now)
    if job.outcome == NEVER:
        fraction = min(fraction, 0.99)
    if fraction >= 1.0:
        return _terminal(job)
    return {**_running(job, fraction, None), "created_at": iso(job.created_wall)}


def _not_found(result_id: str | None) -> Reply:
    return detail(404, "Not found.")


#: How `GET results/{id}/` answers.
ANSWERS = {EVALUATOR_RUN: Answers(_phase, _running, _terminal, _not_found)}
