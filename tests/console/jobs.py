"""Jobs in any state for the console's tests, made with the job store's own scripts (so records and events have
exactly the fields the workers write), and the strings an attacker would try."""

from __future__ import annotations

import json
from typing import Any

import redis

from config.settings import Settings
from worker.store.jobs import JobStore, as_text

#: Values that would run script or break out of an attribute if a page didn't escape them.
HOSTILE_SCRIPT = "<script>window.__pwned=1</script>"
HOSTILE_ATTRIBUTE = '"><img src=x onerror="window.__pwned=1">'
HOSTILE_QUOTE = "'\"></textarea></pre><svg onload=window.__pwned=1>"
HOSTILES = (HOSTILE_SCRIPT, HOSTILE_ATTRIBUTE, HOSTILE_QUOTE)

#: A job id no request could carry (the service refuses it), as a stray writer might leave it in Redis.
HOSTILE_JOB_ID = "<img src=x onerror=window.__pwned=1>"


def make_job(
    store: JobStore,
    job_id: str,
    kind: str = "agent.auto_fetch",
    params: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    deadline_s: float = 600,
) -> None:
    """A queued job, recorded as `submit.lua` records one (no start message: no worker runs it)."""
    created, _ = store.submit(job_id, kind, params or {"agent_id": 5}, metadata or {}, deadline_s, {})
    assert created


def finish(
    store: JobStore,
    job_id: str,
    status: str,
    *,
    result: Any = None,
    error: str = "",
    cekura_status: str = "",
    polls: int = 3,
) -> None:
    """End the job with `status` and publish its result event, as a worker does."""
    fields = {
        "status": status,
        "cekura_status": cekura_status or status,
        "result": json.dumps(result) if result is not None else "",
        "error": error,
        "polls": polls,
    }
    done = store.finish(job_id, "any", 0, fields)
    assert done.verdict == "ok", done


def progress(
    client: redis.Redis,
    settings: Settings,
    job_id: str,
    status: str,
    stage: str = "",
    polls: int = 1,
    *,
    question: str = "",
) -> str:
    """Record a change of Cekura status or stage (or, with `question`, that the job waits for an answer) on the
    job and publish its progress event, as `advance.lua` does."""
    key = settings.key("job", job_id)
    state = "waiting" if question else "polling"
    fields = {"state": state, "cekura_status": status, "current_stage": stage, "polls": polls}
    client.hset(key, mapping={**fields, **({"question": question} if question else {})})
    kind = as_text(client.hget(key, "kind") or b"")
    event = {"job_id": job_id, "kind": kind, "cekura_status": status, "current_stage": stage, "progress_id": "p-1"}
    event.update({"polls": str(polls), "state": state, **({"question": question} if question else {})})
    return as_text(client.xadd(settings.cekura_progress_stream, event))


def reject(store: JobStore, entry_id: str, error: str, requested_job_id: str = "", kind: str = "") -> None:
    """A `rejected` event for request-stream entry `entry_id`, as the intake publishes one."""
    fields = {
        "job_id": "",
        "kind": kind,
        "status": "rejected",
        "cekura_status": "",
        "progress_id": "",
        "result": "",
        "error": f"{error} (request entry {entry_id})",
        "polls": "0",
        "submitted_at": "",
        "finished_at": "",
        "metadata": "{}",
        "request_id": entry_id,
        "requested_job_id": requested_job_id,
    }
    assert store.reject(entry_id, fields)
