"""Each job kind reaches each of its outcomes through a real worker, real Redis and the simulator over HTTP."""

from __future__ import annotations

import json

import dramatiq
import pytest

from tests.support import RESULT_EVENT_FIELDS
from worker.client import Client
from worker.store.jobs import RESULT_FIELDS

CASES = [
    ("agent.auto_fetch", {"agent_id": 5}, "completed", "completed"),
    ("agent.auto_fetch", {"agent_id": 901}, "failed", "failed"),
    ("agent.auto_fetch", {"agent_id": 400}, "failed", ""),
    ("agent.toggle_mock_tools", {"agent_id": 6, "enabled": True}, "completed", "completed"),
    ("agent.toggle_mock_tools", {"agent_id": 6, "enabled": False, "api_key": "prov-key-xyz"}, "completed", "completed"),
    ("agent.toggle_mock_tools", {"agent_id": 950, "enabled": True}, "failed", "failed"),
    ("agent.toggle_mock_tools", {"agent_id": 405, "enabled": True}, "failed", ""),
    ("scenario.agent", {"user_message": "more detail", "scenarios": [1, 2]}, "completed", "completed"),
    ("scenario.agent", {"user_message": "x [needs_clarification]"}, "needs_input", "needs_clarification"),
    ("scenario.agent", {"user_message": "x [needs_agent_clarification]"}, "needs_input", "needs_agent_clarification"),
    ("scenario.agent", {"user_message": "x [cancelled]"}, "cancelled", "cancelled"),
    ("scenario.agent", {"user_message": "x [failed]"}, "failed", "failed"),
    (
        "metric.clean_description",
        {"agent": 1, "metric_description": "d", "eval_type": "rating"},
        "completed",
        "completed",
    ),
    ("metric.clean_description", {"agent": 1, "metric_description": "[fail]", "eval_type": "enum"}, "failed", "failed"),
    # the kinds of the enlarged contract: every outcome of each is in tests/actors/test_workflows.py
    ("evaluator.run", {"scenarios": [1, 2]}, "completed", "completed"),
    ("evaluator.run", {"scenarios": [1, 2], "name": "[fail-run]"}, "failed", "completed"),
    ("scenario.generate", {"num_scenarios": 2}, "completed", "completed"),
    ("metric.generate", {"agent_id": 5}, "completed", "completed"),
    (
        "agent.tools_auto_fetch",
        {"agent_id": 5, "provider": "vapi", "assistant_id": "a", "api_key": "k-123456"},
        "completed",
        "completed",
    ),
    (
        "scenario.from_transcript",
        {"transcript_json": [{"role": "Main Agent", "content": "Hi"}]},
        "completed",
        "completed",
    ),
    ("metric.improve_from_feedback", {"metric_id": 5}, "completed", "success"),
]


@pytest.mark.parametrize(("kind", "params", "outcome", "cekura_status"), CASES)
def test_kind_reaches_outcome(
    client: Client, worker: dramatiq.Worker, kind: str, params: dict[str, object], outcome: str, cekura_status: str
) -> None:
    job_id = client.submit(kind, params, metadata={"case": kind})
    event = client.wait(job_id, timeout=15)
    assert event["status"] == outcome, event
    assert event["cekura_status"] == cekura_status
    entries = [e for e in client.results() if e["job_id"] == job_id]
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) - {"id"} == RESULT_EVENT_FIELDS
    assert json.loads(entry["metadata"]) == {"case": kind}
    if outcome == "completed":
        assert json.loads(entry["result"]).get("status", cekura_status) == cekura_status  # generation: counts only
        assert entry["error"] == ""
        assert int(entry["polls"]) >= 1
    if outcome == "failed":
        assert entry["error"]


def test_result_fields_constant_matches_the_contract() -> None:
    assert set(RESULT_FIELDS) == RESULT_EVENT_FIELDS
