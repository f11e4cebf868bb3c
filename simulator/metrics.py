"""Metric generation: `generate_metrics` starts, `generate_metrics_progress` is polled (no schema is published).

The answer is ``{status, error}`` while running (``queued`` for the first quarter, then ``in_progress``), then
``{"status": "completed", "metrics": [{name, description, eval_type} x num_metrics], "error": null}`` or
``{"status": "failed", "error": ...}``. ``agent_id`` steers it as agent ids do everywhere (``900``-``999`` failed,
``777`` never finishes; see `simulator/jobs.py`); a request by ``assistant_id`` alone completes. One of
``agent_id`` and ``assistant_id`` is required (a 400 field map on ``agent_id``), ``num_metrics`` is 1-100 (default 1).
"""

from __future__ import annotations

from simulator.jobs import JobStore, agent_terminal
from simulator.model import METRIC_GENERATE, Answers, Job, Start
from simulator.replies import JsonObject, Reply, dumps
from simulator.validation import INT, STR, checked_object, int_between

_QUEUED_UNTIL = 0.25
_EVAL_TYPES = ("boolean", "numeric", "rating", "enum")
_FIELDS = {"agent_id": INT, "assistant_id": STR, "num_metrics": int_between(1, 100)}


def start_generate_metrics(store: JobStore, body: bytes) -> Reply:
    """POST generate_metrics: check the body, start, answer 200 `{progress_id}`."""
    data = checked_object(body, _FIELDS)
    if not isinstance(data, dict):
        return data
    agent = data.get("agent_id")
    if agent is None and not data.get("assistant_id"):
        return 400, dumps({"agent_id": ["Either agent_id or assistant_id must be provided."]})
    outcome, error = agent_terminal(agent) if agent is not None else ("completed", None)
    request: JsonObject = {"count": data.get("num_metrics", 1)}
    job = store.launch(Start(METRIC_GENERATE, agent, outcome, error, request))
    return 200, dumps({"progress_id": job.progress_id})


def _phase(job: Job, fraction: float) -> int:
    return 0 if fraction < _QUEUED_UNTIL else 1


def _running(job: Job, fraction: float, status: str | None) -> JsonObject:
    return {"status": status or ("queued" if fraction < _QUEUED_UNTIL else "in_progress"), "error": None}


def _terminal(job: Job) -> JsonObject:
    if job.outcome == "failed":
        return {"status": "failed", "error": job.error}
    metrics = [
        {
            "name": f"Simulated metric {i + 1}",
            "description": f"Did the agent handle concern {i + 1} of the caller correctly?",
            "eval_type": _EVAL_TYPES[i % len(_EVAL_TYPES)],
        }
        for i in range((job.request or {})["count"])
    ]
    return {"status": "completed", "metrics": metrics, "error": None}


#: How `generate_metrics_progress` answers.
ANSWERS = {METRIC_GENERATE: Answers(_phase, _running, _terminal)}
