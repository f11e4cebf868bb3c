"""What a progress GET answers for the four seed operations: the running answer of each phase and the terminal one.

A running answer only changes between phases (`Answers.phase` maps the elapsed fraction to a phase number), so the
job store renders it once per phase; the terminal answer is rendered once and then fixed. The operations added
later keep their answers beside their start calls (`evaluations`, `generation`, `metrics`, `feedback`, `tools`).
"""

from __future__ import annotations

from collections.abc import Callable

from simulator.model import AUTO_FETCH, CLEAN_DESCRIPTION, SCENARIO_AGENT, TOGGLE_MOCK_TOOLS, Answers, Job
from simulator.replies import JsonObject, invalid_progress_detail
from simulator.validation import is_int

AUTO_FETCH_STAGES = ("validate", "prompt", "settings", "phone", "tools", "dynamic_variables", "kb", "finalize")
_QUEUED_FRACTION_AUTO_FETCH = 0.1
_QUEUED_FRACTION_CLEAN = 0.25


def _auto_fetch_phase(fraction: float) -> int:
    if fraction < _QUEUED_FRACTION_AUTO_FETCH:
        return -1
    return min(int(fraction * len(AUTO_FETCH_STAGES)), len(AUTO_FETCH_STAGES) - 1)


def _clean_phase(fraction: float) -> int:
    return 0 if fraction < _QUEUED_FRACTION_CLEAN else 1


def _single_phase(fraction: float) -> int:
    return 0


def auto_fetch_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    index = _auto_fetch_phase(fraction)
    if index < 0:
        index, word = 0, "queued"
        stages = [{"name": name, "status": "pending"} for name in AUTO_FETCH_STAGES]
    else:
        word = "in_progress"
        stages = [
            {"name": name, "status": "completed" if i < index else "in_progress" if i == index else "pending"}
            for i, name in enumerate(AUTO_FETCH_STAGES)
        ]
    return {
        "agent_id": job.agent_id,
        "status": status or word,
        "current_stage": AUTO_FETCH_STAGES[index],
        "stages": stages,
        "error": None,
    }


def auto_fetch_terminal(job: Job) -> JsonObject:
    agent_id = job.agent_id or 0
    if job.outcome == "failed":
        failed_at = agent_id % len(AUTO_FETCH_STAGES)
        stages = [
            {"name": name, "status": "completed" if i < failed_at else "failed" if i == failed_at else "skipped"}
            for i, name in enumerate(AUTO_FETCH_STAGES)
        ]
        return {
            "agent_id": agent_id,
            "status": "failed",
            "current_stage": AUTO_FETCH_STAGES[failed_at],
            "stages": stages,
            "error": job.error,
        }
    return {
        "agent_id": agent_id,
        "status": "completed",
        "current_stage": AUTO_FETCH_STAGES[-1],
        "stages": [{"name": name, "status": "completed"} for name in AUTO_FETCH_STAGES],
        "error": None,
    }


def toggle_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    verb = "Enabling" if job.enabled else "Disabling"
    return {
        "status": status or "in_progress",
        "mock_enabled": None,
        "mcp_endpoints": [],
        "message": f"{verb} mock tools on the provider.",
        "error": None,
    }


def toggle_terminal(job: Job) -> JsonObject:
    if job.outcome == "failed":
        return {"status": "failed", "mock_enabled": None, "mcp_endpoints": [], "message": None, "error": job.error}
    endpoints: list[JsonObject] = []
    if job.enabled:
        endpoints.append(
            {
                "mock_index": 0,
                "url": f"https://mock.cekura.ai/mcp/agents/{job.agent_id}/0/",
                "tool_names": ["lookup_order", "book_appointment"],
            }
        )
    return {
        "status": "completed",
        "mock_enabled": job.enabled,
        "mcp_endpoints": endpoints,
        "message": "Mock tools enabled." if job.enabled else "Mock tools disabled; provider tools restored.",
        "error": None,
    }


def scenario_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    return {
        "progress_id": job.progress_id,
        "session_id": job.session_id,
        "mode": job.mode,
        "status": status or "in_progress",
        "result": None,
        "error": None,
    }


def scenario_terminal(job: Job) -> JsonObject:
    request = job.request or {}
    result: JsonObject | None = None
    status = job.outcome
    if status == "completed":
        if job.mode == "improve":
            scenarios = request.get("scenarios")
            ids = scenarios if isinstance(scenarios, list) else [scenarios] if is_int(scenarios) else [101, 102]
            result = {
                "response": "Suggested improvements for the selected scenarios (simulated).",
                "updated_scenarios": [{"id": sid, "instructions": "More detailed instructions."} for sid in ids],
                "applied": bool(request.get("apply_changes", False)),
            }
        else:
            count = min(int(request.get("num_scenarios", 1)), 5)
            result = {
                "response": f"Generated {count} scenario(s) (simulated).",
                "scenarios": [
                    {"id": 5000 + i, "name": f"Simulated scenario {i + 1}", "instructions": "Call and ask."}
                    for i in range(count)
                ],
            }
    elif status == "needs_clarification":
        result = {"response": "Which caller persona should the scenarios use?", "questions": ["Persona?"]}
    elif status == "needs_agent_clarification":
        needing = request.get("scenarios")
        ids = needing if isinstance(needing, list) else [101]
        result = {"response": "Select an agent for these scenarios.", "scenarios_needing_agent": ids}
    return {
        "progress_id": job.progress_id,
        "session_id": job.session_id,
        "mode": job.mode,
        "status": status,
        "result": result,
        "error": job.error if status == "failed" else None,
    }


def clean_running(job: Job, fraction: float, status: str | None) -> JsonObject:
    return {"status": status or ("queued" if _clean_phase(fraction) == 0 else "processing")}


def clean_terminal(job: Job) -> JsonObject:
    if job.outcome == "failed":
        return {"status": "failed", "error": job.error}
    request = job.request or {}
    description = " ".join(str(request.get("metric_description", "")).split())
    eval_type = request.get("eval_type", "boolean")
    clean = description[:1].upper() + description[1:]
    if clean and not clean.endswith("."):
        clean += "."
    return {
        "status": "completed",
        "clean_description": clean or "Evaluate the call.",
        "thinking": f"Rewrote the description as a {eval_type} metric (simulated).",
    }


def _by_fraction(phase: Callable[[float], int]) -> Callable[[Job, float], int]:
    return lambda job, fraction: phase(fraction)


#: How a progress GET answers for each of the four seed kinds.
ANSWERS: dict[str, Answers] = {
    AUTO_FETCH: Answers(
        _by_fraction(_auto_fetch_phase), auto_fetch_running, auto_fetch_terminal, invalid_progress_detail
    ),
    TOGGLE_MOCK_TOOLS: Answers(_by_fraction(_single_phase), toggle_running, toggle_terminal, invalid_progress_detail),
    SCENARIO_AGENT: Answers(_by_fraction(_single_phase), scenario_running, scenario_terminal),
    CLEAN_DESCRIPTION: Answers(_by_fraction(_clean_phase), clean_running, clean_terminal),
}
