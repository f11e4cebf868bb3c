"""`agent.toggle_mock_tools`: swap an agent's provider tools for Cekura-hosted mocks, or back.

Cekura dropped this operation from its public docs in mid-2026; an API that answers 404/405 ends the job
`failed` ("operation not available") instead of retrying.
"""

from pydantic import SecretStr, field_validator

from actors.kinds.base import JobKind, Outcome, Params, check_secret


class ToggleMockToolsParams(Params):
    agent_id: int
    enabled: bool
    api_key: SecretStr | None = None  # the voice provider's key: a secret

    _api_key = field_validator("api_key")(check_secret)


KIND = JobKind(
    name="agent.toggle_mock_tools",
    params=ToggleMockToolsParams,
    start_path="/test_framework/v2/aiagents/{agent_id}/toggle-mock-tools/",
    progress_path="/test_framework/v2/aiagents/{agent_id}/toggle-mock-tools-progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    start_body=lambda p: {"enabled": p.enabled, **({"api_key": p.api_key.get_secret_value()} if p.api_key else {})},
    secret_fields=frozenset({"api_key"}),
    path_ids=("agent_id",),
)
