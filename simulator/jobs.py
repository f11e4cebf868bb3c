"""Simulated Cekura jobs: the four asynchronous operations, how a job progresses, and the outcome conventions.

Tests, the demo and the benchmarks steer outcomes through the request itself, so these conventions are a contract:

==================================  ==================================================================================
Input                               Outcome
==================================  ==================================================================================
agent id ``400``                    start answers 400 (``{"detail"}``; a field map ``{"agent": [...]}`` for clean
                                    description)
agent id ``403``                    start answers 403 ``{"detail": ...}``
agent id ``404``                    start answers 404 ``{"detail": "Not found."}``
agent id ``405``                    start answers 405 (for toggle-mock-tools: the "operation not available" case)
agent id ``900``-``999``            the job ends ``failed`` with an ``error`` text
agent id ``777``                    the job never finishes (stays in progress until reset)
any other agent id                  the job ends ``completed``
``metric_description`` ``[fail]``   clean description ends ``failed``
``metric_description`` ``[hang]``   clean description never finishes
``user_message`` ``[needs_clarification]``        scenario agent ends ``needs_clarification``
``user_message`` ``[needs_agent_clarification]``  scenario agent ends ``needs_agent_clarification``
``user_message`` ``[failed]``       scenario agent ends ``failed`` (``error`` set)
``user_message`` ``[cancelled]``    scenario agent ends ``cancelled``
``user_message`` ``[hang]``         scenario agent never finishes (until cancelled or reset)
any other ``user_message``          scenario agent ends ``completed`` with a small ``result`` object
==================================  ==================================================================================

"Agent id" is the path id for auto-fetch and toggle-mock-tools and the body's ``agent`` for clean description; it does
not steer the scenario agent. The scenario agent runs in ``improve`` mode when ``scenarios`` is present and not null,
else ``clarify``; a request ``session_id`` is echoed, else a new one is allocated. ``cancel-agent`` ends every running
job of that session ``cancelled`` (an unknown session is a 400 field map).

Progression: a job is terminal on its ``polls_to_complete``-th progress GET when that is set (faulted requests never
reach the job and do not count), else once ``duration_s`` seconds have passed since the start call. The first GET
that sees the terminal status fixes the answer: every later GET returns the same bytes until reset. Auto-fetch walks
its stages (validate, prompt, settings, phone, tools, dynamic_variables, kb, finalize) with the elapsed fraction and
shows ``queued`` for the first tenth; clean description shows ``queued`` for the first quarter, then ``processing``.
A progress id is only known on the operation (and, for agent routes, the agent id) that created it; anything else is
a 400: ``{"detail": "Invalid progress_id"}`` on agent routes, ``{"progress_id": ["Invalid progress_id"]}`` elsewhere.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import Any

Reply = tuple[int, bytes]
JsonObject = dict[str, Any]

AUTO_FETCH = "auto_fetch"
TOGGLE_MOCK_TOOLS = "toggle_mock_tools"
SCENARIO_AGENT = "scenario_agent"
CLEAN_DESCRIPTION = "clean_description"
KINDS = (AUTO_FETCH, TOGGLE_MOCK_TOOLS, SCENARIO_AGENT, CLEAN_DESCRIPTION)

AUTO_FETCH_STAGES = ("validate", "prompt", "settings", "phone", "tools", "dynamic_variables", "kb", "finalize")
EVAL_TYPES = frozenset({"boolean", "numeric", "rating", "enum"})
CONTEXT_ROLES = frozenset({"user", "assistant"})

NEVER = "never"  # outcome of a job that stays in progress forever
CANCELLED = "cancelled"
_SCENARIO_MARKERS = (
    ("[hang]", NEVER),
    ("[failed]", "failed"),
    ("[cancelled]", CANCELLED),
    ("[needs_agent_clarification]", "needs_agent_clarification"),
    ("[needs_clarification]", "needs_clarification"),
)
_AGENT_HTTP_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "Agent 400 has no voice provider connected (simulated)."),
    403: (403, "You do not have permission to perform this action."),
    404: (404, "Not found."),
    405: (405, 'Method "POST" not allowed.'),
}
_HANG_AGENT = 777
_QUEUED_FRACTION_AUTO_FETCH = 0.1
_QUEUED_FRACTION_CLEAN = 0.25


_ENCODER = json.JSONEncoder(separators=(",", ":"))  # one encoder: json.dumps with options builds one per call


def dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


def _detail(status: int, message: str) -> Reply:
    return status, dumps({"detail": message})


def _field_error(status: int, field: str, message: str) -> Reply:
    return status, dumps({field: [message]})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_object(body: bytes) -> tuple[JsonObject | None, str]:
    """Decode a JSON object body; an empty body is an empty object. Returns (object, "") or (None, reason)."""
    if not body.strip():
        return {}, ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"JSON parse error - {exc}"
    if not isinstance(data, dict):
        return None, f"Invalid data. Expected a dictionary, but got {type(data).__name__}."
    return data, ""


def _agent_terminal(agent_id: int) -> tuple[str, str | None]:
    """The terminal outcome and error text an agent id steers to (see the module docstring)."""
    if 900 <= agent_id <= 999:
        return "failed", f"Simulated provider failure for agent {agent_id}."
    if agent_id == _HANG_AGENT:
        return NEVER, None
    return "completed", None


class Job:
    """One simulated asynchronous job; kept small because tens of thousands live at once."""

    __slots__ = (
        "agent_id",
        "created",
        "duration_s",
        "enabled",
        "error",
        "final",
        "kind",
        "mode",
        "outcome",
        "phase",
        "phase_body",
        "polls",
        "polls_to_complete",
        "progress_id",
        "request",
        "session_id",
        "stopped",
        "terminal_at",
        "times",
    )

    def __init__(
        self,
        kind: str,
        progress_id: str,
        agent_id: int | None,
        outcome: str,
        error: str | None,
        duration_s: float,
        polls_to_complete: int | None,
    ) -> None:
        self.kind = kind
        self.progress_id = progress_id
        self.agent_id = agent_id
        self.outcome = outcome
        self.error = error
        self.duration_s = duration_s
        self.polls_to_complete = polls_to_complete
        self.created = time.monotonic()
        self.polls = 0
        self.times: list[float] = []
        self.final: bytes | None = None
        self.terminal_at: float | None = None
        self.session_id: int | None = None
        self.mode = ""
        self.enabled = False
        self.request: JsonObject | None = None
        self.stopped = False  # cancelled through cancel-agent: terminal on the next poll
        self.phase = -2  # which running answer phase_body holds (see JobStore._phases)
        self.phase_body = b""

    def fraction(self, now: float) -> float:
        """How far along the job is, 1.0 or more meaning due to finish (before outcome conventions)."""
        if self.stopped:
            return 1.0
        if self.polls_to_complete:
            return self.polls / self.polls_to_complete
        if self.duration_s <= 0:
            return 1.0
        return (now - self.created) / self.duration_s

    def is_running(self, now: float) -> bool:
        if self.final is not None:
            return False
        return self.outcome == NEVER or self.fraction(now) < 1.0


class JobStore:
    """All simulated jobs and sessions, with the start and progress logic of each operation."""

    def __init__(self, duration_s: float, polls_to_complete: int | None, seed: int) -> None:
        self.duration_s = duration_s
        self.polls_to_complete = polls_to_complete
        self._ids = random.Random(seed ^ 0x5EED)  # never reseeded: ids stay unique across resets
        self._next_session = 1000
        self.jobs: dict[str, Job] = {}
        self.sessions: dict[int, list[Job]] = {}
        self.started_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.polls_total = 0
        self._progress_renderers: dict[str, Callable[[Job, float, str | None], JsonObject]] = {
            AUTO_FETCH: self._auto_fetch_running,
            TOGGLE_MOCK_TOOLS: self._toggle_running,
            SCENARIO_AGENT: self._scenario_running,
            CLEAN_DESCRIPTION: self._clean_running,
        }
        self._phases: dict[str, Callable[[float], int]] = {
            AUTO_FETCH: _auto_fetch_phase,
            TOGGLE_MOCK_TOOLS: _single_phase,
            SCENARIO_AGENT: _single_phase,
            CLEAN_DESCRIPTION: _clean_phase,
        }
        self._terminal_renderers: dict[str, Callable[[Job], JsonObject]] = {
            AUTO_FETCH: self._auto_fetch_terminal,
            TOGGLE_MOCK_TOOLS: self._toggle_terminal,
            SCENARIO_AGENT: self._scenario_terminal,
            CLEAN_DESCRIPTION: self._clean_terminal,
        }

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.jobs.clear()
        self.sessions.clear()
        self.started_by_kind = dict.fromkeys(KINDS, 0)
        self.polls_total = 0

    @property
    def started_jobs(self) -> int:
        return sum(self.started_by_kind.values())

    def count_terminal(self) -> int:
        return sum(1 for job in self.jobs.values() if job.final is not None)

    def polls_report(self) -> dict[str, JsonObject]:
        return {pid: {"kind": j.kind, "times": j.times, "terminal_at": j.terminal_at} for pid, j in self.jobs.items()}

    def _new_job(self, kind: str, agent_id: int | None, outcome: str, error: str | None) -> Job:
        bits = self._ids.getrandbits(128)
        hexid = f"{bits:032x}"
        progress_id = f"{hexid[:8]}-{hexid[8:12]}-4{hexid[13:16]}-a{hexid[17:20]}-{hexid[20:]}"
        job = Job(kind, progress_id, agent_id, outcome, error, self.duration_s, self.polls_to_complete)
        self.jobs[progress_id] = job
        self.started_by_kind[kind] += 1
        return job

    # -- starts -----------------------------------------------------------------------------------------------

    def start_auto_fetch(self, agent_id: int, body: bytes) -> Reply:
        if agent_id in _AGENT_HTTP_ERRORS:
            return _detail(*_AGENT_HTTP_ERRORS[agent_id])
        if body:
            return _detail(400, "auto-fetch takes no request body")
        outcome, error = _agent_terminal(agent_id)
        job = self._new_job(AUTO_FETCH, agent_id, outcome, error)
        return 202, dumps({"progress_id": job.progress_id})

    def start_toggle(self, agent_id: int, body: bytes) -> Reply:
        if agent_id in _AGENT_HTTP_ERRORS:
            return _detail(*_AGENT_HTTP_ERRORS[agent_id])
        data, problem = _parse_object(body)
        if data is None:
            return _detail(400, problem)
        if "enabled" not in data:
            return _detail(400, "enabled: This field is required.")
        if not isinstance(data["enabled"], bool):
            return _detail(400, "enabled: Must be a valid boolean.")
        if "api_key" in data and not isinstance(data["api_key"], str):
            return _detail(400, "api_key: Not a valid string.")
        outcome, error = _agent_terminal(agent_id)
        job = self._new_job(TOGGLE_MOCK_TOOLS, agent_id, outcome, error)
        job.enabled = data["enabled"]
        return 202, dumps({"progress_id": job.progress_id})

    def start_clean_description(self, body: bytes) -> Reply:
        data, problem = _parse_object(body)
        if data is None:
            return _field_error(400, "non_field_errors", problem)
        errors: dict[str, list[str]] = {}
        for name in ("agent", "metric_description", "eval_type"):
            if name not in data or data[name] is None:
                errors[name] = ["This field is required."]
        agent = data.get("agent")
        if "agent" not in errors and not _is_int(agent):
            errors["agent"] = ["A valid integer is required."]
        description = data.get("metric_description")
        if "metric_description" not in errors and not isinstance(description, str):
            errors["metric_description"] = ["Not a valid string."]
        eval_type = data.get("eval_type")
        if "eval_type" not in errors and (not isinstance(eval_type, str) or eval_type not in EVAL_TYPES):
            errors["eval_type"] = [f'"{eval_type}" is not a valid choice.']
        if errors:
            return 400, dumps(errors)
        assert isinstance(agent, int) and isinstance(description, str) and isinstance(eval_type, str)
        if agent == 400:
            return _field_error(400, "agent", f'Invalid pk "{agent}" - agent cannot be used (simulated).')
        if agent in _AGENT_HTTP_ERRORS:
            return _detail(*_AGENT_HTTP_ERRORS[agent])
        outcome, error = _agent_terminal(agent)
        if "[fail]" in description:
            outcome, error = "failed", "Simulated failure while generating the clean description."
        elif "[hang]" in description:
            outcome, error = NEVER, None
        job = self._new_job(CLEAN_DESCRIPTION, agent, outcome, error)
        job.request = {"metric_description": description, "eval_type": eval_type}
        return 200, dumps({"progress_id": job.progress_id})

    def start_scenario_agent(self, body: bytes) -> Reply:
        data, problem = _parse_object(body)
        if data is None:
            return _field_error(400, "non_field_errors", problem)
        errors = _validate_scenario_request(data)
        if errors:
            return 400, dumps(errors)
        message: str = data.get("user_message", "")
        outcome, error = "completed", None
        for marker, status in _SCENARIO_MARKERS:
            if marker in message:
                outcome = status
                break
        if outcome == "failed":
            error = "Simulated scenario-agent failure."
        session_id = data.get("session_id")
        if session_id is None:
            self._next_session += 1
            while self._next_session in self.sessions:
                self._next_session += 1
            session_id = self._next_session
        job = self._new_job(SCENARIO_AGENT, data.get("agent_id"), outcome, error)
        job.session_id = session_id
        job.mode = "improve" if data.get("scenarios") is not None else "clarify"
        job.request = data
        self.sessions.setdefault(session_id, []).append(job)
        return 200, dumps({"progress_id": job.progress_id, "session_id": session_id})

    def cancel_scenario_agent(self, body: bytes) -> Reply:
        data, problem = _parse_object(body)
        if data is None:
            return _field_error(400, "non_field_errors", problem)
        if "session_id" not in data or data["session_id"] is None:
            return _field_error(400, "session_id", "This field is required.")
        session_id = data["session_id"]
        if not _is_int(session_id):
            return _field_error(400, "session_id", "A valid integer is required.")
        jobs = self.sessions.get(session_id)
        if jobs is None:
            return _field_error(400, "session_id", "Invalid session_id")
        now = time.monotonic()
        for job in jobs:
            if job.is_running(now):
                job.outcome = CANCELLED
                job.error = None
                job.stopped = True
        return 200, dumps({"success": True, "session_id": session_id})

    # -- progress ---------------------------------------------------------------------------------------------

    def progress(self, kind: str, agent_id: int | None, progress_id: str | None, unexpected: str | None) -> Reply:
        """Answer a progress GET; `unexpected` replaces the status word (fault injection) without counting a poll."""
        job = self.jobs.get(progress_id) if progress_id else None
        if job is None or job.kind != kind or (agent_id is not None and job.agent_id != agent_id):
            if kind in (AUTO_FETCH, TOGGLE_MOCK_TOOLS):
                return _detail(400, "Invalid progress_id" if progress_id else "progress_id is required")
            return _field_error(400, "progress_id", "Invalid progress_id" if progress_id else "This field is required.")
        if unexpected is not None:
            now = time.monotonic()
            return 200, dumps(self._progress_renderers[kind](job, min(job.fraction(now), 0.99), unexpected))
        wall = time.time()
        job.times.append(wall)
        job.polls += 1
        self.polls_total += 1
        if job.final is not None:
            return 200, job.final
        fraction = job.fraction(time.monotonic())
        if job.outcome == NEVER:
            fraction = min(fraction, 0.99)
        if fraction < 1.0:
            phase = self._phases[kind](fraction)
            if phase != job.phase:  # running answers only change between phases: render each once
                job.phase = phase
                job.phase_body = dumps(self._progress_renderers[kind](job, fraction, None))
            return 200, job.phase_body
        final = dumps(self._terminal_renderers[kind](job))
        job.final = final
        job.terminal_at = wall
        job.request = None
        job.phase_body = b""
        return 200, final

    # -- renderers --------------------------------------------------------------------------------------------

    @staticmethod
    def _auto_fetch_running(job: Job, fraction: float, status: str | None) -> JsonObject:
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

    @staticmethod
    def _auto_fetch_terminal(job: Job) -> JsonObject:
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

    @staticmethod
    def _toggle_running(job: Job, fraction: float, status: str | None) -> JsonObject:
        verb = "Enabling" if job.enabled else "Disabling"
        return {
            "status": status or "in_progress",
            "mock_enabled": None,
            "mcp_endpoints": [],
            "message": f"{verb} mock tools on the provider.",
            "error": None,
        }

    @staticmethod
    def _toggle_terminal(job: Job) -> JsonObject:
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

    @staticmethod
    def _scenario_running(job: Job, fraction: float, status: str | None) -> JsonObject:
        return {
            "progress_id": job.progress_id,
            "session_id": job.session_id,
            "mode": job.mode,
            "status": status or "in_progress",
            "result": None,
            "error": None,
        }

    @staticmethod
    def _scenario_terminal(job: Job) -> JsonObject:
        request = job.request or {}
        result: JsonObject | None = None
        status = job.outcome
        if status == "completed":
            if job.mode == "improve":
                scenarios = request.get("scenarios")
                ids = scenarios if isinstance(scenarios, list) else [scenarios] if _is_int(scenarios) else [101, 102]
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

    @staticmethod
    def _clean_running(job: Job, fraction: float, status: str | None) -> JsonObject:
        return {"status": status or ("queued" if _clean_phase(fraction) == 0 else "processing")}

    @staticmethod
    def _clean_terminal(job: Job) -> JsonObject:
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


def _auto_fetch_phase(fraction: float) -> int:
    if fraction < _QUEUED_FRACTION_AUTO_FETCH:
        return -1
    return min(int(fraction * len(AUTO_FETCH_STAGES)), len(AUTO_FETCH_STAGES) - 1)


def _clean_phase(fraction: float) -> int:
    return 0 if fraction < _QUEUED_FRACTION_CLEAN else 1


def _single_phase(fraction: float) -> int:
    return 0


_LIST_OF_INT_FIELDS = ("knowledge_base", "scenarios_needing_agent", "inbound_phone_numbers")
_NULLABLE_INT_FIELDS = ("agent_id", "project_id", "session_id")


def _validate_scenario_request(data: JsonObject) -> dict[str, list[str]]:
    """Field errors of a ScenarioAgentRequest, as the DRF serializer would report them; empty when valid."""
    errors: dict[str, list[str]] = {}
    for name in ("user_message", "agent_resolution_response"):
        if name in data and not isinstance(data[name], str):
            errors[name] = ["Not a valid string."]
    for name in _NULLABLE_INT_FIELDS:
        if data.get(name) is not None and not _is_int(data[name]):
            errors[name] = ["A valid integer is required."]
    if "num_scenarios" in data:
        value = data["num_scenarios"]
        if not _is_int(value):
            errors["num_scenarios"] = ["A valid integer is required."]
        elif value < 1:
            errors["num_scenarios"] = ["Ensure this value is greater than or equal to 1."]
    if "apply_changes" in data and not isinstance(data["apply_changes"], bool):
        errors["apply_changes"] = ["Must be a valid boolean."]
    for name in _LIST_OF_INT_FIELDS:
        if name in data and not (isinstance(data[name], list) and all(_is_int(v) for v in data[name])):
            errors[name] = ["Expected a list of integers."]
    if "tool_ids" in data and not (
        isinstance(data["tool_ids"], list) and all(isinstance(v, str) for v in data["tool_ids"])
    ):
        errors["tool_ids"] = ["Expected a list of strings."]
    if "updated_scenarios" in data and not (
        isinstance(data["updated_scenarios"], list) and all(isinstance(v, dict) for v in data["updated_scenarios"])
    ):
        errors["updated_scenarios"] = ["Expected a list of objects."]
    pending = data.get("pending_tool_calls")
    if pending is not None and not (isinstance(pending, list) and all(isinstance(v, dict) for v in pending)):
        errors["pending_tool_calls"] = ["Expected a list of objects."]
    selections = data.get("agent_selections")
    if "agent_selections" in data and not (
        isinstance(selections, dict) and all(_is_int(v) and v >= 1 for v in selections.values())
    ):
        errors["agent_selections"] = ["Expected an object mapping scenario ids to agent ids (integers >= 1)."]
    scenarios = data.get("scenarios")
    if scenarios is not None and not (
        _is_int(scenarios) or scenarios == "all" or (isinstance(scenarios, list) and all(_is_int(v) for v in scenarios))
    ):
        errors["scenarios"] = ['Expected a list of integers, an integer, or "all".']
    context = data.get("context")
    if context is not None:
        if not isinstance(context, list):
            errors["context"] = ["Expected a list of items."]
        else:
            for item in context:
                if not isinstance(item, dict):
                    errors["context"] = ["Each item must be an object with role and content."]
                    break
                if item.get("role") not in CONTEXT_ROLES:
                    errors["context"] = [f'"{item.get("role")}" is not a valid choice for role (user or assistant).']
                    break
                if not isinstance(item.get("content"), str):
                    errors["context"] = ["content: This field is required and must be a string."]
                    break
    return errors
