"""One simulated job: its kind, the outcome it is steered to, and how far along it is (by polls or by time).

A job may stop half way on a question (`hold`): its clock pauses from the instant it reaches that fraction until
the answer arrives (`resume`), so the time it waited is added to its finish instead of eaten from its duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from simulator.replies import JsonObject, Reply, invalid_progress_field

AUTO_FETCH = "auto_fetch"
TOGGLE_MOCK_TOOLS = "toggle_mock_tools"
SCENARIO_AGENT = "scenario_agent"
CLEAN_DESCRIPTION = "clean_description"
EVALUATOR_RUN = "evaluator_run"
SCENARIO_GENERATE = "scenario_generate"
METRIC_GENERATE = "metric_generate"
TOOLS_AUTO_FETCH = "tools_auto_fetch"
SCENARIO_FROM_TRANSCRIPT = "scenario_from_transcript"
METRIC_IMPROVE = "metric_improve"
KINDS = (
    AUTO_FETCH,
    TOGGLE_MOCK_TOOLS,
    SCENARIO_AGENT,
    CLEAN_DESCRIPTION,
    EVALUATOR_RUN,
    SCENARIO_GENERATE,
    METRIC_GENERATE,
    TOOLS_AUTO_FETCH,
    SCENARIO_FROM_TRANSCRIPT,
    METRIC_IMPROVE,
)

NEVER = "never"  # outcome of a job that stays in progress forever
CANCELLED = "cancelled"
WAITING_PHASE = -100  # the running-answer phase of a job paused on a question


class Job:
    """One simulated asynchronous job; kept small because tens of thousands live at once."""

    __slots__ = (
        "agent_id",
        "answers",
        "created",
        "created_wall",
        "duration_s",
        "enabled",
        "error",
        "filters",
        "final",
        "hold",
        "key",
        "kind",
        "mode",
        "outcome",
        "paused_s",
        "phase",
        "phase_body",
        "polls",
        "polls_to_complete",
        "progress_id",
        "request",
        "session_id",
        "stop_fraction",
        "stopped",
        "stopped_at",
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
        self.created_wall = time.time()
        self.polls = 0
        self.times: list[float] = []
        self.final: bytes | None = None
        self.terminal_at: float | None = None
        self.session_id: int | None = None
        self.mode = ""
        self.enabled = False
        self.request: JsonObject | None = None
        self.key: str | None = None  # what identifies the request, for duplicate-start checks
        self.hold: float | None = None  # the fraction at which the job waits for an answer (None: no question)
        self.paused_s = 0.0  # seconds spent waiting for answers, added to the finish
        self.answers: list[Any] = []  # answers received, in order
        self.filters: JsonObject | None = None  # what a list endpoint filters on (kept after `request` is dropped)
        self.stopped = False  # cancelled: terminal on the next poll
        self.stopped_at: float | None = None  # wall time of the cancel
        self.stop_fraction = 0.0  # how far along the job was when cancelled
        self.phase = -2  # which running answer phase_body holds (see `Answers.phase`)
        self.phase_body = b""

    def _elapsed(self, now: float) -> float:
        if self.polls_to_complete:
            return self.polls / self.polls_to_complete
        if self.duration_s <= 0:
            return 1.0
        return (now - self.created - self.paused_s) / self.duration_s

    def fraction(self, now: float) -> float:
        """How far along the job is, 1.0 or more meaning due to finish (before outcome conventions)."""
        if self.stopped:
            return 1.0
        elapsed = self._elapsed(now)
        if self.hold is not None and elapsed >= self.hold:
            return self.hold
        return elapsed

    def waiting(self, now: float) -> bool:
        """True while the job is paused on its question (reached `hold`, not answered, not finished)."""
        return self.hold is not None and self.final is None and not self.stopped and self._elapsed(now) >= self.hold

    def asking(self, fraction: float) -> bool:
        """True when a running answer at `fraction` is the one of a job paused on its question."""
        return self.hold is not None and not self.stopped and fraction >= self.hold

    def resume(self, now: float, answer: Any) -> None:
        """Record an answer and restart the clock from where the job paused; call only when `waiting`."""
        hold = self.hold
        assert hold is not None
        if not self.polls_to_complete and self.duration_s > 0:  # polls mode: waiting polls were never counted
            paused_since = self.created + self.paused_s + hold * self.duration_s
            self.paused_s += max(0.0, now - paused_since)
        self.hold = None
        self.answers.append(answer)

    def stop(self, now: float) -> None:
        """Cancel the job: it answers its cancelled status on the next poll."""
        self.stop_fraction = min(self.fraction(now), 1.0)
        self.stopped = True
        self.stopped_at = time.time()

    def is_running(self, now: float) -> bool:
        if self.final is not None:
            return False
        return self.outcome == NEVER or self.fraction(now) < 1.0

    def finishes_at(self) -> float | None:
        """Wall time at which the job is (or was) terminal at Cekura; None while that is not known yet."""
        if self.stopped_at is not None:
            return self.stopped_at
        if self.outcome == NEVER or self.hold is not None:
            return None
        if self.polls_to_complete:
            return self.terminal_at
        return self.created_wall + self.duration_s + self.paused_s


class Start(NamedTuple):
    """What a valid start call asks for: the job's kind, steered outcome and request data."""

    kind: str
    agent_id: int | None
    outcome: str
    error: str | None = None
    request: JsonObject | None = None
    key: str | None = None
    hold: float | None = None


class Answers(NamedTuple):
    """How a progress GET answers for one kind of job.

    `phase(job, fraction)` names the running answer; it changes only between phases, so the store renders each
    phase once. `running(job, fraction, status)` renders it (`status` replaces the real word under fault
    injection), `terminal(job)` renders the final answer, `unknown(progress_id)` the reply for an unknown id.
    """

    phase: Callable[[Job, float], int]
    running: Callable[[Job, float, str | None], JsonObject]
    terminal: Callable[[Job], JsonObject]
    unknown: Callable[[str | None], Reply] = invalid_progress_field
