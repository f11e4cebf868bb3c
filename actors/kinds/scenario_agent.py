"""`scenario.agent`: Cekura's AI clarifies or improves evaluator scenarios (a `ScenarioAgentRequest`)."""

from typing import Annotated, Any, Literal

from pydantic import Field

from actors.kinds.base import JobKind, Outcome, Params


class ContextItem(Params):
    role: Literal["user", "assistant"]
    content: str


class ScenarioAgentParams(Params):
    """The `ScenarioAgentRequest` fields; none is required."""

    user_message: str = ""
    agent_id: int | None = None
    project_id: int | None = None
    session_id: int | None = None
    context: list[ContextItem] | None = None
    num_scenarios: Annotated[int, Field(ge=1)] = 1
    knowledge_base: list[int] = Field(default_factory=list)
    scenarios: list[int] | int | Literal["all"] | None = None
    apply_changes: bool = False
    updated_scenarios: list[dict[str, Any]] = Field(default_factory=list)
    agent_selections: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    agent_resolution_response: str = ""
    scenarios_needing_agent: list[int] = Field(default_factory=list)
    pending_tool_calls: list[dict[str, Any]] | None = None
    tool_ids: list[str] = Field(default_factory=list)
    inbound_phone_numbers: list[int] = Field(default_factory=list)


KIND = JobKind(
    name="scenario.agent",
    params=ScenarioAgentParams,
    start_path="/test_framework/v1/scenarios/scenario-agent/",
    progress_path="/test_framework/v1/scenarios/scenario-agent-progress/",
    terminal={
        "completed": Outcome.COMPLETED,
        "needs_clarification": Outcome.NEEDS_INPUT,
        "needs_agent_clarification": Outcome.NEEDS_INPUT,
        "cancelled": Outcome.CANCELLED,
        "failed": Outcome.FAILED,
    },
    cancel_path="/test_framework/v1/scenarios/cancel-agent/",
)
