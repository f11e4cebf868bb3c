"""Tools auto-fetch (v1): discover an agent's tools and mock them; `tools/auto-fetch-progress/` is polled.

The start body is AutoFetchToolsRequest: ``provider`` (``vapi|retell|elevenlabs|custom``) is required,
``assistant_id`` too unless the provider is ``custom``, which needs ``mcp_server_url`` instead; ``api_key`` is a
string and ``mcp_server_headers`` an object. Problems are a 400 ``{"detail": "<field>: <message>"}``. The path's
agent id steers the job as on the seed agent routes (``400``/``403``/``404``/``405`` answer that HTTP error,
``900``-``999`` end ``failed``, ``777`` never finishes; see `simulator/jobs.py`).

The answer is always ``{status, tools_created, tools_updated, message, error}``: ``in_progress``, then
``completed`` (counts set) or ``failed`` (``error`` set). **Secret echo:** when ``api_key`` or any
``mcp_server_headers`` value contains ``[echo]``, the final ``message`` and ``error`` quote those values verbatim
(so ``error`` is set even on ``completed``), as a provider error echoed by Cekura would: a test can check that the
worker masks them. An unknown progress id (or one of another agent) is a 400 ``{"detail": "Invalid progress_id"}``.
"""

from __future__ import annotations

from simulator.jobs import AGENT_HTTP_ERRORS, JobStore, agent_terminal
from simulator.model import TOOLS_AUTO_FETCH, Answers, Job, Start
from simulator.replies import JsonObject, Reply, detail, dumps, invalid_progress_detail
from simulator.validation import OBJECT, STR, check_fields, choice, parse_object

PROVIDERS = ("vapi", "retell", "elevenlabs", "custom")
ECHO = "[echo]"

_FIELDS = {
    "provider": choice(PROVIDERS),
    "assistant_id": STR,
    "api_key": STR,
    "mcp_server_url": STR,
    "mcp_server_headers": OBJECT,
}
_CREATED, _UPDATED = 3, 1


def start_tools_auto_fetch(store: JobStore, agent_id: int, body: bytes) -> Reply:
    """POST tools/auto-fetch: check the body, start, answer 200 `{progress_id}`."""
    if agent_id in AGENT_HTTP_ERRORS:
        return detail(*AGENT_HTTP_ERRORS[agent_id])
    data, problem = parse_object(body)
    if data is None:
        return detail(400, problem)
    custom = data.get("provider") == "custom"
    required = ("provider", "mcp_server_url" if custom else "assistant_id")
    errors = check_fields(data, _FIELDS, required)
    if errors:
        return detail(400, "; ".join(f"{name}: {messages[0]}" for name, messages in errors.items()))
    headers = data.get("mcp_server_headers") or {}
    secrets = [data.get("api_key"), *headers.values()]
    echoed = [value for value in secrets if isinstance(value, str) and ECHO in value]
    outcome, error = agent_terminal(agent_id)
    request: JsonObject = {"provider": data["provider"], "echo": echoed}
    job = store.launch(Start(TOOLS_AUTO_FETCH, agent_id, outcome, error, request))
    return 200, dumps({"progress_id": job.progress_id})


def _running(job: Job, fraction: float, status: str | None) -> JsonObject:
    provider = (job.request or {})["provider"]
    return {
        "status": status or "in_progress",
        "tools_created": None,
        "tools_updated": None,
        "message": f"Discovering tools from {provider}.",
        "error": None,
    }


def _terminal(job: Job) -> JsonObject:
    request = job.request or {}
    echoed = ", ".join(f'"{value}"' for value in request["echo"])
    if job.outcome == "failed":
        answer: JsonObject = {"status": "failed", "tools_created": None, "tools_updated": None, "message": None}
        answer["error"] = job.error
    else:
        message = (
            f"Fetched {_CREATED + _UPDATED} tools from {request['provider']} ({_CREATED} created, {_UPDATED} updated)."
        )
        answer = {"status": "completed", "tools_created": _CREATED, "tools_updated": _UPDATED, "message": message}
        answer["error"] = None
    if echoed:
        answer["message"] = f"{answer['message'] or 'Tool discovery failed.'} Credentials used: {echoed}."
        answer["error"] = f"{answer['error'] or 'Provider warning'}: the provider rejected the credentials {echoed}."
    return answer


#: How `tools/auto-fetch-progress` answers.
ANSWERS = {TOOLS_AUTO_FETCH: Answers(lambda job, fraction: 0, _running, _terminal, invalid_progress_detail)}
