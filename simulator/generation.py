"""Evaluator generation: `generate-bg` (+ `generate-clarify-answer`) and `create-from-transcript-bg`, with progress.

`generate-progress` publishes counts and, by default, **no** ``status`` (the worker must use the counts rule: done
once ``completed_scenarios + failed_scenarios >= total_scenarios > 0``); while running the counts grow with the
elapsed fraction but never reach the total. It is steered by markers in ``extra_instructions`` (they combine):

=====================  ==============================================================================================
``extra_instructions``  Outcome
=====================  ==============================================================================================
``[ask]``              at half way the answer gains ``"status": "pending_clarification"``, ``questions``
                       (``["Which caller personas matter most?"]``) and ``clarification_question`` (the same text);
                       the job's clock pauses until ``generate-clarify-answer`` ``{progress_id, answer}`` arrives,
                       then it goes on (the status key disappears again) and its final answer carries
                       ``"answers": [...]``, the answers received
``[status]``           every answer also carries ``status``: ``in_progress``, then ``completed`` (the tool notes' shape)
``[failed]``           ends ``{"status": "failed", "error": ...}`` with the counts frozen short of the total
``[partial]``          one evaluator fails: ``completed_scenarios`` total-1, ``failed_scenarios`` 1, no status key
``[hang]``             never finishes
anything else          ends with ``completed_scenarios == total_scenarios``, no status key
=====================  ==============================================================================================

An answer for an unknown progress id is a 400 ``{"progress_id": ["Invalid progress_id"]}``; for a job that is not
waiting, a 400 ``{"detail": "This generation is not waiting for an answer."}``.

`create-from-transcript-progress` answers ``{agent_id, status, scenario_id, error, scenario}``: ``in_progress``,
then ``completed`` (``scenario_id`` an integer, ``scenario`` an object) or ``failed`` (``error`` set, both null).
Its body's ``agent`` steers it as agent ids do everywhere (``900``-``999`` failed, ``777`` never finishes; see
`simulator/jobs.py`). ``transcript_json`` must be a non-empty list of ``{role, content}`` with a role of
``Main Agent``, ``Testing Agent``, ``Function Call`` or ``Function Call Result`` (field-map 400 naming the item).
"""

from __future__ import annotations

import math
import time
from typing import Any

from simulator.jobs import JobStore, agent_terminal
from simulator.model import NEVER, SCENARIO_FROM_TRANSCRIPT, SCENARIO_GENERATE, Answers, Job, Start
from simulator.replies import JsonObject, Reply, detail, dumps, invalid_progress_field
from simulator.validation import (
    BOOL,
    INT,
    INT_LIST,
    STR,
    STR_LIST,
    checked_object,
    choice,
    int_between,
    nullable,
    str_max,
)

QUESTION = "Which caller personas matter most?"
TRANSCRIPT_ROLES = ("Main Agent", "Testing Agent", "Function Call", "Function Call Result")

_ASK_AT = 0.5
_ATTACK_TYPES = (
    "",
    "system_prompt_leak",
    "data_leak",
    "harmful_content",
    "biased_output",
    "unauthorized_actions",
    "off_task",
)
_GENERATE_FIELDS = {
    "num_scenarios": int_between(1, 100),
    "agent_id": INT,
    "assistant_id": STR,
    "personalities": INT_LIST,
    "test_profile": INT,
    "scenario_type": choice(("workflow", "red_teaming_voice", "red_teaming_text")),
    "attack_type": nullable(choice(_ATTACK_TYPES)),
    "expected_outcome": nullable(STR),
    "extra_instructions": STR,
    "simulation_type": choice(("instruction", "conditional_actions")),
    "inbound_phone_number": nullable(INT),
    "first_message": str_max(1000),
    "generate_expected_outcomes": BOOL,
    "tags": STR_LIST,
    "tool_ids": STR_LIST,
    "folder_path": nullable(STR),
}
_GENERATE_MARKERS = (("[hang]", NEVER), ("[failed]", "failed"), ("[partial]", "partial"))
_ANSWER_FIELDS = {"progress_id": STR, "answer": str_max(10000)}


def _transcript_problem(value: Any) -> str | None:
    if value is None:
        return "This field may not be null."
    if not isinstance(value, list):
        return f'Expected a list of items but got type "{type(value).__name__}".'
    if not value:
        return "This list may not be empty."
    roles = ", ".join(f'"{role}"' for role in TRANSCRIPT_ROLES)
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            return f"Item {i}: expected an object with role and content."
        if item.get("role") not in TRANSCRIPT_ROLES:
            return f'Item {i}: role "{item.get("role")}" is not one of {roles}.'
        if not isinstance(item.get("content"), str):
            return f"Item {i}: content is required and must be a string."
        for name in ("start_time", "end_time"):
            if item.get(name) is not None and (isinstance(item[name], bool) or not isinstance(item[name], int | float)):
                return f"Item {i}: {name} must be a number."
    return None


_TRANSCRIPT_FIELDS = {
    "transcript_json": _transcript_problem,
    "agent": INT,
    "assistant_id": STR,
    "personality": INT,
    "name": STR,
    "expected_outcome_prompt": STR,
    "folder_path": nullable(STR),
}


# -- generate-bg -----------------------------------------------------------------------------------------------


def start_generate(store: JobStore, body: bytes) -> Reply:
    """POST generate-bg: check the body, start a generation, answer 200 `{progress_id}`."""
    data = checked_object(body, _GENERATE_FIELDS, required=("num_scenarios",))
    if not isinstance(data, dict):
        return data
    total: int = data["num_scenarios"]
    instructions: str = data.get("extra_instructions") or ""
    outcome = next((status for marker, status in _GENERATE_MARKERS if marker in instructions), "completed")
    request: JsonObject = {
        "total": total,
        "agent": data.get("agent_id"),
        "tags": data.get("tags") or [],
        "first_id": store.numbers(total),
        "with_status": "[status]" in instructions,
    }
    error = "Simulated failure while generating evaluators." if outcome == "failed" else None
    hold = _ASK_AT if "[ask]" in instructions else None
    key = data.get("extra_instructions")
    job = store.launch(Start(SCENARIO_GENERATE, data.get("agent_id"), outcome, error, request, key, hold))
    return 200, dumps({"progress_id": job.progress_id})


def answer_clarification(store: JobStore, body: bytes) -> Reply:
    """POST generate-clarify-answer: resume a generation paused on its question."""
    data = checked_object(body, _ANSWER_FIELDS, required=("progress_id", "answer"))
    if not isinstance(data, dict):
        return data
    job = store.find(SCENARIO_GENERATE, data["progress_id"])
    if job is None:
        return invalid_progress_field(data["progress_id"])
    now = time.monotonic()
    if not job.waiting(now):
        return detail(400, "This generation is not waiting for an answer.")
    job.resume(now, data["answer"])
    return 200, dumps({"progress_id": job.progress_id})


def _generated(job: Job, count: int) -> list[JsonObject]:
    request = job.request or {}
    return [
        {
            "id": request["first_id"] + i,
            "name": f"Generated evaluator {i + 1}",
            "agent": request["agent"],
            "tags": request["tags"],
        }
        for i in range(count)
    ]


def _counts(job: Job, done: int, failed: int) -> JsonObject:
    return {
        "total_scenarios": (job.request or {})["total"],
        "completed_scenarios": done,
        "failed_scenarios": failed,
        "scenarios_list": _generated(job, done),
    }


def _generate_phase(job: Job, fraction: float) -> int:
    total: int = (job.request or {})["total"]
    return min(math.floor(total * fraction), total - 1)


def _generate_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    answer = _counts(job, _generate_phase(job, fraction), 0)
    if job.asking(fraction):
        answer.update(status="pending_clarification", questions=[QUESTION], clarification_question=QUESTION)
    elif (job.request or {})["with_status"]:
        answer["status"] = "in_progress"
    if status is not None:
        answer["status"] = status
    return answer


def _generate_terminal(job: Job) -> JsonObject:
    request = job.request or {}
    total: int = request["total"]
    if job.outcome == "failed":
        answer = {**_counts(job, total // 2, 0), "status": "failed", "error": job.error}
    else:
        failed = 1 if job.outcome == "partial" else 0
        answer = _counts(job, total - failed, failed)
        if request["with_status"]:
            answer["status"] = "completed"
    if job.answers:
        answer["answers"] = job.answers
    return answer


# -- create-from-transcript-bg ---------------------------------------------------------------------------------


def start_from_transcript(store: JobStore, body: bytes) -> Reply:
    """POST create-from-transcript-bg: check the transcript, start, answer 200 `{progress_id}`."""
    data = checked_object(body, _TRANSCRIPT_FIELDS, required=("transcript_json",))
    if not isinstance(data, dict):
        return data
    agent: int | None = data.get("agent")
    outcome, error = agent_terminal(agent) if agent is not None else ("completed", None)
    request: JsonObject = {
        "name": data.get("name") or "Evaluator from transcript",
        "messages": len(data["transcript_json"]),
        "scenario_id": store.numbers(1),
        "expected_outcome_prompt": data.get("expected_outcome_prompt"),
        "folder_path": data.get("folder_path"),
    }
    job = store.launch(Start(SCENARIO_FROM_TRANSCRIPT, agent, outcome, error, request, data.get("name")))
    return 200, dumps({"progress_id": job.progress_id})


def _transcript_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    return {
        "agent_id": job.agent_id,
        "status": status or "in_progress",
        "scenario_id": None,
        "error": None,
        "scenario": None,
    }


def _transcript_terminal(job: Job) -> JsonObject:
    if job.outcome == "failed":
        return {"agent_id": job.agent_id, "status": "failed", "scenario_id": None, "error": job.error, "scenario": None}
    request = job.request or {}
    scenario = {
        "id": request["scenario_id"],
        "name": request["name"],
        "agent": job.agent_id,
        "instructions": f"Replay the caller's side of the {request['messages']}-message transcript.",
        "expected_outcome_prompt": request["expected_outcome_prompt"] or "The agent resolves the caller's request.",
        "folder_path": request["folder_path"],
    }
    return {
        "agent_id": job.agent_id,
        "status": "completed",
        "scenario_id": request["scenario_id"],
        "error": None,
        "scenario": scenario,
    }


#: How `generate-progress` and `create-from-transcript-progress` answer.
ANSWERS = {
    SCENARIO_GENERATE: Answers(_generate_phase, _generate_running, _generate_terminal),
    SCENARIO_FROM_TRANSCRIPT: Answers(lambda job, fraction: 0, _transcript_running, _transcript_terminal),
}
