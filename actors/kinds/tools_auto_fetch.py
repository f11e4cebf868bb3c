"""`agent.tools_auto_fetch`: discover an agent's tools (managed provider or MCP server) and mock them.

What replaced toggle-mock-tools for mock setup. `api_key` and `mcp_server_headers` are secrets: kept out of job
state, logs and events, and masked wherever Cekura echoes them.
"""

from typing import Literal

from pydantic import SecretStr, field_validator

from actors.kinds.base import JobKind, Outcome, Params, check_secret, json_body


class ToolsAutoFetchParams(Params):
    agent_id: int
    provider: Literal["vapi", "retell", "elevenlabs", "custom"]
    assistant_id: str | None = None
    api_key: SecretStr | None = None
    mcp_server_url: str | None = None
    mcp_server_headers: dict[str, SecretStr] | None = None

    _api_key = field_validator("api_key")(check_secret)
    _headers = field_validator("mcp_server_headers")(
        lambda cls, headers: headers and {name: check_secret(cls, value) for name, value in headers.items()}
    )


KIND = JobKind(
    name="agent.tools_auto_fetch",
    params=ToolsAutoFetchParams,
    start_path="/test_framework/v1/aiagents/{agent_id}/tools/auto-fetch/",
    progress_path="/test_framework/v1/aiagents/{agent_id}/tools/auto-fetch-progress/",
    terminal={"completed": Outcome.COMPLETED, "failed": Outcome.FAILED},
    secret_fields=frozenset({"api_key", "mcp_server_headers"}),
    path_ids=("agent_id",),
    start_body=lambda p: json_body(p, exclude=frozenset({"agent_id"})),
)
