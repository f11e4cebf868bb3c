"""`scenario.generate`: generate evaluators in the background; may stop to ask a question, answered by the user."""

from typing import Annotated, Literal

from pydantic import Field

from actors.kinds.base import JobKind, Outcome, Params
from actors.kinds.rules import status_or_counts


class ScenarioGenerateParams(Params):
    num_scenarios: Annotated[int, Field(ge=1, le=100)]
    agent_id: int | None = None
    assistant_id: str | None = None
    personalities: list[int] | None = None
    test_profile: int | None = None
    scenario_type: Literal["workflow", "red_teaming_voice", "red_teaming_text"] | None = None
    extra_instructions: str | None = None
    generate_expected_outcomes: bool | None = None
    tags: list[str] | None = None
    tool_ids: list[str] | None = None
    folder_path: str | None = None
    first_message: Annotated[str, Field(max_length=1000)] | None = None


KIND = JobKind(
    name="scenario.generate",
    params=ScenarioGenerateParams,
    start_path="/test_framework/v1/scenarios/generate-bg/",
    progress_path="/test_framework/v1/scenarios/generate-progress/",
    status_of=status_or_counts,
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    running=frozenset({"in_progress", "queued", "pending"}),
    waiting=frozenset({"pending_clarification"}),
    answer_path="/test_framework/v1/scenarios/generate-clarify-answer/",
    repeatable_start=False,  # a second generate-bg creates the evaluators twice
)
