"""Simulated Cekura jobs: the job store, the four seed operations, how a job progresses, and the outcome conventions.

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
A job's ``duration_s`` is drawn per kind when ``durations`` is configured (see `simulator/config.py`). A job that
asks a question (the ``[ask]`` and metric ``333`` conventions) stops at half way: while it waits its clock is paused
and its polls do not count towards ``polls_to_complete``; the answer call resumes it.

The six operations added later (evaluator runs, evaluator generation, evaluator from a transcript, metric
generation, metric improvement, tools auto-fetch) keep their conventions table in their own module's docstring:
`simulator/evaluations.py`, `simulator/generation.py`, `simulator/metrics.py`, `simulator/feedback.py`,
`simulator/tools.py`. They share the agent-id rules above where they say so (`agent_terminal`). The results list
is `simulator/results.py`, the result webhooks `simulator/webhooks.py` (fed by `JobStore.on_change`).

This module holds the job store (starts, cancel, progress GETs, the per-job report); the job record and its kinds
are in `simulator/model.py`, the progress answers of the seed kinds in `simulator/renderers.py`, the request-body
checks in `simulator/validation.py`.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping

from simulator.config import Durations
from simulator.model import (
    AUTO_FETCH,
    CANCELLED,
    CLEAN_DESCRIPTION,
    KINDS,
    NEVER,
    SCENARIO_AGENT,
    TOGGLE_MOCK_TOOLS,
    WAITING_PHASE,
    Answers,
    Job,
    Start,
)
from simulator.replies import JsonObject, Reply, detail, dumps, field_error
from simulator.validation import EVAL_TYPES, is_int, parse_object, validate_scenario_request

_SCENARIO_MARKERS = (
    ("[hang]", NEVER),
    ("[failed]", "failed"),
    ("[cancelled]", CANCELLED),
    ("[needs_agent_clarification]", "needs_agent_clarification"),
    ("[needs_clarification]", "needs_clarification"),
)
#: Agent ids whose start call answers an HTTP error instead of starting a job: id -> (status, detail).
AGENT_HTTP_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "Agent 400 has no voice provider connected (simulated)."),
    403: (403, "You do not have permission to perform this action."),
    404: (404, "Not found."),
    405: (405, 'Method "POST" not allowed.'),
}
HANG_AGENT = 777


def agent_terminal(agent_id: int) -> tuple[str, str | None]:
    """The terminal outcome and error text an agent id steers to (see the module docstring)."""
    if 900 <= agent_id <= 999:
        return "failed", f"Simulated provider failure for agent {agent_id}."
    if agent_id == HANG_AGENT:
        return NEVER, None
    return "completed", None


class JobStore:
    """All simulated jobs and sessions, with the start and progress logic of each operation."""

    def __init__(
        self,
        duration_s: float,
        polls_to_complete: int | None,
        seed: int,
        answers: Mapping[str, Answers],
        durations: Durations | None = None,
    ) -> None:
        self.duration_s = duration_s
        self.polls_to_complete = polls_to_complete
        self.durations = durations
        self.answers = answers
        self.seed = seed
        self._ids = random.Random(seed ^ 0x5EED)  # never reseeded: ids stay unique across resets
        self._draws = random.Random(seed)  # durations; reseeded by reset so a run replays the same draws
        self._next_session = 1000
        self._next_number = 50000  # result, run and scenario ids; never reset, like the progress ids
        self.jobs: dict[str, Job] = {}
        self.sessions: dict[int, list[Job]] = {}
        self.started_by_kind: dict[str, int] = dict.fromkeys(KINDS, 0)
        self.started_by_key: dict[str, dict[str, int]] = {}
        self.polls_total = 0
        #: Called with a job when it was started, cancelled, or first answered terminal (result webhooks watch it).
        self.on_change: Callable[[Job], None] | None = None

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.jobs.clear()
        self.sessions.clear()
        self.started_by_kind = dict.fromkeys(KINDS, 0)
        self.started_by_key = {}
        self.polls_total = 0
        self._draws = random.Random(self.seed)

    def numbers(self, count: int) -> int:
        """Reserve `count` consecutive integer ids (results, runs, scenarios) and return the first."""
        first = self._next_number
        self._next_number += count
        return first

    def changed(self, job: Job) -> None:
        if self.on_change is not None:
            self.on_change(job)

    @property
    def started_jobs(self) -> int:
        return sum(self.started_by_kind.values())

    def count_terminal(self) -> int:
        return sum(1 for job in self.jobs.values() if job.final is not None)

    def polls_report(self) -> dict[str, JsonObject]:
        """Per job (by progress id, or result id): kind, poll times, when a poll first saw it terminal, when it
        started and when it is terminal at Cekura (wall clock; None while unknown), and its request's key."""
        return {
            pid: {
                "kind": j.kind,
                "times": j.times,
                "terminal_at": j.terminal_at,
                "started_at": j.created_wall,
                "finishes_at": j.finishes_at(),
                "key": j.key,
            }
            for pid, j in self.jobs.items()
        }

    def _duration(self, kind: str) -> float:
        spread = self.durations.get(kind) if self.durations else None
        if spread is None:
            return self.duration_s
        median, sigma = spread
        return median * math.exp(sigma * self._draws.gauss(0.0, 1.0))

    def _new_job(
        self, kind: str, agent_id: int | None, outcome: str, error: str | None, ident: str | None = None
    ) -> Job:
        if ident is None:
            bits = self._ids.getrandbits(128)
            hexid = f"{bits:032x}"
            ident = f"{hexid[:8]}-{hexid[8:12]}-4{hexid[13:16]}-a{hexid[17:20]}-{hexid[20:]}"
        job = Job(kind, ident, agent_id, outcome, error, self._duration(kind), self.polls_to_complete)
        self.jobs[ident] = job
        self.started_by_kind[kind] += 1
        return job

    def launch(self, start: Start, ident: str | None = None) -> Job:
        """Create the job a valid start call asks for (`ident` names it instead of a new progress id)."""
        job = self._new_job(start.kind, start.agent_id, start.outcome, start.error, ident)
        job.request = start.request
        job.hold = start.hold
        if start.key is not None:
            job.key = start.key
            by_key = self.started_by_key.setdefault(start.kind, {})
            by_key[start.key] = by_key.get(start.key, 0) + 1
        self.changed(job)
        return job

    def find(self, kind: str, ident: str | None, agent_id: int | None = None) -> Job | None:
        """The job of that kind (and agent, when given) with that id, or None."""
        job = self.jobs.get(ident) if ident else None
        if job is None or job.kind != kind or (agent_id is not None and job.agent_id != agent_id):
            return None
        return job

    # -- starts -----------------------------------------------------------------------------------------------

    def start_auto_fetch(self, agent_id: int, body: bytes) -> Reply:
        if agent_id in AGENT_HTTP_ERRORS:
            return detail(*AGENT_HTTP_ERRORS[agent_id])
        if body:
            return detail(400, "auto-fetch takes no request body")
        outcome, error = agent_terminal(agent_id)
        job = self._new_job(AUTO_FETCH, agent_id, outcome, error)
        return 202, dumps({"progress_id": job.progress_id})

    def start_toggle(self, agent_id: int, body: bytes) -> Reply:
        if agent_id in AGENT_HTTP_ERRORS:
            return detail(*AGENT_HTTP_ERRORS[agent_id])
        data, problem = parse_object(body)
        if data is None:
            return detail(400, problem)
        if "enabled" not in data:
            return detail(400, "enabled: This field is required.")
        if not isinstance(data["enabled"], bool):
            return detail(400, "enabled: Must be a valid boolean.")
        if "api_key" in data and not isinstance(data["api_key"], str):
            return detail(400, "api_key: Not a valid string.")
        outcome, error = agent_terminal(agent_id)
        job = self._new_job(TOGGLE_MOCK_TOOLS, agent_id, outcome, error)
        job.enabled = data["enabled"]
        return 202, dumps({"progress_id": job.progress_id})

    def start_clean_description(self, body: bytes) -> Reply:
        data, problem = parse_object(body)
        if data is None:
            return field_error(400, "non_field_errors", problem)
        errors: dict[str, list[str]] = {}
        for name in ("agent", "metric_description", "eval_type"):
            if name not in data or data[name] is None:
                errors[name] = ["This field is required."]
        agent = data.get("agent")
        if "agent" not in errors and not is_int(agent):
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
            return field_error(400, "agent", f'Invalid pk "{agent}" - agent cannot be used (simulated).')
        if agent in AGENT_HTTP_ERRORS:
            return detail(*AGENT_HTTP_ERRORS[agent])
        outcome, error = agent_terminal(agent)
        if "[fail]" in description:
            outcome, error = "failed", "Simulated failure while generating the clean description."
        elif "[hang]" in description:
            outcome, error = NEVER, None
        job = self._new_job(CLEAN_DESCRIPTION, agent, outcome, error)
        job.request = {"metric_description": description, "eval_type": eval_type}
        return 200, dumps({"progress_id": job.progress_id})

    def start_scenario_agent(self, body: bytes) -> Reply:
        data, problem = parse_object(body)
        if data is None:
            return field_error(400, "non_field_errors", problem)
        errors = validate_scenario_request(data)
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
        data, problem = parse_object(body)
        if data is None:
            return field_error(400, "non_field_errors", problem)
        if "session_id" not in data or data["session_id"] is None:
            return field_error(400, "session_id", "This field is required.")
        session_id = data["session_id"]
        if not is_int(session_id):
            return field_error(400, "session_id", "A valid integer is required.")
        jobs = self.sessions.get(session_id)
        if jobs is None:
            return field_error(400, "session_id", "Invalid session_id")
        now = time.monotonic()
        for job in jobs:
            if job.is_running(now):
                job.outcome = CANCELLED
                job.error = None
                job.stop(now)
        return 200, dumps({"success": True, "session_id": session_id})

    # -- progress ---------------------------------------------------------------------------------------------

    def progress(self, kind: str, agent_id: int | None, progress_id: str | None, unexpected: str | None) -> Reply:
        """Answer a progress GET; `unexpected` replaces the status word (fault injection) without counting a poll."""
        answers = self.answers[kind]
        job = self.find(kind, progress_id, agent_id)
        if job is None:
            return answers.unknown(progress_id)
        now = time.monotonic()
        if unexpected is not None:
            if job.final is not None:  # the request data a running answer needs is gone: reword the final one
                return 200, dumps({**json.loads(job.final), "status": unexpected})
            return 200, dumps(answers.running(job, min(job.fraction(now), 0.99), unexpected))
        wall = time.time()
        job.times.append(wall)
        self.polls_total += 1
        if job.final is not None:
            return 200, job.final
        if not job.waiting(now):  # a job paused on a question does not advance
            job.polls += 1
        fraction = job.fraction(now)
        if job.outcome == NEVER:
            fraction = min(fraction, 0.99)
        if fraction < 1.0:
            phase = WAITING_PHASE if job.waiting(now) else answers.phase(job, fraction)
            if phase != job.phase:  # running answers only change between phases: render each once
                job.phase = phase
                job.phase_body = dumps(answers.running(job, fraction, None))
            return 200, job.phase_body
        final = dumps(answers.terminal(job))
        job.final = final
        job.terminal_at = wall
        job.request = None
        job.phase_body = b""
        self.changed(job)
        return 200, final
