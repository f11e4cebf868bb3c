"""One simulated job: its kind, the outcome it is steered to, and how far along it is (by polls or by time)."""

from __future__ import annotations

import time

from simulator.replies import JsonObject

AUTO_FETCH = "auto_fetch"
TOGGLE_MOCK_TOOLS = "toggle_mock_tools"
SCENARIO_AGENT = "scenario_agent"
CLEAN_DESCRIPTION = "clean_description"
KINDS = (AUTO_FETCH, TOGGLE_MOCK_TOOLS, SCENARIO_AGENT, CLEAN_DESCRIPTION)

NEVER = "never"  # outcome of a job that stays in progress forever
CANCELLED = "cancelled"


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
        self.phase = -2  # which running answer phase_body holds (see renderers.PHASES)
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
