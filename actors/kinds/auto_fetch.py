"""`agent.auto_fetch`: re-import an agent's configuration from its voice provider."""

from actors.kinds.base import JobKind, Outcome, Params


class AutoFetchParams(Params):
    agent_id: int


KIND = JobKind(
    name="agent.auto_fetch",
    params=AutoFetchParams,
    start_path="/test_framework/v2/aiagents/{agent_id}/auto-fetch/",
    progress_path="/test_framework/v2/aiagents/{agent_id}/auto-fetch-progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    running=frozenset({"queued", "in_progress"}),
    start_body=lambda params: None,  # the contract defines no body: send none
    stage_field="current_stage",
    path_ids=("agent_id",),
)
